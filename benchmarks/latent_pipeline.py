"""A latent model end to end, original vs half depth: sampling time, the VAE decode that
follows it, and the speedup a user sees once decoding is counted.

    python benchmarks/latent_pipeline.py --quick                 # DiT-S/2 shape, CPU
    python benchmarks/latent_pipeline.py --model DiT-XL/2 --vae ./sd-vae-ft-ema --device cuda

Both models have random weights (speed only) on 4 x 32 x 32 latents (256 x 256 images). The
VAE is sd-vae-ft-ema's architecture with random weights unless --vae names a real one.
Pruning shrinks the transformer, not the decoder, so the end-to-end speedup is
(sample + decode) original / (sample + decode) pruned, below the transformer's own. Timings
are interleaved medians in one run. Prints a table and writes
benchmarks/results/latent_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchmark_table import print_table

from entpruner_sdk.data.latents import LatentSpace, decoder_for
from entpruner_sdk.models import DiffusionTransformer, config_from_name
from entpruner_sdk.sampling import sample
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_medians, machine

RESULTS = Path(__file__).parent / "results"


def sd_vae(device: torch.device) -> LatentSpace:
    """sd-vae-ft-ema's architecture (8x downsampling, 4 latent channels), random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                        norm_num_groups=32, sample_size=256)
    return LatentSpace(vae, device=device, fingerprint="random-sd-vae")


def bench(original, pruned, decoder, device, batch: int, steps: int, repeats: int) -> dict:
    labels = torch.arange(batch) % original.config.num_classes
    latents = {}

    def run(name, model):
        latents[name] = sample(model, labels, steps=steps, cfg_scale=2.0, device=device)

    times = interleaved_medians({"original": lambda: run("original", original),
                                 "pruned": lambda: run("pruned", pruned),
                                 "decode": lambda: decoder.decode(latents["original"])},
                                repeats=repeats)
    sample_speedup = times["original"] / times["pruned"]
    end_to_end = (times["original"] + times["decode"]) / (times["pruned"] + times["decode"])
    return dict(batch=batch, steps=steps, depth_original=original.depth,
                depth_pruned=pruned.depth, sample_original_s=times["original"],
                sample_pruned_s=times["pruned"], decode_s=times["decode"],
                sample_speedup=sample_speedup, end_to_end_speedup=end_to_end,
                decode_share_pruned=times["decode"] / (times["pruned"] + times["decode"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiT-S/2", help="registry name of the original")
    parser.add_argument("--vae", help="a real VAE folder (default: random sd-vae weights)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (DDIM, cfg 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved timings per part (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="steps 10, batch 2, repeats 2")
    parser.add_argument("--out", default=str(RESULTS / "latent_pipeline.json"),
                        help="JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.repeats = 10, "2", 2
    device = resolve_device(args.device)
    config = config_from_name(args.model, input_size=32, in_channels=4, num_classes=1000)
    original = DiffusionTransformer(config).eval().to(device)
    pruned = original.keep_blocks(range(0, original.depth, 2)).eval()
    decoder = decoder_for(config, args.vae or sd_vae(device), device)
    rows = [bench(original, pruned, decoder, device, int(b), args.steps, args.repeats)
            for b in args.batch.split(",")]
    print_rows(rows, args.model, device)
    document = {**machine(device), "model": args.model,
                "vae": args.vae or "random sd-vae-ft-ema architecture", "rows": rows}
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def print_rows(rows, model: str, device) -> None:
    print_table(f"{model} on 4x32x32 latents + VAE decode, original vs half depth ({device})",
                ("batch", "depth", "sample orig ms", "sample pruned ms", "decode ms",
                 "sampling speedup", "end-to-end speedup", "decode share (pruned)"),
                ([f"{r['batch']} (ddim x {r['steps']})",
                  f"{r['depth_original']}->{r['depth_pruned']}",
                  f"{1e3 * r['sample_original_s']:.0f}", f"{1e3 * r['sample_pruned_s']:.0f}",
                  f"{1e3 * r['decode_s']:.0f}", f"{r['sample_speedup']:.2f}x",
                  f"{r['end_to_end_speedup']:.2f}x", f"{100 * r['decode_share_pruned']:.0f}%"]
                 for r in rows), width=140)


if __name__ == "__main__":
    raise SystemExit(main())

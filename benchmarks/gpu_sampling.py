r"""Denoiser and sampling throughput of a DiT-XL/2-shaped model (28 blocks, random weights)
against its 14-block version, eager vs torch.compile vs CUDA graphs (compile
"reduce-overhead"), in bf16 autocast (or the arithmetics named), on one GPU.

    python benchmarks/gpu_sampling.py                  # needs CUDA
    python benchmarks/gpu_sampling.py --batch 16 --steps 10 --modes eager,cuda-graphs
    python benchmarks/gpu_sampling.py --modes eager --arithmetics bf16,off
                                                       # bf16 autocast vs fp32 (TF32 off)
    python benchmarks/gpu_sampling.py --device cpu --model DiT-S/2 --batch 2 --steps 2 \
        --modes eager                                  # a dry run of the script itself

The denoiser call is timed at the guided batch (2 x --batch: classifier-free guidance runs
[x, x] with labels [y, null]), the shape the sampler feeds it, so each compiled graph is built
once and serves both measurements.

Prints a table and writes benchmarks/results/gpu_sampling.json (with the card's name).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from entpruner_sdk.models import DiffusionTransformer, config_from_name
from entpruner_sdk.sampling import compiled, sample
from entpruner_sdk.utils.device import (
    AUTOCAST_MODES,
    arithmetic,
    autocast,
    mixed_precision,
    resolve_device,
)
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_medians

RESULTS = Path(__file__).parent / "results"
MODES = {"eager": False, "compile": True, "cuda-graphs": "reduce-overhead"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per sampling call")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per sample")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timings per mode (the median is reported)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--arithmetics", default="auto",
                        help="comma-separated mixed-precision policies timed side by side: "
                             f"{', '.join(AUTOCAST_MODES)} (off: fp32, TF32 off too); the "
                             "first is the baseline of the ratios")
    parser.add_argument("--model", default="DiT-XL/2", help="architecture (random weights)")
    parser.add_argument("--latent-size", type=int, default=32,
                        help="latent side: 32 for 256 x 256 images, 64 for 512 x 512")
    parser.add_argument("--device", default="cuda", help="cuda (the target) or cpu (dry run)")
    parser.add_argument("--out", default=str(RESULTS / "gpu_sampling.json"), help="JSON results")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    policies = [a.strip() for a in args.arithmetics.split(",")]
    if unknown := set(policies) - set(AUTOCAST_MODES):
        parser.error(f"unknown arithmetics {sorted(unknown)}; choose from {list(AUTOCAST_MODES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; use --device cpu for a dry run")
    device = resolve_device(args.device)  # also turns TF32 on for CUDA
    rows = measure(args, device, modes, policies)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print_rows(rows, card, args)
    arithmetics = list(dict.fromkeys(r["arithmetic"] for r in rows))
    atomic_write_text(args.out, json.dumps({"gpu": card, "device": str(device),
                                            "arithmetic": arithmetics[0],
                                            "arithmetics": arithmetics,
                                            "model": args.model, "torch": torch.__version__,
                                            "rows": rows}, indent=2))
    print(f"written to {args.out}")
    return 0


def measure(args, device: torch.device, modes: list[str], policies: list[str]) -> list[dict]:
    """One denoiser call and one whole sample of each (arithmetic, depth, mode), each timed
    in alternation with the others; ratios against the first."""
    torch.manual_seed(0)
    config = config_from_name(args.model, input_size=args.latent_size)
    full = DiffusionTransformer(config).to(device).eval()
    depth = full.depth
    models = {f"{depth} blocks": full,
              f"{depth // 2} blocks": full.keep_blocks(range(0, depth, 2)).to(device)}
    call_batch = 2 * args.batch  # the guided batch
    x = torch.randn(call_batch, config.in_channels, config.input_size, config.input_size,
                    device=device)
    t = torch.randint(0, 1000, (call_batch,), device=device)
    y = torch.randint(0, config.num_classes + 1, (call_batch,), device=device)
    labels = list(range(args.batch))
    calls, samples = {}, {}
    for policy in policies:
        for name, model in models.items():
            for mode in modes:
                net = compiled(model, MODES[mode]) if MODES[mode] else model

                def call(net=net, policy=policy):
                    with torch.no_grad(), mixed_precision(policy), autocast(device):
                        net(x, t, y)

                def whole(model=model, mode=mode, policy=policy):
                    with mixed_precision(policy):
                        sample(model, labels, sampler="ddim", steps=args.steps, cfg_scale=1.5,
                               device=device, compile=MODES[mode])

                with mixed_precision(policy):
                    key = (arithmetic(device), name, mode)
                calls[key], samples[key] = call, whole
    for fn in [*calls.values(), *samples.values()]:  # compile and capture before timing
        fn()
        fn()
    per_call = interleaved_medians(calls, repeats=args.repeats * 4, warmup=2)
    per_sample = interleaved_medians(samples, repeats=args.repeats, warmup=1)
    base = next(iter(calls))
    rows = []
    for key in calls:
        arith, name, mode = key
        rows.append(dict(model=name, mode=mode, arithmetic=arith, batch=args.batch,
                         call_batch=call_batch, steps=args.steps, call_ms=1e3 * per_call[key],
                         denoiser_images_per_s=call_batch / per_call[key],
                         sample_s=per_sample[key], images_per_s=args.batch / per_sample[key],
                         call_speedup=per_call[base] / per_call[key],
                         sample_speedup=per_sample[base] / per_sample[key]))
    return rows


def print_rows(rows: list[dict], card: str, args) -> None:
    base = rows[0]
    print(f"{card}, torch {torch.__version__}, {args.model}, batch {args.batch} (denoiser call "
          f"{base['call_batch']}), DDIM x {args.steps}, cfg 1.5; ratios against "
          f"{base['model']} {base['mode']} in {base['arithmetic']}")
    print(f"{'arithmetic':<14} {'model':<10} {'mode':<12} {'call ms':>8} {'img/s (call)':>13} "
          f"{'sample s':>9} {'img/s':>7} {'call x':>7} {'sample x':>8}")
    for r in rows:
        print(f"{r['arithmetic']:<14} {r['model']:<10} {r['mode']:<12} {r['call_ms']:8.2f} "
              f"{r['denoiser_images_per_s']:13.0f} {r['sample_s']:9.3f} {r['images_per_s']:7.1f} "
              f"{r['call_speedup']:7.2f} {r['sample_speedup']:8.2f}")


if __name__ == "__main__":
    raise SystemExit(main())

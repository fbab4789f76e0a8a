r"""Denoiser and sampling throughput of a DiT-XL/2-shaped model (28 blocks, random weights)
against its 14-block version, eager vs torch.compile vs CUDA graphs (compile
"reduce-overhead"), bf16 autocast, on one GPU.

    python benchmarks/gpu_sampling.py                  # needs CUDA
    python benchmarks/gpu_sampling.py --batch 16 --steps 10 --modes eager,cuda-graphs
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
from entpruner_sdk.utils.device import arithmetic, autocast, resolve_device
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
    parser.add_argument("--model", default="DiT-XL/2", help="architecture (random weights)")
    parser.add_argument("--device", default="cuda", help="cuda (the target) or cpu (dry run)")
    parser.add_argument("--out", default=str(RESULTS / "gpu_sampling.json"), help="JSON results")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; use --device cpu for a dry run")
    device = resolve_device(args.device)  # also turns TF32 on for CUDA
    torch.manual_seed(0)
    full = DiffusionTransformer(config_from_name(args.model, input_size=32)).to(device).eval()
    depth = full.depth
    models = {f"{depth} blocks": full,
              f"{depth // 2} blocks": full.keep_blocks(range(0, depth, 2)).to(device)}
    cfg = full.config
    call_batch = 2 * args.batch  # the guided batch
    x = torch.randn(call_batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    t = torch.randint(0, 1000, (call_batch,), device=device)
    y = torch.randint(0, cfg.num_classes + 1, (call_batch,), device=device)
    labels = list(range(args.batch))
    calls, samples = {}, {}
    for name, model in models.items():
        for mode in modes:
            net = compiled(model, MODES[mode]) if MODES[mode] else model

            def call(net=net):
                with torch.no_grad(), autocast(device):
                    net(x, t, y)

            calls[(name, mode)] = call
            samples[(name, mode)] = (lambda model=model, mode=mode: sample(
                model, labels, sampler="ddim", steps=args.steps, cfg_scale=1.5, device=device,
                compile=MODES[mode]))
    for fn in [*calls.values(), *samples.values()]:  # compile and capture before timing
        fn()
        fn()
    per_call = interleaved_medians(calls, repeats=args.repeats * 4, warmup=2)
    per_sample = interleaved_medians(samples, repeats=args.repeats, warmup=1)
    base = (f"{depth} blocks", modes[0])
    base_call, base_sample = per_call[base], per_sample[base]
    rows = [dict(model=name, mode=mode, batch=args.batch, call_batch=call_batch,
                 steps=args.steps, call_ms=1e3 * per_call[(name, mode)],
                 denoiser_images_per_s=call_batch / per_call[(name, mode)],
                 sample_s=per_sample[(name, mode)],
                 images_per_s=args.batch / per_sample[(name, mode)],
                 call_speedup=base_call / per_call[(name, mode)],
                 sample_speedup=base_sample / per_sample[(name, mode)])
            for (name, mode) in calls]
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{card}, torch {torch.__version__}, {args.model}, {arithmetic(device)}, batch "
          f"{args.batch} (denoiser call {call_batch}), DDIM x {args.steps}, cfg 1.5; "
          f"ratios against {base[0]} {base[1]}")
    print(f"{'model':<10} {'mode':<12} {'call ms':>8} {'img/s (call)':>13} {'sample s':>9} "
          f"{'img/s':>7} {'call x':>7} {'sample x':>8}")
    for r in rows:
        print(f"{r['model']:<10} {r['mode']:<12} {r['call_ms']:8.2f} "
              f"{r['denoiser_images_per_s']:13.0f} {r['sample_s']:9.3f} {r['images_per_s']:7.1f} "
              f"{r['call_speedup']:7.2f} {r['sample_speedup']:8.2f}")
    atomic_write_text(args.out, json.dumps({"gpu": card, "device": str(device),
                                            "arithmetic": arithmetic(device),
                                            "model": args.model, "torch": torch.__version__,
                                            "rows": rows}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sampling speed, original vs pruned: latency and images/s at batch 1 and 8 for every sampler
of the model's family, with the measured speedup beside the FLOPs ratio.

    python benchmarks/sampling_speed.py                      # bundled teachers, CPU
    python benchmarks/sampling_speed.py --pruned runs/quickstart/dit-digits-pruned --device cuda
    python benchmarks/sampling_speed.py --quick              # fewer steps and repeats

Without --pruned, the pruned model is the teacher keeping every other block (the speed of a
half-depth model does not depend on which blocks were kept). An adaptive sampler (SiT's dopri5)
runs with at most 250 steps and takes the steps each model needs, so its speedup includes any
difference in model calls; the row records both models' calls, and the ratio to the FLOPs
ratio is taken per call. Prints a table and writes benchmarks/results/sampling_speed.json.
Goal: speedup per call / FLOPs ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from entpruner_sdk.models import forward_flops
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import DEFAULT_TEACHERS, resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import CallCounter, interleaved_medians, machine

RESULTS = Path(__file__).parent / "results"
ADAPTIVE_CAP = 250  # dopri5's most steps, as the SiT reference's --num-sampling-steps


def half_depth(model):
    return model.keep_blocks(range(0, model.depth, 2))


def bench_pair(name, original, pruned, device, steps, repeats, batches):
    rows = []
    flops_ratio = forward_flops(original.config) / forward_flops(pruned.config)
    objective = objective_for(original)
    for sampler in objective.samplers:
        cap = ADAPTIVE_CAP if sampler in objective.adaptive_samplers else steps
        for batch in batches:
            labels = torch.arange(batch) % original.config.num_classes

            def run(model, sampler=sampler, labels=labels, cap=cap):
                return sample(model, labels, sampler=sampler, steps=cap, cfg_scale=2.0,
                              device=device)

            calls = {}
            for key, model in (("original", original), ("pruned", pruned)):
                with CallCounter(model) as counter:
                    run(model)  # also the warm-up
                calls[key] = counter.calls
            times = interleaved_medians({"original": lambda: run(original),
                                         "pruned": lambda: run(pruned)}, repeats=repeats,
                                        warmup=0)
            speedup = times["original"] / times["pruned"]
            per_call = speedup * calls["pruned"] / calls["original"]
            rows.append(dict(model=name, sampler=sampler, steps=cap, batch=batch,
                             adaptive=sampler in objective.adaptive_samplers,
                             model_calls_original=calls["original"],
                             model_calls_pruned=calls["pruned"],
                             depth_original=original.depth, depth_pruned=pruned.depth,
                             latency_original_s=times["original"],
                             latency_pruned_s=times["pruned"],
                             images_per_s_original=batch / times["original"],
                             images_per_s_pruned=batch / times["pruned"],
                             speedup=speedup, speedup_per_call=per_call,
                             flops_ratio=flops_ratio,
                             speedup_over_flops_ratio=per_call / flops_ratio))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", action="append",
                        help="original model (repeatable; default: both bundled teachers)")
    parser.add_argument("--pruned", action="append",
                        help="pruned model for each --original (default: half depth)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps per image")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timings per model (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="steps 10, repeats 3")
    parser.add_argument("--out", default=str(RESULTS / "sampling_speed.json"), help="JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 10, 3
    device = resolve_device(args.device)
    originals = args.original or list(DEFAULT_TEACHERS)
    rows = []
    for i, spec in enumerate(originals):
        original = resolve_model(spec, device=device).eval()
        pruned = (resolve_model(args.pruned[i], device=device) if args.pruned
                  else half_depth(original)).eval()
        rows += bench_pair(spec, original, pruned, device, args.steps, args.repeats, (1, 8))
    print_table(rows, device)
    document = {**machine(device), "rows": rows}
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sampling speed, original vs pruned ({device})")
    for column in ("model", "sampler", "batch", "depth", "model calls", "orig ms", "pruned ms",
                   "orig img/s", "pruned img/s", "speedup", "FLOPs ratio",
                   "per call / FLOPs"):
        table.add_column(column)
    for r in rows:
        steps = f"at most {r['steps']}" if r["adaptive"] else f"x {r['steps']}"
        table.add_row(r["model"], f"{r['sampler']} {steps}", str(r["batch"]),
                      f"{r['depth_original']}->{r['depth_pruned']}",
                      f"{r['model_calls_original']}->{r['model_calls_pruned']}",
                      f"{1e3 * r['latency_original_s']:.0f}", f"{1e3 * r['latency_pruned_s']:.0f}",
                      f"{r['images_per_s_original']:.1f}", f"{r['images_per_s_pruned']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['flops_ratio']:.2f}x",
                      f"{r['speedup_over_flops_ratio']:.2f}")
    Console(width=max(160, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())

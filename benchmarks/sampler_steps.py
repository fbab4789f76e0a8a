"""DiT samplers at few steps: DDIM vs DPM-Solver++(2M), for quality and for how closely each
solves the probability-flow ODE, at 5, 10, 20 and 50 steps.

    python benchmarks/sampler_steps.py               # both DiT teachers, about 14 min on 2 cores
    python benchmarks/sampler_steps.py --quick       # dit-digits, 200 samples, 5, 10 and 50 steps
    python benchmarks/sampler_steps.py --model runs/quickstart/dit-digits-pruned --data digits

For every model, sampler and step count, from the same noise and labels (seed 0, cfg 2):
- ``ODE PSNR``: PSNR (dB, on [-1, 1] images) of 64 samples against the same noise taken through
  the ODE by 1000-step DDIM (``--ode-samples``, ``--ode-steps``); higher is a more accurate
  solve;
- FD-domain, class accuracy, precision and recall of ``--samples`` samples against the real
  data (``entpruner_sdk.evaluation.evaluate``);
- the sampling time, and FD-domain and time as ratios to DDIM at 50 steps (the teachers'
  default) measured in the same run.
Prints a table and writes benchmarks/results/sampler_steps.json (``_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import machine

RESULTS = Path(__file__).parent / "results"
SAMPLERS = ("ddim", "dpm-solver++")
BASELINE = ("ddim", 50)  # the bundled DiT teachers' sampling settings
CFG = 2.0


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (images.double() - reference.double()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-20))).item()


def bench_model(spec: str, data: str, steps_list, samples: int, device, ode_steps: int = 1000,
                ode_samples: int = 64) -> list[dict]:
    model = resolve_model(spec, device=device).eval()
    if model.config.family != "dit":
        raise SystemExit(f"{spec} is a SiT; this benchmark compares the DiT samplers")
    labels = torch.arange(ode_samples) % model.config.num_classes
    ode = sample(model, labels, sampler="ddim", steps=ode_steps, cfg_scale=CFG, seed=0,
                 device=device)
    rows = []
    for sampler in SAMPLERS:
        for steps in steps_list:
            images = sample(model, labels, sampler=sampler, steps=steps, cfg_scale=CFG, seed=0,
                            device=device)
            started = time.perf_counter()
            report = evaluate(model, data, samples=samples, sampler=sampler, steps=steps,
                              cfg_scale=CFG, seed=0, features=("domain",), device=device,
                              progress=False)
            rows.append(dict(model=spec, data=data, sampler=sampler, steps=steps, cfg_scale=CFG,
                             samples=samples, ode_psnr_db=psnr(images, ode),
                             sampling_s=report.settings["sampling_seconds"],
                             evaluate_s=time.perf_counter() - started, **report.metrics))
    baseline = next((r for r in rows if (r["sampler"], r["steps"]) == BASELINE), None)
    for r in rows:
        r["fd_domain_vs_ddim50"] = r["fd_domain"] / baseline["fd_domain"] if baseline else None
        r["time_vs_ddim50"] = r["sampling_s"] / baseline["sampling_s"] if baseline else None
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="DiT to measure (repeatable, with one --data each; default: the "
                             "bundled dit-digits and dit-photos)")
    parser.add_argument("--data", action="append", help="real data for each --model")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored per row")
    parser.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts")
    parser.add_argument("--ode-steps", type=int, default=1000,
                        help="DDIM steps of the ODE reference")
    parser.add_argument("--ode-samples", type=int, default=64,
                        help="samples compared with the ODE reference")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="dit-digits only, 200 samples, 5, 10 and 50 steps (about 3 minutes)")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/"
                                      "sampler_steps.json, or _quick.json)")
    args = parser.parse_args(argv)
    models = args.model or (["dit-digits"] if args.quick else ["dit-digits", "dit-photos"])
    datas = args.data or [bundled_data(m) for m in models]
    if len(datas) != len(models):
        parser.error("give one --data for each --model")
    if args.quick:
        args.samples, args.steps = 200, "5,10,50"
    steps_list = [int(s) for s in args.steps.split(",")]
    device = resolve_device(args.device)
    rows = []
    for spec, data in zip(models, datas):
        rows += bench_model(spec, data, steps_list, args.samples, device, args.ode_steps,
                            args.ode_samples)
    print_table(rows, device)
    out = args.out or RESULTS / ("sampler_steps_quick.json" if args.quick else
                                 "sampler_steps.json")
    document = {**machine(device), "cfg_scale": CFG, "ode_reference": f"ddim x {args.ode_steps}",
                "rows": rows}
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def bundled_data(spec: str) -> str:
    """The bundled dataset of a bundled teacher (``dit-photos`` -> ``photos``)."""
    if spec.startswith(("dit-", "sit-")) and "/" not in spec:
        return spec.split("-", 1)[1]
    raise SystemExit(f"pass --data for {spec}: the real data its samples are compared with")


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"DiT samplers at few steps, cfg {CFG} ({device})")
    for column in ("model", "sampler", "steps", "ODE PSNR", "FD-domain", "vs ddim x 50",
                   "class acc", "precision", "recall", "sampling s", "time vs ddim x 50"):
        table.add_column(column)

    def ratio(value):
        return "-" if value is None else f"{value:.2f}x"

    for r in rows:
        table.add_row(r["model"], r["sampler"], str(r["steps"]), f"{r['ode_psnr_db']:.1f} dB",
                      f"{r['fd_domain']:.3f}", ratio(r["fd_domain_vs_ddim50"]),
                      f"{100 * r['class_accuracy']:.1f}%", f"{r['precision_domain']:.3f}",
                      f"{r['recall_domain']:.3f}", f"{r['sampling_s']:.1f}",
                      ratio(r["time_vs_ddim50"]))
    Console(width=max(150, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())

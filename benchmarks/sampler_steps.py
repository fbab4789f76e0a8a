"""Samplers at few steps, for quality and for how closely each solves the probability-flow
ODE. DiT: DDIM vs DPM-Solver++(2M); SiT: Euler vs Heun vs the reference's adaptive dopri5 and
its two SDE samplers, Euler-Maruyama and Heun.

    python benchmarks/sampler_steps.py               # the four teachers, about 30 min on 2 cores
    python benchmarks/sampler_steps.py --quick       # dit-digits and sit-digits, 200 samples
    python benchmarks/sampler_steps.py --model runs/quickstart/dit-digits-pruned --data digits

For every model and sampler, at 5, 10, 20 and 50 steps (dopri5 chooses its own: at most 250,
to atol 1e-6 and rtol 1e-3, the SiT reference's), from the same noise and labels (seed 0,
cfg 2):
- ``ODE PSNR``: PSNR (dB, on [-1, 1] images) of 64 samples against the same noise taken through
  the ODE by 1000 steps of DDIM (DiT) or Heun (SiT) (``--ode-samples``, ``--ode-steps``);
  higher is a more accurate solve; none for the SDE samplers, which solve another equation;
- FD-domain, class accuracy, precision and recall of ``--samples`` samples against the real
  data (``entpruner_sdk.evaluation.evaluate``);
- the model calls per sampling batch and the evaluation's sampling time;
- FD-domain as a ratio to the teachers' sampler (DDIM x 50 for DiT, Heun x 25 for SiT) in the
  same run, and time as a ratio to it timed side by side: every setting samples the
  ``--ode-samples`` batch once a round, in alternation, for ``--rounds`` rounds, and the ratio
  is the median of the rounds' own ratios.
Prints a table and writes benchmarks/results/sampler_steps.json (``_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.objectives import OBJECTIVES
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import DEFAULT_TEACHERS, SAMPLING, TEACHERS, resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_ratios, machine

RESULTS = Path(__file__).parent / "results"
# each family's samplers and the sampler of its ODE reference
FAMILIES = {"dit": dict(samplers=("ddim", "dpm-solver++"), ode="ddim"),
            "sit": dict(samplers=("euler", "heun", "dopri5", "euler-maruyama", "heun-sde"),
                        ode="heun")}
EVAL_BATCH = 250  # evaluate's default sampling batch
ADAPTIVE_CAP = 250  # dopri5's most steps, as the SiT reference's --num-sampling-steps
CFG = 2.0


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (images.double() - reference.double()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-20))).item()


def teachers_setting(family: str) -> tuple[str, int]:
    """(sampler, steps) the bundled teachers sample with: the ratios' baseline."""
    return SAMPLING[family]["sampler"], SAMPLING[family]["steps"]


def settings_of(family: str, steps_list) -> list[tuple[str, int | None]]:
    """(sampler, steps) for every row: each fixed-step sampler at every step count, the
    teachers' setting, and an adaptive sampler once (steps None)."""
    adaptive = OBJECTIVES[family].adaptive_samplers
    rows = [(s, n) for s in FAMILIES[family]["samplers"]
            for n in ([None] if s in adaptive else steps_list)]
    default = teachers_setting(family)
    if default not in rows:
        rows.append(default)
    return sorted(rows, key=lambda row: (FAMILIES[family]["samplers"].index(row[0]), row[1] or 0))


def bench_model(spec: str, data: str, steps_list, samples: int, device, ode_steps: int = 1000,
                ode_samples: int = 64, rounds: int = 3) -> list[dict]:
    model = resolve_model(spec, device=device).eval()
    family = model.config.family
    labels = torch.arange(ode_samples) % model.config.num_classes
    ode = sample(model, labels, sampler=FAMILIES[family]["ode"], steps=ode_steps, cfg_scale=CFG,
                 seed=0, device=device)
    settings = settings_of(family, steps_list)
    # the ODE-PSNR batch, sampled by every setting a round in alternation: its time ratios
    # come side by side, and its images (the same every round, for seed 0) give the PSNR
    made: dict[tuple, torch.Tensor] = {}

    def sampling(sampler: str, steps: int | None) -> Callable[[], None]:
        def run() -> None:
            made[sampler, steps] = sample(model, labels, sampler=sampler,
                                          steps=steps or ADAPTIVE_CAP, cfg_scale=CFG, seed=0,
                                          device=device)
        return run

    timing = interleaved_ratios({s: sampling(*s) for s in settings},
                                teachers_setting(family), rounds)
    batches = math.ceil(samples / EVAL_BATCH)
    rows = []
    for sampler, steps in settings:
        ode_psnr = (None if sampler in OBJECTIVES[family].sde_samplers
                    else psnr(made[sampler, steps], ode))
        started = time.perf_counter()
        report = evaluate(model, data, samples=samples, sampler=sampler,
                          steps=steps or ADAPTIVE_CAP, cfg_scale=CFG, seed=0,
                          features=("domain",), batch_size=EVAL_BATCH, device=device,
                          progress=False)
        rows.append(dict(model=spec, data=data, family=family, sampler=sampler, steps=steps,
                         cfg_scale=CFG, samples=samples, ode_psnr_db=ode_psnr,
                         model_calls=report.settings["model_calls"] / batches,
                         sampling_s=report.settings["sampling_seconds"],
                         evaluate_s=time.perf_counter() - started, **report.metrics,
                         time_vs_default=timing[sampler, steps]["ratio"],
                         timed_rounds_s=timing[sampler, steps]["round_s"]))
    baseline = next(r for r in rows if (r["sampler"], r["steps"]) == teachers_setting(family))
    for r in rows:
        r["fd_domain_vs_default"] = r["fd_domain"] / baseline["fd_domain"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, "the four bundled teachers")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored per row")
    parser.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts")
    parser.add_argument("--ode-steps", type=int, default=1000,
                        help="DDIM (DiT) or Heun (SiT) steps of the ODE reference")
    parser.add_argument("--ode-samples", type=int, default=64,
                        help="samples compared with the ODE reference, and timed")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of side-by-side timing (one batch of --ode-samples per "
                             "setting a round)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="dit-digits and sit-digits, 200 samples, 5, 10 and 50 steps "
                             "(about 8 minutes)")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/"
                                      "sampler_steps.json, or _quick.json)")
    args = parser.parse_args(argv)
    pairs = models_and_data(parser, args,
                            list(DEFAULT_TEACHERS) if args.quick else list(TEACHERS))
    if args.quick:
        args.samples, args.steps = 200, "5,10,50"
    steps_list = [int(s) for s in args.steps.split(",")]
    device = resolve_device(args.device)
    rows = []
    for spec, data in pairs:
        rows += bench_model(spec, data, steps_list, args.samples, device, args.ode_steps,
                            args.ode_samples, args.rounds)
    print_table(rows, device)
    out = args.out or RESULTS / ("sampler_steps_quick.json" if args.quick else
                                 "sampler_steps.json")
    document = {**machine(device), "cfg_scale": CFG, "timed_samples": args.ode_samples,
                "timed_rounds": args.rounds,
                "ode_reference": {family: f"{spec['ode']} x {args.ode_steps}"
                                  for family, spec in FAMILIES.items()},
                "defaults": SAMPLING, "rows": rows}
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def add_model_options(parser: argparse.ArgumentParser, default: str) -> None:
    """--model (repeatable) and one --data for each."""
    parser.add_argument("--model", action="append",
                        help=f"model to measure (repeatable, with one --data each; default: "
                             f"{default})")
    parser.add_argument("--data", action="append", help="real data for each --model")


def models_and_data(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    default: list[str]) -> list[tuple[str, str]]:
    """(model, data) pairs: the given ones, or ``default`` with their bundled data."""
    models = args.model or default
    datas = args.data or [bundled_data(m) for m in models]
    if len(datas) != len(models):
        parser.error("give one --data for each --model")
    return list(zip(models, datas))


def bundled_data(spec: str) -> str:
    """The bundled dataset of a bundled teacher (``dit-photos`` -> ``photos``)."""
    if spec.startswith(("dit-", "sit-")) and "/" not in spec:
        return spec.split("-", 1)[1]
    raise SystemExit(f"pass --data for {spec}: the real data its samples are compared with")


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Samplers at few steps, cfg {CFG} ({device}); ratios to the teachers' "
                        "sampler (DiT: ddim x 50, SiT: heun x 25); time ratios timed side by side")
    for column in ("model", "sampler", "steps", "model calls", "ODE PSNR", "FD-domain",
                   "vs default", "class acc", "precision", "recall", "sampling s",
                   "time vs default"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], r["sampler"], str(r["steps"] or "adaptive"),
                      f"{r['model_calls']:.0f}",
                      "-" if r["ode_psnr_db"] is None else f"{r['ode_psnr_db']:.1f} dB",
                      f"{r['fd_domain']:.3f}", f"{r['fd_domain_vs_default']:.2f}x",
                      f"{100 * r['class_accuracy']:.1f}%", f"{r['precision_domain']:.3f}",
                      f"{r['recall_domain']:.3f}", f"{r['sampling_s']:.1f}",
                      f"{r['time_vs_default']:.2f}x")
    Console(width=max(160, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())

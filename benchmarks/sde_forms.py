"""The SiT reference's SDE choices on the bundled SiT teachers: each ``--diffusion-form`` with
its default last step, and each ``--last-step`` with its default form.

    python benchmarks/sde_forms.py             # sit-digits and sit-photos, about 30 min on 2 cores
    python benchmarks/sde_forms.py --quick     # sit-digits, 200 samples (about 3 minutes)
    python benchmarks/sde_forms.py --model runs/sit/model --data my_images/ --steps 250

Every row samples the same labels from seed 0 with cfg 2 (the reference's ``sample.py SDE
--sampling-method Euler`` by default, ``--sampler heun-sde`` for its Heun) and is scored by
``entpruner_sdk.evaluation.evaluate``: FD-domain, class accuracy, precision and recall of
``--samples`` samples against the real data; FD-domain and sampling time also as ratios to the
teachers' sampler, Heun x 25, measured in the same run. The SDE is stochastic, so one seed
does not separate rows a few percent apart. Prints a table and writes
benchmarks/results/sde_forms.json (``_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sampler_steps import CFG, EVAL_BATCH, add_model_options, models_and_data

from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.objectives.flow import DIFFUSION_FORMS, LAST_STEPS, FlowMatching
from entpruner_sdk.teachers import SAMPLING, resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import machine

RESULTS = Path(__file__).parent / "results"
DEFAULTS = FlowMatching(1).sampler_settings  # the reference's: sigma, Mean


def choices() -> list[dict[str, str]]:
    """Each form with the default last step, then each other last step with the default
    form: the reference's default pair once."""
    forms = [dict(diffusion_form=form, last_step=DEFAULTS["last_step"])
             for form in DIFFUSION_FORMS]
    steps = [dict(diffusion_form=DEFAULTS["diffusion_form"], last_step=step)
             for step in LAST_STEPS if step != DEFAULTS["last_step"]]
    return forms + steps


def bench_model(spec: str, data: str, sampler: str, steps: int, samples: int, device
                ) -> list[dict]:
    model = resolve_model(spec, device=device).eval()
    if model.config.family != "sit":
        raise SystemExit(f"{spec} is a {model.config.family.upper()} model; the SDE forms are "
                         "SiT's")
    run = dict(samples=samples, cfg_scale=CFG, seed=0, features=("domain",),
               batch_size=EVAL_BATCH, device=device, progress=False)
    teachers = SAMPLING["sit"]
    baseline = evaluate(model, data, sampler=teachers["sampler"], steps=teachers["steps"], **run)
    rows = []
    for settings in choices():
        report = evaluate(model, data, sampler=sampler, steps=steps, sampler_settings=settings,
                          **run)
        rows.append(dict(model=spec, data=data, sampler=sampler, steps=steps, cfg_scale=CFG,
                         samples=samples, **report.settings["sampler_settings"],
                         sampling_s=report.settings["sampling_seconds"], **report.metrics,
                         fd_domain_vs_default=report.metrics["fd_domain"]
                         / baseline.metrics["fd_domain"],
                         time_vs_default=report.settings["sampling_seconds"]
                         / baseline.settings["sampling_seconds"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, "the two bundled SiT teachers")
    parser.add_argument("--sampler", default="euler-maruyama",
                        choices=FlowMatching.sde_samplers, help="the SDE sampler")
    parser.add_argument("--steps", type=int, default=50, help="SDE steps, the last included")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored per row")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="sit-digits only, 200 samples (about 3 minutes)")
    parser.add_argument("--out", help="JSON results (default: benchmarks/results/"
                                      "sde_forms.json, or _quick.json)")
    args = parser.parse_args(argv)
    pairs = models_and_data(parser, args,
                            ["sit-digits"] if args.quick else ["sit-digits", "sit-photos"])
    if args.quick:
        args.samples = 200
    device = resolve_device(args.device)
    rows = []
    for spec, data in pairs:
        rows += bench_model(spec, data, args.sampler, args.steps, args.samples, device)
    print_table(rows, device)
    out = args.out or RESULTS / ("sde_forms_quick.json" if args.quick else "sde_forms.json")
    document = {**machine(device), "cfg_scale": CFG, "seed": 0,
                "baseline": f"{SAMPLING['sit']['sampler']} x {SAMPLING['sit']['steps']}",
                "rows": rows}
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"The SiT reference's SDE forms and last steps, cfg {CFG} ({device}); "
                        "ratios to Heun x 25 in the same run")
    for column in ("model", "sampler", "steps", "diffusion form", "last step", "FD-domain",
                   "vs heun x 25", "class acc", "precision", "recall", "time vs heun x 25"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], r["sampler"], str(r["steps"]), r["diffusion_form"],
                      r["last_step"], f"{r['fd_domain']:.3f}", f"{r['fd_domain_vs_default']:.2f}x",
                      f"{100 * r['class_accuracy']:.1f}%", f"{r['precision_domain']:.3f}",
                      f"{r['recall_domain']:.3f}", f"{r['time_vs_default']:.2f}x")
    Console(width=max(160, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())

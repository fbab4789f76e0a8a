"""The SiT reference's SDE choices on the bundled SiT teachers: each ``--diffusion-form`` with
its default last step, and each ``--last-step`` with its default form.

    python benchmarks/sde_forms.py             # sit-digits and sit-photos, about 15 min on 2 cores
    python benchmarks/sde_forms.py --quick     # sit-digits, 200 samples (about 3 minutes)
    python benchmarks/sde_forms.py --model runs/sit/model --data my_images/ --steps 250

Every row samples the same labels from seed 0 with cfg 2 (the reference's ``sample.py SDE
--sampling-method Euler`` by default, ``--sampler heun-sde`` for its Heun) and is scored by
``entpruner_sdk.evaluation.evaluate``: FD-domain, class accuracy, precision and recall of
``--samples`` samples against the real data; FD-domain as a ratio to the teachers' sampler,
Heun x 25, in the same run, and sampling time as a ratio to it timed side by side (a batch of
``--timed-samples`` by every row and by Heun x 25 once a round, in alternation, for
``--rounds`` rounds; the median of the rounds' ratios). The SDE is stochastic, so one seed
does not separate rows a few percent apart. Prints a table and writes
benchmarks/results/sde_forms.json (``_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sampler_steps import CFG, EVAL_BATCH, add_model_options, models_and_data

from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.objectives.flow import DIFFUSION_FORMS, LAST_STEPS, FlowMatching
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import SAMPLING, resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_ratios, machine

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


def bench_model(spec: str, data: str, sampler: str, steps: int, samples: int, device,
                timed_samples: int = 64, rounds: int = 3) -> list[dict]:
    model = resolve_model(spec, device=device).eval()
    if model.config.family != "sit":
        raise SystemExit(f"{spec} is a {model.config.family.upper()} model; the SDE forms are "
                         "SiT's")
    run = dict(samples=samples, cfg_scale=CFG, seed=0, features=("domain",),
               batch_size=EVAL_BATCH, device=device, progress=False)
    teachers = SAMPLING["sit"]
    rows_settings = choices()
    timing = interleaved_ratios(
        {"baseline": timed(model, teachers["sampler"], teachers["steps"], {}, timed_samples,
                           device),
         **{i: timed(model, sampler, steps, settings, timed_samples, device)
            for i, settings in enumerate(rows_settings)}},
        "baseline", rounds)
    baseline = evaluate(model, data, sampler=teachers["sampler"], steps=teachers["steps"], **run)
    rows = []
    for i, settings in enumerate(rows_settings):
        report = evaluate(model, data, sampler=sampler, steps=steps, sampler_settings=settings,
                          **run)
        rows.append(dict(model=spec, data=data, sampler=sampler, steps=steps, cfg_scale=CFG,
                         samples=samples, **report.settings["sampler_settings"],
                         sampling_s=report.settings["sampling_seconds"], **report.metrics,
                         fd_domain_vs_default=report.metrics["fd_domain"]
                         / baseline.metrics["fd_domain"],
                         time_vs_default=timing[i]["ratio"], timed_rounds_s=timing[i]["round_s"]))
    return rows


def timed(model, sampler: str, steps: int, settings: dict, samples: int, device):
    """One batch of ``samples`` labels sampled with ``sampler`` and ``settings``: a call to time."""
    objective = objective_for(model).with_sampler_settings(sampler, **settings)
    labels = torch.arange(samples) % model.config.num_classes
    return lambda: sample(model, labels, sampler=sampler, steps=steps, cfg_scale=CFG, seed=0,
                          objective=objective, device=device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, "the two bundled SiT teachers")
    parser.add_argument("--sampler", default="euler-maruyama",
                        choices=FlowMatching.sde_samplers, help="the SDE sampler")
    parser.add_argument("--steps", type=int, default=50, help="SDE steps, the last included")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored per row")
    parser.add_argument("--timed-samples", type=int, default=64,
                        help="the batch every row samples once a timing round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of side-by-side timing")
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
        rows += bench_model(spec, data, args.sampler, args.steps, args.samples, device,
                            args.timed_samples, args.rounds)
    print_table(rows, device)
    out = args.out or RESULTS / ("sde_forms_quick.json" if args.quick else "sde_forms.json")
    document = {**machine(device), "cfg_scale": CFG, "seed": 0,
                "timed_samples": args.timed_samples, "timed_rounds": args.rounds,
                "baseline": f"{SAMPLING['sit']['sampler']} x {SAMPLING['sit']['steps']}",
                "rows": rows}
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"The SiT reference's SDE forms and last steps, cfg {CFG} ({device}); "
                        "ratios to Heun x 25 in the same run; time ratios timed side by side")
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

"""Quality of compress methods at equal fine-tuning budgets.

For each bundled dataset and teacher family, at two budgets (keep 50% of the blocks, and a
harder one), every method gets the same number of fine-tuning steps:

    ced-adaptive (the default) | ced-one-shot | bi (ShortGPT Block Influence, one-shot)
    uniform (every other block, one-shot) | random (one-shot)

and the pruned EMA model is scored against the real training split: FD-domain, precision /
recall (domain features), class accuracy, and standard FID (Inception) where the ``fid``
extra is installed. The teacher is scored the same way.

    python benchmarks/compress_quality.py            # full grid (about 2 hours on 2 CPU cores)
    python benchmarks/compress_quality.py --quick    # digits, DiT, 50% budget, short runs
    python benchmarks/compress_quality.py --only digits:dit:6 --methods ced-adaptive,bi
    python benchmarks/compress_quality.py --quick --methods ced-variants   # CED options

Results are appended to benchmarks/results/compress_quality[_quick].json as each run ends (a
rerun skips finished runs), then printed as a table and written to
benchmarks/results/compress_quality[_quick].md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from entpruner_sdk.compress import compress
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.teachers import SAMPLING, load_teacher
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"
METHODS = {
    "ced-adaptive": dict(importance="ced", schedule="adaptive"),
    "ced-one-shot": dict(importance="ced", schedule="one-shot"),
    "bi": dict(importance="bi", schedule="one-shot"),
    "uniform": dict(importance="uniform", schedule="one-shot"),
    "random": dict(importance="random", schedule="one-shot"),
}
# CED variants (what X is, which estimator), for choosing the defaults: --methods ced-variants
CED_VARIANTS = {
    "ced-prediction": dict(importance="ced", schedule="adaptive", ced_output="prediction"),
    "ced-sampler": dict(importance="ced", schedule="adaptive", ced_output="sampler"),
    "ced-diagonal": dict(importance="ced", schedule="adaptive", ced_estimator="diagonal"),
}
TEACHERS = {("digits", "dit"): "dit-digits", ("digits", "sit"): "sit-digits",
            ("photos", "dit"): "dit-photos", ("photos", "sit"): "sit-photos"}


def settings(quick: bool) -> dict:
    if quick:
        return dict(steps=150, samples=200, inception=False, interval=25)
    return dict(steps=600, samples=500, inception=True, interval=50)


def score(model, data, family_sampling, samples, inception, original=None) -> dict:
    features = ("domain", "inception") if inception else ("domain",)
    report = evaluate(model, data, samples=samples, features=features, original=original,
                      progress=False, **family_sampling)
    return {**report.metrics, **{f"fidelity_{k}": v for k, v in report.fidelity.items()}}


def run_grid(grid, methods, config, results_path: Path) -> list[dict]:
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["dataset"], r["family"], r["keep"], r["method"]) for r in rows}
    for dataset, family, keep in grid:
        name = TEACHERS[(dataset, family)]
        teacher = load_teacher(name)
        data = _data(dataset)
        sampling = SAMPLING[family]
        if (dataset, family, teacher.depth, "teacher") not in done:
            rows.append(dict(dataset=dataset, family=family, keep=teacher.depth,
                             method="teacher", seconds=0.0,
                             **score(teacher, data, sampling, config["samples"],
                                     config["inception"])))
            _write(results_path, rows)
        for method in methods:
            if (dataset, family, keep, method) in done:
                continue
            torch.manual_seed(0)
            start = time.perf_counter()
            result = compress(teacher, data, keep, steps=config["steps"],
                              interval=config["interval"], progress=False, seed=0,
                              report_samples=0, **{**METHODS, **CED_VARIANTS}[method])
            seconds = time.perf_counter() - start
            rows.append(dict(dataset=dataset, family=family, keep=keep, method=method,
                             seconds=seconds, kept_blocks=result.model.kept_blocks,
                             speedup=result.report["summary"]["sampling_latency"]["speedup"],
                             **score(result.model, data, sampling, config["samples"],
                                     config["inception"], original=teacher)))
            _write(results_path, rows)
            print(f"{dataset}/{family} keep {keep} {method}: {rows[-1]}", flush=True)
    return rows


def _data(dataset: str):
    from entpruner_sdk.data import load_data

    return load_data(dataset)


def _write(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")


def table(rows: list[dict], steps: int, samples: int) -> str:
    metrics = ["fid", "fd_domain", "precision_domain", "recall_domain", "class_accuracy"]
    present = [m for m in metrics if any(m in r for r in rows)]
    lines = [f"Fine-tuning steps per method: {steps}; {samples} samples per evaluation; "
             "samplers: DiT DDIM 50 steps, SiT Heun 25 steps, cfg 2.0; FD-domain is the "
             "Fréchet distance in the domain classifier's features (not FID).", "",
             "| dataset | family | keep | method | " + " | ".join(present) + " | speedup |",
             "|---" * (5 + len(present)) + "|"]
    for r in rows:
        values = " | ".join(f"{r[m]:.3f}" if m in r else "-" for m in present)
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        lines.append(f"| {r['dataset']} | {r['family']} | {r['keep']} | {r['method']} | "
                     f"{values} | {speed} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append",
                        help="dataset:family:keep (repeatable), e.g. digits:dit:6")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    config = settings(args.quick)
    if args.only:
        grid = [(d, f, int(k)) for d, f, k in (o.split(":") for o in args.only)]
    elif args.quick:
        grid = [("digits", "dit", 6)]
    else:
        grid = [(d, f, k) for d in ("digits", "photos") for f in ("dit", "sit") for k in (6, 4)]
    suffix = "_quick" if args.quick else ""
    results = RESULTS / f"compress_quality{suffix}.json"
    methods = args.methods.replace("ced-variants", ",".join(CED_VARIANTS)).split(",")
    rows = run_grid(grid, methods, config, results)
    text = table(rows, config["steps"], config["samples"])
    atomic_write_text(RESULTS / f"compress_quality{suffix}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

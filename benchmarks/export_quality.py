"""Export quality: what each export's precision and runtime cost in sample quality, measured
over whole sampling runs from the model's own noise (parity checks one forward pass).

    python benchmarks/export_quality.py                      # both digits teachers, 500 samples
    python benchmarks/export_quality.py --quick              # 100 samples, 10 steps
    python benchmarks/export_quality.py --model runs/quickstart/dit-digits-pruned \\
        --model runs/quickstart/sit-digits-pruned            # the quickstart's pruned models
    python benchmarks/export_quality.py --formats onnx,onnx-fp16,aoti

Each model is exported to every format, then the model and each export are evaluated on the
same labels and noise (the family's default sampler, cfg 2, FD-domain and class accuracy from
the dataset's own classifier): the model once, each export beside its samples
(``evaluate(export, original=model, original_images=...)``). Prints a table and writes
benchmarks/results/export_quality.json.
Goal: every export's FD-domain within 1% of its model's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmark_table import print_table, write_results

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation import evaluate
from entpruner_sdk.export import FORMATS, export, load_exported
from entpruner_sdk.teachers import resolve_model
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.timing import machine

RESULTS = Path(__file__).parent / "results"
GOAL = 0.01  # an export's FD-domain within 1% of its model's


def measure(name: str, data, formats: list[str], workdir: Path, **run) -> list[dict]:
    """The model's figures, then each export's beside them, all from the same noise."""
    model = resolve_model(name).eval()
    own = evaluate(model, data, model_name=name, **run)
    # PyTorch computes as the policy says: bf16 autocast on a GPU by default
    rows = [row(name, "pytorch", own.settings["arithmetic"], own.metrics)]
    for fmt in formats:
        exported = export(model, workdir / f"{Path(name).name}-{fmt}", fmt, overwrite=True)
        runtime = load_exported(exported.directory)
        report = evaluate(runtime, data, original=model, original_images=own.images,
                          model_name=f"{name} {fmt}", **run)
        rows.append(row(name, fmt, runtime.runtime["precision"], report.metrics,
                        own.metrics, report.fidelity["psnr"]))
    return rows


def row(model: str, fmt: str, precision: str, metrics: dict, reference: dict | None = None,
        psnr: float | None = None) -> dict:
    fd_ratio = metrics["fd_domain"] / reference["fd_domain"] if reference else 1.0
    return dict(model=model, format=fmt, precision=precision,
                class_accuracy=metrics["class_accuracy"], fd_domain=metrics["fd_domain"],
                precision_domain=metrics["precision_domain"],
                recall_domain=metrics["recall_domain"], fd_domain_vs_model=fd_ratio,
                psnr_to_model_db=psnr, meets_goal=abs(fd_ratio - 1) <= GOAL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="a model to export (repeatable; default: dit-digits and "
                             "sit-digits)")
    parser.add_argument("--formats", default="onnx,onnx-fp16",
                        help=f"comma-separated export formats, of {', '.join(FORMATS)}")
    parser.add_argument("--data", default="digits", help="real data the figures compare with")
    parser.add_argument("--samples", type=int, default=500, help="samples per model and export")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise")
    parser.add_argument("--device", default="cpu",
                        help="where PyTorch samples (the exports run on ONNX Runtime's CPU "
                             "provider, or where AOTInductor compiled them)")
    parser.add_argument("--quick", action="store_true", help="100 samples, 10 steps")
    parser.add_argument("--out", default=str(RESULTS / "export_quality.json"),
                        help="JSON results")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",")]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    if args.quick:
        args.samples, args.steps = 100, 10
    device = resolve_device(args.device)
    data = load_data(args.data)
    run = dict(samples=args.samples, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
               features=("domain",), device=device, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.model or ["dit-digits", "sit-digits"]:
            rows += measure(name, data, formats, Path(workdir), **run)
    print_rows(rows, args)
    document = {**machine(device), "data": args.data, "samples": args.samples,
                "steps": args.steps, "cfg_scale": args.cfg, "seed": args.seed,
                "goal": f"every export's FD-domain within {GOAL:.0%} of its model's",
                "met": all(r["meets_goal"] for r in rows), "rows": rows}
    write_results(args.out, document)
    return 0


def print_rows(rows: list[dict], args) -> None:
    def cells(r: dict) -> list[str]:
        psnr = r["psnr_to_model_db"]
        return [Path(r["model"]).name, r["format"], r["precision"],
                f"{r['class_accuracy']:.3f}", f"{r['fd_domain']:.4f}",
                f"{r['fd_domain_vs_model']:.4f}x",
                f"{r['precision_domain']:.3f} / {r['recall_domain']:.3f}",
                "-" if psnr is None else f"{psnr:.1f} dB"]

    print_table(f"export quality: {args.samples} samples, {args.steps} steps, cfg {args.cfg:g}, "
                f"{args.data}; exports beside their model's samples",
                ("model", "format", "precision", "class accuracy", "FD-domain", "vs model",
                 "precision / recall", "PSNR to model"), map(cells, rows))


if __name__ == "__main__":
    raise SystemExit(main())

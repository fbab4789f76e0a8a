"""The main job on bundled data, end to end (``entpruner quickstart``).

For each bundled teacher on the default dataset (digits): sample a class-conditional grid and
check with a classifier trained on the real digits that the samples show their classes;
compress the teacher to half depth with the default method; evaluate teacher and pruned model
on identical noise; print the comparison table. Later layers (export, serve) extend this job.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from entpruner_sdk.compress import compress
from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import class_accuracy, domain_classifier
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.models import count_parameters, forward_flops
from entpruner_sdk.sampling import sample, save_grid
from entpruner_sdk.teachers import DEFAULT_TEACHERS, SAMPLING, load_teacher
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text


@dataclass
class Row:
    """One line of the comparison table."""

    model: str
    family: str
    depth: int
    parameters: int
    gflops: float
    sampling: str
    class_accuracy: float
    fd_domain: float
    precision: float
    recall: float
    sample_seconds: float
    fidelity_psnr: float | None = None
    grid: str = ""
    extra: dict = field(default_factory=dict)


def _row(name: str, model, metrics: dict[str, float], seconds: float, grid: Path,
         sampling: dict, psnr: float | None = None) -> Row:
    m = metrics
    return Row(name, model.family, model.depth, count_parameters(model),
               forward_flops(model.config) / 1e9,
               f"{sampling['sampler']} x {sampling['steps']}, cfg {sampling['cfg_scale']:g}",
               m["class_accuracy"], m["fd_domain"], m["precision_domain"], m["recall_domain"],
               seconds, psnr, str(grid))


def run_quickstart(out: str | Path = "runs/quickstart", samples: int = 300,
                   compress_steps: int = 500, seed: int = 0,
                   device: str | torch.device | None = None, progress: bool = True
                   ) -> list[Row]:
    """The main job on the bundled digits: compress each bundled teacher to half its depth,
    evaluate teacher and pruned model on the same noise, and return a row per model."""
    device = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data("digits", split="train"), load_data("digits", split="test")
    classifier = domain_classifier(train, progress=progress)
    real_accuracy = class_accuracy(classifier, test.images, test.labels)
    rows: list[Row] = []
    for name in DEFAULT_TEACHERS:
        teacher = load_teacher(name, device)
        sampling = SAMPLING[teacher.family]
        grid_labels = torch.arange(10).repeat_interleave(8)
        save_grid(sample(teacher, grid_labels, seed=seed, device=device, clip_denoised=True,
                         **sampling), out / f"{name}.png", rows=10)
        started = time.perf_counter()
        result = compress(teacher, train, teacher.depth // 2, steps=compress_steps,
                          device=device, seed=seed, progress=progress, report_samples=0)
        compress_seconds = time.perf_counter() - started
        result.save(out / f"{name}-pruned")
        save_grid(sample(result.model, grid_labels, seed=seed, device=device,
                         clip_denoised=True, **sampling), out / f"{name}-pruned.png", rows=10)
        # one evaluation: the teacher's figures are those of its own evaluation, and the two
        # sample batch by batch in turn, so their times compare side by side
        report = evaluate(result.model, train, samples=samples, seed=seed, original=teacher,
                          features=("domain",), device=device, progress=progress,
                          model_name=f"{name}-pruned", **sampling)
        rows.append(_row(name, teacher, report.original_metrics,
                         report.settings["original_sampling_seconds"], out / f"{name}.png",
                         sampling))
        pruned_row = _row(f"{name}-pruned", result.model, report.metrics,
                          report.settings["sampling_seconds"], out / f"{name}-pruned.png",
                          sampling, report.fidelity["psnr"])
        pruned_row.extra = {"kept_blocks": result.model.kept_blocks,
                            "compress_seconds": compress_seconds,
                            "sampling_speedup": report.settings["sampling_speedup"],
                            "measured_speedup": result.report["summary"]["sampling_latency"]
                            ["speedup"]}
        rows.append(pruned_row)
    report = {"device": str(device), "samples": samples, "compress_steps": compress_steps,
              "classifier_test_accuracy": real_accuracy, "rows": [asdict(r) for r in rows]}
    atomic_write_text(out / "summary.json", json.dumps(report, indent=2) + "\n")
    print_summary(rows, real_accuracy, samples, out)
    return rows


def print_summary(rows: list[Row], real_accuracy: float, samples: int, out: Path) -> None:
    """Print the quickstart's rows as a table, with the real test images' class accuracy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"entpruner quickstart: teachers vs pruned on digits ({samples} "
                  "samples each, same noise)")
    columns = ("model", "depth", "params", "GFLOPs", "sampler", "class acc", "FD-domain",
               "precision", "recall", "sample s", "speedup", "PSNR vs teacher")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "sampler") else "right")
    for r in rows:
        speedup = r.extra.get("sampling_speedup")
        table.add_row(r.model, str(r.depth), f"{r.parameters / 1e6:.2f} M", f"{r.gflops:.4f}",
                      r.sampling, f"{r.class_accuracy:.1%}", f"{r.fd_domain:.3f}",
                      f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.sample_seconds:.1f}",
                      f"{speedup:.2f}x" if speedup else "-",
                      f"{r.fidelity_psnr:.1f} dB" if r.fidelity_psnr else "-")
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(f"classifier accuracy on real held-out digits: {real_accuracy:.1%}; "
                  "FD-domain is the Fréchet distance in that classifier's features (not FID).")
    console.print("sample s: each pruned model and its teacher sampled batch by batch in turn; "
                  "speedup: the median batch's ratio.")
    console.print(f"grids, pruned models, reports and summary.json are in {out}")

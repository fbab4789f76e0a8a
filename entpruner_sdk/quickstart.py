"""The main job on bundled data, end to end (``entpruner quickstart``).

Today it loads the bundled DiT and SiT teachers, samples a class-conditional grid from each,
checks with a classifier trained on the real digits that the samples show their classes, and
prints a summary. Later layers (compress, evaluate, export) extend this same job.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import class_accuracy, domain_classifier
from entpruner_sdk.models import count_parameters
from entpruner_sdk.sampling import sample, save_grid
from entpruner_sdk.teachers import TEACHERS, load_teacher
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text

# How each teacher is sampled in the quickstart and in the README's figures.
SAMPLING = {
    "dit-digits": {"sampler": "ddim", "steps": 50, "cfg_scale": 2.0},
    "sit-digits": {"sampler": "heun", "steps": 25, "cfg_scale": 2.0},
}


@dataclass
class TeacherSummary:
    name: str
    family: str
    depth: int
    parameters: int
    sampler: str
    steps: int
    cfg_scale: float
    samples: int
    class_accuracy: float
    seconds: float
    grid: str


def evaluate_teacher(name: str, classifier, samples_per_class: int, seed: int,
                     device: torch.device, out: Path, progress: bool) -> TeacherSummary:
    """Sample ``samples_per_class`` images of every class and score them."""
    model = load_teacher(name, device)
    settings = SAMPLING[name]
    labels = torch.arange(model.config.num_classes).repeat_interleave(samples_per_class)
    start = time.perf_counter()
    images = sample(model, labels, seed=seed, device=device, clip_denoised=True,
                    progress=progress, **settings)
    seconds = time.perf_counter() - start
    grid = out / f"{name}.png"
    save_grid(images, grid, rows=model.config.num_classes)
    return TeacherSummary(name, model.family, model.depth, count_parameters(model),
                          settings["sampler"], settings["steps"], settings["cfg_scale"],
                          len(labels), class_accuracy(classifier, images, labels), seconds,
                          str(grid))


def run_quickstart(out: str | Path = "runs/quickstart", samples_per_class: int = 20,
                   seed: int = 0, device: str | torch.device | None = None,
                   progress: bool = True) -> list[TeacherSummary]:
    device = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data("digits", split="train"), load_data("digits", split="test")
    classifier = domain_classifier(train, progress=progress)
    real_accuracy = class_accuracy(classifier, test.images, test.labels)
    summaries = [evaluate_teacher(name, classifier, samples_per_class, seed, device, out,
                                  progress) for name in TEACHERS]
    report = {"device": str(device), "classifier_test_accuracy": real_accuracy,
              "teachers": [asdict(s) for s in summaries]}
    atomic_write_text(out / "summary.json", json.dumps(report, indent=2) + "\n")
    print_summary(summaries, real_accuracy, out)
    return summaries


def print_summary(summaries: list[TeacherSummary], real_accuracy: float, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="entpruner quickstart: bundled teachers on digits")
    for column in ("teacher", "depth", "params", "sampler", "cfg", "samples",
                   "class accuracy", "time (s)"):
        table.add_column(column, justify="right" if column != "teacher" else "left")
    for s in summaries:
        table.add_row(s.name, str(s.depth), f"{s.parameters / 1e6:.2f} M",
                      f"{s.sampler} x {s.steps}", f"{s.cfg_scale:g}", str(s.samples),
                      f"{s.class_accuracy:.1%}", f"{s.seconds:.1f}")
    console = Console()
    console.print(table)
    console.print(f"classifier accuracy on real held-out digits: {real_accuracy:.1%}")
    console.print(f"grids and summary.json written to {out}")

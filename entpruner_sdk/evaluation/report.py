"""``EvaluationReport``: the figures of one evaluation, with the settings that made them,
saved as JSON and Markdown; its samples can be written in ADM's ``.npz`` format."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.data.datasets import DataError, eight_bit
from entpruner_sdk.objectives import is_adaptive
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.npz import Chunks, save_npz_streamed


@dataclass
class EvaluationReport:
    """All figures of one evaluation, with the settings that produced them."""

    settings: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    # with an original: the same figures of its samples, from the same noise and labels
    original_metrics: dict[str, float] = field(default_factory=dict)
    # the class ids sampled (those the reference data holds) and, in that order, the
    # per-class figures
    classes: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)  # theirs, when the data names them
    per_class_accuracy: list[float] = field(default_factory=list)
    original_per_class_accuracy: list[float] = field(default_factory=list)  # with an original
    per_class_diversity: list[float | None] = field(default_factory=list)
    fidelity: dict[str, float] = field(default_factory=dict)
    # bits per dimension of real images (``evaluate(..., likelihood=N)``): their count, the
    # method, the model's mean and standard error, and with an original its figures and the
    # paired difference
    likelihood: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the evaluated samples, kept in memory only (8-bit when the reference is): a later
    # evaluation of a smaller model against this one takes them as ``original_images``
    # instead of sampling them again
    images: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)  # theirs
    # the folders of sample batches that ``evaluate(..., keep_batches=True)`` left for the
    # caller to remove
    kept_batches: list[Path] = field(default_factory=list, repr=False, compare=False)

    def __repr__(self) -> str:  # the figures, not every per-class list
        s = self.settings
        figures = ", ".join(f"{key} {value:.4f}" for key, value in self.metrics.items())
        return (f"EvaluationReport({s['model']}, {s['samples']} samples, {s['sampler']} "
                f"{_steps(s)}, cfg {s['cfg_scale']}: {figures})")

    def to_dict(self) -> dict[str, Any]:
        """Every figure and setting as plain JSON data (the samples are left out)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("images", "labels", "kept_batches")}

    def to_markdown(self) -> str:
        """The report for people: settings, the metrics table (beside the original's when
        there is one), fidelity, likelihood and the figures per class."""
        s = self.settings
        lines = [f"# Evaluation of {s['model']}", "",
                 f"{s['samples']} samples, sampler {s['sampler']}{_settings(s)} "
                 f"{_steps(s)}{'' if is_adaptive(s['sampler']) else ' steps'}, "
                 f"cfg {s['cfg_scale']}, seed {s['seed']}, reference {s['reference']} "
                 f"({s['reference_size']} images), device {s['device']}"
                 f"{' in ' + s['arithmetic'] if s.get('arithmetic') else ''}"
                 f"{', samples held as 8-bit pixels' if s.get('samples_held') == 'uint8' else ''}"
                 ".", ""]
        lines += timing_lines(s)
        lines += _runtime_lines(s)
        lines += self._metrics_table()
        if self.fidelity:
            lines += ["", "## Fidelity to the original (same noise and labels)", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.fidelity.items()]
        lines += likelihood_lines(self.likelihood)
        lines += self._per_class_table()
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def _per_class_table(self) -> list[str]:
        classes = self.classes or range(len(self.per_class_accuracy))
        names = self.class_names or [""] * len(classes)
        # with an original, its accuracy first: which classes the model lost or kept
        before = self.original_per_class_accuracy or [None] * len(classes)
        beside = bool(self.original_per_class_accuracy)
        lines = ["", "## Per class", "",
                 f"| class |{' original accuracy |' if beside else ''} accuracy | diversity |",
                 "|---|---|---|---|" if beside else "|---|---|---|"]
        for c, name, old, acc, div in zip(classes, names, before, self.per_class_accuracy,
                                          self.per_class_diversity):
            lines.append(f"| {f'{c} {name}'.strip()} |{f' {old:.3f} |' if beside else ''} "
                         f"{acc:.3f} | {'-' if div is None else f'{div:.3f}'} |")
        return lines

    def _metrics_table(self) -> list[str]:
        if not self.original_metrics:
            return ["| metric | value |", "|---|---|"] + [
                f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        # side by side, with the ratio that says how far the model moved from its original
        lines = ["| metric | original | this model | ratio to original |", "|---|---|---|---|"]
        for key, value in self.metrics.items():
            before = self.original_metrics.get(key)
            ratio = f"{value / before:.3f}x" if before else "-"
            shown = "-" if before is None else f"{before:.4f}"
            lines.append(f"| {key} | {shown} | {value:.4f} | {ratio} |")
        return lines

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        """The report ``save`` (or ``entpruner evaluate --out``) wrote: its folder or its
        ``evaluation.json`` (the samples are not saved with it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "evaluation.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; `entpruner evaluate --out DIR` "
                                    "(report.save(DIR)) writes it")
        try:
            document = json.loads(path.read_text())
            return cls(**{f.name: document[f.name] for f in fields(cls) if f.name in document})
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path} is not an evaluation report ({error})") from error

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``evaluation.json`` and ``evaluation.md`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "evaluation.json", json.dumps(self.to_dict(), indent=2))
        atomic_write_text(directory / "evaluation.md", self.to_markdown())
        return directory

    def save_samples(self, path: str | os.PathLike) -> Path:
        """Write the samples as guided-diffusion's sampling scripts do, the input of ADM's
        evaluation suite (FID, sFID, IS, precision and recall against its reference batches):
        an ``.npz`` of ``arr_0``, uint8 [N, H, W, C] images, and ``arr_1``, their labels.
        ``load_data`` reads it back."""
        if self.images is None or self.labels is None:
            raise ValueError("this report holds no samples (it was read from a file)")
        if self.images.shape[1] not in (1, 3):  # the data layer's rule for pixels
            raise DataError(f"the samples are {self.images.shape[1]}-channel VAE latents, not "
                            "images: evaluate with vae= (--vae DIR) to decode them")
        # a chunk at a time: no second copy of every sample in ADM's [N, H, W, C] order
        pixels = (eight_bit(self.images[i:i + 256]).permute(0, 2, 3, 1).numpy()
                  for i in range(0, len(self.images), 256))
        return save_npz_streamed(path, {"arr_0": Chunks(len(self.images), pixels),
                                        "arr_1": self.labels.numpy()})


def likelihood_lines(likelihood: dict[str, Any], model_name: str = "this model"
                     ) -> list[str]:
    """The likelihood section (Markdown): each model's bits per dimension and the paired
    difference, as :func:`~entpruner_sdk.evaluation.likelihood.paired_likelihood` gives them."""
    if not likelihood:
        return []
    rows = [(model_name, "bits_per_dim"), ("original", "original_bits_per_dim"),
            ("difference (paired)", "difference")]
    lines = ["", f"## Likelihood of {likelihood['images']} real images (bits per dimension, "
                 "lower is better)", "", f"{likelihood['method']}.", "",
             "| | bits per dimension |", "|---|---|"]
    for name, key in rows:
        if key in likelihood:
            figure = likelihood[key]
            sign = "+" if key == "difference" else ""
            lines.append(f"| {name} | {figure['mean']:{sign}.4f} +- {figure['sem']:.4f} |")
    return lines


def _steps(settings: dict[str, Any]) -> str:
    """"x 50", or "up to 250 steps" for a sampler that picks its own (dopri5)."""
    steps = settings["steps"]
    return f"up to {steps} steps" if is_adaptive(settings["sampler"]) else f"x {steps}"


def _settings(settings: dict[str, Any]) -> str:
    """" (atol 1e-06, rtol 0.001)": the sampler's own settings, when it has any."""
    given = settings.get("sampler_settings") or {}
    shown = (f"{name} {value:g}" if isinstance(value, float | int) else f"{name} {value}"
             for name, value in given.items())
    return f" ({', '.join(shown)})" if given else ""


def timing_lines(settings: dict[str, Any], model: str = "the model") -> list[str]:
    """How long the sampling of ``model`` took, and the original's beside it, each compile
    apart, from an evaluation's ``settings``: "Sampling took 12.0 s for the model, 20.0 s for
    the original: 1.67x as fast, ..."."""
    if "sampling_seconds" not in settings:  # a report written before it was recorded
        return []

    def took(prefix: str) -> str:
        compiled = settings.get(f"{prefix}compile_seconds")
        return (f"{settings[f'{prefix}sampling_seconds']:.1f} s"
                + (f" (after {compiled:.1f} s compiling)" if compiled is not None else ""))

    line = f"Sampling took {took('')} for {model}"
    if "original_sampling_seconds" in settings:
        line += f", {took('original_')} for the original"
    if "sampling_speedup" in settings:
        line += f": {settings['sampling_speedup']:.2f}x as fast, " + _speedup_basis(settings)
    compiled = f" (torch.compile {settings['compile']})" if settings.get("compile") else ""
    return [f"{line}{compiled}.", ""]


def _speedup_basis(settings: dict[str, Any]) -> str:
    """How the speedup was timed: "the median of 4 batches timed in turn (0.95x-1.05x)", or,
    in a report written before that, one model after the other."""
    if "sampling_speedup_range" not in settings:
        return "timed one after the other"
    low, high = settings["sampling_speedup_range"]
    count = settings["sampling_speedup_batches"]
    if count == 1:
        return "one batch of each timed in turn"
    return f"the median of {count} batches timed in turn ({low:.2f}x-{high:.2f}x)"


def _runtime_lines(settings: dict[str, Any]) -> list[str]:
    """Which side of the comparison is an export, and what ran it."""
    said = []
    for key, who in (("runtime", "This model"), ("original_runtime", "The original")):
        runtime = settings.get(key)
        if runtime:
            precision = f" ({runtime['precision']})" if runtime.get("precision") else ""
            providers = (f" on {', '.join(runtime['providers'])}"
                         if runtime.get("providers") else "")
            said.append(f"{who}: the {runtime['format']} export{precision}, run by "
                        f"{runtime['backend']}{providers}.")
    return [" ".join(said), ""] if said else []

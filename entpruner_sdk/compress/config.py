"""``CompressConfig``: every setting of a compression run, as plain data, checked when it is
made (before any data is loaded), and the default fine-tuning rate."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from entpruner_sdk.compress.distill import DistillConfig
from entpruner_sdk.importance import Importance, make_importance
from entpruner_sdk.importance.registry import register_object
from entpruner_sdk.objectives import noise_levels
from entpruner_sdk.schedule import ScheduleConfig
from entpruner_sdk.training import check_micro_batches

# settings a resumed run may change: they change how much memory a step takes (for a run that
# ran out of memory, say), how often it is saved, or what the report measures once training is
# done (a finished run resumed to remake its report with more samples or with FID), never the
# model it trains
RESUMABLE_SETTINGS = ("gradient_accumulation", "gradient_checkpointing", "checkpoint_every",
                      "report_samples", "report_features", "report_likelihood", "report_vae")


@dataclass
class CompressConfig:
    """Every setting of a compression run (plain data; stored in the report)."""

    # a criterion's name: built in, or your own (an Importance object given here is
    # registered under its name, see importance.registry)
    importance: str = "ced"
    ced_output: str = "denoised"
    ced_estimator: str = "sample"
    ced_weighting: str = "mean"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int = 1000
    batch_size: int = 64
    hflip: bool = False  # mirror fine-tuning images at random (photos; not digits or text)
    lr: float | None = None  # None: recovery_lr(hidden size), resolved when the run starts
    ema_decay: float = 0.999
    calibration_per_class: int = 16
    # CED's timestep grid: a count spread over the whole schedule, or noise levels in [0, 1]
    calibration_times: int | tuple[float, ...] = 8
    protect: tuple[int, ...] | None = None  # original block indices; None = first and last
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    checkpoint_every: int = 200
    # memory settings (a resumed run may change them): each step's batch in this many
    # micro-batches, and the student's block activations recomputed in backward instead of
    # held. The result is the same up to float rounding (the masked feature loss, if on,
    # counts its mask per micro-batch)
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    num_classes: int | None = None  # resize the label embedder to this many classes
    # the data's labels are the model's own class ids (a subset of its classes, such as an
    # ImageNet subset that kept its ImageNet ids): keep the label embedder as it is
    keep_classes: bool = False
    report_samples: int = 200  # quality figures in the report (0 skips the evaluation)
    report_features: tuple[str, ...] = ("domain",)  # add "inception" for standard FID
    # bits per dimension of this many real training images under the original and the pruned
    # model, paired (0 skips it): DiT's bound costs 1000 calls an image, SiT's ODE 100
    report_likelihood: int = 0
    # a latent model's VAE folder: the report's figures are then measured on decoded images
    report_vae: str | None = None

    def __post_init__(self) -> None:
        # a criterion of your own, given as an object, is run by name: the settings stay data
        if isinstance(self.importance, Importance):
            self.importance = register_object(self.importance)
        # an unknown importance or CED option, or a setting out of range, fails here, before
        # any data is loaded
        make_importance(self.importance, output=self.ced_output, estimator=self.ced_estimator,
                        weighting=self.ced_weighting)
        noise_levels(self.calibration_times)
        at_least = {"steps": 1, "batch_size": 1, "checkpoint_every": 1,
                    "gradient_accumulation": 1,
                    "calibration_per_class": 2}  # two samples give a class its spread
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least {low}")
        check_micro_batches(self.batch_size, self.gradient_accumulation)
        if self.keep_classes and self.num_classes is not None:
            raise ValueError(f"num_classes={self.num_classes} resizes the label embedder and "
                             "keep_classes=True keeps it as it is: pass one of them")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr}: the learning rate must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1)")
        if self.report_samples:
            check_report_settings(self.report_samples, self.report_features)
        if self.report_likelihood < 0:
            raise ValueError(f"report_likelihood={self.report_likelihood}: the number of real "
                             "images to measure the likelihood of, or 0 to skip it")

    @classmethod
    def from_options(cls, **options: Any) -> CompressConfig:
        """Flat keyword options; schedule and distillation fields are accepted by name."""
        schedule_fields = {f.name for f in dataclasses.fields(ScheduleConfig)}
        distill_fields = {f.name for f in dataclasses.fields(DistillConfig)}
        own = {f.name for f in dataclasses.fields(cls)}
        schedule = {k: options.pop(k) for k in list(options) if k in schedule_fields}
        if "schedule" in options and isinstance(options["schedule"], str):
            schedule["kind"] = options.pop("schedule")
        distill = {k: options.pop(k) for k in list(options) if k in distill_fields}
        unknown = set(options) - own
        if unknown:
            raise TypeError(f"unknown compress options {sorted(unknown)}; known: "
                            f"{sorted(own | schedule_fields | distill_fields)}")
        for key in ("protect", "report_features", "calibration_times"):
            if isinstance(options.get(key), Iterable) and not isinstance(options[key], str):
                options[key] = tuple(options[key])
        return cls(schedule=ScheduleConfig(**schedule), distill=DistillConfig(**distill),
                   **options)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON data (tuples as lists): the report's and a checkpoint's."""
        return jsonable(dataclasses.asdict(self))


# DiT's recipe trains DiT-XL (hidden 1152) with AdamW at 1e-4. Adam moves every weight by about
# the same amount whatever its fan-in, so a narrower model needs a larger rate for the same
# relative change of its activations (muP's 1 / width rule): 1.2e-3 for the bundled width-96
# teachers, which at 1e-4 had not recovered after the benchmark's 600 steps (docs/benchmarks.md,
# "Recovery learning rate"). The cap is the largest rate that benchmark measured.
REFERENCE_LR, REFERENCE_WIDTH, MAX_RECOVERY_LR = 1e-4, 1152, 2e-3


def recovery_lr(hidden_size: int) -> float:
    """The default fine-tuning learning rate: 1e-4 at DiT-XL's width, scaled by 1 / width,
    at most 2e-3, to three significant digits (1.2e-3, not 0.0012000000000000001)."""
    return float(f"{min(MAX_RECOVERY_LR, REFERENCE_LR * REFERENCE_WIDTH / hidden_size):.3g}")


def check_report_settings(samples: int, features: tuple[str, ...]) -> None:
    """Fail before any training on report settings the final evaluation would reject."""
    from entpruner_sdk.evaluation.evaluate import FEATURES
    from entpruner_sdk.evaluation.inception import inception_path

    if samples < 2:
        raise ValueError(f"report_samples={samples}: the quality figures need at least 2 "
                         "samples (a few hundred for stable ones), or 0 to skip them")
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown report_features {sorted(unknown)}; choose from {FEATURES}")
    if "inception" in features:
        inception_path()  # raises with the install line when the fid extra is missing


def jsonable(value: Any) -> Any:
    """Tuples -> lists, so a config compares equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value

"""``compress(model, data, budget)``: progressive, importance-guided block removal during
fine-tuning on the user's data, with distillation from the unpruned teacher.

The loop: at every step the schedule says whether a decision is due; a decision scores the
blocks of the current student (CED by default), votes among "remove k blocks now" candidates,
and rebuilds the student (and its EMA) as a real smaller model. Every step trains the student
with the distillation loss. Checkpoints are written at each removal and at intervals, and a
resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.compress.budget import Budget, budget_device, resolve_depth
from entpruner_sdk.compress.decide import Decision, ProxyBatches, decide
from entpruner_sdk.compress.distill import DistillConfig, distillation_loss
from entpruner_sdk.data.datasets import (
    DataError,
    ImageDataset,
    check_fits,
    fit_channels,
    load_data,
)
from entpruner_sdk.importance import BlockScores, CalibrationSet, FrozenRanking, make_importance
from entpruner_sdk.models.io import save
from entpruner_sdk.models.transformer import DiffusionTransformer, resize_classes
from entpruner_sdk.objectives import noise_levels, objective_for
from entpruner_sdk.schedule import LatencyModel, Schedule, ScheduleConfig, ScheduleState
from entpruner_sdk.training import EMA, drop_labels, record_data_classes, sample_batch
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.checkpoint import (
    load_checkpoint,
    optimizer_tensors,
    prefixed,
    restore_optimizer,
    save_checkpoint,
    unprefixed,
)
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.progress import progress_bar


@dataclass
class CompressConfig:
    """Every setting of a compression run (plain data; stored in the report)."""

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
    num_classes: int | None = None  # resize the label embedder to this many classes
    # the data's labels are the model's own class ids (a subset of its classes, such as an
    # ImageNet subset that kept its ImageNet ids): keep the label embedder as it is
    keep_classes: bool = False
    report_samples: int = 200  # quality figures in the report (0 skips the evaluation)
    report_features: tuple[str, ...] = ("domain",)  # add "inception" for standard FID
    # a latent model's VAE folder: the report's figures are then measured on decoded images
    report_vae: str | None = None

    def __post_init__(self) -> None:
        # an unknown importance or CED option, or a setting out of range, fails here, before
        # any data is loaded
        make_importance(self.importance, output=self.ced_output, estimator=self.ced_estimator,
                        weighting=self.ced_weighting)
        noise_levels(self.calibration_times)
        at_least = {"steps": 1, "batch_size": 1, "checkpoint_every": 1,
                    "calibration_per_class": 2}  # two samples give a class its spread
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least {low}")
        if self.keep_classes and self.num_classes is not None:
            raise ValueError(f"num_classes={self.num_classes} resizes the label embedder and "
                             "keep_classes=True keeps it as it is: pass one of them")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr}: the learning rate must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1)")
        if self.report_samples:
            check_report_settings(self.report_samples, self.report_features)

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


@dataclass
class CompressResult:
    model: DiffusionTransformer  # the pruned model (EMA weights)
    report: dict[str, Any]

    def save(self, directory: str | Path) -> Path:
        """The pruned model (loadable with ``entpruner_sdk.load``) plus the report files."""
        from entpruner_sdk.compress.report import write_report

        directory = Path(directory)
        save(self.model, directory / "model", compression=self.report["summary"])
        write_report(self.report, directory)
        return directory


def protected_blocks(model: DiffusionTransformer, protect: tuple[int, ...] | None) -> list[int]:
    """The original indices never removed: ``protect``, or the first and last block."""
    if protect is None:
        return sorted({model.kept_blocks[0], model.kept_blocks[-1]})
    unknown = sorted(set(protect) - set(model.kept_blocks))
    if unknown:
        raise ValueError(f"protect={list(protect)}: block(s) {unknown} are not in this model, "
                         f"whose blocks are {model.kept_blocks} (original indices)")
    return sorted(set(protect))


def as_compressed(original: DiffusionTransformer,
                  pruned: DiffusionTransformer) -> DiffusionTransformer:
    """``original`` as the teacher of the run that made ``pruned``: with its label embedder
    resized the same way when that run resized it (``num_classes``), else unchanged.

    Side-by-side sampling and fidelity need the two models to take the same labels; for the
    classes both have, the resized original samples exactly as before."""
    resized = pruned.provenance.get("resized_classes")
    if resized and resized["from"] == original.config.num_classes != pruned.config.num_classes:
        return resize_classes(original, resized["to"]).eval()
    return original


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


def check_report_decoder(model: DiffusionTransformer, config: CompressConfig,
                         device: torch.device | None = None) -> Any:
    """Fail before any training when the report's figures need a VAE the run lacks, or was
    given one that does not fit the model; return the VAE opened (None without one), which
    the report then uses."""
    from entpruner_sdk.data.latents import decoder_for, is_latent

    if config.report_vae is not None:
        return decoder_for(model.config, config.report_vae, device)
    if is_latent(model.config) and "inception" in config.report_features:
        raise DataError("standard FID in the report needs images but this model samples VAE "
                        "latents: pass report_vae= (--vae DIR) to decode them, or leave "
                        "report_features at ('domain',) to measure in latent space")
    return None


def check_data(model: DiffusionTransformer, data: ImageDataset, num_classes: int | None,
               keep_classes: bool = False) -> None:
    """Fail before any work unless the run can train on ``data``.

    The class counts must be equal unless ``keep_classes`` says the labels are the model's own
    ids: data with fewer classes is otherwise more likely new classes that would silently take
    over the embeddings of the model's first ones (a released model's ImageNet classes).
    """
    classes = model.config.num_classes if num_classes is None else num_classes
    check_fits(model.config.replace(num_classes=classes), data,
               exact_classes=not keep_classes, resizable=True)


class _Run:
    """The mutable state of one compression run (student, EMA, optimizer, logs)."""

    def __init__(self, teacher: DiffusionTransformer, config: CompressConfig) -> None:
        self.config = config
        self.student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.student.pos_embed.requires_grad_(False)
        self.ema = EMA(self.student, config.ema_decay)
        self.optimizer = self._optimizer()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.decisions: list[Decision] = []
        self.state = ScheduleState(self.losses)
        self.forward = self._wrap()

    def _wrap(self) -> torch.nn.Module:
        """The student, or its DistributedDataParallel wrapper when several processes train
        (rebuilt after every removal: DDP's buckets follow the parameters)."""
        if not distributed.is_distributed():
            return self.student
        from torch.nn.parallel import DistributedDataParallel

        device = next(self.student.parameters()).device
        return DistributedDataParallel(
            self.student, device_ids=[device.index] if device.type == "cuda" else None)

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=0.0)

    def remove(self, blocks: list[int]) -> None:
        """Rebuild student and EMA without ``blocks`` (original indices); fresh optimizer."""
        keep = [i for i, b in enumerate(self.student.kept_blocks) if b not in set(blocks)]
        self.student = self.student.keep_blocks(keep).train()
        self.student.pos_embed.requires_grad_(False)
        self.ema.model = self.ema.model.keep_blocks(keep).eval().requires_grad_(False)
        self.optimizer = self._optimizer()
        self.forward = self._wrap()

    def checkpoint(self, directory: Path, latency: LatencyModel, target: int) -> None:
        opt, groups = optimizer_tensors(self.optimizer)
        tensors = {**prefixed("student.", self.student.state_dict()),
                   **prefixed("ema.", self.ema.model.state_dict()), **opt,
                   "rng": self.generator.get_state()}
        meta = {"step": self.step, "kept_blocks": self.student.kept_blocks,
                "losses": self.losses, "decisions": [d.to_dict() for d in self.decisions],
                "param_groups": groups, "latency": dataclasses.asdict(latency),
                "target_depth": target, "last_removal_step": self.state.last_removal_step,
                "pre_removal_loss": self.state.pre_removal_loss,
                "config": _jsonable(dataclasses.asdict(self.config))}
        save_checkpoint(directory, tensors, meta)

    def restore(self, directory: Path, teacher: DiffusionTransformer) -> tuple[LatencyModel, int]:
        tensors, meta = load_checkpoint(directory)
        current = _jsonable(dataclasses.asdict(self.config))
        # a setting added since the checkpoint was written counts as its default there
        defaults = _jsonable({f.name: f.default for f in dataclasses.fields(self.config)
                              if f.default is not dataclasses.MISSING})
        if {**defaults, **meta["config"]} != current:
            raise ValueError(f"the checkpoint in {directory} was made with other settings; "
                             "resume with the same options or use a new output directory")
        positions = [teacher.kept_blocks.index(b) for b in meta["kept_blocks"]]
        self.student = teacher.keep_blocks(positions).train()
        self.student.pos_embed.requires_grad_(False)
        self.student.load_state_dict(unprefixed("student.", tensors))
        self.ema.model = teacher.keep_blocks(positions).eval().requires_grad_(False)
        self.ema.model.load_state_dict(unprefixed("ema.", tensors))
        self.optimizer = self._optimizer()
        self.forward = self._wrap()
        restore_optimizer(self.optimizer, tensors, meta["param_groups"])
        self.generator.set_state(tensors["rng"])
        self.step = meta["step"]
        self.losses[:] = meta["losses"]
        self.decisions = [_decision_from_dict(d) for d in meta["decisions"]]
        self.state.last_removal_step = meta["last_removal_step"]
        self.state.pre_removal_loss = meta["pre_removal_loss"]
        return LatencyModel(**meta["latency"]), meta["target_depth"]


def compress(
    model: DiffusionTransformer,
    data: Any,
    budget: Budget | int | float | str,
    *,
    config: CompressConfig | None = None,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> CompressResult:
    """Prune ``model`` to ``budget`` on ``data``; see ``CompressConfig`` for the options
    (flat keywords such as ``importance="bi"``, ``schedule="one-shot"``, ``steps=2000``,
    ``interval=50``, ``kd_weight=0.9`` are accepted too).

    Under ``torch.distributed`` (torchrun, several processes) the run is data-parallel: every
    rank draws the same global batch and trains on its slice with DistributedDataParallel,
    CED's statistics are computed on a shard of the calibration set and all-reduced, timings
    come from rank 0, so every rank takes the same decisions; only rank 0 writes files.
    """
    wall_start = time.perf_counter()
    config = config or CompressConfig.from_options(**options)
    device = resolve_device(device)
    world, rank = distributed.world_size(), distributed.rank()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world} "
                         f"processes; use a multiple of {world}")
    budget = Budget.parse(budget)
    protected = protected_blocks(model, config.protect)
    if config.lr is None:
        config = dataclasses.replace(config, lr=recovery_lr(model.config.hidden_size))
    data = fit_channels(model.config, load_data(data))
    check_data(model, data, config.num_classes, config.keep_classes)
    report_vae = check_report_decoder(model, config, device) if config.report_samples else None
    teacher = copy.deepcopy(model).to(device)
    if config.num_classes is not None and config.num_classes != teacher.config.num_classes:
        teacher = resize_classes(teacher, config.num_classes)
    teacher = teacher.eval().requires_grad_(False)
    objective = objective_for(teacher)
    calibration = CalibrationSet.build(data, objective, config.calibration_per_class,
                                       config.calibration_times, config.seed)
    proxies = ProxyBatches.build(calibration, objective, config.schedule.proxy_samples, device,
                                 config.seed)
    run = _Run(teacher, config)
    checkpoint_dir = Path(out_dir) / "checkpoint" if out_dir is not None else None
    writes = checkpoint_dir is not None and distributed.is_main()
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs out_dir, where the checkpoint lives")
        latency, target = run.restore(checkpoint_dir, teacher)
    else:
        latency = None
        if distributed.is_main():  # one clock, so every rank votes on the same latencies
            latency_device = budget_device(budget, device)
            latency_batch = ProxyBatches.build(calibration, objective,
                                               min(config.batch_size, 64), latency_device,
                                               config.seed).ntk
            latency = LatencyModel.measure(teacher.to(latency_device), latency_batch)
            teacher.to(device)
        latency = distributed.broadcast(latency)
        target = resolve_depth(budget, teacher, len(protected), latency)
    # the CED options are used only by CED (alone, or in the ced+bi vote)
    importance = make_importance(config.importance, config.seed,
                                 plan=(teacher.kept_blocks, target), protected=protected,
                                 output=config.ced_output,
                                 estimator=config.ced_estimator,
                                 weighting=config.ced_weighting,
                                 reduce=distributed.all_reduce_sum_ if world > 1 else None)
    if not config.schedule.rerank:
        importance = FrozenRanking(importance, _first_scores(run.decisions))
    # CED sums mergeable statistics, so each rank scores its own share of the calibration set
    scored = (calibration.shard(rank, world)
              if world > 1 and config.importance == "ced" else calibration)
    schedule = Schedule(config.schedule, config.steps)

    def maybe_decide(step: int, final: bool = False) -> None:
        remaining = run.student.depth - target
        plan = schedule.plan(step, remaining, run.state)
        if final and remaining > 0:
            plan = dataclasses.replace(plan, due=True, k_min=remaining, k_max=remaining,
                                       forced=True, reason="forced at the end of training")
        if not plan.due:
            return
        recent = run.losses[-config.schedule.recovery_window:]
        loss = sum(recent) / len(recent) if recent else None
        decision = decide(step, run.student, objective, importance, scored, proxies,
                          latency, plan, protected, config.schedule.vote_weights, device, loss)
        run.student.train()
        run.decisions.append(decision)
        if decision.removed:
            run.remove(decision.removed)
            run.state.last_removal_step, run.state.pre_removal_loss = step, loss
            if writes:
                run.checkpoint(checkpoint_dir, latency, target)

    bar = progress_bar(range(run.step, config.steps), enabled=progress and distributed.is_main(),
                       desc="compress", initial=run.step, total=config.steps)
    for step in bar:
        maybe_decide(step)
        loss = _train_step(run, teacher, objective, data, step, device)
        run.losses.append(loss)
        run.step = step + 1
        bar.set_postfix(depth=run.student.depth, loss=f"{loss:.4f}")
        if writes and run.step % config.checkpoint_every == 0:
            run.checkpoint(checkpoint_dir, latency, target)
    maybe_decide(run.step, final=True)
    if writes:
        run.checkpoint(checkpoint_dir, latency, target)

    from entpruner_sdk.compress.report import build_report

    pruned = run.ema.model.eval()
    pruned.provenance["compression"] = {
        "importance": config.importance, "schedule": config.schedule.kind,
        "removed_blocks": sorted(set(teacher.kept_blocks) - set(pruned.kept_blocks)),
        "budget": budget.describe()}
    record_data_classes(pruned, data)
    report = None
    if distributed.is_main():
        report = build_report(teacher, pruned, data, config, budget, run.decisions,
                              run.losses, latency, protected, device,
                              time.perf_counter() - wall_start)
        report["summary"]["processes"] = world
        if data.origin is not None:  # where a demo or a later evaluation finds the same data
            report["summary"]["data_source"] = data.origin["data"]
            options = {k: v for k, v in data.origin.items() if k != "data"}
            if options:  # load_data keywords: split, image_size, num_classes
                report["summary"]["data_options"] = options
        report["calibration_times"] = calibration.times.tolist()  # the per-timestep columns
    if config.report_samples > 0:  # evaluation shards its sampling over the ranks
        figures = quality_figures(teacher, pruned, data, config, device, progress, report_vae,
                                  checkpoint_dir and checkpoint_dir / "sampling")
        if report is not None:
            report["summary"].update(figures)
    result = CompressResult(pruned, distributed.broadcast(report))
    if out_dir is not None and distributed.is_main():
        result.save(out_dir)
    distributed.barrier()
    return result


def quality_figures(teacher, pruned, data, config: CompressConfig, device,
                    progress: bool = False, vae: Any = None,
                    checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """Evaluation of teacher and pruned model on identical noise (the family's sampler).

    It samples each model once, after the fine-tuning bar has finished, so it shows its own
    bars. ``vae``: the opened ``config.report_vae`` (opened here when not given).
    ``checkpoint_dir``: where finished sample batches are kept until the figures are made,
    so a resumed run does not sample them again."""
    from entpruner_sdk.data.latents import decoder_for
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.teachers import SAMPLING

    if vae is None and config.report_vae:
        vae = decoder_for(teacher.config, config.report_vae, device)
    sampling = dict(SAMPLING[teacher.family], features=config.report_features,
                    samples=config.report_samples, seed=config.seed, device=device,
                    progress=progress, vae=vae,  # the VAE opened once for both evaluations
                    checkpoint_dir=checkpoint_dir)
    original = evaluate(teacher, data, model_name="original", **sampling)
    after = evaluate(pruned, data, original=teacher, original_images=original.images,
                     model_name="pruned", **sampling)
    return {"quality_settings": after.settings,
            "quality_original": original.metrics,
            "quality_pruned": {**after.metrics, **after.fidelity}}


def _train_step(run: _Run, teacher, objective, data, step: int, device) -> float:
    config = run.config
    images, labels = sample_batch(data, config.batch_size, run.generator, device,
                                  config.hflip)
    labels = drop_labels(labels, teacher.config.class_dropout_prob, teacher.null_class,
                         run.generator)
    batch = objective.noise_batch(images, labels, run.generator)
    if distributed.is_distributed():  # every rank drew the same global batch: take a slice
        batch = _slice(batch, distributed.rank(), distributed.world_size())
    decay = 1 - step / max(config.steps, 1)  # the feature loss fades out over training
    with autocast(device):
        loss, _ = distillation_loss(run.student, teacher, objective, batch, config.distill,
                                    config.distill.feature_weight * decay, run.forward)
    if not torch.isfinite(loss):
        raise FloatingPointError("compression loss is not finite; lower the learning rate")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.student.parameters(), 1.0)
    run.optimizer.step()
    run.ema.update(run.student, step)
    # the global batch's loss (equal slices), so the recovery gate sees the same on every rank
    return distributed.mean_across(loss.detach().item())


def _first_scores(decisions: list[Decision]) -> BlockScores | None:
    """The first decision's scores (a resumed fixed-order run must keep its ranking)."""
    if not decisions:
        return None
    table = decisions[0].scores
    return BlockScores("restored", [row["score"] for row in table],
                       [row["block"] for row in table])


def _slice(batch, rank: int, world: int):
    size = batch.x_start.shape[0] // world
    part = slice(rank * size, (rank + 1) * size)
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[part]
                                         for f in dataclasses.fields(batch)})


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, so a config compares equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _decision_from_dict(document: dict[str, Any]) -> Decision:
    from entpruner_sdk.compress.decide import Candidate

    document = dict(document)
    document["candidates"] = [Candidate(**c) for c in document["candidates"]]
    return Decision(**document)

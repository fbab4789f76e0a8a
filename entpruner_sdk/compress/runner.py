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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.compress.budget import Budget
from entpruner_sdk.compress.checks import check_report_decoder, check_report_likelihood
from entpruner_sdk.compress.config import RESUMABLE_SETTINGS, CompressConfig, jsonable
from entpruner_sdk.compress.decide import Decision, ProxyBatches, decide
from entpruner_sdk.compress.distill import distillation_loss
from entpruner_sdk.compress.setup import (
    Setup,
    block_importance,
    measure_latency,
    prepare,
    scored_calibration,
    target_depth,
)
from entpruner_sdk.data import ImageDataset
from entpruner_sdk.data.datasets import origin_fields
from entpruner_sdk.data.latents import recorded_vae
from entpruner_sdk.importance import BlockScores, CalibrationSet, Importance
from entpruner_sdk.models.io import load, save
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective
from entpruner_sdk.schedule import LatencyModel, Schedule, ScheduleState
from entpruner_sdk.teachers import as_model
from entpruner_sdk.training import (
    EMA,
    accumulate_gradients,
    check_micro_batches,
    data_identity,
    drop_labels,
    model_identity,
    non_finite_hint,
    optimizer_step,
    record_data_classes,
    sample_batch,
)
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.checkpoint import (
    check_same_run,
    checkpoint_folder,
    discard_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    prefixed,
    restore_optimizer,
    restore_scaler,
    save_checkpoint,
    unprefixed,
    warn_if_computed_otherwise,
)
from entpruner_sdk.utils.device import autocast, computed_on, gradient_scaler, resolve_device
from entpruner_sdk.utils.progress import progress_bar


@dataclass
class CompressResult:
    """What ``compress`` returns: the pruned model and its report (``save`` writes both,
    ``load`` reads them back)."""

    model: DiffusionTransformer  # the pruned model (EMA weights)
    report: dict[str, Any]

    def __repr__(self) -> str:  # the default would print every layer and the whole report
        summary = self.report["summary"]
        latency = summary.get("sampling_latency")
        speedup = f", sampling speedup {latency['speedup']:.2f}x" if latency else ""
        return (f"CompressResult({summary['family'].upper()} {summary['depth_before']} -> "
                f"{summary['depth_after']} blocks, kept {summary['kept_blocks']}, "
                f"{summary['budget']} by {summary['importance']}{speedup})")

    def save(self, directory: str | Path) -> Path:
        """The pruned model (loadable with ``entpruner_sdk.load``) plus the report files."""
        from entpruner_sdk.compress.report import write_report

        directory = Path(directory)
        save(self.model, directory / "model", compression=self.report["summary"])
        write_report(self.report, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> CompressResult:
        """The result ``save`` (or ``entpruner compress --out``) wrote to ``directory``."""
        from entpruner_sdk.compress.report import read_report

        report = read_report(directory)
        return cls(load(Path(directory) / "model", device=device), report)


class _Run:
    """The mutable state of one compression run (student, EMA, optimizer, logs)."""

    def __init__(self, teacher: DiffusionTransformer, config: CompressConfig,
                 inputs: dict[str, str], device: torch.device) -> None:
        self.config = config
        self.inputs = inputs  # the model, data and budget, which a resumed run must share
        self.ema = EMA(teacher, config.ema_decay)
        self.student = self._trainable(copy.deepcopy(teacher).requires_grad_(True))
        self.optimizer = self._optimizer()
        # fp16 only: scales the loss so gradients do not underflow; its scale outlives the
        # optimizers that removals replace, since it follows the loss, not the weights
        self.scaler = gradient_scaler(device)
        self.skipped = 0  # steps the scaler skipped (overflowed gradients)
        self.computed_on = computed_on(device)  # recorded in checkpoints
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

    def _trainable(self, student: DiffusionTransformer) -> DiffusionTransformer:
        """``student`` in training mode, its fixed position embedding frozen, recomputing
        activations in backward when the config asks (the EMA copy, only sampled, does not)."""
        student.train().pos_embed.requires_grad_(False)
        student.gradient_checkpointing = self.config.gradient_checkpointing
        return student

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=0.0)

    def remove(self, blocks: list[int]) -> None:
        """Rebuild student and EMA without ``blocks`` (original indices); fresh optimizer."""
        keep = [i for i, b in enumerate(self.student.kept_blocks) if b not in set(blocks)]
        self.student = self._trainable(self.student.keep_blocks(keep))
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
                "param_groups": groups, "grad_scaler": self.scaler.state_dict(),
                "skipped_steps": self.skipped, "computed_on": self.computed_on,
                "latency": dataclasses.asdict(latency),
                "target_depth": target, "last_removal_step": self.state.last_removal_step,
                "pre_removal_loss": self.state.pre_removal_loss,
                "config": self.config.to_dict(), "inputs": self.inputs}
        save_checkpoint(directory, tensors, meta)

    def restore(self, directory: Path, teacher: DiffusionTransformer) -> tuple[LatencyModel, int]:
        tensors, meta = load_checkpoint(directory)
        current = self.config.to_dict()
        # a setting added since the checkpoint was written counts as its default there
        defaults = jsonable({f.name: f.default for f in dataclasses.fields(self.config)
                             if f.default is not dataclasses.MISSING})
        check_same_run(directory, {**meta.get("inputs", {}),
                                   "settings": {**defaults, **meta["config"]}},
                       {**self.inputs, "settings": current},
                       may_change=[f"settings.{name}" for name in RESUMABLE_SETTINGS])
        warn_if_computed_otherwise(directory, meta, self.computed_on)
        positions = [teacher.kept_blocks.index(b) for b in meta["kept_blocks"]]
        self.student = self._trainable(teacher.keep_blocks(positions))
        self.student.load_state_dict(unprefixed("student.", tensors))
        self.ema.model = teacher.keep_blocks(positions).eval().requires_grad_(False)
        self.ema.model.load_state_dict(unprefixed("ema.", tensors))
        self.optimizer = self._optimizer()
        self.forward = self._wrap()
        restore_optimizer(self.optimizer, tensors, meta["param_groups"])
        restore_scaler(self.scaler, meta)
        self.skipped = meta.get("skipped_steps", 0)
        self.generator.set_state(tensors["rng"])
        self.step = meta["step"]
        self.losses[:] = meta["losses"]
        self.decisions = [_decision_from_dict(d) for d in meta["decisions"]]
        self.state.last_removal_step = meta["last_removal_step"]
        self.state.pre_removal_loss = meta["pre_removal_loss"]
        return LatencyModel(**meta["latency"]), meta["target_depth"]


def compress(
    model: DiffusionTransformer | str | os.PathLike,
    data: Any,
    budget: Budget | int | float | str,
    *,
    config: CompressConfig | None = None,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    keep_checkpoint: bool = True,
    progress: bool = True,
    **options: Any,
) -> CompressResult:
    """Prune ``model`` (a model, or a bundled teacher's name or a saved model's path) to
    ``budget`` on ``data``; see ``CompressConfig`` for the options
    (flat keywords such as ``importance="bi"``, ``schedule="one-shot"``, ``steps=2000``,
    ``interval=50``, ``kd_weight=0.9`` are accepted too).

    ``out_dir`` receives the result (``model/`` and the report) and ``checkpoint/``, written at
    each removal, every ``checkpoint_every`` steps and at the end: ``resume=True`` continues an
    interrupted run from it, or remakes a finished run's report, given the model, data, budget
    and settings it was made with (a difference is refused and named; ``RESUMABLE_SETTINGS``
    may change). Without ``resume``, a run whose ``out_dir`` holds a checkpoint is refused.
    ``keep_checkpoint=False`` deletes it once the result is saved (it is about four times the
    pruned model's size), and the run can no longer be resumed.

    Under ``torch.distributed`` (torchrun, several processes) the run is data-parallel: every
    rank draws the same global batch and trains on its slice with DistributedDataParallel,
    CED's statistics are computed on a shard of the calibration set and all-reduced, timings
    come from rank 0, so every rank takes the same decisions; only rank 0 writes files.
    """
    wall_start = time.perf_counter()
    model = as_model(model)
    config = config or CompressConfig.from_options(**options)
    device = resolve_device(device)
    check_micro_batches(config.batch_size, config.gradient_accumulation,
                        distributed.world_size())
    checkpoint_dir = checkpoint_folder(out_dir, resume)
    check_report_likelihood(model, config)
    setup = prepare(model, data, budget, config, device)
    config, budget, protected, data = setup.config, setup.budget, setup.protected, setup.data
    # before any training: a report that needs a VAE the run lacks stops here
    report_vae = (check_report_decoder(model, config, device, data) if config.report_samples
                  else None)
    teacher, calibration = setup.teacher, setup.calibration
    # the teacher's identity goes into the pruned model's provenance; the data is hashed only
    # for a checkpoint, which a resume must match
    inputs = {"model": model_identity(model), "budget": budget.describe()}
    if checkpoint_dir is not None:
        inputs["data"] = data_identity(data)
    run = _Run(teacher, config, inputs, device)
    if resume:
        latency, target = run.restore(checkpoint_dir, teacher)
        asked = target_depth(setup, latency)
        if asked != target:  # a checkpoint too old to name its budget
            raise ValueError(f"the checkpoint in {checkpoint_dir} prunes to {target} blocks, "
                             f"the budget {budget.describe()!r} to {asked}; resume with its "
                             "budget")
    else:
        latency = measure_latency(setup)
        target = target_depth(setup, latency)
    pruner = _Pruner.build(run, setup, latency, target)
    _fine_tune(run, pruner, teacher, data, device, progress,
               checkpoint_dir if distributed.is_main() else None)

    pruned = run.ema.model.eval()
    pruned.provenance["compression"] = _compression_record(model, teacher, pruned, config,
                                                           budget, run.inputs["model"])
    record_data_classes(pruned, data)
    report = None
    if distributed.is_main():
        report = _report(run, teacher, pruned, data, budget, latency, protected, calibration,
                         device, time.perf_counter() - wall_start)
    if config.report_samples > 0:  # evaluation shards its sampling over the ranks
        figures = quality_figures(teacher, pruned, data, config, device, progress, report_vae,
                                  out_dir)
        if report is not None:
            report["summary"].update(figures)
    if config.report_likelihood > 0:  # every rank measures its share of the images
        from entpruner_sdk.evaluation.likelihood import paired_likelihood

        likelihood = paired_likelihood(pruned, teacher, data, config.report_likelihood,
                                       seed=config.seed, device=device, progress=progress)
        if report is not None:
            report["summary"]["likelihood"] = likelihood
    result = CompressResult(pruned, distributed.broadcast(report))
    if out_dir is not None and distributed.is_main():
        result.save(out_dir)
        if not keep_checkpoint:
            discard_checkpoint(checkpoint_dir)
    distributed.barrier()
    return result


def _compression_record(model: DiffusionTransformer, teacher: DiffusionTransformer,
                        pruned: DiffusionTransformer, config: CompressConfig, budget: Budget,
                        identity: str) -> dict[str, Any]:
    """How ``pruned`` was made from ``model``: ``provenance["compression"]``."""
    return {
        "importance": config.importance, "schedule": config.schedule.kind,
        "removed_blocks": sorted(set(teacher.kept_blocks) - set(pruned.kept_blocks)),
        "budget": budget.describe(),
        # what it was made from, so the demo can compare with it unasked: where it was read
        # (None for a model made in memory) and its weights' hash
        "original": {"source": model.loaded_from, "model": identity},
        # a model compressed again keeps how it was made before: its lineage to the first
        **({"earlier": model.provenance["compression"]}
           if "compression" in model.provenance else {})}


@dataclass
class _Pruner:
    """Everything a removal decision needs that stays fixed during the run: the importance
    (Torch-Pruning's layering: importance -> pruner -> schedule), the data it scores on, the
    proxies' batches and latencies, and the target depth."""

    schedule: Schedule
    importance: Importance
    objective: Objective
    calibration: CalibrationSet
    proxies: ProxyBatches
    latency: LatencyModel
    target: int
    protected: list[int]
    device: torch.device

    @classmethod
    def build(cls, run: _Run, setup: Setup, latency: LatencyModel, target: int) -> _Pruner:
        config = run.config
        importance = block_importance(setup, target, _first_scores(run.decisions))
        proxies = ProxyBatches.build(setup.calibration, setup.objective,
                                     config.schedule.proxy_samples, setup.device, config.seed)
        return cls(Schedule(config.schedule, config.steps), importance, setup.objective,
                   scored_calibration(setup), proxies, latency, target, setup.protected,
                   setup.device)

    def step(self, run: _Run, step: int, final: bool = False) -> bool:
        """Take the decision the schedule plans at ``step`` (at the end of training, whatever
        removal is left is forced); returns whether blocks were removed."""
        remaining = run.student.depth - self.target
        plan = self.schedule.plan(step, remaining, run.state)
        if final and remaining > 0:
            plan = dataclasses.replace(plan, due=True, k_min=remaining, k_max=remaining,
                                       forced=True, reason="forced at the end of training")
        if not plan.due:
            return False
        settings = run.config.schedule
        recent = run.losses[-settings.recovery_window:]
        loss = sum(recent) / len(recent) if recent else None
        decision = decide(step, run.student, self.objective, self.importance, self.calibration,
                          self.proxies, self.latency, plan, self.protected,
                          settings.vote_weights, self.device, loss)
        run.student.train()
        run.decisions.append(decision)
        if not decision.removed:
            return False
        run.remove(decision.removed)
        run.state.last_removal_step, run.state.pre_removal_loss = step, loss
        return True


def _fine_tune(run: _Run, pruner: _Pruner, teacher: DiffusionTransformer, data,
               device: torch.device, progress: bool, checkpoint_dir: Path | None) -> None:
    """Distil into the student until ``config.steps``, removing blocks as the pruner decides;
    a checkpoint (in ``checkpoint_dir``, if any) after each removal, every
    ``checkpoint_every`` steps and at the end."""
    config = run.config

    def checkpoint() -> None:
        if checkpoint_dir is not None:
            run.checkpoint(checkpoint_dir, pruner.latency, pruner.target)

    bar = progress_bar(range(run.step, config.steps), enabled=progress and distributed.is_main(),
                       desc="compress", initial=run.step, total=config.steps)
    for step in bar:
        if pruner.step(run, step):
            checkpoint()
        loss = _train_step(run, teacher, pruner.objective, data, step, device)
        run.losses.append(loss)
        run.step = step + 1
        # shown at the bar's next redraw: one a step would flood a log
        bar.set_postfix(depth=run.student.depth, loss=f"{loss:.4f}", refresh=False)
        if run.step % config.checkpoint_every == 0:
            checkpoint()
    pruner.step(run, run.step, final=True)
    checkpoint()


def _report(run: _Run, teacher: DiffusionTransformer, pruned: DiffusionTransformer, data,
            budget: Budget, latency: LatencyModel, protected: list[int],
            calibration: CalibrationSet, device: torch.device, wall_seconds: float
            ) -> dict[str, Any]:
    """The report of a finished run (its quality figures are added after)."""
    from entpruner_sdk.compress.report import build_report

    report = build_report(teacher, pruned, data, run.config, budget, run.decisions, run.losses,
                          latency, protected, device, wall_seconds)
    report["summary"]["processes"] = distributed.world_size()
    if run.scaler.is_enabled():
        report["summary"]["skipped_steps"] = run.skipped
    # where a demo or a later evaluation finds the same data
    report["summary"].update(origin_fields(data))
    if "vae" not in report["summary"] and (vae := recorded_vae(teacher.metadata)):
        report["summary"]["vae"] = vae  # latents made elsewhere: the teacher's VAE decodes both
    report["calibration_times"] = calibration.times.tolist()  # the per-timestep columns
    return report


def quality_figures(teacher: DiffusionTransformer, pruned: DiffusionTransformer,
                    data: ImageDataset, config: CompressConfig, device: torch.device,
                    progress: bool = False, vae: Any = None,
                    out_dir: str | Path | None = None) -> dict[str, Any]:
    """One evaluation of the pruned model beside its teacher on identical noise (the
    family's sampler), against the class folder the data was read from when there is one
    (``images_behind``).

    It samples each model once, after the fine-tuning bar has finished, so it shows its own
    bars. ``vae``: the report's VAE, opened (``check_report_decoder`` opens it when not
    given).
    ``out_dir``: the run's; finished sample batches wait in its ``sampling-in-progress``
    until the figures are made, so a resumed run does not sample them again. (Not under the
    checkpoint folder: every checkpoint replaces that folder whole.)"""
    from entpruner_sdk.evaluation.batches import IN_PROGRESS
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.evaluation.reference import images_behind
    from entpruner_sdk.teachers import SAMPLING

    if vae is None and config.report_samples:
        vae = check_report_decoder(teacher, config, device, data)
    data = images_behind(data, decoded=vae is not None)  # a class folder: as evaluate takes it
    batches = Path(out_dir) / IN_PROGRESS if out_dir is not None else None
    sampling = dict(SAMPLING[teacher.family], features=config.report_features,
                    samples=config.report_samples, seed=config.seed, device=device,
                    progress=progress, vae=vae,  # opened once, for both models
                    checkpoint_dir=batches)
    # one evaluation measures both models, each once; every finished batch of either stays
    # on disk until the figures are made, so a run that resumes after a crash samples only
    # what it lacked
    after = evaluate(pruned, data, original=teacher, model_name="pruned", **sampling)
    return {"quality_settings": after.settings,
            "quality_original": after.original_metrics,
            "quality_pruned": {**after.metrics, **after.fidelity}}


def _train_step(run: _Run, teacher, objective, data, step: int, device) -> float:
    config = run.config
    images, labels = sample_batch(data, config.batch_size, run.generator, device,
                                  config.hflip)
    labels = drop_labels(labels, teacher.config.class_dropout_prob, teacher.null_class,
                         run.generator)
    batch = objective.noise_batch(images, labels, run.generator)
    if distributed.is_distributed():  # every rank drew the same global batch: take a slice
        batch = batch.split(distributed.world_size())[distributed.rank()]
    # the feature loss fades out over training
    feature_weight = config.distill.feature_weight * (1 - step / max(config.steps, 1))

    def loss_of(part):
        with autocast(device):
            return distillation_loss(run.student, teacher, objective, part, config.distill,
                                     feature_weight, run.forward)[0]

    run.optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(loss_of, batch, config.gradient_accumulation, run.forward,
                                run.scaler)
    if not torch.isfinite(loss):  # checked before the step: the weights stay as they were
        raise FloatingPointError("compression loss is not finite; lower the learning rate"
                                 f"{non_finite_hint(device)}")
    run.skipped += not optimizer_step(run.optimizer, 1.0, run.scaler)
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


def _decision_from_dict(document: dict[str, Any]) -> Decision:
    from entpruner_sdk.compress.decide import Candidate

    document = dict(document)
    document["candidates"] = [Candidate(**c) for c in document["candidates"]]
    return Decision(**document)

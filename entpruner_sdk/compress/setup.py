"""What a compress run settles before it trains, shared by ``compress`` and ``plan``: the
checked settings and data, the teacher, the calibration set, the teacher's latency, the
target depth and the importance that ranks the blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from entpruner_sdk.compress.budget import Budget, budget_device, resolve_depth
from entpruner_sdk.compress.checks import check_data, protected_blocks
from entpruner_sdk.compress.config import CompressConfig, recovery_lr
from entpruner_sdk.compress.decide import ProxyBatches
from entpruner_sdk.compress.teacher import make_teacher
from entpruner_sdk.data.datasets import (
    ImageDataset,
    fit_channels,
    fit_class_names,
    load_data,
)
from entpruner_sdk.importance import (
    BlockScores,
    CalibrationSet,
    FrozenRanking,
    Importance,
    make_importance,
)
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective, objective_for
from entpruner_sdk.schedule import LatencyModel
from entpruner_sdk.utils import distributed


@dataclass
class Setup:
    """A run's fixed inputs, checked: nothing here depends on training."""

    config: CompressConfig
    budget: Budget
    protected: list[int]
    data: ImageDataset
    teacher: DiffusionTransformer
    objective: Objective
    calibration: CalibrationSet
    device: torch.device


def prepare(model: DiffusionTransformer, data: Any, budget: Budget | int | float | str,
            config: CompressConfig, device: torch.device) -> Setup:
    """Check the budget's form, the protected blocks and the data against ``model`` (each
    refusal before any work), then make the teacher and the calibration set."""
    budget = Budget.parse(budget)
    protected = protected_blocks(model, config.protect)
    if config.lr is None:
        config = dataclasses.replace(config, lr=recovery_lr(model.config.hidden_size))
    data = fit_channels(model.config, load_data(data))
    if config.num_classes in (None, model.config.num_classes):  # else new classes: by id
        data = fit_class_names(data, model.provenance.get("class_names"))
    check_data(model, data, config.num_classes, config.keep_classes)
    teacher = make_teacher(model, config.num_classes, device)
    objective = objective_for(teacher)
    calibration = CalibrationSet.build(data, objective, config.calibration_per_class,
                                       config.calibration_times, config.seed)
    return Setup(config, budget, protected, data, teacher, objective, calibration, device)


def measure_latency(setup: Setup) -> LatencyModel:
    """The teacher's per-block latency on the budget's device, measured on rank 0 and
    broadcast: one clock, so every rank votes on the same latencies."""
    latency = None
    if distributed.is_main():
        latency_device = budget_device(setup.budget, setup.device)
        batch = ProxyBatches.build(setup.calibration, setup.objective,
                                   min(setup.config.batch_size, 64), latency_device,
                                   setup.config.seed).ntk
        latency = LatencyModel.measure(setup.teacher.to(latency_device), batch)
        setup.teacher.to(setup.device)
    return distributed.broadcast(latency)


def target_depth(setup: Setup, latency: LatencyModel) -> int:
    """The depth the budget asks for (a speedup budget read with ``latency``)."""
    return resolve_depth(setup.budget, setup.teacher, len(setup.protected), latency)


def block_importance(setup: Setup, target: int, first: BlockScores | None = None
                     ) -> Importance:
    """The configured criterion; unless ``rerank``, frozen at its first scores (``first``: a
    resumed run's), so blocks go in the teacher's order."""
    config = setup.config
    reduce = distributed.all_reduce_sum_ if distributed.world_size() > 1 else None
    # the CED options are used only by CED (alone, or in the ced+bi vote)
    importance = make_importance(config.importance, config.seed,
                                 plan=(setup.teacher.kept_blocks, target),
                                 protected=setup.protected, output=config.ced_output,
                                 estimator=config.ced_estimator,
                                 weighting=config.ced_weighting, reduce=reduce)
    if not config.schedule.rerank:
        importance = FrozenRanking(importance, first)
    return importance


def scored_calibration(setup: Setup) -> CalibrationSet:
    """The calibration images this process scores: CED sums mergeable statistics, so under
    several processes each takes its share and the sums are all-reduced."""
    world = distributed.world_size()
    if world > 1 and setup.config.importance == "ced":
        return setup.calibration.shard(distributed.rank(), world)
    return setup.calibration

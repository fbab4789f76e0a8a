"""``plan(model, data, budget)``: which blocks ``compress`` would remove, found without
fine-tuning.

The budget is resolved to a depth (a speedup budget with the teacher's latency measured on
its device), the criterion scores the teacher's blocks on the calibration set, and the
lowest-scoring unprotected blocks are the ones compress's first decision ranks for removal.
A run that ranks once (the default) removes them progressively, in that order, and ends with
exactly the blocks the plan keeps: the schedule decides only when and how many at a time.
With ``rerank`` or the ``ced+bi`` vote the run may end elsewhere, and the plan says so. For
DiT-XL/2 this takes minutes on a GPU, where the run takes hours.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from entpruner_sdk.compress.budget import Budget, budget_device
from entpruner_sdk.compress.config import CompressConfig
from entpruner_sdk.compress.setup import (
    block_importance,
    measure_latency,
    prepare,
    scored_calibration,
    target_depth,
)
from entpruner_sdk.models.transformer import DiffusionTransformer, count_parameters, forward_flops
from entpruner_sdk.teachers import as_model
from entpruner_sdk.utils.device import resolve_device


@dataclass
class CompressPlan:
    """What a compress run with the same settings would remove, and what that leaves."""

    family: str
    budget: str
    importance: str
    depth_before: int
    depth_after: int
    protected: list[int]
    # one row per block of the teacher: its original index and score (lowest goes first)
    scores: list[dict[str, Any]]
    removed_blocks: list[int]
    kept_blocks: list[int]
    parameters_before: int
    parameters_after: int
    gflops_before: float
    gflops_after: float
    predicted_speedup: float  # by the latency model: a forward pass, on latency_device
    latency_device: str
    latency_arithmetic: str  # "bf16 autocast" on a GPU by default, as it samples there
    final: bool  # whether the run ends with exactly these blocks

    def __repr__(self) -> str:  # the default would print every block's score
        return (f"CompressPlan({self.family.upper()} {self.depth_before} -> {self.depth_after} "
                f"blocks, {self.budget} by {self.importance}: removes {self.removed_blocks}, "
                f"predicted forward speedup {self.predicted_speedup:.2f}x)")

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON data (``plan.json``)."""
        return asdict(self)

    def to_markdown(self) -> str:
        """The plan for people (``plan.md``): each block's score and what goes."""
        lines = [f"# Compression plan: {self.family.upper()}, {self.budget}", "",
                 f"{self.importance} ranks the {self.depth_before} blocks; "
                 f"{len(self.removed_blocks)} go, {self.depth_after} stay.", "",
                 f"| block | {self.importance} score (the lowest go first) | |", "|---|---|---|"]
        for row in self.scores:
            block = row["block"]
            role = ("protected" if block in self.protected
                    else "removed" if block in self.removed_blocks else "kept")
            lines.append(f"| {block} | {row['score']:.4f} | {role} |")
        lines += ["", "| | before | after | ratio |", "|---|---|---|---|",
                  f"| depth | {self.depth_before} | {self.depth_after} | |",
                  f"| parameters | {self.parameters_before:,} | {self.parameters_after:,} | "
                  f"{self.parameters_before / self.parameters_after:.2f}x |",
                  f"| GFLOPs / image | {self.gflops_before:.4f} | {self.gflops_after:.4f} | "
                  f"{self.gflops_before / self.gflops_after:.2f}x |",
                  f"| forward latency (latency model, {self.latency_device}, "
                  f"{self.latency_arithmetic}) | | | "
                  f"{self.predicted_speedup:.2f}x faster |", ""]
        lines.append(f"compress with these settings keeps blocks {self.kept_blocks}."
                     if self.final else
                     f"compress with these settings starts by ranking blocks this way; it "
                     f"ranks again as it goes ({self.importance}), so it may keep other blocks "
                     f"than {self.kept_blocks}.")
        return "\n".join(lines) + "\n"


def plan(model: DiffusionTransformer | str | os.PathLike, data: Any,
         budget: Budget | int | float | str, *, config: CompressConfig | None = None,
         device: str | torch.device | None = None, **options: Any) -> CompressPlan:
    """What ``compress(model, data, budget, ...)`` with the same options would remove, from
    the same checks, calibration set and first scoring, without any fine-tuning."""
    config = config or CompressConfig.from_options(**options)
    model = as_model(model)
    setup = prepare(model, data, budget, config, resolve_device(device))
    latency = measure_latency(setup)
    target = target_depth(setup, latency)
    teacher, config = setup.teacher, setup.config
    importance = block_importance(setup, target)
    scores = importance.score(teacher, setup.objective, scored_calibration(setup), setup.device)
    removed = importance.select(scores, teacher.depth - target, setup.protected)
    kept = [b for b in teacher.kept_blocks if b not in removed]
    parameters = count_parameters(teacher)
    removed_parameters = sum(count_parameters(teacher.blocks[teacher.kept_blocks.index(b)])
                             for b in removed)
    return CompressPlan(
        family=teacher.family, budget=setup.budget.describe(), importance=config.importance,
        depth_before=teacher.depth, depth_after=target, protected=setup.protected,
        scores=[{"block": b, "score": s} for b, s in zip(scores.kept_blocks, scores.scores)],
        removed_blocks=removed, kept_blocks=kept,
        parameters_before=parameters, parameters_after=parameters - removed_parameters,
        gflops_before=forward_flops(teacher.config) / 1e9,
        gflops_after=forward_flops(teacher.config.replace(depth=target)) / 1e9,
        predicted_speedup=latency.speedup(teacher.depth, target),
        latency_device=str(budget_device(setup.budget, setup.device)),
        latency_arithmetic=latency.arithmetic,
        final=not config.schedule.rerank and config.importance != "ced+bi")

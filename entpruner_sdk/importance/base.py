"""The importance interface: score every block of a model, then pick the ones to remove."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective


@dataclass
class BlockScores:
    """Scores of the current blocks (higher = more important), with original indices."""

    method: str
    scores: list[float]
    kept_blocks: list[int]
    per_timestep: list[list[float]] | None = None  # [block][timestep]
    details: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the dataclass default would print every timestep's detail
        shown = ", ".join(f"{block}: {score:.4f}" for block, score in
                          zip(self.kept_blocks, self.scores))
        return f"BlockScores({self.method}; block: score {{{shown}}})"

    def as_table(self) -> list[dict[str, Any]]:
        """One row per block: its original index, score and per-timestep scores."""
        rows = []
        for i, (block, score) in enumerate(zip(self.kept_blocks, self.scores)):
            row: dict[str, Any] = {"block": block, "score": score}
            if self.per_timestep is not None:
                row["per_timestep"] = self.per_timestep[i]
            rows.append(row)
        return rows


class Importance(ABC):
    """A block-importance criterion (Torch-Pruning style: usable on its own)."""

    name: str

    @abstractmethod
    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: str | torch.device | None = None
              ) -> BlockScores:
        """Score every block of ``model`` on the calibration set, on ``device`` (None: CUDA
        when present, else the CPU)."""

    def select(self, scores: BlockScores, count: int, protected: Collection[int] = ()
               ) -> list[int]:
        """Original indices of the ``count`` lowest-scoring unprotected blocks (ties go to the
        earlier block, so the choice is deterministic)."""
        candidates = removable(scores.kept_blocks, protected, count)
        order = sorted(candidates, key=lambda b: (scores.scores[scores.kept_blocks.index(b)], b))
        return sorted(order[:count])


def removable(kept_blocks: list[int], protected: Collection[int], count: int) -> list[int]:
    """The kept blocks that are not protected; refuses a ``count`` larger than there are."""
    candidates = [b for b in kept_blocks if b not in set(protected)]
    if count > len(candidates):
        raise ValueError(f"cannot remove {count} blocks: only {len(candidates)} are unprotected "
                         f"(protected: {sorted(protected)})")
    return candidates

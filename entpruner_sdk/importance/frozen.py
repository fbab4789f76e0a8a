"""A ranking computed once and reused: progressive removal in a fixed order."""

from __future__ import annotations

from collections.abc import Collection

import torch

from entpruner_sdk.importance.base import BlockScores, Importance
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective


class FrozenRanking(Importance):
    """Scores ``inner`` once, on the first model it is given (the unpruned teacher at the first
    decision), and answers every later call with those scores for the blocks still present.

    The schedule then still decides when and how many blocks go, but not which: they follow the
    teacher's ranking, as one-shot pruning would, instead of a re-ranking of a student that is
    half-way through recovering.
    """

    def __init__(self, inner: Importance, first: BlockScores | None = None) -> None:
        self.inner = inner
        self.name = f"{inner.name}-frozen"
        self.first = first

    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: str | torch.device | None = None
              ) -> BlockScores:
        if self.first is None:
            self.first = self.inner.score(model, objective, calibration, device)
        row_of = {block: i for i, block in enumerate(self.first.kept_blocks)}
        rows = [row_of[block] for block in model.kept_blocks]
        per_timestep = (None if self.first.per_timestep is None
                        else [self.first.per_timestep[i] for i in rows])
        return BlockScores(self.name, [self.first.scores[i] for i in rows], model.kept_blocks,
                           per_timestep, details={"scored_once_on_blocks": self.first.kept_blocks})

    def select(self, scores: BlockScores, count: int, protected: Collection[int] = ()
               ) -> list[int]:
        return self.inner.select(scores, count, protected)

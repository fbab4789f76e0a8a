"""A rank vote of several importance criteria (e.g. CED and ShortGPT Block Influence).

Each criterion orders the blocks from least to most important; a block's vote is the sum of
its places in those orders, so every criterion has an equal say whatever the scale of its
scores. Ties (frequent with two criteria) go to the sum of each criterion's z-scored scores,
added as a fraction below one so it never overrides a difference of a whole place:

    score_b = sum_k place_k(b) + place(sum_k z_k(b)) / N

Only the removable blocks vote: a protected block (the first and last by default) is never
removed, yet its place in one order and not the other would shift every other block's sum.
Protected blocks score above every candidate. The result is an ordinary ``BlockScores``
(higher = more important), so selection, freezing and the schedule work on it unchanged; each
criterion's own scores stay in ``details``, and CED's per-timestep table is passed on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from statistics import fmean, pstdev

import torch

from entpruner_sdk.importance.base import BlockScores, Importance
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective
from entpruner_sdk.utils.ranking import rank


class RankVote(Importance):
    """Combine criteria by the sum of their places (see the module docstring)."""

    def __init__(self, criteria: Sequence[Importance], protected: Collection[int] = ()) -> None:
        if len(criteria) < 2:
            raise ValueError("a rank vote needs at least two criteria")
        self.criteria, self.protected = list(criteria), set(protected)
        self.name = "+".join(c.name for c in self.criteria)

    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: str | torch.device | None = None
              ) -> BlockScores:
        each = [c.score(model, objective, calibration, device) for c in self.criteria]
        voters = [i for i, b in enumerate(model.kept_blocks) if b not in self.protected]
        votes = vote([[s.scores[i] for i in voters] for s in each])
        scores = [float(len(each) * len(voters))] * model.depth  # above any candidate's vote
        for i, v in zip(voters, votes):
            scores[i] = v
        # the report's per-timestep table: that of the first criterion with one (CED's)
        per_timestep = next((s.per_timestep for s in each if s.per_timestep is not None), None)
        return BlockScores(self.name, scores, model.kept_blocks, per_timestep,
                           details={s.method: s.scores for s in each})


def zscores(scores: Sequence[float]) -> list[float]:
    """Each score's distance from the mean in standard deviations (all 0 when they are equal)."""
    mean, sd = fmean(scores), pstdev(scores)
    return [(s - mean) / sd if sd > 0 else 0.0 for s in scores]


def vote(score_lists: Sequence[Sequence[float]]) -> list[float]:
    """Combined scores of the blocks from each criterion's scores (all over the same blocks)."""
    count = len(score_lists[0])
    if any(len(s) != count for s in score_lists):
        raise ValueError("every criterion must score the same blocks")
    # a place is a rank with the least important block (the lowest score) first
    place_sum = [sum(p) for p in zip(*(rank(s) for s in score_lists))]
    tie_break = rank([sum(z) for z in zip(*(zscores(s) for s in score_lists))])
    return [total + tb / count for total, tb in zip(place_sum, tie_break)]

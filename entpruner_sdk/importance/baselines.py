"""Baseline block-importance criteria behind the same interface as CED."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F

from entpruner_sdk.importance.base import BlockScores, Importance, removable
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective
from entpruner_sdk.utils.device import autocast, resolve_device


class BlockInfluence(Importance):
    """ShortGPT's Block Influence: 1 - mean cosine(block input, block output) over tokens,
    samples and timesteps. A block that barely changes its input scores low."""

    name = "bi"

    def __init__(self, batch_size: int = 256) -> None:
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: str | torch.device | None = None
              ) -> BlockScores:
        device = resolve_device(device)
        model = model.eval()
        totals = torch.zeros(model.depth, dtype=torch.float64)
        count = 0
        for _, batch in calibration.batches(objective, device, self.batch_size):
            with autocast(device):
                _, states, _ = model.forward_with_block_inputs(batch.x_t, batch.t, batch.y)
            for i in range(model.depth):
                cosine = F.cosine_similarity(states[i].float(), states[i + 1].float(), dim=-1)
                totals[i] += cosine.double().sum().cpu()
            count += states[0].shape[0] * states[0].shape[1]
        scores = (1 - totals / count).tolist()
        return BlockScores(self.name, scores, model.kept_blocks)


class RandomImportance(Importance):
    """Random scores from a seeded generator."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, model, objective, calibration, device=None) -> BlockScores:
        generator = torch.Generator().manual_seed(self.seed + model.depth)
        return BlockScores(self.name, torch.rand(model.depth, generator=generator).tolist(),
                           model.kept_blocks)


class UniformImportance(Importance):
    """Evenly spaced removal (every other block at half depth), independent of data.

    Given ``initial_blocks`` (the blocks of the model being compressed, by original index) and
    ``target_depth`` (compress passes both), it plans its final set over ``initial_blocks``,
    and every removal takes an evenly spread share of the blocks still pending in that plan,
    so progressive removal ends exactly where one-shot removal does. Without them each call
    spaces its picks over the blocks left, and several removals drift from even spacing
    (keep 4 of 12 in four removals of 2 ends at [0, 1, 6, 11], not [0, 3, 8, 11]).
    """

    name = "uniform"

    def __init__(self, initial_blocks: Sequence[int] | None = None,
                 target_depth: int | None = None) -> None:
        if (initial_blocks is None) != (target_depth is None):
            raise ValueError("give both initial_blocks and target_depth, or neither")
        self.initial_blocks = None if initial_blocks is None else list(initial_blocks)
        self.target_depth = target_depth

    def score(self, model, objective, calibration, device=None) -> BlockScores:
        return BlockScores(self.name, [0.0] * model.depth, model.kept_blocks)

    def select(self, scores: BlockScores, count: int, protected: Collection[int] = ()
               ) -> list[int]:
        candidates = removable(scores.kept_blocks, protected, count)
        if self.initial_blocks is None or count == 0:
            return evenly_spaced(candidates, count)
        initial = removable(self.initial_blocks, protected, 0)
        planned = evenly_spaced(initial, len(self.initial_blocks) - self.target_depth)
        kept = set(scores.kept_blocks)
        pending = [b for b in planned if b in kept]
        if count > len(pending):  # asked past the plan (another target): space what is left
            return evenly_spaced(candidates, count)
        return evenly_spaced(pending, count)


def evenly_spaced(candidates: list[int], count: int) -> list[int]:
    """``count`` of ``candidates`` at positions 1, 3, 5, ... of an evenly spaced grid of
    2 * count points over them (every other one when count is half of them)."""
    if count == 0:
        return []
    n = len(candidates)
    picks = {candidates[min(n - 1, int((2 * j + 1) * n / (2 * count)))] for j in range(count)}
    for b in candidates:  # collisions (only when count is close to n) are filled in order
        if len(picks) == count:
            break
        picks.add(b)
    return sorted(picks)

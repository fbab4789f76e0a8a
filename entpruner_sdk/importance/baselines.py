"""Baseline block-importance criteria behind the same interface as CED."""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from entpruner_sdk.importance.base import BlockScores, Importance, removable
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective
from entpruner_sdk.utils.device import autocast


class BlockInfluence(Importance):
    """ShortGPT's Block Influence: 1 - mean cosine(block input, block output) over tokens,
    samples and timesteps. A block that barely changes its input scores low."""

    name = "bi"

    def __init__(self, batch_size: int = 256) -> None:
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: torch.device) -> BlockScores:
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

    def score(self, model, objective, calibration, device) -> BlockScores:
        generator = torch.Generator().manual_seed(self.seed + model.depth)
        return BlockScores(self.name, torch.rand(model.depth, generator=generator).tolist(),
                           model.kept_blocks)


class UniformImportance(Importance):
    """Evenly spaced removal (every other block at half depth), independent of data."""

    name = "uniform"

    def score(self, model, objective, calibration, device) -> BlockScores:
        return BlockScores(self.name, [0.0] * model.depth, model.kept_blocks)

    def select(self, scores: BlockScores, count: int, protected: Collection[int] = ()
               ) -> list[int]:
        candidates = removable(scores.kept_blocks, protected, count)
        if count == 0:
            return []
        # positions 1, 3, 5, ... of an evenly spaced grid of 2 * count points over candidates
        picks = {candidates[min(len(candidates) - 1, int((2 * j + 1) * len(candidates)
                                                          / (2 * count)))]
                 for j in range(count)}
        for b in candidates:  # collisions (only when count is close to len) are filled in order
            if len(picks) == count:
                break
            picks.add(b)
        return sorted(picks)

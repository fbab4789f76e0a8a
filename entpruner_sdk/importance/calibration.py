"""The fixed calibration set every importance score is computed on.

A class-balanced subset of the downstream data, a fixed grid of timesteps spread over the
whole schedule, and fixed noise: identical for the full model and for every candidate, so
score differences come from the blocks alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from entpruner_sdk.data.datasets import ImageDataset, unit_range
from entpruner_sdk.objectives import NoisedBatch, Objective, TimeGrid


@dataclass
class CalibrationSet:
    """Clean images, their labels, fixed noise and a timestep grid: ``build`` draws it from
    the data, and every score of one run is computed on it."""

    images: torch.Tensor  # [N, C, H, W] clean data
    labels: torch.Tensor  # [N]
    noise: torch.Tensor  # [N, C, H, W], fixed
    times: torch.Tensor  # [T] model times, cleanest first
    num_classes: int
    # per-channel (min, max) of the images, each [1, C, 1, 1]; a shard keeps the whole set's
    value_range: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.value_range is None:
            per_channel = self.images.transpose(0, 1).flatten(1)
            self.value_range = (per_channel.amin(dim=1).view(1, -1, 1, 1),
                                per_channel.amax(dim=1).view(1, -1, 1, 1))

    @classmethod
    def build(cls, data: ImageDataset, objective: Objective, per_class: int = 16,
              times: TimeGrid = 8, seed: int = 0) -> CalibrationSet:
        """``per_class`` samples of every class present, at ``times``: a number of timesteps
        spread over the whole schedule, or explicit noise levels (0 = clean, 1 = pure noise)."""
        if per_class < 2:
            raise ValueError("per_class must be at least 2: per-class statistics need a spread")
        generator = torch.Generator().manual_seed(seed)
        subset = data.per_class(per_class, generator)
        noise = torch.randn(subset.images.shape, generator=generator)
        return cls(unit_range(subset.images), subset.labels, noise,
                   objective.calibration_times(times), data.num_classes)

    def range_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``value_range`` on ``device`` (moved once per scoring, not once per block)."""
        low, high = self.value_range
        return low.to(device), high.to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, objective: Objective, device: torch.device, batch_size: int = 256
                ) -> Iterator[tuple[int, NoisedBatch]]:
        """(timestep index, noised batch) for every timestep and every chunk of samples."""
        for ti, t in enumerate(self.times.tolist()):
            for start in range(0, len(self), batch_size):
                x0 = self.images[start:start + batch_size].to(device)
                noise = self.noise[start:start + batch_size].to(device)
                times = torch.full((len(x0),), t, dtype=self.times.dtype, device=device)
                y = self.labels[start:start + batch_size].to(device)
                yield ti, NoisedBatch(x0, noise, objective.add_noise(x0, noise, times), times, y)

    def shard(self, rank: int, world_size: int) -> CalibrationSet:
        """This rank's share of the samples (timesteps are shared)."""
        index = torch.arange(rank, len(self), world_size)
        return CalibrationSet(self.images[index], self.labels[index], self.noise[index],
                              self.times, self.num_classes, self.value_range)

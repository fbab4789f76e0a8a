"""Gaussian entropy estimators of the class-conditional output distribution H(X | C).

Under a Gaussian assumption H(X) = log(sigma) + 0.5 * log(2 * pi) + 0.5. Two estimators:

- ``sample``: a scalar sigma per sample (the spread of its output elements); H(X | C = c) is the
  mean over the class's samples.
- ``diagonal``: a diagonal Gaussian per class across its samples; H(X | C = c) is the sum over
  dimensions of the per-dimension entropies.

H(X | C) = sum_c p(c) H(X | C = c). Both keep additive sufficient statistics, so shards of the
calibration set can be merged (summed) before the entropy is read out.
"""

from __future__ import annotations

import math

import torch

GAUSSIAN_CONSTANT = 0.5 * math.log(2 * math.pi) + 0.5
ESTIMATORS = ("sample", "diagonal")


def gaussian_entropy(sigma: torch.Tensor) -> torch.Tensor:
    """Differential entropy of a Gaussian per dimension: log(sigma) + (1 + log 2 pi) / 2."""
    return torch.log(sigma) + GAUSSIAN_CONSTANT


class EntropyAccumulator:
    """Sufficient statistics of one output distribution, per class, in float64."""

    def __init__(self, estimator: str, num_classes: int, dims: int) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.estimator = estimator
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        if estimator == "sample":
            self.sum_log_sigma = torch.zeros(num_classes, dtype=torch.float64)
        else:
            self.sum = torch.zeros(num_classes, dims, dtype=torch.float64)
            self.sum_sq = torch.zeros(num_classes, dims, dtype=torch.float64)

    def update(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        flat = outputs.detach().flatten(1).double().cpu()
        labels = labels.cpu()
        self.count.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        if self.estimator == "sample":
            log_sigma = torch.log(flat.std(dim=1).clamp(min=1e-12))
            self.sum_log_sigma.index_add_(0, labels, log_sigma)
        else:
            self.sum.index_add_(0, labels, flat)
            self.sum_sq.index_add_(0, labels, flat**2)

    def tensors(self) -> list[torch.Tensor]:
        """The statistics to all-reduce (sum) across shards."""
        if self.estimator == "sample":
            return [self.count, self.sum_log_sigma]
        return [self.count, self.sum, self.sum_sq]

    def entropy(self) -> float:
        present = self.count > 0
        weights = self.count[present] / self.count.sum()
        if self.estimator == "sample":
            per_class = self.sum_log_sigma[present] / self.count[present] + GAUSSIAN_CONSTANT
        else:
            n = self.count[present].unsqueeze(1)
            if (n < 2).any():
                raise ValueError("the diagonal estimator needs at least 2 samples of every class")
            mean = self.sum[present] / n
            var = (self.sum_sq[present] - n * mean**2) / (n - 1)  # unbiased, per dimension
            per_class = gaussian_entropy(var.clamp(min=1e-24).sqrt()).sum(dim=1)
        return float((weights * per_class).sum())

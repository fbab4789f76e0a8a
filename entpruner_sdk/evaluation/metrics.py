"""Distribution metrics on feature vectors: Fréchet distance, k-NN precision / recall, and
per-class diversity. All statistics are float64."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entpruner_sdk.utils.files import atomic_write_text, atomic_writer


class TooFewSamples(ValueError):
    """Too few samples for a covariance of their features."""
    pass


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set, with where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray, min_count: int = 2,
           **provenance: Any) -> FeatureStats:
        """The statistics of ``features`` ([N, D]); at least ``min_count`` samples."""
        array = np.asarray(features, dtype=np.float64)
        if array.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {array.shape}")
        if len(array) < min_count:
            raise TooFewSamples(
                f"{len(array)} samples cannot give a covariance of {array.shape[1]}-d features; "
                f"use at least {min_count} samples (more than the feature dimension for a "
                "full-rank estimate)"
            )
        return cls(array.mean(0), np.cov(array, rowvar=False), len(array), provenance)

    def save(self, path: str | os.PathLike) -> None:
        """Save as ``path.npz`` (mean and covariance) and ``path.json`` (count, provenance)."""
        path = Path(path)
        with atomic_writer(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma)
        atomic_write_text(path.with_suffix(".json"),
                          json.dumps({"count": self.count, **self.provenance}, indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Load what :meth:`save` wrote."""
        path = Path(path)
        with np.load(path.with_suffix(".npz")) as arrays:
            mu, sigma = arrays["mu"], arrays["sigma"]
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(mu, sigma, meta.pop("count"), meta)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2), which stays real and stable even when the
    covariances are singular (fewer samples than dimensions).
    """
    diff = a.mu - b.mu
    root_a = _psd_sqrt(a.sigma)
    middle = root_a @ b.sigma @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    value = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt
    return float(max(value, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _kth_neighbour_radius(features: torch.Tensor, k: int) -> torch.Tensor:
    distances = torch.cdist(features, features)
    # index k, not k - 1: the nearest point to each sample is itself at distance 0
    return distances.kthvalue(k + 1, dim=1).values


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    Precision: share of generated samples inside the real manifold (union of k-NN balls of the
    real features). Recall: share of real samples inside the generated manifold.
    """
    real = torch.as_tensor(real, dtype=torch.float64)
    fake = torch.as_tensor(fake, dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise TooFewSamples(f"precision/recall with k={k} needs more than {k} samples per set")

    def coverage(manifold: torch.Tensor, queries: torch.Tensor) -> float:
        radius = _kth_neighbour_radius(manifold, k)
        inside = (torch.cdist(queries, manifold) <= radius[None]).any(dim=1)
        return float(inside.double().mean())

    return coverage(real, fake), coverage(fake, real)


def per_class_diversity(features: torch.Tensor, labels: torch.Tensor,
                        classes: int | Sequence[int]) -> list[float | None]:
    """Mean pairwise feature distance within each class (None for classes with < 2 samples);
    ``classes``: the class ids, in order, or a count for ``0..classes-1``."""
    features = torch.as_tensor(features, dtype=torch.float64)
    out: list[float | None] = []
    for c in range(classes) if isinstance(classes, int) else classes:
        group = features[labels == c]
        if len(group) < 2:
            out.append(None)
            continue
        distances = torch.cdist(group, group)
        out.append(float(distances.sum() / (len(group) * (len(group) - 1))))
    return out

"""Pairwise fidelity of a pruned model to its original: same noise, same labels, compare."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from entpruner_sdk.data.datasets import unit_range


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image pair (images in [-1, 1], or 8-bit; range 2)."""
    a, b = unit_range(a), unit_range(b)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity per pair (images in [-1, 1], or 8-bit; scikit-image,
    Gaussian-free 7x7 window, or the image size when smaller), averaged over channels."""
    from skimage.metrics import structural_similarity

    a_np, b_np = unit_range(a).double().numpy(), unit_range(b).double().numpy()
    size = a.shape[-1]
    window = min(7, size if size % 2 else size - 1)
    values = [structural_similarity(x, y, data_range=data_range, channel_axis=0, win_size=window)
              for x, y in zip(a_np, b_np)]
    return torch.tensor(np.array(values))


def feature_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between paired feature vectors, in [0, 2]."""
    # rounding can put the similarity of parallel vectors a hair above 1: a model compared
    # with itself must read 0, not -0.0000
    return (1 - F.cosine_similarity(a.double(), b.double(), dim=1)).clamp(0, 2)

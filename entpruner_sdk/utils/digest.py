"""Content hashes of weights: what keys caches and tells one run's model from another's."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def network_fingerprint(network: nn.Module) -> str:
    """The first 16 hex digits of the SHA-256 of a network's weights (names and bytes).

    The bytes are read as the tensor stores them, so any dtype hashes (bf16 included, which
    NumPy has no type for) and an fp32 tensor gives the digest its NumPy bytes gave."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()[:16]


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()

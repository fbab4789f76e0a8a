"""Device selection and mixed precision: CUDA + bf16 autocast when available, fp32 on CPU."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use 'cpu'")
    return device


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on CUDA. On CPU it stays fp32: bf16 there is emulated and ~6x slower."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

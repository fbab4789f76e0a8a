"""Device selection and mixed precision: CUDA + bf16 autocast when available, fp32 on CPU."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU; anything else is checked."""
    if device is None or device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; "
                               "use 'cpu'")
        enable_tf32()
    return device


def enable_tf32() -> None:
    """TF32 tensor cores for the fp32 matmuls and convolutions left outside bf16 autocast
    (Ampere and newer); a no-op elsewhere."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast(device: str | torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on CUDA. On CPU it stays fp32: bf16 there is emulated and ~6x slower."""
    if enabled and torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

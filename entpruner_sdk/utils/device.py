"""Device selection and mixed precision.

Every compute path runs its model under ``autocast(device)``. What that does is one policy for
the process, set by ``$ENTPRUNER_AUTOCAST`` (or, for a block of code, ``mixed_precision``):

- ``auto`` (the default): bf16 autocast on a CUDA GPU that has bf16 (Ampere and newer), with
  TF32 for the fp32 matmuls left outside it; fp32 elsewhere, since on a CPU without bf16
  instructions bf16 is emulated: sampling ran 4.5x to 4.8x slower on this project's CPUs
  (``benchmarks/mixed_precision.py``).
- ``bf16``: bf16 autocast on every device, the CPU included: for CPUs with bf16 instructions
  (AMX, AVX512-BF16; not measured here), and the way to run the GPU's arithmetic on a machine
  without a GPU (the tests do).
- ``fp16``: fp16 autocast on every device: for GPUs without bf16 (V100, T4, whose tensor cores
  take fp16), where ``auto`` runs fp32. fp16 keeps 10 mantissa bits to bf16's 7 but only 5
  exponent bits, so gradients can underflow: training scales its loss (``gradient_scaler``)
  and skips the steps whose gradients overflow, as ``torch.amp`` prescribes. On a CPU it is
  emulated (slow), for tests.
- ``off``: fp32 everywhere, TF32 off (``exact_fp32``) even where another policy turned it on:
  for results that agree across machines, or to see what bf16 costs.

``arithmetic(device)`` names the outcome for reports ("bf16 autocast", "fp16 autocast" or
"fp32").
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar

import torch

AUTOCAST_ENV = "ENTPRUNER_AUTOCAST"
AUTOCAST_MODES = ("auto", "bf16", "fp16", "off")
# set by mixed_precision(); a context variable, so it holds in the thread (or asyncio task)
# that set it and leaves the others to $ENTPRUNER_AUTOCAST
_chosen_mode: ContextVar[str | None] = ContextVar("entpruner_autocast", default=None)
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # as reports name them


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU; anything else is checked."""
    if device is None or device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; "
                               "use 'cpu'")
        if autocast_mode() != "off":
            enable_tf32()
        if autocast_mode() == "auto" and not torch.cuda.is_bf16_supported():
            _suggest_fp16(torch.cuda.get_device_name(device))
    return device


@functools.cache  # once per GPU model and process, not at every call
def _suggest_fp16(gpu: str) -> None:
    warnings.warn(f"{gpu} has no bf16, so PyTorch models run in fp32 on it; "
                  f"{AUTOCAST_ENV}=fp16 runs them in fp16 autocast on its tensor cores "
                  f"(loss-scaled in training), {AUTOCAST_ENV}=off keeps fp32 without this "
                  "note", stacklevel=3)


def enable_tf32() -> None:
    """TF32 tensor cores for the fp32 matmuls and convolutions left outside bf16 autocast
    (Ampere and newer); a no-op elsewhere."""
    _set_tf32(True, True)


def _set_tf32(matmul: bool, convolution: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = convolution


class _ExactBlocks:
    """The blocks running in true fp32 on CUDA, across threads. TF32 is one switch for the
    whole process, so it is off while any such block runs (another thread's fp32 matmuls
    then lose TF32 too: slower, not wrong) and back as it was when the last one ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.before = (False, False)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.lock:
            if self.running == 0:
                self.before = (torch.backends.cuda.matmul.allow_tf32,
                               torch.backends.cudnn.allow_tf32)
                _set_tf32(False, False)
            self.running += 1
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                if self.running == 0:
                    _set_tf32(*self.before)


_exact_blocks = _ExactBlocks()


def exact_fp32(device: str | torch.device) -> AbstractContextManager:
    """Compute the enclosed block in true fp32 on ``device``: on CUDA, TF32 (10-bit mantissa
    inputs to fp32 matmuls, which ``resolve_device`` turns on) is off until it ends; nothing
    to do elsewhere. The ``off`` policy's autocast is this, and the likelihood runs in it."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return _exact_blocks.held()


def autocast_mode() -> str:
    """The mixed-precision policy in force: ``mixed_precision``'s, else ``$ENTPRUNER_AUTOCAST``,
    else ``"auto"``."""
    chosen = _chosen_mode.get()
    if chosen is not None:
        return chosen
    value = os.environ.get(AUTOCAST_ENV, "")
    return _checked_mode(value.strip().lower() or "auto", f"{AUTOCAST_ENV}={value!r}")


@contextlib.contextmanager
def mixed_precision(mode: str) -> Iterator[None]:
    """Run the enclosed code under ``mode`` (``"auto"``, ``"bf16"``, ``"fp16"`` or ``"off"``),
    whatever ``$ENTPRUNER_AUTOCAST`` says; e.g. ``with mixed_precision("off"): sample(...)``."""
    token = _chosen_mode.set(_checked_mode(mode, f"mixed_precision({mode!r})"))
    try:
        yield
    finally:
        _chosen_mode.reset(token)


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The dtype models autocast to on ``device`` under the policy in force; None: fp32."""
    device = torch.device(device)
    mode = autocast_mode()
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    has_bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if mode == "bf16":
        if not has_bf16:
            raise RuntimeError(
                f"{AUTOCAST_ENV}=bf16, but this GPU ({torch.cuda.get_device_name(device)}) "
                "has no bf16: set it to fp16 (its tensor cores take fp16), unset it (auto runs "
                "fp32 on this GPU) or set it to off")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and has_bf16 else None


def autocast(device: str | torch.device, enabled: bool = True) -> AbstractContextManager:
    """The policy's autocast on ``device`` (bf16 on CUDA by default), or fp32: true fp32
    (``exact_fp32``) under ``off``, else as the device computes it."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is not None:
        return torch.autocast(torch.device(device).type, dtype=dtype)
    return exact_fp32(device) if autocast_mode() == "off" else contextlib.nullcontext()


def arithmetic(device: str | torch.device) -> str:
    """How a PyTorch model computes on ``device`` under the policy in force, as reports state
    it: ``"bf16 autocast"``, ``"fp16 autocast"`` or ``"fp32"``."""
    dtype = autocast_dtype(device)
    return "fp32" if dtype is None else f"{_DTYPE_NAMES[dtype]} autocast"


def computed_on(device: str | torch.device) -> dict[str, str]:
    """Where and how a run computes, as its checkpoints record it: the device's type, its
    processor (``processor_name``) and the arithmetic. Which GPU of a machine is not recorded:
    two of the same model round alike."""
    device = torch.device(device)
    return {"device": device.type, "processor": processor_name(device),
            "arithmetic": arithmetic(device)}


def processor_name(device: str | torch.device) -> str:
    """What decides how ``device``'s kernels round: a GPU's model (cuBLAS and cuDNN pick their
    kernels per architecture), a CPU's architecture and the vector instructions PyTorch's CPU
    kernels were dispatched to (AVX2, AVX512: they sum in different orders)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def gradient_scaler(device: str | torch.device) -> torch.amp.GradScaler:
    """The loss scaler a training loop on ``device`` needs under the policy in force: enabled
    for fp16 autocast, whose gradients would underflow unscaled (bf16 has fp32's exponent
    range and needs none); disabled, and then a no-op, otherwise."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type,
                                enabled=autocast_dtype(device) is torch.float16)


def _checked_mode(mode: str, where: str) -> str:
    if mode not in AUTOCAST_MODES:
        raise ValueError(
            f"{where} names no mixed-precision mode: use auto (bf16 autocast "
            "on a CUDA GPU that has bf16, fp32 elsewhere), bf16 (bf16 autocast on every "
            "device, the CPU included), fp16 (fp16 autocast on every device, for GPUs "
            "without bf16) or off (fp32 everywhere)")
    return mode

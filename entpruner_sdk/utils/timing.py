"""Wall-clock timing that survives noisy machines: warm-up, interleaved repeats, medians.

Candidates are timed in alternation (A, B, A, B, ...) so drift in machine load hits all of them
alike, and ratios between them stay meaningful.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from entpruner_sdk.utils.device import arithmetic

T = TypeVar("T")
K = TypeVar("K")


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """What one call of ``fn`` returns, and the seconds it took, with the GPU's queued work
    waited for on both sides."""
    _synchronize()
    start = time.perf_counter()
    result = fn()
    _synchronize()
    return result, time.perf_counter() - start


def time_once(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes, with the GPU's queued work waited for on both sides."""
    return timed(fn)[1]


def interleaved_times(candidates: dict[K, Callable[[], object]], repeats: int = 5,
                      warmup: int = 1, rotate: bool = False) -> dict[K, list[float]]:
    """Seconds of each call of each candidate, timed in alternation: round i of every
    candidate ran under much the same load, so their ratios can be taken round by round.
    ``rotate``: round i starts i candidates later, so that none always follows the same one
    (a call can pay for the state the last left, such as memory to map again)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    samples: dict[K, list[float]] = {name: [] for name in candidates}
    for i in range(repeats):
        shift = i % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_once(candidates[name]))
    return samples


def interleaved_medians(candidates: dict[str, Callable[[], object]], repeats: int = 5,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in alternation."""
    times = interleaved_times(candidates, repeats, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def interleaved_ratios(candidates: dict[K, Callable[[], object]], baseline: K, repeats: int = 3,
                       warmup: int = 0, rotate: bool = False
                       ) -> dict[K, dict[str, float | list[float]]]:
    """Each candidate's time as a ratio to ``baseline``'s, timed in alternation: ``ratio``,
    the median of the rounds' own ratios (a burst of load that hits one round moves it
    little), and ``round_s``, the seconds of its call in each round (``rotate``: see
    :func:`interleaved_times`)."""
    times = interleaved_times(candidates, repeats, warmup, rotate)
    return {name: {"ratio": statistics.median(t / b for t, b in zip(spent, times[baseline])),
                   "round_s": spent} for name, spent in times.items()}


class CallCounter:
    """Counts a sampler's model calls (one a step for Euler or DDIM, two for Heun, as many as
    its tolerances need for dopri5): a module's forward calls inside a ``with`` block, or the
    calls through functions it ``wrap``s (an exported denoiser, which is no module)."""

    def __init__(self, module: torch.nn.Module | None = None) -> None:
        self.module, self.calls = module, 0

    def __enter__(self) -> CallCounter:
        self._handle = self.module.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()

    def wrap(self, fn: Callable[..., torch.Tensor] | None) -> Callable[..., torch.Tensor] | None:
        """``fn``, counting its calls into this counter (None stays None)."""
        if fn is None:
            return None

        def counted(*args: torch.Tensor) -> torch.Tensor:
            self.count_call()
            return fn(*args)

        return counted

    def count_call(self) -> None:
        """One model call, counted before it runs (a subclass may refuse it by raising)."""
        self.calls += 1

    def _count(self, module, args) -> None:
        self.count_call()


def machine(device: torch.device) -> dict[str, object]:
    """Where timings were taken, for a benchmark's JSON: device, the arithmetic PyTorch models
    ran in there, CPU, threads, torch, GPU."""
    import platform

    return {"device": str(device), "arithmetic": arithmetic(device),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}

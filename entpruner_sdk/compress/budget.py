"""Compression budgets and their resolution to a target depth, before any work is done.

- ``int``: blocks to keep; ``float`` in (0, 1) or ``"50%"``: share of the original FLOPs to
  keep; ``"2x"``: speedup;
- ``Budget(depth=..)``, ``Budget(flops=..)``, ``Budget(speedup=.., device=..)`` (measured
  forward latency on that device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entpruner_sdk.models.transformer import DiffusionTransformer, forward_flops
from entpruner_sdk.schedule import LatencyModel


class BudgetError(ValueError):
    """A budget that cannot be met; the message says what is possible."""


@dataclass(frozen=True)
class Budget:
    """What a compression must reach, one of three: ``depth`` blocks kept, ``flops`` (the
    share of the original's forward FLOPs kept, in (0, 1)), or a measured sampling
    ``speedup`` on ``device`` (by default the device compress runs on)."""

    depth: int | None = None
    flops: float | None = None
    speedup: float | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        given = [v is not None for v in (self.depth, self.flops, self.speedup)]
        if sum(given) != 1:
            raise BudgetError("give exactly one of Budget(depth=..), Budget(flops=..) or "
                              "Budget(speedup=..)")
        if self.speedup is not None and not self.speedup > 1:  # no model needed to say so
            raise BudgetError(f"a speedup budget must be above 1 (e.g. 2x), got "
                              f"{self.speedup:g}x")

    @classmethod
    def parse(cls, value: Budget | int | float | str) -> Budget:
        """``12`` (blocks), ``0.5`` or ``"50%"`` (FLOPs share), ``"2x"`` (speedup), or a
        ``Budget``."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, str):
            return cls._parse_text(value)
        if isinstance(value, bool):
            raise BudgetError("a budget cannot be a boolean")
        if isinstance(value, int):
            return cls(depth=value)
        if isinstance(value, float):
            return cls(flops=value)
        raise BudgetError(_unreadable(value))

    @classmethod
    def _parse_text(cls, value: str) -> Budget:
        text = value.strip().lower()
        try:
            if text.endswith("x"):
                form = {"speedup": float(text[:-1])}
            elif text.endswith("%"):
                form = {"flops": float(text[:-1]) / 100}
            else:
                form = {"flops": float(text)} if "." in text else {"depth": int(text)}
        except ValueError:
            raise BudgetError(_unreadable(value)) from None
        return cls(**form)  # read, but perhaps impossible: a 1x speedup says so

    def describe(self) -> str:
        """The budget in words, as reports print it (``keep 6 blocks``)."""
        if self.depth is not None:
            return f"keep {self.depth} blocks"
        if self.flops is not None:
            return f"keep {self.flops:.0%} of the FLOPs"
        return f"{self.speedup:g}x speedup on {self.device or 'the compute device'}"


def _unreadable(value: object) -> str:
    return (f"cannot read budget {value!r}; use an int (blocks to keep, e.g. 6), a float in "
            "(0, 1) or a percentage (FLOPs share to keep, e.g. 0.5 or 50%), or a speedup "
            "(e.g. 2x)")


def resolve_depth(budget: Budget, model: DiffusionTransformer, protected_count: int,
                  latency: LatencyModel | None = None) -> int:
    """The depth to prune to; raises ``BudgetError`` with the feasible range if impossible.

    ``latency``: a ``LatencyModel`` (needed for speedup budgets).
    """
    depth, floor = model.depth, max(protected_count, 1)
    feasible = f"this model has {depth} blocks, {protected_count} of them protected"
    if budget.depth is not None:
        if not floor <= budget.depth < depth:
            raise BudgetError(f"cannot keep {budget.depth} blocks: {feasible}, so keep between "
                              f"{floor} and {depth - 1}")
        return budget.depth
    if budget.flops is not None:
        full = forward_flops(model.config)
        shares = {d: forward_flops(model.config.replace(depth=d)) / full
                  for d in range(floor, depth)}
        fitting = [d for d, share in shares.items() if share <= budget.flops]
        if not 0 < budget.flops < 1 or not fitting:
            raise BudgetError(f"cannot keep {budget.flops:.1%} of the FLOPs: {feasible}; the "
                              f"possible range is {shares[floor]:.1%} (depth {floor}) to "
                              f"{shares[depth - 1]:.1%} (depth {depth - 1})")
        return max(fitting)
    if latency is None:
        raise BudgetError("a speedup budget needs a latency measurement on the target device")
    fitting = [d for d in range(floor, depth) if latency.speedup(depth, d) >= budget.speedup]
    if not fitting:
        best = latency.speedup(depth, floor)
        raise BudgetError(f"cannot reach a {budget.speedup:g}x speedup: {feasible}, and the "
                          f"most that removing blocks gives on this device is {best:.2f}x "
                          f"(depth {floor})")
    return max(fitting)


def budget_device(budget: Budget, default: torch.device) -> torch.device:
    """Where a speedup budget is measured: its own device, else ``default``."""
    return torch.device(budget.device) if budget.device else default

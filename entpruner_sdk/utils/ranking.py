"""Ranks of a list of values, shared by every vote in the package (proxies, importance)."""

from __future__ import annotations

from collections.abc import Sequence


def rank(values: Sequence[float], higher_is_better: bool = False) -> list[int]:
    """Rank 0 for the best value; ties share the better rank."""
    ordered = sorted(values, reverse=higher_is_better)
    return [ordered.index(v) for v in values]

"""Block importance: CED (the method), baselines (Block Influence, random, uniform) and a
rank vote of CED and Block Influence."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from entpruner_sdk.importance.base import BlockScores, Importance
from entpruner_sdk.importance.baselines import BlockInfluence, RandomImportance, UniformImportance
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.importance.ced import CED, naive_ced
from entpruner_sdk.importance.frozen import FrozenRanking
from entpruner_sdk.importance.vote import RankVote

IMPORTANCES = ("ced", "bi", "random", "uniform", "ced+bi")


def make_importance(name: str | Importance, seed: int = 0,
                    plan: tuple[list[int], int] | None = None, protected: Collection[int] = (),
                    **options: Any) -> Importance:
    """An importance criterion by name. ``plan`` = (the blocks being compressed, the target
    depth) lets uniform plan its final set, so progressive removal ends at it; ``options`` go
    to CED (output, estimator, weighting, batch_size, reduce). ``ced+bi`` is a rank vote of CED
    and Block Influence (``RankVote``) among the blocks not ``protected``; both score the whole
    calibration set, so its CED takes no ``reduce``."""
    if isinstance(name, Importance):
        return name
    factories = {"ced": lambda: CED(**options), "bi": BlockInfluence,
                 "random": lambda: RandomImportance(seed),
                 "uniform": lambda: UniformImportance(*(plan or (None, None))),
                 "ced+bi": lambda: RankVote([CED(**{**options, "reduce": None}),
                                             BlockInfluence()], protected)}
    if name not in factories:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return factories[name]()


__all__ = ["CED", "IMPORTANCES", "BlockInfluence", "BlockScores", "CalibrationSet", "FrozenRanking",
           "Importance", "RandomImportance", "RankVote", "UniformImportance", "make_importance",
           "naive_ced"]

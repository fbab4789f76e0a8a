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
from entpruner_sdk.importance.registry import (
    BUILT_IN,
    available_importances,
    custom_importance,
    register_importance,
)
from entpruner_sdk.importance.vote import RankVote

IMPORTANCES = BUILT_IN  # the built-in criteria's names; ``available_importances`` adds yours


def make_importance(name: str | Importance, seed: int = 0,
                    plan: tuple[list[int], int] | None = None, protected: Collection[int] = (),
                    **options: Any) -> Importance:
    """An importance criterion by name. ``plan`` = (the blocks being compressed, the target
    depth) lets uniform plan its final set, so progressive removal ends at it; ``options`` go
    to CED (output, estimator, weighting, batch_size, reduce). ``ced+bi`` is a rank vote of CED
    and Block Influence (``RankVote``) among the blocks not ``protected``; both score the whole
    calibration set, so its CED takes no ``reduce``. Any other name is a criterion of your own
    (``registry``: registered in this process, or declared by an installed package)."""
    if isinstance(name, Importance):
        return name
    factories = {"ced": lambda: CED(**options), "bi": BlockInfluence,
                 "random": lambda: RandomImportance(seed),
                 "uniform": lambda: UniformImportance(*(plan or (None, None))),
                 "ced+bi": lambda: RankVote([CED(**{**options, "reduce": None}),
                                             BlockInfluence()], protected)}
    if name in factories:
        return factories[name]()
    custom = custom_importance(name)
    if custom is None:
        raise ValueError(
            f"unknown importance {name!r}; choose one of {', '.join(available_importances())}, "
            "or add yours: pass the object (importance=MyCriterion()), register it "
            "(entpruner_sdk.importance.register_importance), or declare it in a package's "
            "'entpruner_sdk.importance' entry points")
    return custom


__all__ = ["CED", "IMPORTANCES", "BlockInfluence", "BlockScores", "CalibrationSet", "FrozenRanking",
           "Importance", "RandomImportance", "RankVote", "UniformImportance",
           "available_importances", "make_importance", "naive_ced", "register_importance"]

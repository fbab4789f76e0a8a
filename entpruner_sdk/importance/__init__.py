"""Block importance: CED (the method) and baselines (Block Influence, random, uniform)."""

from __future__ import annotations

from entpruner_sdk.importance.base import BlockScores, Importance
from entpruner_sdk.importance.baselines import BlockInfluence, RandomImportance, UniformImportance
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.importance.ced import CED, naive_ced
from entpruner_sdk.importance.frozen import FrozenRanking

IMPORTANCES = ("ced", "bi", "random", "uniform")


def make_importance(name: str | Importance, seed: int = 0,
                    plan: tuple[list[int], int] | None = None, **options) -> Importance:
    """An importance criterion by name. ``plan`` = (the blocks being compressed, the target
    depth) lets uniform plan its final set, so progressive removal ends at it; ``options`` go
    to CED (output, estimator, weighting, batch_size, reduce)."""
    if isinstance(name, Importance):
        return name
    factories = {"ced": lambda: CED(**options), "bi": BlockInfluence,
                 "random": lambda: RandomImportance(seed),
                 "uniform": lambda: UniformImportance(*(plan or (None, None)))}
    if name not in factories:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return factories[name]()


__all__ = ["CED", "IMPORTANCES", "BlockInfluence", "BlockScores", "CalibrationSet", "FrozenRanking",
           "Importance", "RandomImportance", "UniformImportance", "make_importance", "naive_ced"]

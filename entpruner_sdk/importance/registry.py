"""Criteria of your own, by name, so a compress run's settings stay plain data.

A criterion is an ``Importance`` subclass. ``compress(..., importance=MyCriterion())`` registers
the object under its ``name`` for this process; ``register_importance(name, factory)`` does so
for a class or function that makes one; and an installed package may declare one for every
process (the command line included) under the ``entpruner_sdk.importance`` entry-point group:

    [project.entry-points."entpruner_sdk.importance"]
    weight-norm = "my_package.criteria:WeightNorm"

The run's report, checkpoint and pruned model record the name. A resumed run finds it again
the same way, so a run of a registered object resumes in a process that registers it again.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from entpruner_sdk.importance.base import Importance

ENTRY_POINTS = "entpruner_sdk.importance"
BUILT_IN = ("ced", "bi", "random", "uniform", "ced+bi")

_registered: dict[str, Callable[[], Importance]] = {}


def register_importance(name: str, factory: Callable[[], Importance]) -> None:
    """Make ``name`` a criterion of this process: ``factory()`` (a class, or any function
    without arguments) returns the ``Importance`` to use. A built-in name is refused; a name
    registered before is replaced."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in criterion; register yours under another name")
    if not name or not name.strip() or name != name.strip():
        raise ValueError(f"a criterion's name must be a word without surrounding spaces, "
                         f"got {name!r}")
    _registered[name] = factory


def register_object(criterion: Importance) -> str:
    """Register an ``Importance`` object under its ``name`` (it is used as it is) and return
    the name; what ``compress(importance=obj)`` does."""
    name = getattr(criterion, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{type(criterion).__name__} has no name: give the class a `name` "
                        "attribute, which the report and a resumed run use")
    if name in BUILT_IN:
        raise ValueError(
            f"importance={type(criterion).__name__}(...) is named {name!r}, a built-in "
            f"criterion: pass importance={name!r} with its settings (ced_output=, "
            "ced_estimator=, ced_weighting=), which the report records, or give yours a name "
            "of its own")
    _registered[name] = lambda: criterion
    return name


def available_importances() -> tuple[str, ...]:
    """Every criterion name: built-in, registered here, and declared by installed packages."""
    installed = sorted(point.name for point in metadata.entry_points(group=ENTRY_POINTS))
    extra = [name for name in [*_registered, *installed] if name not in BUILT_IN]
    return BUILT_IN + tuple(dict.fromkeys(extra))


def custom_importance(name: str) -> Importance | None:
    """The criterion registered or installed under ``name``, made now; None if there is none."""
    factory = _registered.get(name)
    if factory is None:
        points = metadata.entry_points(group=ENTRY_POINTS, name=name)
        if not points:
            return None
        factory = next(iter(points)).load()
    criterion = factory()
    if not isinstance(criterion, Importance):
        raise TypeError(f"the criterion {name!r} made a {type(criterion).__name__}, not an "
                        "entpruner_sdk.importance.Importance")
    return criterion

"""Class labels given as ids or as names: a model that records its classes' names (the class
folders or ``class_names`` it was trained on) takes ``"cat"`` wherever it takes ``3``."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any


def default_names(count: int) -> list[str]:
    """The names of a dataset that has none: its ids as strings."""
    return [str(i) for i in range(count)]


def ids_of_names(labels: Sequence[Any], class_names: Sequence[str] = (),
                 source: str = "the data") -> tuple[list[int], list[str]] | None:
    """Labels given as class names (strings: a CSV's column, a list of ``"cat"``s) as class
    ids, with the class names: those of ``class_names`` in its order, else the names the
    labels hold in sorted order (as ``datasets``' ``class_encode_column`` numbers them). None
    when the labels are not names; ``DataError`` for a label that is empty, or not one of
    ``class_names``."""
    from entpruner_sdk.data.datasets import DataError

    if not any(isinstance(label, str) for label in labels):
        return None
    for index, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{source}: label {index} is {label!r}, not a class name; give "
                            "every image a class name, or every image a class id")
    names = list(class_names) or sorted(set(labels))
    ids, unknown = positions(labels, names)
    if unknown:
        raise DataError(f"{source}: the labels name classes that class_names lacks "
                        f"({', '.join(map(repr, unknown[:5]))}); add them to class_names, or "
                        "drop class_names to number the classes in sorted order")
    return ids, names


def positions(labels: Sequence[str], order: Sequence[str]) -> tuple[list[int], list[str]]:
    """Each label's position in ``order`` (-1 where it lacks the label), and the labels it
    lacks, sorted: class names numbered by a given list of classes."""
    number = {name: i for i, name in enumerate(order)}
    return [number.get(label, -1) for label in labels], sorted(set(labels) - set(number))


def offered_classes(provenance: dict, num_classes: int) -> list[int]:
    """The classes to offer by default (sampling without labels, the demo's menu): those a
    model was last fine-tuned on when they were a subset of its own (``data_classes`` in its
    provenance), else all of them."""
    return list(provenance.get("data_classes") or range(num_classes))


def resolve_labels(labels: Iterable[int | str], num_classes: int,
                   class_names: Sequence[str] = ()) -> list[int]:
    """Class ids for ``labels``, each an id (``3`` or ``"3"``) or a class name (``"cat"``).

    A number is always an id, so a class named "7" is reached by its id. A name matches as
    written, else as ``plain_name`` writes both (``Golden_Retriever``). Raises
    ``ValueError`` naming the unknown label and the classes there are."""
    index: dict[str, list[int]] = {}
    plain: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        index.setdefault(name, []).append(i)
        plain.setdefault(plain_name(name), []).append(i)
    ids = []
    for label in labels:
        text = str(label).strip()
        number = text[1:] if text.startswith("-") else text
        if number.isdigit():
            found = [int(text)] if 0 <= int(text) < num_classes else []
        else:  # as written, else as ids_by_name matches names (golden_retriever)
            found = index.get(text) or plain.get(plain_name(text), [])
        if not found:
            raise ValueError(f"unknown class label {label!r}: "
                             f"{describe_classes(num_classes, class_names)}")
        if len(found) > 1:  # ImageNet has two "crane"s, a bird and a machine
            raise ValueError(f"class label {label!r} names the classes "
                             f"{', '.join(map(str, found))}; give the id")
        ids.append(found[0])
    return ids


def describe_classes(num_classes: int, class_names: Sequence[str] = (), limit: int = 12) -> str:
    """'the classes are 0..7 (0 astronaut, 1 coffee, ...)', for messages."""
    text = f"the classes are 0..{num_classes - 1}"
    if class_names and list(class_names) != default_names(len(class_names)):
        shown = ", ".join(f"{i} {name}" for i, name in enumerate(class_names[:limit]))
        text += f" ({shown}{', ...' if len(class_names) > limit else ''})"
    return text


def plain_name(name: str) -> str:
    """``name`` as class names are compared when they differ as written: case, and spaces,
    ``_`` and ``-`` between words, do not count (``Golden_Retriever`` is ``golden
    retriever``)."""
    return " ".join(re.split(r"[\s_-]+", name.casefold().strip()))


def ids_by_name(data_names: Sequence[str], present: Sequence[int],
                model_names: Sequence[str] | None) -> list[int] | None:
    """The model's class id for each of a dataset's classes (indexed by the data's ids), when
    both name their classes and each class the data holds (``present``) is a class the model
    names once (as written, else as ``plain_name`` writes both), but under another id or
    with a model of more classes: class folders are numbered in alphabetical order, a model
    keeps the order it was trained with. None when the labels stand as they are: the same
    ids, either side unnamed, or a class the model does not name (new classes, which a
    resized label embedder learns); in that last case a warning names a class the model has
    under another id, whose images would train or be compared as another class."""
    if not model_names or list(model_names) == default_names(len(model_names)) or (
            list(data_names) == default_names(len(data_names))):
        return None
    index: dict[str, list[int]] = {}
    plain: dict[str, list[int]] = {}  # folders avoid spaces: golden_retriever
    for i, name in enumerate(model_names):
        index.setdefault(name, []).append(i)
        plain.setdefault(plain_name(name), []).append(i)
    ids = [found[0] if len(found := index.get(name) or plain.get(plain_name(name), [])) == 1
           else -1 for name in data_names]
    if all(ids[c] >= 0 for c in present):
        same = len(data_names) == len(model_names) and all(ids[c] == c for c in present)
        return None if same else ids
    moved = [c for c in present if ids[c] >= 0 and ids[c] != c]
    if moved:
        unmatched = next(data_names[c] for c in present if ids[c] < 0)
        why = ("names several of the model's classes" if unmatched in index
               else "is not one of the model's class names")
        warnings.warn(f"the data's class {data_names[moved[0]]!r} is the model's class "
                      f"{ids[moved[0]]} but is labelled {moved[0]}, while {unmatched!r} {why}, "
                      "so the labels are taken as the model's class ids as they are; name "
                      "each class as the model names one of its own to have them matched by "
                      "name", stacklevel=3)
    return None

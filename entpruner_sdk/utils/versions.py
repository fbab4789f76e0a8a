"""File formats across versions: a file written by a newer entpruner-sdk than this one is
named as such, with the upgrade, rather than read as the old format."""

from __future__ import annotations

from importlib import metadata
from typing import Any


def installed_version() -> str:
    """This installation's version, read from the package metadata (the package's own
    ``__init__`` sits above every layer that asks)."""
    try:
        return f"version {metadata.version('entpruner-sdk')}"
    except metadata.PackageNotFoundError:  # run from a source tree on PYTHONPATH
        return "this version"


def newer_format(found: Any, readable: int, what: str) -> str | None:
    """The message for a file of format ``found`` when this version reads ``readable`` and
    older; None when it can be read. Read as the old format, a newer file could load and
    then mean something else."""
    if not isinstance(found, int) or found <= readable:
        return None
    return (f"{what} saved by a newer entpruner-sdk (format {found}; {installed_version()} "
            f"reads format {readable} and older): upgrade it, pip install -U entpruner-sdk")

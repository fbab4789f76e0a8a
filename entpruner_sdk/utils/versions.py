"""Versions: a file written by a newer entpruner-sdk than this one is named as such, with
the upgrade, rather than read as the old format; and a feature that needs a newer torch than
the one installed says which (the package itself needs torch 2.4)."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import torch


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


def torch_release(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``version`` (default: the installed torch). Pre-releases and local
    builds (``2.6.0a0+git``, ``2.13.0+cpu``) count as their release: a nightly has the API."""
    match = re.match(r"(\d+)\.(\d+)", version or torch.__version__)
    if match is None:
        raise ValueError(f"not a torch version: {version!r}")
    return int(match[1]), int(match[2])


def require_torch(minimum: str, feature: str, instead: str) -> None:
    """Raise a RuntimeError naming ``feature``, the torch it needs and ``instead`` (what to do
    on this torch) when the installed torch is older than ``minimum``."""
    if torch_release() < torch_release(minimum):
        raise RuntimeError(f"{feature} needs torch {minimum} or later, and this is torch "
                           f"{torch.__version__}: pip install -U 'torch>={minimum}', or "
                           f"{instead}")

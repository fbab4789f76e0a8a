"""Progress bars that can be silenced everywhere (``progress=False`` or ENTPRUNER_QUIET=1)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    """Whether ``ENTPRUNER_QUIET`` silences every progress bar."""
    return os.environ.get("ENTPRUNER_QUIET", "") not in ("", "0")


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any
                 ) -> tqdm:
    """A tqdm bar, disabled when ``enabled`` is false or the environment asks for quiet."""
    return tqdm(iterable, disable=not enabled or quiet(), dynamic_ncols=True, **kwargs)

"""Progress bars that can be silenced everywhere (``progress=False`` or ENTPRUNER_QUIET=1),
and that do not flood a log with redraws."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Seconds between redraws of a bar written to a file or a pipe rather than a terminal (nohup,
# a batch scheduler's log, CI). tqdm redraws up to ten times a second, and every redraw stays
# in a log: an hours-long compress would leave megabytes of them. ``$TQDM_MININTERVAL`` wins.
LOG_REDRAW_S = 30.0


def quiet() -> bool:
    """Whether ``ENTPRUNER_QUIET`` silences every progress bar."""
    return os.environ.get("ENTPRUNER_QUIET", "") not in ("", "0")


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any
                 ) -> tqdm:
    """A tqdm bar, disabled when ``enabled`` is false or the environment asks for quiet;
    where it goes to a log rather than a terminal, redrawn every ``LOG_REDRAW_S`` seconds, and
    kept when it closes, even one asked not to be (``leave=False``)."""
    in_a_log = _goes_to_a_log(kwargs.get("file"))
    if "TQDM_MININTERVAL" not in os.environ and in_a_log:
        kwargs.setdefault("mininterval", LOG_REDRAW_S)
        # else tqdm's monitor thread redraws a fast bar every maxinterval (10 s)
        kwargs.setdefault("maxinterval", kwargs["mininterval"])
    if in_a_log:  # a log cannot erase: a closed bar would leave its first draw and a blank,
        kwargs["leave"] = True  # where its last says what was done and how long it took
    return tqdm(iterable, disable=not enabled or quiet(), dynamic_ncols=True, **kwargs)


def _goes_to_a_log(stream: Any) -> bool:
    """Whether a bar written to ``stream`` (None: tqdm's, stderr) stays in a file for good: a
    stream that is no terminal, unless the bar is a notebook's widget, which draws itself."""
    notebook = sys.modules.get("tqdm.notebook")  # imported where tqdm.auto picked its widget
    if notebook is not None and issubclass(tqdm, notebook.tqdm_notebook):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True


def show_postfix(bar: tqdm, text: str) -> None:
    """Show ``text`` after a bar that is moved by hand (``bar.n`` set, not ``update``d), redrawn
    at the bar's own pace: tqdm's ``set_postfix_str`` alone redraws on every call."""
    if bar.disable:  # a silenced bar keeps no clock
        return
    bar.set_postfix_str(text, refresh=False)
    now = time.time()  # tqdm's clock for ``last_print_t``
    if now - bar.last_print_t >= bar.mininterval:
        bar.refresh()
        bar.last_print_t = now

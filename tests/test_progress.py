"""Progress bars: ten redraws a second on a terminal, one every half minute in a log."""

from __future__ import annotations

import io
import time

import pytest

from entpruner_sdk.utils import progress
from entpruner_sdk.utils.progress import LOG_REDRAW_S, progress_bar, show_postfix


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def redraws(stream: io.StringIO, by_hand: bool = False) -> int:
    """A second of progress in 200 steps: ten redraws at tqdm's own pace. Each redraw starts
    with a carriage return. ``by_hand``: the bar is moved as dopri5's is, ``n`` set and the
    model calls shown after it."""
    with progress_bar(total=200, file=stream) as bar:
        for step in range(200):
            time.sleep(0.005)
            if by_hand:
                bar.n = step + 1
                show_postfix(bar, f"{step} model calls")
            else:
                bar.update()
    return stream.getvalue().count("\r")


@pytest.fixture
def shown(monkeypatch):
    monkeypatch.delenv("ENTPRUNER_QUIET")
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)


def test_a_bar_in_a_log_draws_its_start_and_end_where_a_terminal_sees_it_move(shown):
    assert redraws(Terminal()) >= 4
    assert redraws(io.StringIO()) == 2  # nohup, a scheduler's log, a pipe: no redraws between
    in_a_log = progress_bar(range(1), file=io.StringIO())
    assert in_a_log.mininterval == in_a_log.maxinterval == LOG_REDRAW_S  # tqdm's monitor too
    assert redraws(Terminal(), by_hand=True) >= 4
    assert redraws(io.StringIO(), by_hand=True) == 2
    with progress_bar(total=1, enabled=False) as silenced:
        show_postfix(silenced, "nothing shown")  # keeps no clock, and needs none


def test_tqdms_own_setting_and_a_notebooks_widget_keep_their_pace(shown, monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "1")  # read by tqdm when it is imported, not here
    assert progress_bar(range(1), file=io.StringIO()).mininterval != LOG_REDRAW_S
    monkeypatch.delenv("TQDM_MININTERVAL")
    from tqdm.notebook import tqdm_notebook

    monkeypatch.setattr(progress, "tqdm", tqdm_notebook)  # what tqdm.auto gives a notebook
    assert not progress._goes_to_a_log(io.StringIO())


def test_a_passing_bar_is_erased_from_a_terminal_and_kept_finished_in_a_log(shown):
    for stream in (Terminal(), io.StringIO()):
        with progress_bar(total=3, desc="sampling", leave=False, file=stream) as bar:
            bar.update(3)
        last = stream.getvalue().rsplit("\r", 1)[-1]
        if isinstance(stream, Terminal):  # erased: the next output starts on a clean line
            assert last.strip() == ""
        else:  # a log cannot erase; its last draw says what was done
            assert last.startswith("sampling: 100%") and "3/3" in last
            assert last.endswith("\n")

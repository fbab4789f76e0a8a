"""The quality benchmark's summaries: pure functions over result rows (no compress runs)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parent.parent / "benchmarks" / "compress_quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("compress_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(method: str, seed: int, fd: float, keep: int = 6) -> dict:
    return dict(dataset="digits", family="dit", keep=keep, method=method, seed=seed,
                fd_domain=fd)


def test_paired_table_compares_within_each_seed(quality):
    rows = [row("teacher", 0, 0.5, keep=12), row("teacher", 1, 0.9, keep=12),
            row("ced-adaptive", 0, 1.0), row("ced-adaptive", 1, 2.0),
            row("bi", 0, 0.9), row("bi", 1, 2.2),
            row("uniform", 0, 1.1)]  # one seed only: nothing to pair
    text = quality.paired_table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| digits")]
    # teacher: -50% and -55% -> mean -52.5%; bi: -10% and +10% -> mean 0, reference better once
    assert lines == ["| digits / dit keep 6 | teacher | -52.5% (-55.0% to -50.0%) | 0 of 2 |",
                     "| digits / dit keep 6 | bi | +0.0% (-10.0% to +10.0%) | 1 of 2 |"]


def test_paired_table_is_empty_with_one_seed(quality):
    rows = [row("ced-adaptive", 0, 1.0), row("bi", 0, 0.9)]
    assert quality.paired_table(rows) == ""

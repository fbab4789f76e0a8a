"""One way the benchmarks print their tables: a title, the column names, and a row of
already formatted cells per result (rich, at least ``width`` columns wide); and one way they
write their JSON results."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from entpruner_sdk.utils.files import atomic_write_text


def print_table(title: str, columns: Sequence[str], cells: Iterable[Sequence[str]],
                width: int = 120) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in cells:
        table.add_row(*row)
    Console(width=max(width, Console().width)).print(table)


def write_results(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """Write a benchmark's results atomically, then say whether its goal (``document["goal"]``,
    ``document["met"]``) was met and where the results went."""
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    if "goal" in document:
        print(f"goal ({document['goal']}): {'met' if document['met'] else 'NOT met'}")
    print(f"written to {path}")

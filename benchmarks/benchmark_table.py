"""One way the benchmarks print their tables: a title, the column names, and a row of
already formatted cells per result (rich, at least ``width`` columns wide)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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

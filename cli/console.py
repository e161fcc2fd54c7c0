"""Where the CLI writes: reports to stdout, progress and messages to stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr, driven by ``update(done, total, description)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=stderr, transient=False)
    task = None

    def update(done: int, total: int, description: str) -> None:
        # Started on the first update, so input errors found before the work begins
        # print alone, without an empty bar above them.
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(title, total=total)
        bar.update(task, completed=done, total=total, description=f"{title}: {description}")

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def emit_json(data: object) -> None:
    from memloc.core.report import to_jsonable  # numpy and torch: only when a command prints

    print(json.dumps(to_jsonable(data), indent=2, allow_nan=False))


def emit_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title, title_justify="left")
    for column in columns:
        # Headers wrap at their words, not end in "…", on an 80-column terminal.
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    stdout.print(table)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)

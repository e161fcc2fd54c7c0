"""Where the CLI writes: reports to stdout, progress and messages to stderr."""

from __future__ import annotations

import json
import time
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


# In a log (stderr not a terminal) progress is plain lines: one every LOG_EVERY seconds,
# or at a new tenth of the work once LOG_EVERY / 5 has passed, and the last state.
LOG_EVERY = 15.0


@contextmanager
def progress_bar(
    title: str,
    *,
    console: Console | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int, int, str], None]]:
    """Progress on stderr, driven by ``update(done, total, description)``.

    A terminal gets a rich bar; a log gets periodic lines such as
    ``memloc: train 12/30 (40%) 1m20s epoch 12``.

    Example::

        with progress_bar("train") as update:
            train_run(run, config, device, progress=update)
    """
    console = console or stderr
    if not console.is_terminal:
        lines = _LogLines(title, console, clock)
        yield lines
        lines.flush()  # reached only when the work ended normally: an error's line stands alone
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, transient=False)
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


class _LogLines:
    """``update(done, total, description)`` for a log: prints a line only now and then."""

    def __init__(self, title: str, console: Console, clock: Callable[[], float]) -> None:
        self.title, self.console, self.clock = title, console, clock
        self.began = self.last_at = clock()
        self.last_tenth = 0
        self.pending: str | None = None  # the latest state, when it has not been printed

    def __call__(self, done: int, total: int, description: str) -> None:
        now = self.clock()
        share = done / total if total else 0.0
        text = f"memloc: {self.title} {done}/{total} ({share:.0%}) {_duration(now - self.began)}"
        self.pending = f"{text} {description}" if description else text
        waited = now - self.last_at
        tenth = int(10 * share)
        if share >= 1 or waited >= LOG_EVERY or (tenth > self.last_tenth and waited >= LOG_EVERY / 5):
            self.last_tenth = tenth
            self.flush()

    def flush(self) -> None:
        if self.pending is not None:
            self.console.print(self.pending, markup=False, highlight=False, soft_wrap=True)
            self.last_at, self.pending = self.clock(), None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


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

"""Append-only JSON-lines logs: read them back after a crash.

A process killed while appending leaves at most one incomplete record, the last
line. `read_log` drops that line with a `MemlocWarning` (the work it described is
simply redone) and, with ``repair``, cuts it off the file so the next append starts
on a fresh line. A line that does not parse anywhere else was not torn by a crash:
that is damage, and an error naming the file and the line.

    records = read_log(run_dir / "locate/neurons.jsonl", repair=True)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from memloc.core.errors import MemlocError, MemlocWarning


def _parse(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg})"


def read_log(path: str | Path, *, repair: bool = False) -> list[Any]:
    """The records of a JSON-lines log, one per non-blank line; [] when the file is missing.

    ``repair`` truncates a torn last line away (and ends a complete last line with its
    newline), for a caller about to append.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MemlocError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    records, keep = [], 0  # keep: bytes of the file that hold complete records
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
        if raw.strip():
            record, problem = _parse(raw)
            if problem is not None:
                if not last:
                    raise MemlocError(
                        f"{path}:{number} {problem}; the file is damaged, remove it to start over"
                    )
                warnings.warn(
                    f"{path}:{number} is an incomplete last record (an interrupted write); dropped, it is redone",
                    MemlocWarning,
                    stacklevel=2,
                )
                break
            records.append(record)
        keep += len(raw) + 1
    if repair:
        _cut(path, data, min(keep, len(data)))
    return records


def _cut(path: Path, data: bytes, keep: int) -> None:
    """Leave the file as its first ``keep`` bytes, ending in a newline when not empty."""
    if keep == len(data) and (not data or data.endswith(b"\n")):
        return
    with open(path, "r+b") as f:
        f.truncate(keep)
        if keep and not data[:keep].endswith(b"\n"):
            f.seek(keep)
            f.write(b"\n")

"""Checks on output paths, made before any work so a bad ``--out`` costs nothing.

A folder below a file, a file where a folder is wanted (or the reverse), and a
read-only parent are each named in one `MemlocError`; nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path

from memloc.core.errors import MemlocError


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s parents that exists (the path itself excluded)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def _writable_below(path: Path, what: str) -> None:
    """Whatever of ``path`` is missing can be created: its nearest existing parent is a writable folder."""
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise MemlocError(
            f"{what} {path} lies below {ancestor}, which is a file; choose a path in a folder", field=what
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MemlocError(
            f"{what} {path} cannot be created: {ancestor} is not writable (check its permissions)",
            field=what,
        )


def writable_folder(path: str | Path, what: str = "out") -> Path:
    """``path`` as a folder that exists and is writable, or that can be created.

    ``what`` names the option in the message (the CLI shows ``out`` as ``--out``).

    Example::

        out = writable_folder(Path("runs/cnn"))  # raises MemlocError naming the problem
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise MemlocError(f"{what} {path} is a file, not a folder; choose a folder", field=what)
        if not os.access(path, os.W_OK | os.X_OK):
            raise MemlocError(f"{what} {path} is not writable (check its permissions)", field=what)
        return path
    _writable_below(path, what)
    return path


def writable_file(path: str | Path, what: str = "out") -> Path:
    """``path`` as a file that can be written (created, or appended to if it exists).

    Example::

        results = writable_file(Path("runs/cnn/locate/neurons.jsonl"))
    """
    path = Path(path)
    if path.is_dir():
        raise MemlocError(f"{what} {path} is a folder; name a file in it instead", field=what)
    if path.exists():
        if not os.access(path, os.W_OK):
            raise MemlocError(f"{what} {path} is not writable (check its permissions)", field=what)
        return path
    _writable_below(path, what)
    return path

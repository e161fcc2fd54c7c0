"""The one line printed when Ctrl-C stops a command: what stopped, and what a rerun does.

A rerun is promised to resume only where the library really keeps finished work.
"""

from __future__ import annotations

import _thread
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

EXIT_CODE = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C

# Commands whose rerun into the same output continues where the interrupted one stopped.
RESUMES = {
    "train": "rerun the same command to resume from the last finished epoch",
    "finetune": "rerun the same command to resume from the last finished epoch",
    "locate layers": "rerun the same command to resume (finished layer/epoch cells are kept)",
    "locate neurons": "rerun the same command to resume (finished examples are kept)",
    "edit stats": "rerun the same command to resume from the last saved batch",
    "ensemble": "rerun the same command to resume (finished models are kept)",
}
# Commands that keep finished facts only in their --out folder.
PER_FACT = {"locate trace", "locate suppress", "locate enhance", "locate knowledge-neurons"}
# Edits start over, but the key statistics they computed are cached (edit/stats.py).
STATS_KEPT = {"edit apply", "edit eval"}


def command_words(root: Any, args: Sequence[str]) -> list[str]:
    """The subcommand names at the start of ``args``, walking the click command tree."""
    words: list[str] = []
    command = root
    for arg in args:
        command = getattr(command, "commands", {}).get(arg)
        if command is None:
            break
        words.append(arg)
    return words


def interrupted_message(root: Any, args: Sequence[str]) -> str:
    """``memloc <command> interrupted``, and whether rerunning it resumes.

    Example::

        interrupted_message(typer.main.get_command(app), ["train", "--data", "digits"])
    """
    name = " ".join(command_words(root, args))
    line = f"memloc {name} interrupted" if name else "memloc interrupted"
    if name in RESUMES:
        return f"{line}; {RESUMES[name]}"
    if name in PER_FACT:
        if any(a == "--out" or a.startswith("--out=") for a in args):
            return f"{line}; rerun the same command to resume (finished facts are kept in --out)"
        return f"{line}; nothing was kept: with --out FOLDER a rerun skips finished facts"
    if name in STATS_KEPT:
        return f"{line}; a rerun starts the edits over (key statistics computed so far are kept)"
    return line


@contextmanager
def lost_interrupts_reraised() -> Iterator[None]:
    """Raise again a Ctrl-C that Python dropped because it landed in a finalizer.

    A KeyboardInterrupt raised inside ``__del__`` (say subprocess.Popen's, after the
    git call that provenance makes) is only printed as "Exception ignored", and the
    command runs on. The hook hands it back to the main thread a moment later, from
    another thread (if it lands in a finalizer again, it comes back here again).
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # Later, not now: raised at once it would land in this hook, and be lost again.
            later = threading.Timer(0.05, _thread.interrupt_main)
            later.daemon = True
            later.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous

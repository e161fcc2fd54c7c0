"""The one progress-callback type every long-running function accepts.

``progress(done, total, description)`` is called after each unit of work; the CLI's
progress bar (cli/console.py) has this signature, so it can be passed straight in:

    trace_facts(lm, facts, progress=lambda done, total, what: print(f"{what}: {done}/{total}"))
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]  # (units done, units in all, description)


def offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """A callback for a later phase: its ``done`` counts on from ``before``, out of ``total``."""
    if progress is None:
        return None
    return lambda done, _total, description: progress(before + done, total, description)


def labelled(progress: Progress | None, label: str) -> Progress | None:
    """A callback whose descriptions read ``"{label}: {description}"``."""
    if progress is None:
        return None
    return lambda done, total, description: progress(done, total, f"{label}: {description}")


def within(progress: Progress | None, done: int, total: int, label: str) -> Progress | None:
    """A callback for the steps inside one outer unit: the count stays the outer one
    (``done`` of ``total``) while the description shows the inner steps, so a long
    unit (one fact's causal trace) never looks frozen."""
    if progress is None:
        return None
    return lambda inner, inner_total, description: progress(
        done, total, f"{label}: {description} {inner}/{inner_total}"
    )

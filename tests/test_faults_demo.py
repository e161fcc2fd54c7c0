"""The demo and progress output under the conditions a log file sees: no terminal, failures midway."""

from __future__ import annotations

import io

from memloc.cli.console import progress_bar
from rich.console import Console


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_progress_in_a_log_is_periodic_plain_lines():
    console, buffer = _log_console()
    clock = FakeClock()
    with progress_bar("train", console=console, clock=clock) as update:
        for done in range(1, 301):
            clock.now = done * 0.4  # 300 steps of 0.4 s: two minutes in all
            update(done, 300, f"epoch {done}")
    lines = buffer.getvalue().splitlines()
    assert 4 <= len(lines) <= 15, lines  # neither silence nor one line per step
    assert all(line.startswith("memloc: train ") for line in lines), lines
    assert "\x1b" not in buffer.getvalue()  # no escape codes in a log
    assert lines[-1].startswith("memloc: train 300/300 (100%) 2m00s"), lines[-1]
    assert "epoch 300" in lines[-1]


def test_progress_lines_come_by_time_when_steps_are_slow():
    console, buffer = _log_console()
    clock = FakeClock()
    with progress_bar("layers", console=console, clock=clock) as update:
        for done in range(1, 4):  # three steps of a minute each
            clock.now = done * 60.0
            update(done, 3, "rewinding")
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "memloc: layers 1/3 (33%) 1m00s rewinding",
        "memloc: layers 2/3 (67%) 2m00s rewinding",
        "memloc: layers 3/3 (100%) 3m00s rewinding",
    ]


def test_a_fast_phase_prints_one_final_line_and_an_error_adds_none():
    console, buffer = _log_console()
    clock = FakeClock()
    with progress_bar("scores", console=console, clock=clock) as update:
        for done in range(1, 1001):
            clock.now = done * 0.001
            update(done, 1000, "")
    assert buffer.getvalue().splitlines() == ["memloc: scores 1000/1000 (100%) 1s"]
    console, buffer = _log_console()
    try:
        with progress_bar("train", console=console, clock=clock) as update:
            update(1, 10, "epoch 1")
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert buffer.getvalue() == ""

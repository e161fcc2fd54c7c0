"""The classifier runners' typed results: stored JSON reads back into the same types."""

import json
import shutil

import numpy as np
import torch
from memloc.core.classifier.run_results import TrainResult
from memloc.core.classifier.runs import RunFolder
from memloc.core.report import Report
from memloc.locate.classifier.layer_results import LayersResult
from memloc.locate.classifier.layers import LayersConfig, load_layers, locate_layers
from memloc.locate.classifier.scores import CurvatureConfig, ScoresResult, load_scores, locate_scores
from memloc.locate.classifier.unit_results import FlipRecord, NeuronsResult
from memloc.locate.classifier.unit_runs import load_neurons, locate_neurons
from memloc.locate.classifier.unit_search import FlipConfig

CPU = torch.device("cpu")


def _copy(run: RunFolder, tmp_path) -> RunFolder:
    shutil.copytree(run.root, tmp_path / "run")
    return RunFolder.open(tmp_path / "run")


def test_training_summary_and_history_read_back(digits_run):
    stored = json.loads(digits_run.metrics_path.read_text())
    result = digits_run.result()
    assert result == TrainResult.from_report(Report.from_dict(stored))
    assert result.summary.to_dict() == stored["metrics"]
    assert result.results_dict() == stored["results"]
    assert list(stored["metrics"]) == [
        "clean_train_acc",
        "noisy_train_acc",
        "noisy_orig_acc",
        "test_acc",
        "epochs",
        "seconds",
        "train_examples",
        "noisy_examples",
        "complete",
        "run_dir",
    ]
    assert list(stored["results"]["history"][1]) == [
        "epoch",
        "clean_train_acc",
        "noisy_train_acc",
        "noisy_orig_acc",
        "test_acc",
        "train_loss",
        "seconds",
    ]
    assert [h.epoch for h in result.history] == [0, 1, 2, 3] and result.summary.complete


def test_layers_result_round_trips(cnn_run, tmp_path):
    run = _copy(cnn_run, tmp_path)
    result = locate_layers(run, CPU, LayersConfig(rewind_epochs=(0, 2), retrain_epochs=1))
    assert LayersResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert load_layers(run) == result
    stored = json.loads((run.root / "locate/layers_report.json").read_text())
    assert list(stored["results"]) == ["rewinding", "retraining", "gradients"]
    assert list(stored["metrics"]) == ["final", "final_epoch", "seconds"]
    assert list(stored["config"]) == ["rewind", "retrain", "layers"]
    assert list(stored["results"]["gradients"][0]) == ["layer", "epoch", "clean_norm", "noisy_norm", "cosine"]
    assert list(result.summary()) == ["rewinding", "retraining", "gradients", "final", "config"]
    no_retrain = locate_layers(run, CPU, LayersConfig(rewind_epochs=(0,), retrain=False))
    assert no_retrain.retrain is None and no_retrain.retraining == ()
    assert load_layers(run) == no_retrain


def test_scores_result_round_trips_and_keeps_its_arrays(cnn_run, tmp_path):
    run = _copy(cnn_run, tmp_path)
    result = locate_scores(run, CPU, curvature=CurvatureConfig(samples=2))
    assert ScoresResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    back = load_scores(run)
    assert back == result and back.curvature == CurvatureConfig(samples=2)
    assert set(back.scores) == set(result.auroc) == {"csl", "forgetting", "learning_time", "curvature"}
    for name, values in result.scores.items():
        np.testing.assert_array_equal(back.scores[name], values)
    np.testing.assert_array_equal(back.noisy_mask, result.noisy_mask)
    assert list(result.summary()) == ["auroc", "scores_file", "examples", "noisy"]


def test_neurons_result_round_trips(cnn_run, tmp_path):
    run = _copy(cnn_run, tmp_path)
    config = FlipConfig(max_units=40, mode="weights")
    result = locate_neurons(run, CPU, config, n=2)
    assert NeuronsResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert load_neurons(run) == result
    assert len(result.records) == 4 and result.noisy is not None and result.clean is not None
    # the weights mode adds its own measurement to each searched record, kept in `extra`
    assert any("weights_collateral_drop" in r.extra for r in result.records)
    lines = (run.root / "locate/neurons.jsonl").read_text().splitlines()
    assert [FlipRecord.from_dict(json.loads(line)) for line in lines] == list(result.records)
    assert list(json.loads(lines[0]))[:9] == [
        "id",
        "group",
        "flipped",
        "units",
        "n_units",
        "collateral_drop",
        "seconds",
        "reason",
        "steps",
    ]
    assert list(result.summary()) == ["noisy", "clean", "sharing", "jsonl"]
    # a rerun resumes from neurons.jsonl and reads every record back unchanged
    again = locate_neurons(run, CPU, config, n=2)
    assert again.records == result.records and again.sharing == result.sharing
    only_noisy = locate_neurons(run, CPU, config, examples="noisy", n=2, out=tmp_path / "noisy.jsonl")
    assert only_noisy.clean is None and list(only_noisy.groups()) == ["noisy"]
    # written elsewhere, it keeps its own summary and leaves the run's default one to the report
    assert load_neurons(run) == result
    stored = Report.load(tmp_path / "noisy_report.json")
    assert NeuronsResult.from_report(stored) == only_noisy

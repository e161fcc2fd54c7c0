import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from memloc.core.checkpoints import load_tensors
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import RunFolderError
from memloc.core.training.train import TrainConfig, train_run
from memloc.core.training.zoo import ModelSpec, build_model

CPU = torch.device("cpu")


def test_run_folder_layout(digits_run):
    names = sorted(p.name for p in digits_run.root.iterdir())
    assert names == ["checkpoints", "config.json", "dynamics.npz", "metrics.json", "noise.npz"]
    assert digits_run.epochs() == [0, 1, 2, 3]
    dyn = digits_run.load_dynamics()
    assert dyn.loss.shape == dyn.pred.shape == dyn.correct.shape == (4, 300)
    assert dyn.grad_clean.shape == dyn.grad_noisy.shape == dyn.grad_cosine.shape == (3, 3)
    assert np.isfinite(dyn.grad_clean).all() and (dyn.grad_noisy > 0).all()
    labels, index = digits_run.load_noise()
    assert labels.mask.sum() == 60 and len(index) == 300
    assert np.array_equal(dyn.correct, dyn.pred == labels.given)
    metrics = json.loads(digits_run.metrics_path.read_text())
    assert metrics["metrics"]["complete"] is True and metrics["schema_version"] == 1
    assert [h["epoch"] for h in metrics["results"]["history"]] == [0, 1, 2, 3]


def test_epoch_zero_is_the_seeded_initialization(digits_run):
    torch.manual_seed(0)
    fresh = build_model(ModelSpec("mlp", (1, 8, 8), 10, 1.0)).state_dict()
    saved = load_tensors(digits_run.checkpoint(0))
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)


def test_dynamics_describe_each_checkpoint(digits_run):
    from memloc.core.classifier.data import load_dataset
    from memloc.core.classifier.evaluation import per_example

    labels, _ = digits_run.load_noise()
    data = load_dataset("digits", limit=300, seed=0)
    model, _ = digits_run.load_model(2)
    loss, pred = per_example(model, torch.from_numpy(data.x_train), torch.from_numpy(labels.given))
    dyn = digits_run.load_dynamics()
    assert np.array_equal(dyn.pred[2], pred.numpy())
    np.testing.assert_allclose(dyn.loss[2], loss.numpy(), rtol=1e-5)


def test_training_is_deterministic_on_cpu(tmp_path):
    config = tiny_config(arch="cnn", epochs=2, limit=200)
    train_run(RunFolder(tmp_path / "a"), config, CPU)
    train_run(RunFolder(tmp_path / "b"), config, CPU)
    a, b = (
        load_tensors(tmp_path / "a/checkpoints/epoch_002.safetensors"),
        load_tensors(tmp_path / "b/checkpoints/epoch_002.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a/dynamics.npz").read_bytes() == (tmp_path / "b/dynamics.npz").read_bytes()


class SimulatedCrashError(Exception):
    pass


def test_resume_continues_exactly_after_the_last_finished_epoch(tmp_path):
    config = tiny_config(arch="cnn", epochs=4, limit=200)
    train_run(RunFolder(tmp_path / "whole"), config, CPU)

    steps_per_epoch = 7  # ceil(200 / 32)

    def stop_in_epoch_3(done, total, _):
        if done == 2 * steps_per_epoch + 3:
            raise SimulatedCrashError

    run = RunFolder(tmp_path / "cut")
    with pytest.raises(SimulatedCrashError):
        train_run(run, config, CPU, progress=stop_in_epoch_3)
    assert json.loads(run.metrics_path.read_text())["metrics"]["complete"] is False
    assert run.load_state().epoch == 2

    seen = []
    train_run(run, config, CPU, progress=lambda done, total, _: seen.append(done))
    assert min(seen) == 2 * steps_per_epoch  # no step of epochs 1-2 was redone
    whole, cut = (
        load_tensors(tmp_path / "whole/checkpoints/epoch_004.safetensors"),
        load_tensors(run.checkpoint(4)),
    )
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    dw, dc = RunFolder(tmp_path / "whole").load_dynamics(), run.load_dynamics()
    assert np.array_equal(dw.loss, dc.loss) and np.array_equal(dw.grad_cosine, dc.grad_cosine, equal_nan=True)


def test_a_different_run_in_the_same_folder_is_refused(digits_run):
    before = digits_run.config_path.read_bytes()
    with pytest.raises(RunFolderError, match=r"differs in: train\.noise"):
        train_run(digits_run, tiny_config(noise=0.3), CPU)
    assert digits_run.config_path.read_bytes() == before


def test_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a memloc run folder"):
        train_run(RunFolder(tmp_path), tiny_config(), CPU)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_mlp_memorizes_noisy_digits(tmp_path):
    config = TrainConfig.for_arch("digits", "mlp", noise=0.2, limit=500, epochs=80)
    summary = train_run(RunFolder(tmp_path / "r"), config, CPU)
    assert summary.noisy_train_acc >= 0.95
    assert summary.clean_train_acc == 1.0
    assert summary.noisy_orig_acc <= 0.05
    assert summary.test_acc > 0.8

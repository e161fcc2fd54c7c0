"""memloc import, the library: checkpoint forms, the in-place manifest, labels, the dynamics pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.core.checkpoints import file_hash, save_tensors
from memloc.core.classifier.checkpoint_discovery import discover_checkpoints, natural_key
from memloc.core.classifier.imported import ImportConfig, import_run
from memloc.core.classifier.label_files import imported_labels, read_label_file
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import CheckpointError, DataError, MemlocError, RunFolderError, UnsafePickleError
from memloc.core.training.train import TrainConfig, train_run

CPU = torch.device("cpu")


class Planted:
    """An object a pickle can only restore by running code."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunFolder:
    """A memloc-trained 2-epoch MLP on all digits (no --limit: import reads the data in its order)."""
    run = RunFolder(tmp_path_factory.mktemp("trained") / "mlp")
    config = TrainConfig(data="digits", arch="mlp", noise=0.2, epochs=2, batch_size=64, lr=3e-3)
    train_run(run, config, CPU)
    return run


@pytest.fixture()
def foreign(trained: RunFolder, tmp_path: Path) -> Path:
    """The trained run's checkpoints and labels as files made elsewhere."""
    out = tmp_path / "outside"
    (out / "ckpt").mkdir(parents=True)
    for epoch in (1, 2):
        shutil.copy(trained.checkpoint(epoch), out / "ckpt" / f"weights_epoch{epoch}.safetensors")
    shutil.copy(trained.checkpoint(0), out / "init.safetensors")
    labels, _ = trained.load_noise()
    np.save(out / "labels.npy", labels.given)
    np.save(out / "true.npy", labels.original)
    return out


def config_for(out: Path, **overrides) -> ImportConfig:
    base = dict(
        checkpoints=(str(out / "ckpt"),),
        model="mlp",
        data="digits",
        labels=str(out / "labels.npy"),
        true_labels=str(out / "true.npy"),
        init=str(out / "init.safetensors"),
        lr=3e-3,
        batch_size=64,
    )
    return ImportConfig(**{**base, **overrides})


# --- checkpoint forms ------------------------------------------------------------------


def test_natural_sort_orders_epoch_numbers_by_value(tmp_path):
    for name in ("e10.safetensors", "e2.safetensors", "e1.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = discover_checkpoints([tmp_path])
    assert [c.path.name for c in found] == ["e1.safetensors", "e2.safetensors", "e10.safetensors"]
    assert natural_key("epoch_9") < natural_key("epoch_10")


def test_trainer_folders_are_ordered_by_global_step_and_keep_step_and_epoch(tmp_path):
    # Lexically checkpoint-180 < checkpoint-45; the Trainer's global_step orders them.
    for step, epoch in ((180, 2.0), (45, 0.5), (90, 1.0)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_tensors(folder / "model.safetensors", {"w": torch.zeros(1)})
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": epoch}))
    found = discover_checkpoints([tmp_path])
    assert [(c.step, c.source_epoch) for c in found] == [(45, 0.5), (90, 1.0), (180, 2.0)]
    assert all(c.path.name == "model.safetensors" for c in found)


def test_a_list_file_keeps_its_order_relative_to_itself(tmp_path):
    for name in ("b.safetensors", "a.safetensors"):
        save_tensors(tmp_path / name, {"w": torch.zeros(1)})
    (tmp_path / "order.txt").write_text("# training order\nb.safetensors\na.safetensors\n")
    assert [c.path.name for c in discover_checkpoints([tmp_path / "order.txt"])] == [
        "b.safetensors",
        "a.safetensors",
    ]
    with pytest.raises(CheckpointError, match="does not exist"):
        discover_checkpoints([tmp_path / "a.safetensors", tmp_path / "missing.safetensors"])


def test_trainer_run_with_pytorch_model_bin_imports_like_files(trained, foreign, tmp_path):
    trainer = tmp_path / "trainer"
    for epoch, step in ((1, 23), (2, 46)):
        folder = trainer / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        state = {k: v.clone() for k, v in trained.load_checkpoint(epoch).items()}
        torch.save(state, folder / "pytorch_model.bin")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": float(epoch)}))
    run = RunFolder(tmp_path / "run")
    import_run(run, config_for(foreign, checkpoints=(str(trainer),)), CPU)
    entries = run.manifest().entries
    assert [(e.epoch, e.step, e.source_epoch) for e in entries] == [
        (0, None, None),
        (1, 23, 1.0),
        (2, 46, 2.0),
    ]
    np.testing.assert_array_equal(run.load_dynamics().pred, trained.load_dynamics().pred)


# --- the import equals the trained run ---------------------------------------------------


def test_dynamics_equal_those_training_recorded(trained, foreign, tmp_path):
    run = RunFolder(tmp_path / "run")
    result = import_run(run, config_for(foreign), CPU)
    ours, theirs = run.load_dynamics(), trained.load_dynamics()
    np.testing.assert_array_equal(ours.loss, theirs.loss)
    np.testing.assert_array_equal(ours.pred, theirs.pred)
    np.testing.assert_array_equal(ours.correct, theirs.correct)
    assert ours.gradient_kind == "checkpoint" and theirs.gradient_kind == "training"
    assert ours.grad_clean.shape == theirs.grad_clean.shape == (2, len(ours.groups))
    assert np.all(ours.grad_clean > 0) and np.all(ours.grad_noisy > 0)
    trained_final = trained.summary()
    assert result.summary.noisy_train_acc == trained_final.noisy_train_acc
    assert result.summary.test_acc == trained_final.test_acc
    report = json.loads(run.metrics_path.read_text())
    assert report["method"] == "import" and report["results"]["gradient_kind"] == "checkpoint"
    rows = report["results"]["checkpoints"]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["train_acc"] == pytest.approx(float(theirs.correct[2].mean()))
    assert run.config()["train"]["epochs"] == 2 and run.planned_epochs() == 2
    TrainConfig(**{k: v for k, v in run.config()["train"].items() if k != "preprocess"})  # still valid


def test_checkpoint_gradients_are_the_full_data_gradient_split(trained, foreign, tmp_path):
    """Clean + noisy parts add to the gradient of the mean loss over all examples, per group."""
    from memloc.core.classifier.dynamics_pass import checkpoint_gradients, group_indices
    from memloc.core.classifier.splits import RunData

    model, adapter = trained.load_model(2)
    data = RunData.load(trained, CPU)
    stats = checkpoint_gradients(model, data, group_indices(model, adapter), batch_size=97)
    model.zero_grad()
    losses = torch.nn.functional.cross_entropy(model(data.x_train), data.given, reduction="none")
    noisy_part = (losses * data.noisy).sum() / len(losses)
    noisy_part.backward()
    first = adapter.group_parameters(model, adapter.names[0])
    expect = torch.cat([p.grad.reshape(-1) for p in first])
    assert stats.noisy_norm[0] == pytest.approx(float(expect.norm()) / expect.numel() ** 0.5, rel=1e-4)


# --- the manifest -------------------------------------------------------------------------


def test_checkpoints_stay_in_place_with_their_hashes(foreign, tmp_path):
    run = RunFolder(tmp_path / "run")
    import_run(run, config_for(foreign), CPU)
    assert not list(run.checkpoints.glob("*.safetensors"))  # nothing copied
    for entry in run.manifest().entries:
        assert entry.sha256 == file_hash(entry.path) and entry.size == os.path.getsize(entry.path)
    assert run.checkpoint(2) == (foreign / "ckpt" / "weights_epoch2.safetensors").resolve()
    assert run.epochs() == [0, 1, 2]


def test_a_changed_checkpoint_is_refused_and_a_touched_one_is_not(foreign, tmp_path):
    run = RunFolder(tmp_path / "run")
    import_run(run, config_for(foreign), CPU)
    path = foreign / "ckpt" / "weights_epoch1.safetensors"
    os.utime(path, ns=(1, 1))  # same bytes, new mtime: the hash decides
    assert run.load_checkpoint(1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since it was imported"):
        run.load_checkpoint(1)
    with pytest.raises(RunFolderError, match=r"differs in: checkpoints \(files or their bytes\)"):
        import_run(run, config_for(foreign), CPU)  # the same arguments over other bytes


def test_a_pickle_that_runs_code_is_refused_unless_trusted(trained, foreign, tmp_path):
    state = dict(trained.load_checkpoint(1))
    torch.save({"state_dict": state, "extra": Planted()}, foreign / "ckpt" / "weights_epoch1.pt")
    (foreign / "ckpt" / "weights_epoch1.safetensors").unlink()
    run = RunFolder(tmp_path / "run")
    with pytest.raises(UnsafePickleError, match="runs code"):
        import_run(run, config_for(foreign), CPU)
    assert not run.root.exists()  # refused before anything was written
    import_run(run, config_for(foreign, trust_pickle=True), CPU)
    assert run.manifest().trust_pickle and run.load_checkpoint(1)


def test_checkpoints_of_another_model_are_refused_naming_keys(foreign, tmp_path):
    save_tensors(
        foreign / "ckpt" / "weights_epoch1.safetensors",
        {"conv.weight": torch.zeros(2), "fc1.weight": torch.zeros(2)},
    )
    run = RunFolder(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"does not match the model: missing .*unexpected conv.weight"):
        import_run(run, config_for(foreign, init=None), CPU)
    assert not run.root.exists()


# --- without the initialization --------------------------------------------------------


def test_without_init_epoch_zero_is_absent_and_says_what_it_needs(foreign, tmp_path):
    run = RunFolder(tmp_path / "run")
    import_run(run, config_for(foreign, init=None), CPU)
    assert run.epochs() == [1, 2]
    dyn = run.load_dynamics()
    assert np.isnan(dyn.loss[0]).all() and dyn.loss.shape[0] == 3
    with pytest.raises(RunFolderError, match="memloc import --init"):
        run.require_epochs([0])
    with pytest.raises(RunFolderError, match=r"retraining from it needs .*memloc import --init"):
        run.initialization()


# --- resuming and reruns ------------------------------------------------------------------


def test_an_interrupted_import_resumes_at_the_next_checkpoint(foreign, tmp_path):
    whole, parts = RunFolder(tmp_path / "whole"), RunFolder(tmp_path / "parts")
    import_run(whole, config_for(foreign), CPU)
    with pytest.raises(RunFolderError, match="stopped after 2"):
        import_run(parts, config_for(foreign), CPU, fail_after=2)
    assert not json.loads(parts.metrics_path.read_text())["metrics"]["complete"]
    result = import_run(parts, config_for(foreign), CPU)
    assert result.computed == 1  # only the last checkpoint was left
    for name in ("loss", "pred", "grad_clean", "grad_noisy", "grad_cosine"):
        np.testing.assert_array_equal(
            getattr(parts.load_dynamics(), name), getattr(whole.load_dynamics(), name)
        )


def test_a_finished_import_rerun_is_a_no_op_and_other_arguments_are_refused(foreign, tmp_path):
    run = RunFolder(tmp_path / "run")
    import_run(run, config_for(foreign), CPU)
    before = run.metrics_path.read_bytes(), run.config_path.read_bytes()
    assert import_run(run, config_for(foreign), CPU).computed == 0
    assert (run.metrics_path.read_bytes(), run.config_path.read_bytes()) == before
    with pytest.raises(RunFolderError, match=r"different run \(differs in: .*train.lr"):
        import_run(run, config_for(foreign, lr=1e-2), CPU)
    assert (run.metrics_path.read_bytes(), run.config_path.read_bytes()) == before


# --- labels -------------------------------------------------------------------------------


def test_label_file_forms_read_the_same_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5])
    np.save(tmp_path / "a.npy", labels)
    np.savez(tmp_path / "one.npz", whatever=labels)
    np.savez(tmp_path / "named.npz", labels=labels, other=np.zeros(5))
    (tmp_path / "col.csv").write_text("label\n" + "\n".join(map(str, labels)) + "\n")
    order = [4, 0, 2, 1, 3]
    (tmp_path / "ids.csv").write_text("id,label\n" + "".join(f"{i},{labels[i]}\n" for i in order))
    for name in ("a.npy", "one.npz", "named.npz", "col.csv", "ids.csv"):
        np.testing.assert_array_equal(read_label_file(tmp_path / name), labels)
    np.savez(tmp_path / "two.npz", a=labels, b=labels)
    with pytest.raises(DataError, match="give one array or one named 'labels'"):
        read_label_file(tmp_path / "two.npz")


def test_labels_of_the_wrong_length_or_range_are_refused(foreign, tmp_path):
    np.save(foreign / "short.npy", np.zeros(10, dtype=np.int64))
    run = RunFolder(tmp_path / "run")
    with pytest.raises(DataError, match="--labels has 10 labels but the training data has 1437"):
        import_run(run, config_for(foreign, labels=str(foreign / "short.npy")), CPU)
    assert not run.root.exists()
    with pytest.raises(DataError, match=r"outside 0\.\.9"):
        imported_labels(np.array([0, 12]), 2, 10)
    with pytest.raises(DataError, match="not both"):
        imported_labels(np.array([0, 1]), 2, 10, true_labels=np.array([0, 1]), noise_mask=np.array([0, 1]))


def test_a_noise_mask_gives_the_split_and_no_mask_leaves_it_unknown(trained, foreign, tmp_path):
    labels, _ = trained.load_noise()
    np.save(foreign / "mask.npy", labels.mask)
    masked = RunFolder(tmp_path / "masked")
    import_run(masked, config_for(foreign, true_labels=None, noise_mask=str(foreign / "mask.npy")), CPU)
    np.testing.assert_array_equal(masked.load_noise()[0].mask, labels.mask)
    assert masked.mask_known() and masked.summary().noisy_train_acc == trained.summary().noisy_train_acc

    unknown = RunFolder(tmp_path / "unknown")
    import_run(unknown, config_for(foreign, true_labels=None), CPU)
    summary = unknown.summary()
    assert not unknown.mask_known() and "noisy is unknown" in (unknown.mask_note() or "")
    assert summary.test_acc == trained.summary().test_acc  # what needs no split still runs
    assert summary.noisy_train_acc is None or np.isnan(summary.noisy_train_acc)
    assert np.isnan(unknown.load_dynamics().grad_noisy).all()


def test_config_errors_are_memloc_errors():
    with pytest.raises(MemlocError, match="lr"):
        ImportConfig(("x",), "mlp", "digits", "l.npy", lr=-1.0)

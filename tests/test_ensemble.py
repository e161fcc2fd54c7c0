"""The subset-ensemble engine: membership, resuming, executors, the batched trainer, refusals."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.ensemble import engine
from memloc.core.ensemble.batched import BatchedExecutor, StoredInGradientOrder, check_batchable
from memloc.core.ensemble.config import EnsembleConfig, member_seed, plan_ensemble
from memloc.core.ensemble.engine import train_ensemble
from memloc.core.ensemble.folder import EnsembleFolder, load_ensemble
from memloc.core.ensemble.members import build_member, final_logits
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.core.errors import ConfigError, MemlocError
from memloc.core.executors import RayExecutor, SequentialExecutor
from memloc.core.training.subset_fit import epoch_batches
from safetensors.torch import load_file

CPU = torch.device("cpu")
CONFIG = EnsembleConfig(models=4, keep=0.5, seed=3, epochs=2)


class Stop(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every member here trains on one thread, as Ray's one-CPU workers do: CPU reductions split
    over more threads round differently, and the executors are compared bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(digits_run, tmp_path_factory):
    """An uninterrupted sequential ensemble of the digits MLP run."""
    out = tmp_path_factory.mktemp("ens") / "reference"
    summary = train_ensemble(digits_run, CONFIG, SequentialExecutor(), CPU, out=out)
    return summary, load_ensemble(out, digits_run)


def test_membership_is_balanced_and_seeded():
    config = MembershipConfig(models=10, keep=0.7, seed=5)
    m = draw_membership(config, examples=57)
    assert m.matrix.shape == (10, 57) and (m.matrix.sum(0) == 7).all()
    assert m == draw_membership(config, 57)
    assert m != draw_membership(MembershipConfig(10, 0.7, 6), 57)
    assert member_seed(3, 1) == member_seed(3, 1) != member_seed(3, 2) != member_seed(4, 2)


def test_ensemble_folder_holds_plan_and_members(digits_run, reference):
    summary, ens = reference
    folder = EnsembleFolder(summary.folder)
    plan = plan_ensemble(digits_run, CONFIG)
    assert folder.stored() == plan.to_dict()
    # S covers the largest subset at the run's batch size (32), the same for every member.
    largest = ens.membership.matrix.sum(1).max()
    assert plan.steps_per_epoch == -(-largest // 32) and plan.fit.lr == digits_run.config()["train"]["lr"]
    assert ens.train_logits.shape == (4, plan.examples, 10) and ens.train_logits.dtype == np.float32
    assert summary.trained == 4 and summary.models == 4 and 0 <= summary.out_acc <= summary.in_acc <= 1
    # A member trained the way members.py documents gives the stored logits.
    from memloc.core.classifier.splits import RunData
    from memloc.core.training.subset_fit import fit

    data = RunData.load(digits_run, CPU)
    model = build_member(digits_run, 2, CONFIG.seed)
    fit(
        model,
        data.x_train,
        data.given,
        ens.membership.subset(2),
        plan.member_fit(2),
        steps_per_epoch=plan.steps_per_epoch,
    )
    assert np.array_equal(final_logits(model, data.x_test), ens.test_logits[2])


def test_resumed_ensemble_equals_uninterrupted(digits_run, reference, tmp_path):
    out = tmp_path / "resumed"

    def stop_after_two(done, total, description):
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        train_ensemble(digits_run, CONFIG, SequentialExecutor(), CPU, out=out, progress=stop_after_two)
    folder = EnsembleFolder(out)
    assert [folder.is_done(k) for k in range(4)] == [True, True, False, False]
    with pytest.raises(MemlocError, match=r"2 of 4 models done.*--epochs 2 --out") as info:
        load_ensemble(out, digits_run)
    assert "\n" not in str(info.value)
    summary = train_ensemble(digits_run, CONFIG, SequentialExecutor(), CPU, out=out)
    assert summary.trained == 2
    resumed, full = load_ensemble(out, digits_run), reference[1]
    assert np.array_equal(resumed.train_logits, full.train_logits)
    assert np.array_equal(resumed.test_logits, full.test_logits)
    assert resumed.membership == full.membership


def test_ray_finishes_an_ensemble_identically(digits_run, reference, tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs ray (pip install 'memloc[ray]')")
    out = tmp_path / "ray"
    shutil.copytree(reference[0].folder, out)
    for k in (1, 3):
        EnsembleFolder(out).logits_path(k).unlink()
    summary = train_ensemble(digits_run, CONFIG, RayExecutor(num_cpus=2), CPU, out=out)
    assert summary.trained == 2 and summary.executor == "ray"
    ens = load_ensemble(out, digits_run)
    assert np.array_equal(ens.train_logits, reference[1].train_logits)
    assert np.array_equal(ens.test_logits, reference[1].test_logits)


def test_batched_training_equals_separate_training(digits_run, reference, tmp_path):
    out = tmp_path / "batched"
    summary = train_ensemble(digits_run, CONFIG, BatchedExecutor(models_per_pass=3), CPU, out=out)
    assert summary.executor == "batched" and summary.trained == 4
    ens, full = load_ensemble(out, digits_run), reference[1]
    assert np.allclose(ens.train_logits, full.train_logits, atol=1e-4, rtol=0)
    assert np.allclose(ens.test_logits, full.test_logits, atol=1e-4, rtol=0)
    assert not np.array_equal(ens.train_logits[0], ens.train_logits[1])  # members differ


def test_stacked_weights_take_their_gradients_over_without_a_copy():
    """Weights stored in their gradients' memory order: same values, contiguous gradients, no copy."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)) for _ in range(4)
    ]
    params, buffers = stack_module_state(models)
    base = models[0].to("meta")
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    x = torch.randn(4, 7, 6)

    def loss(p: dict) -> torch.Tensor:
        return forward(p, buffers, x).square().sum()

    expected = torch.autograd.grad(loss(params), list(params.values()))
    layout = StoredInGradientOrder.probe(params, loss)
    views = layout.views()
    assert all(torch.equal(views[name], params[name]) for name in params)
    assert views["0.weight"].stride() != params["0.weight"].stride()  # vmap's weight gradient is (K, in, out)
    loss(views).backward()
    for (name, stored), grad in zip(layout.stored.items(), expected, strict=True):
        assert stored.is_contiguous() and stored.grad.is_contiguous(), name
        torch.testing.assert_close(stored.grad.permute(layout.back[name]), grad)


def test_kept_weights_give_the_logits(digits_run, reference, tmp_path):
    out = tmp_path / "weights"
    shutil.copytree(reference[0].folder, out)
    config = EnsembleConfig(**{**CONFIG.__dict__, "keep_weights": True})
    summary = train_ensemble(digits_run, config, SequentialExecutor(), CPU, out=out)
    assert summary.trained == 4  # members without weights are trained again, to the same logits
    model = build_member(digits_run, 1, CONFIG.seed)
    model.load_state_dict(load_file(str(EnsembleFolder(out).weights_path(1))))
    from memloc.core.classifier.splits import RunData

    assert np.array_equal(
        final_logits(model, RunData.load(digits_run, CPU).x_test), reference[1].test_logits[1]
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"models": 1}, "models"), ({"keep": 1.0}, "keep"), ({"keep": 0.0}, "keep"), ({"epochs": 0}, "epochs")],
)
def test_bad_config_is_refused(kwargs, field):
    with pytest.raises(ConfigError) as info:
        EnsembleConfig(**{"models": 4, **kwargs})
    assert info.value.field == field


def test_folder_of_another_run_is_refused(digits_run, cnn_run, reference):
    folder = reference[0].folder
    with pytest.raises(MemlocError, match="ensemble of another run"):
        load_ensemble(folder, cnn_run)
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(MemlocError, match="ensemble of another run"):
        train_ensemble(cnn_run, CONFIG, SequentialExecutor(), CPU, out=folder)
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_batched_refuses_dropout_and_writes_nothing(digits_run, tmp_path, monkeypatch):
    def with_dropout(run, member, seed):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 10))

    monkeypatch.setattr(engine, "build_member", with_dropout)
    with pytest.raises(MemlocError, match=r"dropout \(1: .*--executor sequential or ray") as info:
        train_ensemble(digits_run, CONFIG, BatchedExecutor(), CPU, out=tmp_path / "e")
    assert "\n" not in str(info.value) and not (tmp_path / "e").exists()
    check_batchable(torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.BatchNorm1d(3)))  # both batchable


def test_batched_batchnorm_training_equals_separate_training(cnn_run, tmp_path):
    # Chunks of unequal length train in groups; eval-mode logits read the running statistics,
    # so a group's statistics not written back, or padding in a batch, would show here.
    out = {name: tmp_path / name for name in ("separate", "batched")}
    train_ensemble(cnn_run, CONFIG, SequentialExecutor(), CPU, out=out["separate"])
    train_ensemble(cnn_run, CONFIG, BatchedExecutor(models_per_pass=3), CPU, out=out["batched"])
    separate, batched = (load_ensemble(out[name], cnn_run) for name in ("separate", "batched"))
    plan = plan_ensemble(cnn_run, CONFIG)
    lengths = {
        len(b)
        for k in range(4)
        for b in epoch_batches(
            torch.as_tensor(separate.membership.subset(k)), plan.member_fit(k).seed, 1, plan.steps_per_epoch
        )
    }
    assert len(lengths) > 1  # the case that padding would get wrong
    assert np.allclose(batched.train_logits, separate.train_logits, atol=1e-4, rtol=0)
    assert np.allclose(batched.test_logits, separate.test_logits, atol=1e-4, rtol=0)
    assert not np.array_equal(batched.train_logits[0], batched.train_logits[1])


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MemlocError, match=r"pip install 'memloc\[ray\]'"):
        RayExecutor()


def test_imported_run_needs_training_flags(digits_run, monkeypatch):
    monkeypatch.setattr(RunFolder, "is_imported", lambda self: True)
    with pytest.raises(MemlocError, match=r"give --lr, --batch-size$"):
        plan_ensemble(digits_run, EnsembleConfig(models=4, epochs=2))


def test_ray_job_errors_surface_as_their_one_line(monkeypatch):
    class TaskError(Exception):
        def __init__(self, cause):
            super().__init__(f"Traceback ...\n{cause}")
            self.cause = cause

    class FakeRay:
        exceptions = type("exceptions", (), {"RayTaskError": TaskError})

        @staticmethod
        def get(refs):
            raise TaskError(MemlocError("member 3: bad input"))

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    with pytest.raises(MemlocError, match=r"^member 3: bad input$"):
        RayExecutor()._get([object()])

"""Holdout-retraining KL, CSG, the benign-memorization probe and neural collapse: hand-made
cases with known answers, and one smoke per measure on a real tiny run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from memloc.core.classifier.model_source import build_classifier
from memloc.core.classifier.splits import RunData
from memloc.core.errors import ConfigError, MemlocError
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.locate.classifier.benign import BenignConfig, benign_memorization, knn_accuracy, knn_predict
from memloc.locate.classifier.csg import CSGConfig, cumulative_sample_gradient, input_gradient_norms
from memloc.locate.classifier.group_features import as_rows
from memloc.locate.classifier.holdout_kl import HoldoutKLConfig, holdout_kl, prediction_shift, symmetric_kl
from memloc.locate.classifier.neural_collapse import CollapseConfig, collapse_distances, nc1, neural_collapse
from memloc.locate.classifier.scores import auroc
from memloc.locate.classifier.split_figures import benign_bars, nc1_curves
from torch import nn

CPU = torch.device("cpu")


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


# --- holdout-retraining KL ------------------------------------------------------------------


def test_symmetric_kl_matches_its_definition_and_is_symmetric():
    a = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    b = torch.tensor([[0.0, np.log(3.0)], [2.0, -1.0]])
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = (p * np.log(p / q)).sum() + (q * np.log(q / p)).sum()
    forward, backward = symmetric_kl(a, b), symmetric_kl(b, a)
    assert forward[0].item() == pytest.approx(expected) and forward[1].item() == 0.0
    assert torch.equal(forward, backward)


def test_holdout_kl_is_zero_when_the_fine_tune_changes_nothing():
    model, x = _tiny_model(), torch.randn(20, 5)
    assert np.abs(prediction_shift(model, copy.deepcopy(model), x)).max() == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    kl = holdout_kl(
        model, x, torch.randn(8, 5), torch.randint(0, 3, (8,)), HoldoutKLConfig(epochs=1, lr=1e-12)
    )
    assert kl.shape == (20,) and np.abs(kl).max() < 1e-9
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))  # f itself is kept


@pytest.fixture(scope="module")
def memorizer(digits_run):
    """The run's MLP trained on all of its noisy labels until it fits most of them."""
    data = RunData.load(digits_run, CPU)
    torch.manual_seed(0)
    model = build_classifier(digits_run.spec())
    fit(model, data.x_train, data.given, np.arange(len(data.given)), FitConfig(40, 32, 3e-3))
    return model, data


def test_holdout_kl_flags_the_memorized_noisy_labels(memorizer):
    model, data = memorizer
    assert (model(data.x_train).argmax(1) == data.given)[data.noisy].float().mean() > 0.7
    kl = holdout_kl(model, data.x_train, data.x_test, data.y_test, HoldoutKLConfig(epochs=5, lr=1e-3))
    assert (kl >= 0).all()
    assert auroc(kl, data.labels.mask) > 0.8


# --- CSG -------------------------------------------------------------------------------------


def test_batched_input_gradients_equal_a_per_example_loop():
    model, x, y = _tiny_model(), torch.randn(11, 5), torch.randint(0, 3, (11,))
    loop = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xi), y[i : i + 1]), xi)
        loop.append(float(g.pow(2).sum()))
    assert np.allclose(input_gradient_norms(model, x, y, batch_size=4), loop, rtol=1e-5, atol=1e-12)


def test_a_model_blind_to_its_input_has_zero_input_gradient():
    model = _tiny_model()
    with torch.no_grad():
        model[0].weight.zero_()
    assert input_gradient_norms(model, torch.randn(6, 5), torch.randint(0, 3, (6,))).tolist() == [0.0] * 6


def test_csg_strides_keep_the_last_epoch_and_skip_the_init():
    assert CSGConfig(stride=2).epochs_of(range(6)) == [2, 4, 5]
    assert CSGConfig(stride=2).epochs_of(range(5)) == [2, 4]
    assert CSGConfig().epochs_of([0, 1, 2]) == [1, 2]
    with pytest.raises(MemlocError, match="at least one trained checkpoint"):
        CSGConfig().epochs_of([0])


def test_csg_sums_the_checkpoints_and_flags_noisy_labels(digits_run):
    result = cumulative_sample_gradient(digits_run, CPU, CSGConfig(batch_size=64))
    assert result.epochs == (1, 2, 3)
    model, _ = digits_run.load_model(2)
    data = RunData.load(digits_run, CPU)
    assert np.allclose(result.per_epoch[1], input_gradient_norms(model, data.x_train, data.given))
    assert np.allclose(result.csg, result.per_epoch.sum(0))
    assert result.auroc > 0.6


# --- features, kNN probe and benign memorization -------------------------------------------------------


def test_conv_features_are_averaged_over_positions_or_flattened():
    act = torch.arange(16.0).reshape(2, 2, 2, 2)  # (N, C, H, W)
    assert as_rows(act, "mean").tolist() == [[1.5, 5.5], [9.5, 13.5]]
    assert as_rows(act, "flatten").shape == (2, 8)
    assert torch.equal(as_rows(act[:, :, 0, 0], "mean"), act[:, :, 0, 0])  # linear features stay


def test_knn_probe_is_perfect_on_separable_features():
    rng = np.random.default_rng(0)
    centres = torch.eye(4) * 5
    labels = torch.as_tensor(rng.integers(0, 4, 60))
    test_labels = torch.as_tensor(rng.integers(0, 4, 30))
    train = centres[labels] + torch.as_tensor(rng.normal(size=(60, 4)), dtype=torch.float32) * 0.3
    test = centres[test_labels] + torch.as_tensor(rng.normal(size=(30, 4)), dtype=torch.float32) * 0.3
    assert knn_accuracy(train, labels, test, test_labels, k=5, batch_size=7) == 1.0


def test_knn_ties_go_to_the_more_similar_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    query = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    assert knn_predict(train, labels, query, k=2).tolist() == [0, 1]


def test_benign_probe_on_a_real_run(digits_run):
    result = benign_memorization(digits_run, CPU, BenignConfig(k=10))
    assert [layer.group for layer in result.layers] == ["fc1", "fc2", "head"]
    assert (result.init_epoch, result.final_epoch) == (0, 3)
    accuracies = [a for layer in result.layers for a in (layer.init_accuracy, layer.final_accuracy)]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    head = result.layers[-1]
    assert head.benign and head.final_accuracy > head.init_accuracy + 0.05  # training helped the true labels
    only = benign_memorization(digits_run, CPU, BenignConfig(k=10, groups=("fc2",)))
    assert only.layers == (result.layers[1],)
    assert len(benign_bars(result).axes[0].patches) == 6


# --- neural collapse -------------------------------------------------------------------------


def test_nc1_of_perfectly_collapsed_features_is_zero():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    means = torch.tensor([[1.0, 0, 0, 2], [0, 3.0, 0, 0], [0, 0, -1.0, 1]])
    assert nc1(means[labels], labels) == pytest.approx(0.0, abs=1e-12)


def test_nc1_equals_its_matrix_definition():
    rng = np.random.default_rng(2)
    labels = torch.as_tensor(rng.integers(0, 3, 80))
    feats = torch.as_tensor(rng.normal(size=(80, 6))) + torch.as_tensor(rng.normal(size=(3, 6)))[labels] * 2
    mu = torch.stack([feats[labels == k].mean(0) for k in range(3)])
    within = sum((feats[labels == k] - mu[k]).T @ (feats[labels == k] - mu[k]) for k in range(3)) / 80
    between = (mu - feats.mean(0)).T @ (mu - feats.mean(0)) / 3
    expected = torch.trace(within @ torch.linalg.pinv(between, hermitian=True, rtol=1e-8)) / 3
    assert nc1(feats, labels) == pytest.approx(float(expected), rel=1e-6)


def test_collapse_distance_is_to_the_test_mean_of_the_true_class():
    test = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    test_labels = torch.tensor([0, 0, 1, 1])  # means (1, 0) and (0, 3)
    train = torch.tensor([[1.0, 4.0], [3.0, 3.0]])
    assert collapse_distances(train, torch.tensor([0, 1]), test, test_labels).tolist() == [4.0, 3.0]
    with pytest.raises(MemlocError, match="no example of class 2"):
        collapse_distances(train, torch.tensor([0, 2]), test, test_labels)


def test_neural_collapse_on_a_real_run(digits_run):
    result = neural_collapse(digits_run, CPU, CollapseConfig(stride=2))
    assert result.epochs == (0, 2, 3) and result.groups == ("fc1", "fc2", "head")
    assert result.distance_group == "fc2"
    assert result.nc1.shape == result.mem.shape == (3, 3) and (result.nc1 > 0).all()
    fc2 = result.groups.index("fc2")
    assert result.mem[-1, fc2] == pytest.approx(result.distance[result.noisy].sum())
    # memorizing the noisy labels drags those examples away from their true classes' test means
    assert (result.mem[-1] > result.mem[0]).all()
    assert len(nc1_curves(result).axes[0].lines) == 3


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: HoldoutKLConfig(epochs=0), "epochs"),
        (lambda: HoldoutKLConfig(lr=0.0), "lr"),
        (lambda: HoldoutKLConfig(batch_size=0), "batch_size"),
        (lambda: CSGConfig(stride=0), "stride"),
        (lambda: BenignConfig(k=0), "k"),
        (lambda: BenignConfig(pool="max"), "pool"),
        (lambda: BenignConfig(groups=()), "groups"),
        (lambda: CollapseConfig(stride=0), "stride"),
        (lambda: CollapseConfig(pool="sum"), "pool"),
    ],
)
def test_bad_configs_fail_in_one_line_naming_their_field(make, field):
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.field == field and "\n" not in str(caught.value)


def test_unknown_group_is_one_line(digits_run):
    with pytest.raises(MemlocError, match="unknown layer group 'conv9'"):
        benign_memorization(digits_run, CPU, BenignConfig(groups=("conv9",)))

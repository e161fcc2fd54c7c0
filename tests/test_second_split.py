"""SSFT and the forgetting rate: hand-made correctness curves and attacks, and one real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memloc.core.classifier.model_source import build_classifier
from memloc.core.classifier.splits import RunData
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.core.errors import ConfigError, MemlocError
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.locate.classifier.forgetting_rate import attack_curve, tpr_at_fpr
from memloc.locate.classifier.second_split import (
    SecondSplitConfig,
    forgetting_score,
    forgetting_times,
    second_split_forgetting,
    split_halves,
)
from memloc.locate.classifier.split_figures import forgetting_rate_curve, ssft_curves

# rows: before fine-tuning (0), then after fine-tuning epochs 1..4 (F = 4, "never" = 5)
CORRECT = np.array(
    [
        # a  b  c  d  e  f
        [1, 1, 1, 0, 0, 1],
        [0, 1, 1, 0, 1, 0],
        [0, 0, 1, 0, 1, 1],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
    ],
    dtype=bool,
)


def test_ssft_is_the_epoch_after_which_an_example_stays_wrong():
    # a: wrong from epoch 1 on; b: from 2; c: never forgotten; d: never learned ("never");
    # e: learned during fine-tuning, lost at 3; f: lost at 1, back at 2, lost for good at 3.
    assert forgetting_times(CORRECT).tolist() == [1, 2, 5, 5, 3, 3]


def test_the_score_grows_as_forgetting_comes_sooner_and_is_zero_for_never():
    assert forgetting_score(forgetting_times(CORRECT), 4).tolist() == [4, 3, 0, 0, 2, 2]


def test_ssft_needs_a_row_after_fine_tuning():
    with pytest.raises(MemlocError, match="at least one fine-tuning epoch"):
        forgetting_times(CORRECT[:1])


@pytest.mark.parametrize("examples", [2, 7, 300])
def test_the_two_halves_cover_every_example_exactly_once(examples):
    a, b = split_halves(examples, seed=3)
    assert sorted(np.r_[a, b].tolist()) == list(range(examples))
    assert abs(len(a) - len(b)) <= 1
    again = split_halves(examples, seed=3)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])


def test_an_attack_that_sees_only_the_out_mean_is_a_coin_flip():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=50), rng.uniform(0.5, 2, 50)
    mu_t, sigma_t = rng.normal(size=40), rng.uniform(0.5, 2, 40)
    curve = attack_curve(mu[None], mu_t[None], (mu, sigma), (mu_t, sigma_t))
    assert curve.auc.tolist() == [0.5]


def test_an_attack_on_well_separated_members_succeeds_and_then_fades():
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=50), np.ones(50)
    mu_t, sigma_t = rng.normal(size=40), np.ones(40)
    members = np.stack([mu + 6, mu + rng.normal(size=50) * 0.01])  # epoch 0: far above the out fit
    others = np.stack([mu_t + rng.normal(size=40) * 0.01] * 2)
    curve = attack_curve(members, others, (mu, sigma), (mu_t, sigma_t), fpr=0.01)
    assert curve.auc[0] == 1.0 and curve.tpr[0] == 1.0
    assert 0.2 < curve.auc[1] < 0.8


def test_tpr_at_fpr_reads_the_roc_curve():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.3, 0.2, 0.0])
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(labels, scores, 0.25) == pytest.approx(2 / 3)
    assert tpr_at_fpr(labels, scores, 1.0) == 1.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"finetune_epochs": 0}, "finetune_epochs"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"finetune_lr": -1.0}, "finetune_lr"),
        ({"fpr": 1.5}, "fpr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_second_split_config_names_its_field(kwargs, field):
    with pytest.raises(ConfigError) as caught:
        SecondSplitConfig(**kwargs)
    assert caught.value.field == field and "\n" not in str(caught.value)


def test_the_first_half_gets_the_runs_steps_and_overrides_win():
    train = {"epochs": 3, "lr": 1e-3, "batch_size": 32, "weight_decay": 0.0}
    first, tune = SecondSplitConfig(finetune_epochs=4).fit_configs(train)
    assert (first.epochs, first.lr, first.batch_size) == (6, 1e-3, 32)  # half the set, twice the epochs
    assert (tune.epochs, tune.lr) == (4, 1e-3)
    first, tune = SecondSplitConfig(epochs=5, lr=2e-3, finetune_lr=1e-4).fit_configs(train)
    assert (first.epochs, first.lr, tune.lr) == (5, 2e-3, 1e-4)


def _ensemble(run, models: int = 4) -> EnsembleLogits:
    """A small real ensemble of the run's MLP on half-subsets (few epochs: it is a smoke test)."""
    data = RunData.load(run, torch.device("cpu"))
    membership = draw_membership(MembershipConfig(models=models, keep=0.5, seed=0), len(data.given))
    train, test = [], []
    for k in range(models):
        torch.manual_seed(100 + k)
        model = build_classifier(run.spec())
        fit(model, data.x_train, data.given, membership.subset(k), FitConfig(20, 32, 3e-3, seed=k))
        with torch.no_grad():
            train.append(model(data.x_train).numpy())
            test.append(model(data.x_test).numpy())
    return EnsembleLogits(
        membership, np.stack(train), np.stack(test), data.given.numpy(), data.y_test.numpy()
    )


def test_noisy_examples_are_forgotten_sooner_on_a_real_run(digits_run):
    config = SecondSplitConfig(finetune_epochs=4, epochs=30)
    result = second_split_forgetting(digits_run, torch.device("cpu"), config, ensemble=_ensemble(digits_run))
    n = len(result.noisy)
    assert result.ssft.shape == (n,) and result.correct.shape == (5, n)
    assert set(np.unique(result.half).tolist()) == {0, 1}
    assert ((result.ssft >= 1) & (result.ssft <= result.never)).all()
    assert result.score[result.noisy].mean() > result.score[~result.noisy].mean() + 0.5
    assert result.auroc > 0.6
    # noisy examples, memorized on the first half, are lost on the second; clean ones stay
    assert result.still_correct(result.noisy)[-1] < result.still_correct(~result.noisy)[-1] - 0.3
    assert result.forgetting is not None
    for curve in result.forgetting:
        assert curve.auc.shape == (5,) and ((curve.auc >= 0) & (curve.auc <= 1)).all()
        assert curve.auc[0] > 0.55  # right after training on its half, the target leaks membership
    for fig in (ssft_curves(result), forgetting_rate_curve(result)):
        assert fig.axes and fig.axes[0].lines


def test_an_ensemble_of_another_run_is_refused(digits_run):
    ens = _ensemble(digits_run, models=2)
    other = EnsembleLogits(
        ens.membership, ens.train_logits, ens.test_logits, (ens.given + 1) % 10, ens.test_labels
    )
    with pytest.raises(MemlocError, match="not this run's"):
        second_split_forgetting(
            digits_run, torch.device("cpu"), SecondSplitConfig(finetune_epochs=1), ensemble=other
        )


def test_second_split_forgetting_reproduces_from_its_seed(digits_run):
    config = SecondSplitConfig(finetune_epochs=2, epochs=3, seed=5)
    first = second_split_forgetting(digits_run, torch.device("cpu"), config)
    again = second_split_forgetting(digits_run, torch.device("cpu"), config)
    assert np.array_equal(first.correct, again.correct) and np.array_equal(first.half, again.half)

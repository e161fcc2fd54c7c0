"""Label memorization, C-score and counterfactual memorization on hand-made ensembles."""

from __future__ import annotations

import numpy as np
import pytest
from ensemble_cases import ensemble_from, random_ensemble
from memloc.core.errors import ConfigError, MemlocError
from memloc.locate.classifier.subset_memorization import (
    CounterfactualConfig,
    CScoreConfig,
    LabelMemorizationConfig,
    c_score,
    counterfactual_memorization,
    label_memorization,
)

# 4 models, 3 examples; every column has 2 models in and 2 out
MATRIX = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)


def known_case():
    correct = np.zeros_like(MATRIX)
    correct[:, 0] = MATRIX[:, 0]  # right only when in
    correct[:, 1] = True  # always right
    correct[:, 2] = MATRIX[:, 2] | (np.arange(4) == 1)  # in: both right; out: one of two
    return ensemble_from(MATRIX, correct)


def test_matrix_is_balanced():
    assert (MATRIX.sum(0) == 2).all()


def test_label_memorization_known_values():
    result = label_memorization(known_case(), LabelMemorizationConfig())
    np.testing.assert_allclose(result.mem, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(result.p_in, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(result.p_out, [0.0, 1.0, 0.5])
    assert result.memorized == 2 and result.mean == pytest.approx(0.5)


def test_c_score_known_values_and_average_over_ensembles():
    ens = known_case()
    one = c_score(ens, CScoreConfig())
    np.testing.assert_allclose(one.score, [0.0, 1.0, 0.5])
    np.testing.assert_allclose(one.memorized, [1.0, 0.0, 0.5])
    # a second ensemble where every model is right: its held-out accuracy is 1 everywhere
    always = ensemble_from(MATRIX, np.ones_like(MATRIX))
    both = c_score([ens, always], CScoreConfig())
    np.testing.assert_allclose(both.score, [0.5, 1.0, 0.75])
    assert both.per_ensemble.shape == (2, 3)


def test_c_score_refuses_ensembles_of_other_examples():
    other = random_ensemble(4, 5, 2, seed=0)
    with pytest.raises(MemlocError, match="share their training examples"):
        c_score([known_case(), other], CScoreConfig())


def test_counterfactual_known_value():
    # p(given) is 0.75 when right and 0.25 when wrong (ensemble_cases.two_class_logits)
    result = counterfactual_memorization(known_case(), CounterfactualConfig())
    np.testing.assert_allclose(result.score, [0.5, 0.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(result.p_out, [0.25, 0.75, 0.5], atol=1e-6)


def test_mem_matches_a_per_example_loop():
    ens = random_ensemble(10, 40, 3, seed=4)
    inside, correct = ens.membership.matrix, ens.train_correct()
    loop = [correct[inside[:, i], i].mean() - correct[~inside[:, i], i].mean() for i in range(40)]
    np.testing.assert_allclose(label_memorization(ens, LabelMemorizationConfig()).mem, loop)


@pytest.mark.parametrize("side", ["in", "out"])
def test_an_example_without_in_or_out_models_is_one_clear_error(side):
    matrix = MATRIX.copy()
    matrix[:, 1] = side == "out"  # example 1 in every model (no out) or in none (no in)
    ens = ensemble_from(matrix, np.ones_like(matrix))
    for measure in (
        lambda: label_memorization(ens, LabelMemorizationConfig()),
        lambda: counterfactual_memorization(ens, CounterfactualConfig()),
    ):
        with pytest.raises(MemlocError) as err:
            measure()
        message = str(err.value)
        assert "\n" not in message and "training example 1" in message and f"models {side}" in message


def test_c_score_needs_out_models_only():
    matrix = MATRIX.copy()
    matrix[:, 1] = False  # example 1 in no model: C-score is still defined
    assert c_score(ensemble_from(matrix, np.ones_like(matrix)), CScoreConfig()).score[1] == 1.0
    matrix[:, 1] = True
    with pytest.raises(MemlocError, match="models out"):
        c_score(ensemble_from(matrix, np.ones_like(matrix)), CScoreConfig())


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LabelMemorizationConfig(min_models=0), "min_models"),
        (lambda: LabelMemorizationConfig(threshold=1.5), "threshold"),
        (lambda: CScoreConfig(min_models=0), "min_models"),
        (lambda: CounterfactualConfig(min_models=-1), "min_models"),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field and "\n" not in str(err.value)


def test_on_a_tiny_trained_digits_ensemble_mislabeled_examples_are_memorized():
    import torch
    from memloc.core.ensemble.logits import EnsembleLogits
    from memloc.core.ensemble.membership import MembershipConfig, draw_membership
    from memloc.core.training.subset_fit import FitConfig, fit
    from memloc.locate.classifier.scores import auroc
    from sklearn.datasets import load_digits
    from torch import nn

    data = load_digits()
    x = torch.tensor(data.data[:240] / 16.0, dtype=torch.float32)
    rng = np.random.default_rng(0)
    noisy = rng.random(240) < 0.15
    given = np.where(noisy, (data.target[:240] + rng.integers(1, 10, 240)) % 10, data.target[:240])
    membership = draw_membership(MembershipConfig(models=8, keep=0.5, seed=0), 240)
    logits = []
    for k in range(8):
        torch.manual_seed(k)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        fit(
            model,
            x,
            torch.tensor(given),
            membership.subset(k),
            FitConfig(epochs=100, batch_size=32, lr=1e-2, seed=k),
        )
        with torch.no_grad():
            logits.append(model.eval()(x).numpy())
    train = np.stack(logits)
    ens = EnsembleLogits(membership, train, train[:, :5], given, given[:5])
    mem = label_memorization(ens, LabelMemorizationConfig()).mem
    # 120 examples per model: clean ones keep a generalization gap, mislabeled ones are only right when in
    assert mem[noisy].mean() > 0.8 and abs(mem[~noisy].mean()) < 0.3
    assert auroc(mem, noisy) > 0.9
    assert auroc(c_score(ens, CScoreConfig()).memorized, noisy) > 0.9
    assert auroc(counterfactual_memorization(ens, CounterfactualConfig()).score, noisy) > 0.9

"""Train-to-test influence from a subset ensemble: known pairs, chunking, the paper's filter."""

from __future__ import annotations

import numpy as np
import pytest
from ensemble_cases import ensemble_from, random_ensemble
from memloc.core.errors import ConfigError, MemlocError
from memloc.locate.classifier.influence import InfluenceConfig, influence_block, influence_pairs
from memloc.locate.classifier.subset_memorization import LabelMemorizationConfig, label_memorization


def dense_top(ens, top, min_mem=None, min_influence=None):
    """The whole N x M matrix by per-pair means, sorted by (−influence, train, test)."""
    inside, correct = ens.membership.matrix, ens.test_correct()
    mem = label_memorization(ens, LabelMemorizationConfig()).mem
    rows = []
    for i in range(inside.shape[1]):
        for j in range(correct.shape[1]):
            v = correct[inside[:, i], j].mean() - correct[~inside[:, i], j].mean()
            if (min_influence is None or v >= min_influence) and (min_mem is None or mem[i] >= min_mem):
                rows.append((-v, i, j))
    rows.sort()
    return [(i, j, -v) for v, i, j in rows[:top]], len(rows)


def test_a_test_example_right_only_with_one_training_example_has_influence_one():
    matrix = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    correct = matrix.copy()  # every training example right only when in: mem 1
    test_correct = np.stack(
        [matrix[:, 2], np.ones(4, bool)], 1
    )  # test 0 follows train 2; test 1 always right
    result = influence_pairs(ensemble_from(matrix, correct, test_correct), InfluenceConfig(top=3))
    best = result.pairs[0]
    assert (best.train, best.test, best.influence, best.mem) == (2, 0, 1.0, 1.0)
    assert result.max_influence == 1.0 and result.passing == 6
    # train 0 and 1 each share one in model with train 2: P(test 0 right | in) = 1/2, | out = 1/2
    assert [(p.train, p.test, p.influence) for p in result.pairs[1:]] == [(0, 0, 0.0), (0, 1, 0.0)]


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_chunking_does_not_change_the_result(chunk):
    ens = random_ensemble(12, 50, 30, seed=1)
    expected, passing = dense_top(ens, top=25)
    result = influence_pairs(ens, InfluenceConfig(top=25, chunk=chunk))
    got = [(p.train, p.test, p.influence) for p in result.pairs]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected])
    assert result.passing == passing == 50 * 30


@pytest.mark.parametrize("chunk", [3, 64])
def test_the_paper_filter_keeps_only_memorized_influential_pairs(chunk):
    ens = random_ensemble(12, 64, 20, seed=2)
    expected, passing = dense_top(ens, top=1000, min_mem=0.25, min_influence=0.15)
    result = influence_pairs(ens, InfluenceConfig.paper(top=1000, chunk=chunk))
    assert passing > 0 and result.passing == passing == len(result.pairs)
    assert [(p.train, p.test) for p in result.pairs] == [e[:2] for e in expected]
    assert all(p.mem >= 0.25 and p.influence >= 0.15 for p in result.pairs)


def test_block_equals_the_dense_difference_of_means():
    ens = random_ensemble(10, 8, 6, seed=3)
    inside, correct = ens.membership.matrix, ens.test_correct()
    block = influence_block(inside, correct)
    i, j = 5, 4
    assert block[i, j] == pytest.approx(correct[inside[:, i], j].mean() - correct[~inside[:, i], j].mean())


def test_an_example_without_out_models_is_one_clear_error():
    matrix = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=bool)
    with pytest.raises(MemlocError, match="training example 0"):
        influence_pairs(ensemble_from(matrix, matrix), InfluenceConfig())


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: InfluenceConfig(top=0), "top"),
        (lambda: InfluenceConfig(chunk=0), "chunk"),
        (lambda: InfluenceConfig(min_mem=float("nan")), "min_mem"),
        (lambda: InfluenceConfig(min_influence=float("inf")), "min_influence"),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field and "\n" not in str(err.value)


def test_influence_grid_shows_each_pair_as_two_pictures(tmp_path):
    from memloc.locate.classifier.ensemble_figures import influence_grid
    from memloc.locate.classifier.influence import InfluencePair

    rng = np.random.default_rng(5)
    train, test = rng.random((10, 64)), rng.random((4, 1, 8, 8))
    pairs = [InfluencePair(3, 1, 0.5, 0.9), InfluencePair(7, 2, 0.3, 0.4), InfluencePair(0, 0, 0.2, 0.3)]
    fig = influence_grid(pairs, train, test, image_shape=(8, 8), given=np.arange(10) % 10, columns=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6 and shown[0].get_title().startswith("train 3 y=3")
    np.testing.assert_allclose(shown[0].images[0].get_array().shape, (8, 8))
    fig.savefig(tmp_path / "pairs.png")
    with pytest.raises(MemlocError, match="image_shape"):
        influence_grid(pairs, train, test)

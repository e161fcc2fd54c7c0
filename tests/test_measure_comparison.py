"""The comparison of memorization measures: AUROC per measure and their Spearman matrix."""

import numpy as np
import pytest
from memloc.core.errors import MemlocError
from memloc.locate.classifier.measure_comparison import (
    MeasureComparison,
    compare_measures,
    spearman_figure,
)


def test_rank_correlation_sees_through_monotone_transforms_and_reversals():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    noisy = a > 1.0
    cmp = compare_measures({"a": a, "cubed": a**3, "reversed": -a, "other": rng.normal(size=200)}, noisy)
    assert cmp.correlation("a", "cubed") == pytest.approx(1.0)
    assert cmp.correlation("a", "reversed") == pytest.approx(-1.0)
    assert abs(cmp.correlation("a", "other")) < 0.3
    assert cmp.auroc["a"] == pytest.approx(1.0) and cmp.auroc["reversed"] == pytest.approx(0.0)
    assert np.allclose(cmp.spearman, cmp.spearman.T)


def test_without_a_noise_mask_every_auroc_is_nan_but_the_correlations_stand():
    a = np.arange(10.0)
    cmp = compare_measures({"a": a, "b": a[::-1].copy()}, None)
    assert all(np.isnan(v) for v in cmp.auroc.values())
    assert cmp.correlation("a", "b") == pytest.approx(-1.0)


def test_round_trip_and_figure():
    a = np.arange(20.0)
    cmp = compare_measures({"a": a, "b": np.sqrt(a)}, a > 15)
    back = MeasureComparison.from_dict(cmp.to_dict())
    assert back.names == cmp.names and np.allclose(back.spearman, cmp.spearman)
    assert len(spearman_figure(cmp).axes) == 2  # the map and its colour bar


def test_measures_of_different_lengths_are_refused():
    with pytest.raises(MemlocError, match="different numbers of examples"):
        compare_measures({"a": np.zeros(3), "b": np.zeros(4)}, None)

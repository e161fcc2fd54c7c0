"""LiRA with every model as target: separable and identical φ, leave-target-out fits, φ itself."""

from __future__ import annotations

import numpy as np
import pytest
from ensemble_cases import random_ensemble
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.core.errors import ConfigError, MemlocError
from memloc.locate.classifier.lira import logit_confidence
from memloc.locate.classifier.lira_attack import (
    VARIANTS,
    LiraConfig,
    evaluate_lira,
    lira_from_phi,
    negative_cross_entropy,
    shadow_statistics,
    unseen_statistics,
)


def gaussian_phi(inside: np.ndarray, mu_in: float, mu_out: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(inside, rng.normal(mu_in, 1.0, inside.shape), rng.normal(mu_out, 1.0, inside.shape))


def test_separated_gaussians_give_auc_one():
    inside = draw_membership(MembershipConfig(models=16, seed=1), 300).matrix
    phi = gaussian_phi(inside, 5.0, -5.0, seed=2)
    result = lira_from_phi(phi, inside, phi, LiraConfig())
    assert [v.variant for v in result.variants] == list(VARIANTS)
    for name in ("online_fixed", "offline_fixed", "loss"):
        assert result.variant(name).auc == 1.0 and result.variant(name).tpr_at_0_1pct == 1.0
    # 7 or 8 shadows per side: now and then a per-example σ comes out far too small and one pair swaps
    for name in ("online", "offline"):
        assert result.variant(name).auc > 0.999 and result.variant(name).tpr_at_1pct > 0.99
    assert (
        result.variant("online").members == inside.sum()
        and result.variant("online").nonmembers == (~inside).sum()
    )


def test_identical_distributions_give_chance():
    inside = draw_membership(MembershipConfig(models=16, seed=3), 2000).matrix
    phi = gaussian_phi(inside, 0.0, 0.0, seed=4)
    result = lira_from_phi(phi, inside, phi, LiraConfig())
    for summary in result.variants:
        assert summary.auc == pytest.approx(0.5, abs=0.02), summary.variant
        assert summary.tpr_at_1pct < 0.03


def test_the_compact_curve_is_a_monotone_step_on_a_log_grid():
    inside = draw_membership(MembershipConfig(models=8, seed=5), 200).matrix
    phi = gaussian_phi(inside, 1.0, 0.0, seed=6)
    summary = lira_from_phi(phi, inside, phi, LiraConfig(grid=30, min_fpr=1e-4)).variant("online")
    assert summary.fpr.shape == summary.tpr.shape == (30,)
    assert summary.fpr[0] == pytest.approx(1e-4) and summary.fpr[-1] == 1.0 and summary.tpr[-1] == 1.0
    assert (np.diff(summary.tpr) >= 0).all() and (np.diff(np.log(summary.fpr)) > 0).all()
    assert 0.5 < summary.auc < 1.0


def test_leave_target_out_statistics_equal_brute_force():
    inside = draw_membership(MembershipConfig(models=7, keep=0.5, seed=7), 9).matrix
    phi = np.random.default_rng(8).normal(3.0, 2.0, inside.shape)
    stats = shadow_statistics(phi, inside)
    for t in range(7):
        shadows = np.arange(7) != t
        ss_in = ss_out = 0.0
        dof_in = dof_out = 0
        for i in range(9):
            ins = phi[shadows & inside[:, i], i]
            outs = phi[shadows & ~inside[:, i], i]
            assert stats.mu_in[t, i] == pytest.approx(ins.mean())
            assert stats.mu_out[t, i] == pytest.approx(outs.mean())
            assert stats.sigma_in[t, i] == pytest.approx(ins.std(ddof=1) if len(ins) > 1 else 0.0, abs=1e-9)
            assert stats.sigma_out[t, i] == pytest.approx(
                outs.std(ddof=1) if len(outs) > 1 else 0.0, abs=1e-9
            )
            ss_in += ((ins - ins.mean()) ** 2).sum()
            ss_out += ((outs - outs.mean()) ** 2).sum()
            dof_in += len(ins) - 1
            dof_out += len(outs) - 1
        assert stats.sigma_in_fixed[t] == pytest.approx(np.sqrt(ss_in / dof_in))
        assert stats.sigma_out_fixed[t] == pytest.approx(np.sqrt(ss_out / dof_out))
    mu, sigma = unseen_statistics(phi)
    np.testing.assert_allclose(mu[2], phi[np.arange(7) != 2].mean(0))
    np.testing.assert_allclose(sigma[2], phi[np.arange(7) != 2].std(0, ddof=1))


def test_phi_is_the_log_odds_of_the_label():
    logits = np.random.default_rng(9).normal(0, 3, (5, 6, 4))
    labels = np.random.default_rng(10).integers(0, 4, (5, 6))
    p = np.exp(negative_cross_entropy(logits, labels))
    np.testing.assert_allclose(logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-9, atol=1e-9)


def test_ensemble_lira_with_the_test_set_as_nonmembers():
    ens = random_ensemble(8, 60, 25, seed=11)
    plain = evaluate_lira(ens, LiraConfig())
    both = evaluate_lira(ens, LiraConfig(include_test=True))
    assert both.variant("online").nonmembers == plain.variant("online").nonmembers  # no in fit on test
    for name in ("offline", "offline_fixed", "loss"):
        assert both.variant(name).nonmembers == plain.variant(name).nonmembers + 8 * 25
    assert plain.variant("loss").auc > 0.55  # members are right more often (ensemble_cases' in-effect)


def test_too_few_models_in_or_out_is_one_clear_error():
    inside = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)  # example 0: 2 in, 2 out; fine
    inside[3, 0] = True  # example 0 now has one model out
    phi = np.zeros(inside.shape)
    with pytest.raises(MemlocError) as err:
        lira_from_phi(phi, inside, phi, LiraConfig())
    assert "training example 0" in str(err.value) and "at least 2" in str(err.value)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LiraConfig(grid=1), "grid"),
        (lambda: LiraConfig(min_fpr=0.0), "min_fpr"),
        (lambda: LiraConfig(min_fpr=1.0), "min_fpr"),
    ],
)
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field and "\n" not in str(err.value)


def test_roc_figure_has_every_variant_and_chance_on_log_axes(tmp_path):
    from memloc.locate.classifier.ensemble_figures import in_out_histograms, lira_roc_figure

    inside = draw_membership(MembershipConfig(models=8, seed=12), 100).matrix
    phi = gaussian_phi(inside, 1.0, 0.0, seed=13)
    fig = lira_roc_figure(lira_from_phi(phi, inside, phi, LiraConfig()))
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert len(ax.get_lines()) == len(VARIANTS) + 1 and ax.get_legend_handles_labels()[1][-1] == "chance"
    fig.savefig(tmp_path / "roc.png")
    hist = in_out_histograms(
        [(phi[inside[:, i], i], phi[~inside[:, i], i]) for i in range(3)], ["a", "b", "c"]
    )
    assert len(hist.axes) == 3 and hist.axes[0].get_legend_handles_labels()[1] == ["in (4)", "out (4)"]
    with pytest.raises(MemlocError):
        in_out_histograms([], [])


def test_a_single_in_shadow_falls_back_to_the_pooled_sigma_instead_of_a_zero_one():
    # K = 4, keep 0.5: a member's shadows hold one in model, whose φ has no spread of its own.
    from memloc.core.ensemble.membership import MembershipConfig, draw_membership
    from memloc.locate.classifier.lira_attack import LiraConfig, lira_from_phi, shadow_statistics

    rng = np.random.default_rng(0)
    inside = draw_membership(MembershipConfig(4, 0.5, 0), 400).matrix
    phi = np.where(inside, 3.0, 0.0) + rng.normal(size=inside.shape)
    stats = shadow_statistics(phi, inside)
    single = (inside.sum(0)[None, :] - inside) == 1
    assert np.allclose(
        stats.sigma_in[single], np.broadcast_to(stats.sigma_in_fixed[:, None], single.shape)[single]
    )
    online = lira_from_phi(phi, inside, phi, LiraConfig()).variant("online")
    assert online.auc > 0.9  # a zero σ made it 0.0

"""MEMIT (Meng et al. 2023): the solve, the layer spreading, and edits on the fixture LM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from memloc.core.adapters import LayerNotFoundError
from memloc.core.errors import ConfigError
from memloc.core.hooks import trace
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode
from memloc.core.sites import Site
from memloc.edit.delta import WeightDelta, apply, weights_hash
from memloc.edit.memit import (
    MemitConfig,
    MemitError,
    compute_memit,
    mom2_weight_for,
    optimize_targets,
    solve_layer_update,
    spread_update,
    subject_keys,
    subject_states,
)
from memloc.edit.targets import TargetConfig, optimize_target
from tiny_lms import tiny_lm

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run many small ops: extra threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TEMPLATES = ("{}", "red and blue . {}", "the river of the city . {}")


def second_moments(lm, layers, texts) -> dict[int, torch.Tensor]:
    """C = E[k kᵀ] over every token of ``texts``, plus a little identity so it is definite."""
    sites = [Site(layer, "mlp.post") for layer in layers]
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for text in texts:
        with trace(lm.model, lm.adapter, sites) as seen, torch.no_grad():
            lm.model(input_ids=torch.tensor([lm.tokenizer(text)["input_ids"]]))
        for layer in layers:
            rows[layer].append(seen[Site(layer, "mlp.post")][0].double())
    moments = {}
    for layer, acts in rows.items():
        keys = torch.cat(acts)
        c = keys.T @ keys / len(keys)
        moments[layer] = c + 1e-3 * c.trace() / len(c) * torch.eye(len(c), dtype=torch.float64)
    return moments


# --- the solve ----------------------------------------------------------------------


def random_system(f=12, d=6, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(f, n, generator=gen, dtype=torch.float64)
    residuals = torch.randn(d, n, generator=gen, dtype=torch.float64)
    basis = torch.randn(f, f, generator=gen, dtype=torch.float64)
    c = basis @ basis.T / f + 0.1 * torch.eye(f, dtype=torch.float64)
    return keys, residuals, c


def test_solve_satisfies_the_normal_equations():
    keys, residuals, c = random_system()
    left, right, how = solve_layer_update(keys, residuals, c, mom2_weight=3.0)
    assert how == "cholesky"
    dw = left @ right.T
    # ΔW minimises λ tr(ΔW C ΔWᵀ) + ||ΔW K − R||²: its gradient vanishes.
    torch.testing.assert_close(dw @ (3.0 * c + keys @ keys.T), residuals @ keys.T)


def test_solve_writes_the_residuals_exactly_as_lambda_vanishes():
    keys, residuals, c = random_system()
    left, right, _ = solve_layer_update(keys, residuals, c, mom2_weight=1e-9)
    torch.testing.assert_close((left @ right.T) @ keys, residuals, rtol=1e-6, atol=1e-6)
    # With a real λ the keys are written only partly: the C term pulls the update back.
    left, right, _ = solve_layer_update(keys, residuals, c, mom2_weight=10.0)
    assert ((left @ right.T) @ keys - residuals).norm() > 0.1 * residuals.norm()


@pytest.mark.parametrize("width", [64, 1024])
def test_default_lambda_writes_a_real_share_of_a_typical_key_at_any_width(width):
    # A key drawn like the statistics has kᵀC⁻¹k ≈ F, so the share of its residual that
    # one edit writes, a / (1 + a) with a = kᵀC⁻¹k / λ, must not depend on F. A fixed
    # λ = 15,000 (tuned for GPT-J's F = 16,384) wrote 0.4–6 % of it at these widths.
    gen = torch.Generator().manual_seed(width)
    mixing = torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5
    c = mixing @ mixing.T  # the keys' exact second moment
    keys = mixing @ torch.randn(width, 8, generator=gen, dtype=torch.float64)
    residuals = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    lam = mom2_weight_for(MemitConfig(), width)
    shares = []
    for i in range(keys.shape[1]):  # one edit at a time
        left, right, _ = solve_layer_update(keys[:, i : i + 1], residuals[:, i : i + 1], c, lam)
        written = (left @ right.T) @ keys[:, i]
        shares.append((written @ residuals[:, i] / residuals[:, i].norm() ** 2).item())
    mean = sum(shares) / len(shares)
    assert 0.35 < mean < 0.7, shares
    assert mom2_weight_for(MemitConfig(mom2_weight=7.0), width) == 7.0


def test_non_positive_lambda_is_one_clear_error():
    with pytest.raises(ConfigError, match="mom2_weight must be positive"):
        MemitConfig(mom2_weight=0.0)


def test_singular_system_is_one_clear_error():
    keys, residuals, _ = random_system(n=3)
    with pytest.raises(MemitError, match="singular"):
        solve_layer_update(keys, residuals, torch.zeros(12, 12, dtype=torch.float64), 1.0)


# --- spreading hand-set targets over the layers -------------------------------------


def tiny_facts() -> list[Fact]:
    return [
        Fact("a", "the capital of {} is", "Zorbia", "Oslo", "Lima"),
        Fact("b", "{} is located in", "the Eiffel tower", "Paris", "Rome"),
        Fact("c", "the language of {} is", "Quelon", "French", "German"),
    ]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_spread_moves_the_last_layer_state_to_hand_set_targets(arch):
    lm = tiny_lm(arch)
    facts = tiny_facts()
    config = MemitConfig(layers=(0, 1), mom2_weight=1e-2, batch_size=2)
    stats = second_moments(lm, config.layers, ["the city of Paris is in the country", "red and blue river"])
    start = subject_states(lm, facts, 1, batch_size=8)
    gen = torch.Generator().manual_seed(1)
    targets = start + 0.5 * torch.randn(start.shape, generator=gen, dtype=torch.float64)
    before = weights_hash(lm.model)
    parts, info = spread_update(lm, facts, targets, stats, config, TEMPLATES)
    assert weights_hash(lm.model) == before
    assert [p.layer for p in parts] == [0, 1] and all(p.rank == len(facts) for p in parts)
    assert [row["solver"] for row in info] == ["cholesky", "cholesky"]
    with apply(lm.model, lm.adapter, WeightDelta("memit", tuple(parts))):
        reached = subject_states(lm, facts, 1, batch_size=8)
    assert (reached - targets).norm() < 0.1 * (start - targets).norm()


def test_keys_and_spread_do_not_depend_on_batch_size():
    lm = tiny_lm("gpt2")
    facts = tiny_facts()
    one = subject_keys(lm, facts, 1, TEMPLATES, batch_size=1)
    many = subject_keys(lm, facts, 1, TEMPLATES, batch_size=100)
    torch.testing.assert_close(one, many, rtol=1e-6, atol=1e-6)
    stats = {layer: torch.eye(lm.adapter.d_mlp, dtype=torch.float64) for layer in (1, 2)}
    targets = subject_states(lm, facts, 2, batch_size=4) + 1.0
    runs = [
        spread_update(lm, facts, targets, stats, MemitConfig(layers=(1, 2), batch_size=b), TEMPLATES)[0]
        for b in (1, 7)
    ]
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a.dense(), b.dense(), rtol=1e-5, atol=1e-7)


def test_key_is_the_template_mean_at_the_subjects_last_token():
    lm = tiny_lm("llama")
    fact = tiny_facts()[1]
    got = subject_keys(lm, [fact], 2, TEMPLATES, batch_size=3)[:, 0]
    expected = []
    for template in TEMPLATES:
        enc = encode(lm.tokenizer, template.replace("{}", fact.text), fact.subject)
        with trace(lm.model, lm.adapter, [Site(2, "mlp.post")]) as seen, torch.no_grad():
            lm.model(input_ids=torch.tensor([enc.ids]))
        expected.append(seen[Site(2, "mlp.post")][0, enc.last_subject].double())
    torch.testing.assert_close(got, torch.stack(expected).mean(0))


def test_layer_out_of_range_is_one_line():
    lm = tiny_lm("gpt2")
    stats = {5: torch.eye(lm.adapter.d_mlp)}
    with pytest.raises(LayerNotFoundError, match="out of range") as err:
        compute_memit(lm, tiny_facts(), stats, MemitConfig(layers=(1, 5)), TEMPLATES)
    assert "\n" not in str(err.value)
    with pytest.raises(MemitError, match="ascending"):
        compute_memit(lm, tiny_facts(), stats, MemitConfig(layers=(2, 1)), TEMPLATES)


# --- the fixture LM: real facts -------------------------------------------------------

# The fixture LM reads its facts from the residual stream at the subject early: a δ at
# the subject's last token flips a fact from layer 0 and hardly from layer 2 on, and
# MEMIT's clamp of 0.75·||h|| is too tight for its small residual norms. So these
# tests edit layer 0 with ROME's clamp, and a λ set for its C from a few dozen prompts.
FIXTURE_CONFIG = MemitConfig(layers=(0,), mom2_weight=1.0, target=TargetConfig(clamp=4.0), batch_size=16)


@pytest.fixture(scope="module")
def fixture_lm():
    if not (FIXTURE / "fixture-lm").exists():
        pytest.skip("fixtures/fixture-lm is not built")
    lm = load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")
    lm.model.requires_grad_(False)
    return lm


@pytest.fixture(scope="module")
def fixture_facts():
    return load_facts(str(FIXTURE / "fixture-facts.json"))


@pytest.fixture(scope="module")
def fixture_stats(fixture_lm, fixture_facts):
    texts = [prompt for fact in fixture_facts[::12] for prompt in fact.prompts()]
    return second_moments(fixture_lm, range(fixture_lm.n_layers), texts)


def flipped(lm, fact: Fact, prompt: str | None = None) -> bool:
    def p(target: str) -> float:
        enc = encode(lm.tokenizer, prompt or fact.text, fact.subject, target)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([enc.ids])).logits[0, -1]
        return torch.softmax(logits, -1)[enc.target[0]].item()

    return p(fact.target_new) > p(fact.target_true)


def test_one_edit_moves_the_fact_and_compute_only_reads(fixture_lm, fixture_facts, fixture_stats):
    lm, fact = fixture_lm, fixture_facts[0]
    assert not flipped(lm, fact)
    before = weights_hash(lm.model)
    delta = compute_memit(lm, [fact], fixture_stats, FIXTURE_CONFIG, ("{}",))
    assert weights_hash(lm.model) == before
    assert delta.method == "memit" and delta.case_ids == (fact.case_id,)
    assert delta.layer_ids() == [0] and delta.layers[0].rank == 1
    with apply(lm.model, lm.adapter, delta):
        assert flipped(lm, fact)
    assert weights_hash(lm.model) == before
    assert not flipped(lm, fact)


def test_batched_targets_equal_one_fact_at_a_time(fixture_lm, fixture_facts):
    lm, facts = fixture_lm, fixture_facts[:3]
    config = TargetConfig(clamp=0.75, steps=6)
    site = Site(1, "resid.post")
    templates = ("{}", "the seat of government . {}")
    together, records = optimize_targets(lm, facts, site, config, templates, facts_per_batch=3)
    for fact, delta, record in zip(facts, together, records, strict=True):
        alone = optimize_target(lm, fact, site, config, templates)
        torch.testing.assert_close(delta, alone.delta, rtol=1e-4, atol=1e-4)
        assert record["steps"] == alone.steps
        assert record["nll"] == pytest.approx(alone.losses[-1]["nll"], rel=1e-4)


def test_a_batch_of_many_edits_succeeds_on_many(fixture_lm, fixture_facts, fixture_stats):
    lm = fixture_lm
    # One fact per subject and relation template: spread over all relations.
    facts = fixture_facts[::3][:40]
    assert sum(flipped(lm, f) for f in facts) == 0
    config = MemitConfig(
        layers=(0,), mom2_weight=1.0, target=TargetConfig(clamp=4.0), batch_size=32, target_batch=30
    )
    delta = compute_memit(lm, facts, fixture_stats, config, ("{}",))
    with apply(lm.model, lm.adapter, delta):
        es = sum(flipped(lm, f) for f in facts) / len(facts)
    print(f"MEMIT on the fixture LM, {len(facts)} edits in one batch: ES {es:.2f}")
    # The current code flips 13 of the 40 (ES 0.33); the bar leaves two facts of margin.
    assert es >= 0.27, es

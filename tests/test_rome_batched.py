"""Batched independent ROME edits: many facts' v* as rows of one batch, the same deltas as one at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode
from memloc.core.sites import Site
from memloc.edit.delta import WeightDelta, apply, weights_hash
from memloc.edit.editors import EditPlan, independent_editor, prepare_editor
from memloc.edit.evaluate import EvalConfig, evaluate_edits
from memloc.edit.rome import RomeConfig, compute_rome, compute_rome_batch
from memloc.edit.session import evaluate_plan
from memloc.edit.stats import StatsConfig
from memloc.edit.targets import SuffixScorer, TargetConfig, facts_batch
from memloc.edit.templates import TemplateConfig
from tiny_lms import tiny_lm

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures"
TEMPLATES = ("{}", "the seat of government . {}")


@pytest.fixture(scope="module")
def fixture_lm():
    lm = load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")
    lm.model.requires_grad_(False)
    return lm


@pytest.fixture(scope="module")
def fixture_facts() -> list[Fact]:
    return load_facts(FIXTURE / "fixture-facts.json")


def identity(lm) -> torch.Tensor:
    return torch.eye(lm.adapter.d_mlp, dtype=torch.float64)


def assert_same_delta(batched: WeightDelta, alone: WeightDelta) -> None:
    assert batched.case_ids == alone.case_ids and batched.method == alone.method == "rome"
    (a,), (b,) = batched.layers, alone.layers
    assert a.layer == b.layer
    torch.testing.assert_close(a.dense(), b.dense(), rtol=1e-4, atol=1e-6 * b.dense().abs().max().item())
    assert batched.info.keys() == alone.info.keys()
    assert batched.info["steps"] == alone.info["steps"]
    assert len(batched.info["losses"]) == len(alone.info["losses"])
    for key in ("p_new_before", "p_new_after", "k_star_norm", "update_ratio"):
        assert batched.info[key] == pytest.approx(alone.info[key], rel=1e-4), key


def test_batched_deltas_equal_one_at_a_time_on_the_fixture_lm(fixture_lm, fixture_facts):
    lm = fixture_lm
    # Subjects of 1 to 4 tokens; a two-token target; fact 3 reaches the early stop long before
    # the others (its NLL falls below 1.0 within a few steps; the others never do).
    two_tokens = replace(fixture_facts[2], case_id="two", target_new="Velmora doctor")
    facts = [fixture_facts[3], fixture_facts[0], two_tokens, fixture_facts[5], fixture_facts[2]]
    assert len({encode(lm.tokenizer, f.prompt, f.subject).last_subject for f in facts}) >= 3
    config = RomeConfig(layer=0, target=TargetConfig(steps=12, early_stop=1.0))
    before = weights_hash(lm.model)
    alone = [compute_rome(lm, fact, identity(lm), config, TEMPLATES) for fact in facts]
    steps = [d.info["steps"] for d in alone]
    assert steps[0] < min(steps[1:]) and steps[1:] == [12] * 4, steps
    for per_batch in (5, 2):  # one batch, and batches of 2 (the last holds one fact)
        batched = compute_rome_batch(lm, facts, identity(lm), config, TEMPLATES, facts_per_batch=per_batch)
        assert len(batched) == len(facts)
        for b, a in zip(batched, alone, strict=True):
            assert_same_delta(b, a)
    assert weights_hash(lm.model) == before
    # The knob is the default batch size and does not change the deltas either.
    by_config = compute_rome_batch(lm, facts, identity(lm), replace(config, target_batch=3), TEMPLATES)
    for b, a in zip(by_config, alone, strict=True):
        assert_same_delta(b, a)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_batched_deltas_equal_one_at_a_time_on_tiny_lms(arch):
    # Rotary positions and grouped heads: rows of different lengths share one padded batch.
    lm = tiny_lm(arch)
    facts = [
        Fact("a", "the capital of {} is", "Zorbia Quelon", "Paris", "Rome"),
        Fact("b", "{} is located in the city of", "Tisk", "Berlin", "Lima Oslo"),
        Fact("c", "the language of {} is known", "Marvat Pelor Dunmar", "French", "Italian German Spanish"),
    ]
    templates = ("{}", "the red river . {}", "a tower of the city and the . {}")
    config = RomeConfig(layer=1, target=TargetConfig(steps=6), consistent_keys=False)
    alone = [compute_rome(lm, fact, identity(lm), config, templates) for fact in facts]
    batched = compute_rome_batch(lm, facts, identity(lm), config, templates)
    for b, a in zip(batched, alone, strict=True):
        assert_same_delta(b, a)


def test_rome_config_refuses_an_empty_target_batch(fixture_lm, fixture_facts):
    with pytest.raises(MemlocError, match="target_batch"):
        RomeConfig(layer=0, target_batch=0)
    config = RomeConfig(layer=0, target=TargetConfig(steps=1))
    with pytest.raises(MemlocError, match="facts_per_batch"):
        compute_rome_batch(
            fixture_lm, fixture_facts[:2], identity(fixture_lm), config, ("{}",), facts_per_batch=0
        )
    assert compute_rome_batch(fixture_lm, [], identity(fixture_lm), config, ("{}",)) == []


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_single_mode_scores_are_the_same_batched_and_one_at_a_time(fixture_lm, fixture_facts, own_cache):
    lm, facts = fixture_lm, [fixture_facts[i] for i in (3, 0, 5)]
    plan = EditPlan(
        "rome",
        layers=(0,),
        stats=StatsConfig(samples=8),
        templates=TemplateConfig(counts=((2, 3),)),
        rome=RomeConfig(layer=0, target=TargetConfig(steps=8), target_batch=2),
    )
    config = EvalConfig(fluency=False)
    editor, choice = prepare_editor(lm, facts, plan)
    each = independent_editor(lm, plan, choice)
    assert each is not None and independent_editor(lm, replace(plan, method="memit"), choice) is None
    for batched, alone in zip(each(facts), [editor([f]) for f in facts], strict=True):
        assert_same_delta(batched, alone)
    before = weights_hash(lm.model)
    unbatched = evaluate_edits(lm, facts, editor, "single", config)
    batched = evaluate_plan(lm, facts, plan, "single", config)  # the session's path: batched
    assert weights_hash(lm.model) == before
    assert batched.mode == unbatched.mode == "single" and batched.method == "rome"
    for key in ("ES", "PS", "NS", "EM", "PM", "NM"):
        assert batched.post[key] == pytest.approx(unbatched.post[key], abs=1e-5), key
    for b, a in zip(batched.per_fact, unbatched.per_fact, strict=True):
        assert b.case_id == a.case_id
        assert b.p_new_post == pytest.approx(a.p_new_post, rel=1e-4, abs=1e-7)
        assert b.p_true_post == pytest.approx(a.p_true_post, rel=1e-4, abs=1e-7)
    # The edits did something, so equal scores are not the unedited ones.
    assert any(abs(b.p_new_post - b.p_new_pre) > 1e-3 for b in batched.per_fact)
    # Summing independent deltas (batch mode) uses the same batched path.
    with apply(lm.model, lm.adapter, editor(facts)) as _:
        assert weights_hash(lm.model) != before
    assert weights_hash(lm.model) == before


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_narrowed_scorer_scores_its_facts_as_the_full_one_does(arch):
    lm = tiny_lm(arch)
    facts = [
        Fact("a", "the capital of {} is", "Zorbia Quelon", "Paris", "Rome"),
        Fact("b", "{} is located in the city of", "Tisk", "Berlin", "Lima Oslo"),
        Fact("c", "the language of {} is known", "Marvat Pelor Dunmar", "French", "Italian German Spanish"),
    ]
    templates = ("{}", "the red river . {}")
    batch, n_tokens = facts_batch(lm, facts, templates, "{} is a")
    scorer = SuffixScorer(lm, batch, Site(0, "mlp.out"), n_facts=3)
    delta = torch.randn(3, lm.adapter.d_model, generator=torch.Generator().manual_seed(0))
    tokens, kl = scorer(delta)
    keep = torch.tensor([0, 2])
    narrowed = scorer.narrow(keep)
    got_tokens, got_kl = narrowed(delta[keep])
    counts = [m * len(templates) for m in n_tokens]
    wanted = torch.cat([tokens[: counts[0]], tokens[counts[0] + counts[1] :]])
    torch.testing.assert_close(got_tokens, wanted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_kl, kl[keep], rtol=1e-5, atol=1e-5)
    assert narrowed.owner.tolist() == [0] * counts[0] + [1] * counts[2]
    assert narrowed.narrow(torch.tensor([1]))(delta[2:])[0].shape == (counts[2],)


def test_the_clean_pass_forms_no_logits_a_loss_does_not_read(fixture_lm, fixture_facts, monkeypatch):
    """The clean pass over every fact's rewrite prompts needs keys, values and activations,
    not (rows, tokens, vocab) logits: those grew with the batch (GBs at 16 SmolLM2 facts)."""
    lm = fixture_lm
    unembed = lm.model.get_output_embeddings()
    rows: list[int] = []
    plain = unembed.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        rows.append(x[..., 0].numel())
        return plain(x)

    monkeypatch.setattr(unembed, "forward", counting)
    facts = fixture_facts[:3]
    config = RomeConfig(layer=0, target=TargetConfig(steps=2, early_stop=0.0))
    compute_rome_batch(lm, facts, identity(lm), config, TEMPLATES, facts_per_batch=3)
    batch, _ = facts_batch(lm, facts, TEMPLATES, config.target.kl_prompt)
    scored = len(batch.target_ids) + len(facts)  # target tokens, then one KL row per fact
    assert rows and max(rows) <= scored < batch.attention_mask.sum()


def test_a_non_finite_clean_pass_is_caught_naming_its_site(fixture_lm, fixture_facts):
    lm = fixture_lm
    before = weights_hash(lm.model)
    config = RomeConfig(layer=0, target=TargetConfig(steps=2))
    with (
        patch(lm.model, lm.adapter, {Site(1, "mlp.out"): lambda act: act + float("inf")}),
        pytest.raises(
            MemlocError, match=r"the rewrite prompts' clean run gives non-finite activations, first at"
        ),
    ):
        compute_rome_batch(lm, fixture_facts[:2], identity(lm), config, TEMPLATES)
    assert weights_hash(lm.model) == before

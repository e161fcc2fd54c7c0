"""Suppress and enhance knowledge neurons: the patch itself, random neurons, controls."""

from __future__ import annotations

import json

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import trace
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import encode, next_token_probs
from memloc.core.sites import Site
from memloc.locate.lm.interventions import (
    InterventionConfig,
    InterventionResult,
    intervene,
    random_neurons,
    scaled_neurons,
)
from memloc.locate.lm.knowledge_neurons import KNConfig, attribute_prompt
from tiny_lms import tiny_lm, top_word

TEXT = "the capital of Zorbia is the city of"


def prob(lm, text: str, target: str) -> float:
    enc = encode(lm.tokenizer, text, None, target)
    with torch.no_grad():
        return next_token_probs(lm.model, torch.tensor([enc.ids]))[0, enc.target[0]].item()


def facts(lm) -> list[Fact]:
    capital = Fact("c1", "the capital of {} is the city of", "Zorbia", top_word(lm, TEXT), relation="P36")
    language = "in Quelon the language is"
    river = "the river of Marvat is"
    return [
        capital,
        Fact("l1", "in {} the language is", "Quelon", top_word(lm, language), relation="P37"),
        Fact("r1", "the river of {} is", "Marvat", top_word(lm, river), relation="P99"),
        Fact("c2", "the capital of {} is", "Tisk", top_word(lm, "the capital of Tisk is"), relation="P36"),
    ]


def top_neurons(lm, text: str, target: str, n: int) -> list[tuple[int, int]]:
    scores = attribute_prompt(lm, text, target, KNConfig(steps=10)).scores
    flat = scores.flatten().topk(n).indices
    return sorted((int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat)


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_scaled_neurons_change_only_the_chosen_coordinates_at_the_last_token(scale):
    lm = tiny_lm("gpt2")
    ids = torch.tensor([encode(lm.tokenizer, TEXT).ids])
    chosen = [(1, 3), (1, 40), (2, 7)]
    sites = [Site(layer, "mlp.post") for layer in range(lm.n_layers)]
    with torch.no_grad(), trace(lm.model, lm.adapter, sites) as clean:
        logits = lm.model(ids).logits
    clean = dict(clean)
    with torch.no_grad(), scaled_neurons(lm, chosen, scale), trace(lm.model, lm.adapter, sites) as seen:
        patched_logits = lm.model(ids).logits
    # Layer 1 is patched first, so its input is clean: exactly the chosen coordinates move.
    expected = clean[sites[1]].clone()
    expected[0, -1, [3, 40]] *= scale
    torch.testing.assert_close(seen[sites[1]], expected)
    torch.testing.assert_close(seen[sites[0]], clean[sites[0]])
    # Earlier positions never change; only the last token is intervened on.
    torch.testing.assert_close(patched_logits[:, :-1], logits[:, :-1])
    assert not torch.allclose(patched_logits[:, -1], logits[:, -1])
    # Hooks are gone afterwards.
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, logits)
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_random_neurons_match_layers_avoid_own_and_follow_the_seed():
    lm = tiny_lm("llama")
    own = [(0, 1), (0, 2), (2, 5)]

    def draw(seed):
        return random_neurons(lm, own, torch.Generator().manual_seed(seed))

    picked = draw(0)
    assert sorted(layer for layer, _ in picked) == [0, 0, 2]
    assert not set(picked) & set(own)
    assert len(set(picked)) == 3
    assert draw(0) == picked
    assert any(draw(s) != picked for s in range(1, 4))


def test_suppressing_own_neurons_lowers_p_target_and_enhancing_raises_it():
    lm = tiny_lm("llama")
    fs = facts(lm)
    own = top_neurons(lm, fs[0].text, fs[0].target_true, 5)
    neurons = {f.case_id: own if f.case_id == "c1" else [] for f in fs}
    calls = []
    down = intervene(
        lm,
        fs,
        neurons,
        InterventionConfig(controls=2),
        progress=lambda done, total, _: calls.append((done, total)),
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    row = down.facts[0]
    assert row.before == pytest.approx(prob(lm, fs[0].text, fs[0].target_true))
    assert row.own < row.before
    assert row.own_change == pytest.approx((row.own - row.before) / row.before)
    assert sorted(layer for layer, _ in row.random_neurons) == sorted(layer for layer, _ in own)
    # Controls are facts of other relations, measured with the fact's own neurons changed.
    assert len(row.controls) == 2
    assert {c.case_id for c in row.controls} <= {"l1", "r1"}
    for control in row.controls:
        fact = next(f for f in fs if f.case_id == control.case_id)
        assert control.before == pytest.approx(prob(lm, fact.text, fact.target_true))
        with scaled_neurons(lm, own, 0.0):
            assert control.after == pytest.approx(prob(lm, fact.text, fact.target_true))
    up = intervene(lm, fs, neurons, InterventionConfig(mode="enhance", controls=2))
    assert up.facts[0].own > up.facts[0].before
    assert up.facts[0].random_neurons == row.random_neurons  # same seed, same draw

    summary = down.summary()
    assert summary.facts == 1 and summary.facts_without_neurons == 3
    assert summary.own_change == pytest.approx(row.own_change)
    data = json.loads(json.dumps(down.to_dict()))
    assert data["facts"][0]["case_id"] == "c1" and data["summary"]["mode"] == "suppress"
    # The stored JSON reads back into the same result, field for field.
    assert InterventionResult.from_dict(data) == down
    assert InterventionResult.from_dict(data).to_dict() == data
    # The model is unchanged afterwards.
    assert prob(lm, fs[0].text, fs[0].target_true) == pytest.approx(row.before, rel=0, abs=0)


def test_missing_neurons_and_bad_indices_are_refused():
    lm = tiny_lm("gpt2")
    fs = facts(lm)
    with pytest.raises(MemlocError, match="no neurons given for fact"):
        intervene(lm, fs, {"c1": [(0, 1)]})
    with pytest.raises(MemlocError, match="out of range"):
        intervene(lm, fs[:1], {"c1": [(0, 10_000)]})
    with pytest.raises(MemlocError, match="out of range"):
        intervene(lm, fs[:1], {"c1": [(9, 0)]})
    with pytest.raises(MemlocError, match="mode"):
        intervene(lm, fs[:1], {"c1": [(0, 1)]}, InterventionConfig(mode="erase"))

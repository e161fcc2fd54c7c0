"""Knowledge neurons by integrated gradients: the IG itself, the fast path, and the sets."""

from __future__ import annotations

import json

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch, trace
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import encode, next_token_probs
from memloc.core.sites import Site
from memloc.locate.lm.knowledge_neurons import (
    FactNeurons,
    KNConfig,
    attribute_prompt,
    coarse_neurons,
    knowledge_neurons,
    refined_neurons,
    relation_neurons,
)
from tiny_lms import ARCHITECTURES, tiny_lm, top_word

TEXT = "the capital of Zorbia is the city of"


def target_prob(lm, text: str, target: str, fn=None, layer: int = 0) -> float:
    enc = encode(lm.tokenizer, text, None, target)
    ids = torch.tensor([enc.ids])
    with torch.no_grad(), patch(lm.model, lm.adapter, {Site(layer, "mlp.post"): fn} if fn else {}):
        return next_token_probs(lm.model, ids)[0, enc.target[0]].item()


def hand_riemann(lm, text: str, target: str, layer: int, m: int) -> torch.Tensor:
    """attr = a * (1/m) * sum_{k<m} dP/da at (k/m) a, written out one step at a time."""
    enc = encode(lm.tokenizer, text, None, target)
    ids = torch.tensor([enc.ids])
    site = Site(layer, "mlp.post")
    with torch.no_grad(), trace(lm.model, lm.adapter, [site]) as seen:
        lm.model(ids)
    a = seen[site][0, -1]
    total = torch.zeros_like(a)
    for k in range(m):
        x = (k / m * a).requires_grad_()

        def put(act, x=x):
            return torch.cat([act[:, :-1], x.view(1, 1, -1)], dim=1)

        with patch(lm.model, lm.adapter, {site: put}):
            p = next_token_probs(lm.model, ids)[0, enc.target[0]]
        total += torch.autograd.grad(p, x)[0]
    return a * total / m


@pytest.mark.parametrize("method", ["fast", "plain"])
def test_captum_left_riemann_equals_the_hand_written_sum(method):
    lm = tiny_lm("llama")
    target = top_word(lm, TEXT)
    got = attribute_prompt(lm, TEXT, target, KNConfig(steps=5, layers=(1,), method=method)).scores[0]
    torch.testing.assert_close(got, hand_riemann(lm, TEXT, target, 1, 5), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attributions_sum_to_the_change_from_the_zeroed_layer(arch):
    lm = tiny_lm(arch)
    target = top_word(lm, TEXT)
    layer = 1
    p_clean = target_prob(lm, TEXT, target)

    def zero_last(act):
        return torch.cat([act[:, :-1], torch.zeros_like(act[:, -1:])], dim=1)

    gap = p_clean - target_prob(lm, TEXT, target, zero_last, layer)
    assert abs(gap) > 1e-4  # the layer matters, so the check below can fail
    errors = [
        abs(attribute_prompt(lm, TEXT, target, KNConfig(steps=m, layers=(layer,))).scores.sum().item() - gap)
        for m in (4, 20, 200)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 * abs(gap)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_path_equals_plain_full_sequence(arch):
    lm = tiny_lm(arch)
    target = top_word(lm, TEXT)
    fast = attribute_prompt(lm, TEXT, target, KNConfig(method="fast"))
    plain = attribute_prompt(lm, TEXT, target, KNConfig(method="plain"))
    assert fast.scores.shape == (lm.n_layers, lm.adapter.d_mlp)
    assert fast.probability == pytest.approx(plain.probability, rel=1e-5)
    scale = plain.scores.abs().max().item()
    assert scale > 0
    assert (fast.scores - plain.scores).abs().max().item() <= 1e-4 * scale


def test_a_one_token_prompt_has_no_prefix_to_cache():
    lm = tiny_lm("mistral")
    fast = attribute_prompt(lm, "Zorbia", "Paris", KNConfig(steps=4)).scores
    plain = attribute_prompt(lm, "Zorbia", "Paris", KNConfig(steps=4, method="plain")).scores
    assert (fast - plain).abs().max().item() <= 1e-4 * plain.abs().max().item()


@pytest.mark.parametrize(("method", "sizes"), [("fast", (None, 1, 7)), ("plain", (None, 3))])
def test_results_do_not_depend_on_batch_size(method, sizes):
    lm = tiny_lm("qwen2")
    target = top_word(lm, TEXT)
    runs = [
        attribute_prompt(
            lm, TEXT, target, KNConfig(steps=5, batch_size=b, method=method, log_prob=True)
        ).scores
        for b in sizes
    ]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-5, atol=1e-8)


def test_layers_option_selects_rows_of_the_full_result():
    lm = tiny_lm("gpt_neox")
    target = top_word(lm, TEXT)
    full = attribute_prompt(lm, TEXT, target, KNConfig(steps=6)).scores
    some = attribute_prompt(lm, TEXT, target, KNConfig(steps=6, layers=(2, 0)))
    assert some.layers == (0, 2)
    torch.testing.assert_close(some.scores, full[[0, 2]], rtol=1e-5, atol=1e-9)


def test_coarse_set_is_a_share_of_the_maximum_over_all_layers():
    scores = torch.tensor([[0.1, 0.5, -1.0], [1.0, 0.21, 0.19]])
    assert coarse_neurons(scores, [3, 7], 0.2) == [(3, 1), (7, 0), (7, 1)]
    assert coarse_neurons(-scores.abs(), [3, 7], 0.2) == []


def test_refined_set_keeps_neurons_of_enough_prompts():
    sets = [[(0, 1), (2, 5)], [(0, 1), (1, 1)], [(0, 1), (2, 5)], [(1, 1)]]
    assert refined_neurons(sets, 0.7) == {(0, 1)}  # 3 of 4 prompts
    assert refined_neurons(sets, 0.5) == {(0, 1), (2, 5), (1, 1)}
    assert refined_neurons(sets, 1.0) == set()
    assert refined_neurons(sets[:1], 0.7) == {(0, 1), (2, 5)}


def test_relation_neurons_need_a_share_of_the_facts_and_two_facts():
    refined = {"a": {(0, 1), (1, 2)}, "b": {(0, 1)}, "c": {(0, 1), (1, 2)}, "d": {(5, 5)}, "e": {(1, 2)}}
    relation = {"a": "P1", "b": "P1", "c": "P1", "d": "P2", "e": "P3"}
    got = relation_neurons(refined, relation, 0.7)
    assert got["P1"] == [(0, 1, 3)]  # (1, 2) is in 2 of 3 facts: below 70%
    assert got["P2"] == [] and got["P3"] == []  # one fact shares nothing
    assert relation_neurons(refined, relation, 0.5)["P1"] == [(0, 1, 3), (1, 2, 2)]


def _fact(lm, case_id="z1") -> Fact:
    return Fact(
        case_id=case_id,
        prompt="the capital of {} is the city of",
        subject="Zorbia",
        target_true=top_word(lm, TEXT),
        relation="P36",
        paraphrases=("in Zorbia the capital is the city of", "Zorbia is known for the city of"),
    )


def test_knowledge_neurons_of_a_fact():
    lm = tiny_lm("gpt2")
    fact = _fact(lm)
    calls = []
    config = KNConfig(steps=8, share=0.6)
    result = knowledge_neurons(
        lm, [fact], config, progress=lambda done, total, _: calls.append((done, total))
    )
    assert calls == [(1, 1)]
    (kn,) = result.facts
    assert len(kn.coarse) == 3 and len(kn.probabilities) == 3
    assert kn.neuron_set() == refined_neurons(kn.coarse, 0.6)
    assert kn.neurons, "the coarse sets of a fact's prompts should share neurons"
    scores = [s for _, _, s in kn.neurons]
    assert scores == sorted(scores, reverse=True)
    # Scores are the mean attribution over the fact's prompts.
    layer, index, score = kn.neurons[0]
    mean = (
        sum(attribute_prompt(lm, p, fact.target_true, config).scores[layer, index] for p in fact.prompts())
        / 3
    )
    assert score == pytest.approx(float(mean), rel=1e-5)
    assert sum(kn.per_layer.values()) == len(kn.neurons)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["facts"][0]["case_id"] == "z1"
    assert data["facts"][0]["neurons"][0] == [layer, index, score]
    assert "P36" in data["relations"]
    # the results store keeps the JSON and reads back the same FactNeurons
    assert FactNeurons.from_dict(data["facts"][0]) == kn


def test_the_model_is_left_as_it_came():
    lm = tiny_lm("llama")
    lm.model.requires_grad_(True)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    knowledge_neurons(lm, [_fact(lm)], KNConfig(steps=3, batch_size=5))
    assert all(p.requires_grad for p in lm.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize(
    ("change", "message"),
    [({"target_true": " "}, "target"), ({"prompt": TEXT, "subject": "Quelon"}, "subject")],
)
def test_bad_facts_get_one_line(change, message):
    lm = tiny_lm("gpt2")
    fact = Fact(**{**_fact(lm).__dict__, **change})
    with pytest.raises(MemlocError, match=message) as info:
        knowledge_neurons(lm, [fact], KNConfig(steps=2))
    assert "\n" not in str(info.value)


def test_bad_config_is_refused():
    lm = tiny_lm("gpt2")
    with pytest.raises(MemlocError, match="out of range"):
        attribute_prompt(lm, TEXT, "Paris", KNConfig(layers=(3,)))
    with pytest.raises(MemlocError, match="method"):
        attribute_prompt(lm, TEXT, "Paris", KNConfig(method="slow"))

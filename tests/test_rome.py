"""ROME: templates, the target optimisation and the rank-one update, on the fixture LM and tiny LMs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from memloc.core.adapters import LayerNotFoundError
from memloc.core.errors import DataError
from memloc.core.hooks import patch, trace
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode
from memloc.core.sites import Site
from memloc.edit.delta import apply, weights_hash
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.targets import SuffixScorer, TargetConfig, optimize_target, rewrite_batch
from memloc.edit.templates import TemplateConfig, context_templates
from tiny_lms import tiny_lm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TINY_FACT = Fact("t0", "the capital of {} is", "Zorbia Quelon", "Paris", "Rome")
TINY_TEMPLATES = TemplateConfig(counts=((2, 3), (2, 5)))
QUICK = TargetConfig(steps=6)


def mean_nll(lm, prompt: str, target: str) -> float:
    """Mean per-token NLL of " "+target after ``prompt`` (CounterFact's score)."""
    enc = encode(lm.tokenizer, prompt, None, target)
    ids = torch.tensor([[*enc.ids, *enc.target]], device=lm.device)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
    n = len(enc.ids)
    return -sum(logp[n - 1 + j, t].item() for j, t in enumerate(enc.target)) / len(enc.target)


def identity(lm) -> torch.Tensor:
    return torch.eye(lm.adapter.d_mlp, dtype=torch.float64)


class Stats:
    """Stands in for edit/stats.py's KeyStats: anything with ``.matrix()``."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self._matrix = matrix

    def matrix(self) -> torch.Tensor:
        return self._matrix


def key_second_moment(lm, layer: int, texts: list[str]) -> torch.Tensor:
    """C = E[k kᵀ] over every token of ``texts`` (one right-padded batch), lightly shrunk."""
    rows = [lm.tokenizer(text)["input_ids"] for text in texts]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    with torch.no_grad(), trace(lm.model, lm.adapter, [Site(layer, "mlp.post")]) as seen:
        lm.model(input_ids=ids, attention_mask=mask.long())
    k = seen[Site(layer, "mlp.post")][mask].double()
    c = k.T @ k / len(k)
    return c + 1e-2 * c.diagonal().mean() * torch.eye(len(c), dtype=torch.float64)


# --- the fixture LM: a model that knows its facts ----------------------------------------------------


@pytest.fixture(scope="module")
def fixture_edit():
    lm = load_language_model(str(FIXTURES / "fixture-lm"), device="cpu")
    facts = load_facts(FIXTURES / "fixture-facts.json")
    # The fixture LM only ever saw facts at the start of a sequence, so sampled context
    # prefixes move its keys far from the bare prompt's; edit with the bare prompt alone.
    # Most fixture facts resist an edit at the subject's last token (ES 3/12 at layer 0 with
    # these settings); case 3 is one that a layer-0 edit does move.
    fact = next(f for f in facts if f.case_id == "3")
    c = key_second_moment(lm, 0, [f.text for f in facts[:96]])
    before = weights_hash(lm.model)
    delta = compute_rome(lm, fact, Stats(c), RomeConfig(layer=0), templates=("{}",))
    return lm, fact, delta, before


def test_rome_rewrites_a_fixture_fact_and_compute_changes_nothing(fixture_edit):
    lm, fact, delta, before = fixture_edit
    assert weights_hash(lm.model) == before
    assert mean_nll(lm, fact.text, fact.target_true) < mean_nll(lm, fact.text, fact.target_new)
    with apply(lm.model, lm.adapter, delta):
        assert mean_nll(lm, fact.text, fact.target_new) < mean_nll(lm, fact.text, fact.target_true)
    assert weights_hash(lm.model) == before
    info = delta.info
    assert info["p_new_after"] > info["p_new_before"]
    assert info["losses"][-1]["nll"] < info["losses"][0]["nll"]
    assert info["update_norm"] == pytest.approx(info["update_ratio"] * info["weight_norm"])


def test_rome_efficacy_over_a_seeded_sample_of_fixture_facts(fixture_edit):
    # Not one hand-picked case: 12 facts drawn with a fixed seed, edited one at a time at
    # layer 0. The current code rewrites 5 of them; the bar leaves a margin for rounding.
    lm, _, _, before = fixture_edit
    facts = load_facts(FIXTURES / "fixture-facts.json")
    c = Stats(key_second_moment(lm, 0, [f.text for f in facts[:96]]))
    sample = [facts[i] for i in random.Random(0).sample(range(len(facts)), 12)]
    wins = 0
    for fact in sample:
        delta = compute_rome(lm, fact, c, RomeConfig(layer=0), templates=("{}",))
        assert weights_hash(lm.model) == before
        with apply(lm.model, lm.adapter, delta):
            wins += mean_nll(lm, fact.text, fact.target_new) < mean_nll(lm, fact.text, fact.target_true)
    assert wins >= 4, wins


def test_rome_delta_is_rank_one_and_restore_is_exact(fixture_edit):
    lm, _, delta, before = fixture_edit
    assert len(delta.layers) == 1 and delta.layers[0].rank == 1
    assert torch.linalg.matrix_rank(delta.layers[0].dense()).item() == 1
    handle = apply(lm.model, lm.adapter, delta)
    assert weights_hash(lm.model) != before
    handle.restore()
    assert weights_hash(lm.model) == before


# --- the fast scorer is the plain patched forward pass ------------------------------------------------


def plain_scores(lm, batch, site: Site, delta: torch.Tensor):
    rows = torch.arange(batch.ids.shape[0])

    def add(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        act[rows, batch.subject_last] += delta
        return act

    with torch.no_grad(), patch(lm.model, lm.adapter, {site: add}):
        logits = lm.model(input_ids=batch.ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits.float(), -1)
    tokens = logp[batch.target_rows, batch.target_pos].gather(1, batch.target_ids[:, None])[:, 0]
    return tokens, logp[batch.kl_row, batch.subject_last[batch.kl_row]]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("site", [Site(0, "mlp.out"), Site(1, "resid.post")])
def test_suffix_scorer_equals_a_full_patched_forward(arch, site):
    lm = tiny_lm(arch)
    templates = ("{}", "the red river . {}", "a tower of the city and the . {}")
    fact = Fact(
        "t1", "the capital of {} is known", "Zorbia Quelon", "Paris", "Lima Oslo"
    )  # two target tokens
    batch = rewrite_batch(lm, fact, templates, "{} is a")
    scorer = SuffixScorer(lm, batch, site)
    gen = torch.Generator().manual_seed(1)
    for scale in (0.0, 2.0):
        delta = scale * torch.randn(lm.adapter.d_model, generator=gen)
        with torch.no_grad():
            fast = scorer(delta)
        plain = plain_scores(lm, batch, site, delta)
        for a, b in zip(fast, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scorer(delta)[0], scorer(torch.zeros_like(delta))[0])


# --- the update itself, on both weight layouts ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rome_maps_k_star_to_v_star_on_both_layouts(arch):
    lm = tiny_lm(arch)
    layer = 1
    templates = context_templates(lm, TINY_TEMPLATES, cache=False)
    texts = [" ".join(["the city of Paris is in the country", w]) for w in ("red", "blue", "green", "Lima")]
    config = RomeConfig(layer=layer, target=QUICK)
    before = weights_hash(lm.model)
    delta = compute_rome(lm, TINY_FACT, key_second_moment(lm, layer, texts), config, templates)
    assert weights_hash(lm.model) == before
    assert torch.linalg.matrix_rank(delta.layers[0].dense()).item() == 1

    # v* from the same (deterministic) optimisation, computed independently.
    target = optimize_target(lm, TINY_FACT, Site(layer, "mlp.out"), QUICK, templates)
    batch = rewrite_batch(lm, TINY_FACT, templates, "{} is a")
    n = batch.n_rewrite
    rows = torch.arange(n)
    sites = [Site(layer, "mlp.out")]
    with torch.no_grad(), trace(lm.model, lm.adapter, sites) as seen, apply(lm.model, lm.adapter, delta):
        lm.model(input_ids=batch.ids, attention_mask=batch.attention_mask)
    # W' k* + b = mean over templates of the edited MLP output (it is linear in k): exactly v*.
    edited = seen[sites[0]][rows, batch.subject_last[:n]].double().mean(0)
    torch.testing.assert_close(edited, target.target.double(), rtol=1e-4, atol=1e-4)
    assert target.delta.norm() > 1e-3
    assert weights_hash(lm.model) == before


def test_reference_key_mix_is_a_different_update():
    lm = tiny_lm("llama")
    templates = context_templates(lm, TINY_TEMPLATES, cache=False)
    same = compute_rome(lm, TINY_FACT, identity(lm), RomeConfig(1, target=QUICK), templates)
    mixed = compute_rome(
        lm, TINY_FACT, identity(lm), RomeConfig(1, target=QUICK, consistent_keys=False), templates
    )
    torch.testing.assert_close(same.layers[0].right, mixed.layers[0].right)  # same direction C⁻¹k*
    assert not torch.allclose(same.layers[0].left, mixed.layers[0].left)
    assert same.info["consistent_keys"] and not mixed.info["consistent_keys"]


# --- templates ------------------------------------------------------------------------------------------


def test_templates_are_seeded_and_cached(tmp_path):
    lm = tiny_lm("gpt2")
    config = TemplateConfig(counts=((3, 4), (2, 6)))
    first = context_templates(lm, config, cache=False)
    assert first == context_templates(lm, config, cache=False)
    assert first != context_templates(lm, TemplateConfig(counts=config.counts, seed=1), cache=False)
    assert first[0] == "{}" and len(first) == 6
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in first[1:])
    assert [len(lm.tokenizer(t[: -len(". {}")])["input_ids"]) for t in first[1:]] == [4, 4, 4, 6, 6]

    cached = context_templates(lm, config, tmp_path)
    assert cached == first and len(list(tmp_path.glob("*.json"))) == 1
    # A hit reads the file: a changed file is what comes back.
    path = next(tmp_path.glob("*.json"))
    path.write_text(path.read_text().replace('"{}"', '"{} ok"'))
    assert context_templates(lm, config, tmp_path)[0] == "{} ok"


# --- bad input: one line each ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "layer", "error", "words"),
    [
        (Fact("b1", "the capital of Paris is", "Zorbia", "Paris", "Rome"), 1, DataError, "not in the prompt"),
        (Fact("b2", "the capital of {} is", "Zorbia", "Paris", "Paris"), 1, DataError, "equals target_true"),
        (Fact("b3", "the capital of {} is", "Zorbia", "Paris", ""), 1, DataError, "target_new"),
        (TINY_FACT, 3, LayerNotFoundError, "out of range"),
    ],
)
def test_bad_input_is_one_line(fact, layer, error, words):
    lm = tiny_lm("llama")
    with pytest.raises(error) as caught:
        compute_rome(lm, fact, identity(lm), RomeConfig(layer, target=QUICK), ("{}",))
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_statistics_of_the_wrong_width_are_refused():
    lm = tiny_lm("llama")
    with pytest.raises(Exception, match="key statistics must be"):
        compute_rome(lm, TINY_FACT, torch.eye(5, dtype=torch.float64), RomeConfig(1, target=QUICK), ("{}",))

"""Knowledge-neuron edit (Dai et al. 2022): raises P(new), touches only the chosen neurons."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from memloc.core.adapters import LayerNotFoundError
from memloc.core.hooks import patch
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode, target_prob
from memloc.core.sites import Site
from memloc.edit.delta import apply, weights_hash
from memloc.edit.kn_edit import KNEditConfig, NeuronEditError, compute_kn_edit
from tiny_lms import tiny_lm

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run many small ops: extra threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture_lm():
    if not (FIXTURE / "fixture-lm").exists():
        pytest.skip("fixtures/fixture-lm is not built")
    return load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")


@pytest.fixture(scope="module")
def facts():
    return load_facts(str(FIXTURE / "fixture-facts.json"))


def top_neurons(lm, fact: Fact, count: int) -> list[tuple[int, int]]:
    """The neurons with the largest activation × gradient of log P(true) at the last token."""
    enc = encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
    sites = [Site(layer, "mlp.post") for layer in range(lm.n_layers)]
    # Each activation becomes a leaf that needs a gradient (the weights need none).
    leaf = {s: (lambda act: act.detach().requires_grad_(True)) for s in sites}
    with patch(lm.model, lm.adapter, leaf, detach=False) as seen:
        logits = lm.model(input_ids=torch.tensor([enc.ids])).logits[0, -1]
        acts = [seen[s] for s in sites]
        torch.log_softmax(logits, -1)[enc.target[0]].backward()
    scores = torch.stack([(a * a.grad)[0, -1] for a in acts])  # (layers, F)
    flat = scores.flatten().topk(count).indices
    return [(int(i // scores.shape[1]), int(i % scores.shape[1])) for i in flat]


def p(lm, fact: Fact, target: str) -> float:
    return target_prob(lm.model, encode(lm.tokenizer, fact.text, fact.subject, target), lm.device)


def test_kn_edit_raises_p_new_and_restores_exactly(fixture_lm, facts):
    lm = fixture_lm
    lm.model.requires_grad_(False)
    raised = 0
    for fact in facts[:6]:
        neurons = top_neurons(lm, fact, 5)
        before = weights_hash(lm.model)
        delta = compute_kn_edit(lm, fact, neurons, KNEditConfig())
        assert weights_hash(lm.model) == before  # compute only reads
        p_new, p_true = p(lm, fact, fact.target_new), p(lm, fact, fact.target_true)
        with apply(lm.model, lm.adapter, delta):
            edited_new, edited_true = p(lm, fact, fact.target_new), p(lm, fact, fact.target_true)
        assert weights_hash(lm.model) == before
        raised += edited_new > 2 * p_new
        assert edited_true < p_true  # the old answer's direction was subtracted
    assert raised >= 5


def test_kn_delta_touches_only_the_chosen_columns_with_the_paper_formula(fixture_lm, facts):
    lm, fact = fixture_lm, facts[0]
    neurons = [(1, 7), (1, 300), (3, 42), (2, 9)]
    delta = compute_kn_edit(lm, fact, neurons, KNEditConfig(lambda_old=1.0, lambda_new=8.0), exclude=[(2, 9)])
    assert delta.layer_ids() == [1, 3]
    unembed = lm.adapter.unembedding(lm.model).double()
    e_old = unembed[encode(lm.tokenizer, fact.text, fact.subject, fact.target_true).target[0]]
    e_new = unembed[encode(lm.tokenizer, fact.text, fact.subject, fact.target_new).target[0]]
    for part in delta.layers:
        dense = part.dense()
        chosen = [i for layer, i in neurons if layer == part.layer and (layer, i) != (2, 9)]
        others = [i for i in range(lm.adapter.d_mlp) if i not in chosen]
        assert dense[:, others].abs().max() == 0
        w = lm.adapter.down_matrix(lm.model, part.layer).double()
        for i in chosen:
            norm = w[:, i].norm()
            expected = -norm * e_old / e_old.norm() + 8.0 * norm * e_new / e_new.norm()
            torch.testing.assert_close(dense[:, i], expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kn_edit_on_tiny_architectures_changes_only_given_layers(arch):
    lm = tiny_lm(arch)
    fact = Fact("t", "the capital of {} is", "Zorbia", "Oslo", "Lima")
    before = weights_hash(lm.model)
    delta = compute_kn_edit(lm, fact, [(0, 3), (2, 5)])
    assert weights_hash(lm.model) == before
    with apply(lm.model, lm.adapter, delta) as handle:
        assert weights_hash(lm.model) != before
        assert len(handle.originals) == 2
    assert weights_hash(lm.model) == before


def test_kn_edit_bad_input_is_one_line():
    lm = tiny_lm("gpt2")
    fact = Fact("t", "the capital of {} is", "Zorbia", "Oslo", "Lima")
    with pytest.raises(LayerNotFoundError, match="out of range"):
        compute_kn_edit(lm, fact, [(9, 0)])
    with pytest.raises(NeuronEditError, match="out of range"):
        compute_kn_edit(lm, fact, [(0, 10_000)])
    with pytest.raises(NeuronEditError, match="no neurons left"):
        compute_kn_edit(lm, fact, [(0, 1)], exclude=[(0, 1)])
    with pytest.raises(NeuronEditError, match="equals target_true"):
        compute_kn_edit(lm, Fact("t", "the capital of {} is", "Zorbia", "Oslo", "Oslo"), [(0, 1)])


def test_kn_eval_keeps_going_past_a_fact_without_neurons(fixture_lm, facts, monkeypatch):
    """A fact whose neurons are all relation-level gets no edit and is reported, not a crash."""
    from types import SimpleNamespace

    from memloc.edit import editors as workflow
    from memloc.edit.evaluate import EvalConfig, evaluate_edits

    chosen = facts[:2]
    keep = top_neurons(fixture_lm, chosen[1], 3)
    found = SimpleNamespace(
        facts=[SimpleNamespace(case_id=f.case_id, neurons=[]) for f in chosen],
        relations={},
        by_case=lambda: {
            chosen[0].case_id: SimpleNamespace(neurons=[]),
            chosen[1].case_id: SimpleNamespace(neurons=[(layer, index, 1.0) for layer, index in keep]),
        },
    )
    monkeypatch.setattr(workflow, "knowledge_neurons", lambda *args, **kwargs: found)
    editor, _ = workflow.prepare_editor(fixture_lm, chosen, workflow.EditPlan("kn"))
    base = weights_hash(fixture_lm.model)
    result = evaluate_edits(fixture_lm, chosen, editor, "single", EvalConfig(fluency=False))
    assert weights_hash(fixture_lm.model) == base
    assert result.unedited == (chosen[0].case_id,)
    first, second = result.per_fact
    assert first.p_new_post == pytest.approx(first.p_new_pre, abs=1e-6)
    assert second.p_new_post > second.p_new_pre

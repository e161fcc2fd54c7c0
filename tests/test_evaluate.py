"""CounterFact metrics: exact on hand-set scores, teacher forcing checked by hand, modes restore."""

from __future__ import annotations

import json
import math

import pytest
import torch
from memloc.core.lm.facts import Fact
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from memloc.edit.evaluate import (
    EvalConfig,
    EvalResult,
    FactScores,
    PromptScore,
    evaluate_edits,
    fluencies,
    measure,
    ngram_entropy,
    score_targets,
    summarize,
)
from tiny_lms import tiny_lm


def ps(p: float, argmax: bool = False) -> PromptScore:
    return PromptScore(-math.log(p), argmax)


def test_summary_metrics_on_hand_set_scores():
    a = FactScores(
        "a",
        (ps(0.2), ps(0.6, True)),
        [(ps(0.3), ps(0.1)), (ps(0.1), ps(0.5, True))],
        [(ps(0.4, True), ps(0.2))],
    )
    b = FactScores(
        "b", (ps(0.5), ps(0.25)), [(ps(0.2), ps(0.3))], [(ps(0.1), ps(0.3)), (ps(0.6, True), ps(0.1))]
    )
    m = summarize([a, b])
    assert m["ES"] == 0.5 and m["PS"] == pytest.approx(2 / 3) and m["NS"] == pytest.approx(2 / 3)
    assert m["S"] == pytest.approx(3 / (2 + 1.5 + 1.5))
    assert m["EM"] == pytest.approx(((0.6 - 0.2) + (0.25 - 0.5)) / 2)
    assert m["PM"] == pytest.approx(((0.1 - 0.3) + (0.5 - 0.1) + (0.3 - 0.2)) / 3)
    assert m["NM"] == pytest.approx(((0.4 - 0.2) + (0.1 - 0.3) + (0.6 - 0.1)) / 3)
    assert (m["EA"], m["PA"], m["NA"]) == (0.5, pytest.approx(1 / 3), pytest.approx(2 / 3))


def test_ngram_entropy():
    assert ngram_entropy(["a", "a", "a", "a", "a"]) == 0.0
    # 4 distinct bigrams (2 bits) and 3 distinct trigrams (log2 3 bits).
    assert ngram_entropy(["a", "b", "c", "d", "e"]) == pytest.approx((2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"])
def test_score_targets_matches_a_hand_teacher_forced_pass(arch):
    lm = tiny_lm(arch)
    prompts = ["the capital of Zorbia is", "the river"]
    targets = ["Paris Rome", "Nile"]
    got = score_targets(lm, prompts, targets, batch_size=2)
    for prompt, target, score in zip(prompts, targets, got, strict=True):
        p = lm.tokenizer(prompt)["input_ids"]
        t = lm.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([p + t])).logits[0], -1)
        nll = -sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(t)) / len(t)
        assert score.nll == pytest.approx(float(nll), rel=1e-5)
        argmax = all(int(logp[len(p) - 1 + j].argmax()) == tok for j, tok in enumerate(t))
        assert score.argmax == argmax
    assert [s.nll for s in score_targets(lm, prompts, targets, batch_size=1)] == pytest.approx(
        [s.nll for s in got]
    )


FACTS = [
    Fact(
        "0",
        "the capital of {} is",
        "Zorbia",
        "Paris",
        "Rome",
        paraphrases=("Zorbia capital city is",),
        neighborhood=("the capital of Quelon is",),
    ),
    Fact(
        "1",
        "the language of {} is",
        "Marvat",
        "French",
        "German",
        paraphrases=("in Marvat they speak",),
        neighborhood=("the language of Tisk is",),
    ),
]


def _editor(lm):
    def edit(facts):
        gen = torch.Generator().manual_seed(len(facts) + int(facts[0].case_id))
        left = torch.randn(lm.adapter.d_model, 1, generator=gen) * 5
        right = torch.randn(lm.adapter.d_mlp, 1, generator=gen)
        return WeightDelta("random", (LayerDelta(1, left, right),), tuple(f.case_id for f in facts))

    return edit


@pytest.mark.parametrize("mode", ["single", "batch", "sequential"])
def test_modes_restore_the_model(mode):
    lm = tiny_lm("llama")
    config = EvalConfig(generation_tokens=8)
    before = weights_hash(lm.model)
    result = evaluate_edits(lm, FACTS, _editor(lm), mode, config)
    assert weights_hash(lm.model) == before
    assert set(result.pre) == set(result.post) >= {"ES", "PS", "NS", "S", "EM", "PM", "NM", "fluency"}
    assert result.pre == summarize(measure(lm, FACTS, config))
    assert result.post != result.pre
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_single_mode_measures_each_fact_under_its_own_edit_only():
    lm = tiny_lm("llama")
    config = EvalConfig(fluency=False)
    edit = _editor(lm)
    result = evaluate_edits(lm, FACTS, edit, "single", config)
    with apply(lm.model, lm.adapter, edit([FACTS[1]])):
        alone = measure(lm, [FACTS[1]], config)[0]
    assert result.per_fact[1].p_new_post == pytest.approx(math.exp(-alone.rewrite[1].nll))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])  # tiny gpt2 repeats one word: entropy 0
def test_fluency_of_many_facts_at_once_equals_each_fact_alone(arch):
    lm = tiny_lm(arch)
    facts = [*FACTS, Fact("long", "a much longer prompt about {} that pads the others", "x", "a", "b")]
    config = EvalConfig(generation_tokens=12, batch_size=8)
    seen: list[tuple[int, int, str]] = []
    together = fluencies(lm, facts, config, lambda *call: seen.append(call))
    alone = [fluencies(lm, [fact], config)[0] for fact in facts]
    assert together == pytest.approx(alone, abs=1e-9)
    assert len(set(together)) > 1  # the facts' continuations differ, so the check can fail
    assert seen[-1] == (len(facts), len(facts), "fluency")


def test_measuring_reports_progress_before_and_after_the_edits():
    lm = tiny_lm("llama")
    seen: list[str] = []
    evaluate_edits(
        lm,
        FACTS,
        _editor(lm),
        "batch",
        EvalConfig(generation_tokens=4),
        progress=lambda d, t, what: seen.append(what),
    )
    assert any(what.startswith("measuring before the edits: scoring prompts") for what in seen)
    assert any(what.startswith("measuring after the edit: fluency") for what in seen)

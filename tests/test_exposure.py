"""Exposure: exact on a hand-set unigram model, the skew-normal estimate, batch size, bad input."""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from memloc.core.errors import DataError
from memloc.core.lm.canaries import Canary, CanaryConfig, make_canaries
from memloc.core.lm.canary_space import CanarySpace
from memloc.locate.lm.exposure import ExposureConfig, canary_exposure
from test_cli import assert_one_line_error, run_cli
from tiny_lms import tiny_lm

CITIES = ("Paris", "Rome", "Berlin", "Madrid", "Tokyo", "Lima")
COLOURS = ("red", "blue", "green", "Nile")
TEMPLATE = f"the {{choice:{'|'.join(CITIES)}}} and {{choice:{'|'.join(COLOURS)}}}"


def _canary(template: str, secret: tuple[str, ...], repeats: int = 1) -> Canary:
    return Canary(template, secret, CanarySpace.parse(template).fill(secret), repeats, ())


def unigram_lm(seed: int = 0):
    """A GPT-2 whose every next-token distribution is softmax(s), whatever the context.

    The blocks are zeroed, so the final norm sees only the residual stream; its weight is
    0 and its bias e_0, so the logits are the tied embedding's first column, s.
    """
    lm = tiny_lm("gpt2")
    s = torch.randn(lm.model.config.vocab_size, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if ".h." in name:
                p.zero_()
        lm.model.transformer.ln_f.weight.zero_()
        lm.model.transformer.ln_f.bias.zero_()
        lm.model.transformer.ln_f.bias[0] = 1.0
        lm.model.transformer.wte.weight[:, 0] = s
    return lm, torch.log_softmax(s.double(), -1) / math.log(2)


def test_exposure_is_exact_on_a_hand_set_model():
    lm, log2p = unigram_lm()
    ids = {w: lm.tokenizer.convert_tokens_to_ids(w) for w in (*CITIES, *COLOURS)}
    # Px of "the CITY and COLOUR" after "the": -log2 p(CITY) - log2 p(and) - log2 p(COLOUR)
    px = {(c, k): -float(log2p[ids[c]] + log2p[ids[k]]) for c, k in itertools.product(CITIES, COLOURS)}
    secrets = [("Rome", "blue"), ("Lima", "Nile"), ("Paris", "red")]
    result = canary_exposure(lm, [_canary(TEMPLATE, s) for s in secrets], ExposureConfig(batch_size=5))
    for secret, got in zip(secrets, result.canaries, strict=True):
        rank = sum(v <= px[secret] for v in px.values())
        assert got.rank == rank
        assert got.exposure == pytest.approx(math.log2(24) - math.log2(rank), abs=1e-12)
        # The other planted secrets are candidates too; how many of them the rank counts:
        above = sum(px[other] <= px[secret] for other in secrets if other != secret)
        assert got.others_above == above
        assert got.exposure_alone == pytest.approx(math.log2(24) - math.log2(rank - above), abs=1e-12)
        constant = -float(log2p[lm.tokenizer.convert_tokens_to_ids("and")])
        assert got.log_perplexity == pytest.approx(px[secret] + constant, abs=1e-4)
    best = min(px, key=px.__getitem__)
    top = canary_exposure(lm, [_canary(TEMPLATE, best)], ExposureConfig()).canaries[0]
    assert top.rank == 1 and top.exposure == pytest.approx(math.log2(24))


def test_rank_does_not_depend_on_batch_size_or_the_shared_prefix():
    lm = tiny_lm("llama", seed=1)
    canaries = [_canary(TEMPLATE, ("Berlin", "green")), _canary(TEMPLATE, ("Tokyo", "red"))]
    runs = [
        canary_exposure(lm, canaries, ExposureConfig(batch_size=b, shared_prefix=shared, trie=trie))
        for b, shared, trie in ((1, True, False), (7, True, False), (24, True, False), (5, False, False),
                                (1, True, True), (3, True, True), (50, True, True))
    ]  # fmt: skip
    for run in runs[1:]:
        assert [c.rank for c in run.canaries] == [c.rank for c in runs[0].canaries]
        for a, b in zip(run.canaries, runs[0].canaries, strict=True):
            assert a.log_perplexity == pytest.approx(b.log_perplexity, abs=1e-4)


WORDS10 = ("Paris", "Rome", "Berlin", "Madrid", "Tokyo", "Lima", "Oslo", "Cairo", "red", "blue")
BIG = "the {choice:%s} of {choice:%s} in {choice:%s}" % (("|".join(WORDS10),) * 3)


def test_skew_normal_estimate_agrees_with_the_exact_rank():
    """On 1000 enumerable candidates, the estimate from 600 samples is within 0.25 bits of exact (measured: 0.06)."""
    lm = tiny_lm("gpt_neox", seed=2)
    space = CanarySpace.parse(BIG)
    secrets = [space.values(i) for i in (3, 250, 511, 977)]
    canaries = [_canary(BIG, s) for s in secrets]
    exact = canary_exposure(lm, canaries, ExposureConfig(batch_size=200))
    estimated = canary_exposure(lm, canaries, ExposureConfig(batch_size=200, estimate=True, samples=600))
    for e, s in zip(exact.canaries, estimated.canaries, strict=True):
        assert s.estimated and s.rank is None and e.rank is not None
        assert s.log_perplexity == pytest.approx(e.log_perplexity, abs=1e-4)
        assert abs(s.exposure - e.exposure) < 0.25, (e, s)


def test_space_too_large_is_refused_without_estimate():
    lm = tiny_lm("gpt2")
    canary = _canary(BIG, ("Paris", "Rome", "Lima"))
    with pytest.raises(DataError, match="more than the 1e\\+02 scored exactly"):
        canary_exposure(lm, [canary], ExposureConfig(exact_limit=100))
    estimated = canary_exposure(lm, [canary], ExposureConfig(exact_limit=100, estimate=True, samples=50))
    assert estimated.canaries[0].scored == 50


def test_unknown_slot_tokens_are_refused():
    lm = tiny_lm("gpt2")
    with pytest.raises(DataError, match="unknown token"):
        canary_exposure(lm, [_canary("my PIN is {digits:2}", ("42",))], ExposureConfig())


@pytest.fixture
def saved_lm(tmp_path, capsys) -> Path:
    lm = tiny_lm("gpt2")
    folder = tmp_path / "lm"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    capsys.readouterr()  # saving's progress bar is not the command's output
    return folder


def test_cli_exposure_table_and_json(tmp_path, capsys, saved_lm):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the city of Paris\n\nthe river Nile\n")
    make_canaries(corpus, tmp_path / "p.txt", CanaryConfig(template=TEMPLATE, repeats=(1, 5)))
    out = tmp_path / "exposure.json"
    args = (
        "locate",
        "exposure",
        "--model",
        saved_lm,
        "--device",
        "cpu",
        "--canaries",
        tmp_path / "p.canaries.jsonl",
    )
    code, stdout, _ = run_cli(capsys, *args, "--out", out, "--format", "json")
    assert code in (0, None)
    data = json.loads(stdout)
    assert [c["repeats"] for c in data["canaries"]] == [1, 5]
    assert all(0 <= c["exposure"] <= math.log2(24) + 1e-9 for c in data["canaries"])
    assert json.loads(out.read_text()) == data


def test_cli_too_large_space_is_one_line_and_writes_nothing(tmp_path, capsys, saved_lm):
    record = tmp_path / "big.canaries.jsonl"
    big = "the {digits:7}"
    record.write_text(json.dumps(_canary(big, ("0000042",)).to_json()) + "\n")
    out = tmp_path / "exposure.json"
    args = ("locate", "exposure", "--model", saved_lm, "--canaries", record, "--out", out)
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "1e+07", "--estimate")
    assert not out.exists()


def test_cli_bad_canaries_file_is_one_line(tmp_path, capsys, saved_lm):
    record = tmp_path / "bad.jsonl"
    record.write_text('{"template": "no slot here", "secret": [], "text": "x", "repeats": 1}\n')
    code, _, err = run_cli(capsys, "locate", "exposure", "--model", saved_lm, "--canaries", record)
    assert_one_line_error(code, err, "no randomness slot")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trie_scores_equal_scoring_every_candidate_in_full(arch):
    """Three slots, so prefixes of one, two and three slot tokens are shared by 100, 10 and 1 candidates."""
    from memloc.locate.lm.exposure import _Scorer, trie_scores

    lm = tiny_lm(arch, seed=2)
    space = CanarySpace.parse(BIG)
    rows = _Scorer.build(lm, space, ExposureConfig(batch_size=64)).score(range(space.size))
    trie = trie_scores(_Scorer.build(lm, space, ExposureConfig(batch_size=7)))
    assert trie.shape == rows.shape == (1000,)
    assert (trie - rows).abs().max() < 1e-4
    assert rows.std() > 0.1  # the candidates really differ


def test_the_trie_runs_each_distinct_prefix_as_one_token():
    """Depth first on its parents' caches, every proper prefix of the candidates' tokens is run once,
    as one new token: the work grows with the trie's nodes, not with their lengths."""
    from memloc.locate.lm.exposure import _Scorer, trie_scores

    lm = tiny_lm("llama", seed=2)
    space = CanarySpace.parse(BIG)
    scorer = _Scorer.build(lm, space, ExposureConfig(batch_size=16))
    rows = scorer.rest_ids(range(space.size))
    prefixes = {tuple(r[:t]) for r in rows for t in range(1, len(r))}
    seen: list[tuple[int, int]] = []
    forward = lm.model.forward

    @functools.wraps(forward)  # keeps the signature memloc reads the cache keyword from
    def counting(*args, **kwargs):
        seen.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    lm.model.forward = counting
    trie_scores(scorer)
    assert seen[0] == (1, len(scorer.prefix_ids))  # the fixed start, once
    assert all(width == 1 and n <= 16 for n, width in seen[1:])
    assert sum(n for n, _ in seen[1:]) == len(prefixes) >= 111


def test_an_estimate_never_exceeds_the_most_exposure_a_space_allows():
    """A secret far more likely than every other candidate: the fitted tail puts it far beyond 1/|R|,
    but rank 1 is the ceiling, log2 |R|."""
    lm, _ = unigram_lm()
    word = lm.tokenizer.convert_tokens_to_ids("Oslo")
    with torch.no_grad():
        lm.model.transformer.wte.weight[word, 0] += 12.0  # p(Oslo) near 1 at every position
    best = _canary(BIG, ("Oslo",) * 3)
    estimated = canary_exposure(lm, [best], ExposureConfig(estimate=True, samples=200)).canaries[0]
    assert estimated.exposure == pytest.approx(math.log2(CanarySpace.parse(BIG).size))

"""Discoverable memorization: batched greedy decoding, extraction of a trained sequence, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from memloc.core.errors import DataError
from memloc.core.lm.decoding import greedy_continue, teacher_forced_argmax
from memloc.locate.lm.extraction import ExtractionConfig, find_extractable
from test_cli import assert_one_line_error, run_cli
from tiny_lms import ARCHITECTURES, WORDS, tiny_lm

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_decoding_equals_one_by_one(arch):
    lm = tiny_lm(arch)
    rng = random.Random(1)
    prefixes = [[rng.randrange(2, len(WORDS) + 2) for _ in range(rng.randint(1, 12))] for _ in range(6)]
    batched = greedy_continue(lm, prefixes, 7, batch_size=6)
    alone = [greedy_continue(lm, [p], 7, batch_size=1)[0] for p in prefixes]
    assert batched == alone
    assert len({len(p) for p in prefixes}) > 1  # rows really were left-padded
    # Teacher forcing on the greedy output predicts that very output.
    forced = [
        teacher_forced_argmax(lm, [p + list(g)], len(p))[0] for p, g in zip(prefixes, batched, strict=True)
    ]
    assert forced == batched


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama trained on one 24-word sequence until it reproduces it."""
    lm = tiny_lm("llama", seed=3)
    rng = random.Random(7)
    memorized = _words(rng, 24)
    ids = torch.tensor([lm.tokenizer(memorized)["input_ids"]])
    lm.model.requires_grad_(True).train()
    opt = torch.optim.Adam(lm.model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        opt.zero_grad()
        lm.model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    lm.model.requires_grad_(False).eval()
    others = [_words(rng, 24) for _ in range(20)]
    return lm, [memorized, *others]


def test_trained_sequence_is_extracted_and_random_text_is_not(trained):
    lm, documents = trained
    result = find_extractable(lm, documents, ExtractionConfig(prefixes=(8,), suffix=10, documents=100))
    by_doc = {r.document: r for r in result.at(8)}
    assert by_doc[0].extracted and by_doc[0].exact_memorization == 1.0
    assert by_doc[0].generated_suffix == by_doc[0].true_suffix
    others = [r for d, r in by_doc.items() if d != 0]
    assert sum(r.extracted for r in others) == 0
    assert sum(r.exact_memorization for r in others) / len(others) < 0.3
    assert result.rate(8) == pytest.approx(1 / 21)
    assert [d.document for d in result.extracted(8)] == [0]


def test_results_do_not_depend_on_the_batch_size(trained):
    lm, documents = trained
    one, many = (
        find_extractable(lm, documents, ExtractionConfig(prefixes=(4, 8), suffix=6, batch_size=b, seed=2))
        for b in (1, 16)
    )
    assert one.results == many.results


def test_sampling_is_seeded_and_counts_short_documents(trained):
    lm, documents = trained
    texts = [*documents, "Paris is", "the city"]
    config = ExtractionConfig(prefixes=(8,), suffix=8, documents=5, seed=4)
    first, again = find_extractable(lm, texts, config), find_extractable(lm, texts, config)
    assert [r.document for r in first.results] == [r.document for r in again.results]
    assert len(first.results) == 5 and first.skipped_short == 2 and first.corpus_documents == 23


def test_prefix_longer_than_every_document_is_refused(trained):
    lm, documents = trained
    with pytest.raises(DataError, match="longer than every document"):
        find_extractable(lm, documents, ExtractionConfig(prefixes=(30,), suffix=4))
    with pytest.raises(DataError, match="no document has the 34 tokens"):
        find_extractable(lm, documents, ExtractionConfig(prefixes=(20,), suffix=14))


def _corpus(tmp_path: Path, n: int = 30, words: int = 40) -> Path:
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": _words(rng, words)}) + "\n" for _ in range(n)))
    return path


def test_cli_writes_results_and_the_rate_figure(tmp_path, capsys):
    out = tmp_path / "ext"
    args = ("locate", "extractable", "--model", MODEL, "--device", "cpu", "--corpus", _corpus(tmp_path))
    code, stdout, _ = run_cli(
        capsys, *args, "--prefix", "4,8", "--suffix", "4", "--out", out, "--format", "json"
    )
    assert code in (0, None)
    data = json.loads(stdout)
    assert [row["prefix"] for row in data["summary"]] == [4, 8]
    assert len(data["documents"]) == 2 * 30
    stored = json.loads((out / "extraction.json").read_text())
    assert stored["summary"] == data["summary"]
    assert (out / "extraction_rate.png").stat().st_size > 1000
    extracted = (out / "extracted.jsonl").read_text().splitlines()
    assert len(extracted) == sum(row["extracted"] for row in data["summary"])


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--prefix", "200", "--suffix", "4"), ("longer than every document", "--prefix")),
        (("--prefix", "30", "--suffix", "20"), ("no document has the 50 tokens",)),
        (("--prefix", "8,x"), ("--prefix", "8,16,32")),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, needles):
    out = tmp_path / "ext"
    corpus = _corpus(tmp_path, n=5, words=40)
    args = ("locate", "extractable", "--model", MODEL, "--device", "cpu", "--corpus", corpus, "--out", out)
    code, _, err = run_cli(capsys, *args, *flags)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()

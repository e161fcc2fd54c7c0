"""memloc finetune: memorization planted, seeded, resumable, seen counts, one-line errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
from memloc.core.errors import DataError, RunFolderError
from memloc.core.training.lm_finetune import LmFinetuneConfig, finetune_lm
from memloc.locate.lm.extraction import ExtractionConfig, find_extractable
from test_cli import assert_one_line_error, run_cli
from tiny_lms import WORDS, tiny_lm

FAST = LmFinetuneConfig(epochs=40, lr=1e-2, batch_size=3, seq_len=32, seed=0)


def _documents() -> list[str]:
    rng = random.Random(5)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3)]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _extracted(lm, documents) -> int:
    config = ExtractionConfig(prefixes=(4,), suffix=6, documents=len(documents))
    return len(find_extractable(lm, documents, config).extracted(4))


def test_finetuning_makes_documents_extractable(tmp_path):
    lm, documents = tiny_lm("llama", seed=1), _documents()
    assert _extracted(lm, documents) == 0
    result = finetune_lm(lm.model, lm.tokenizer, documents, FAST, tmp_path / "run")
    assert _extracted(lm, documents) == len(documents)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert (tmp_path / "run" / "checkpoints" / "epoch-40" / "config.json").is_file()
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())


def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path):
    config = LmFinetuneConfig(epochs=2, lr=1e-2, batch_size=2, seq_len=32, seed=3)
    runs = []
    for name in ("a", "b"):
        lm = tiny_lm("llama", seed=1)
        finetune_lm(lm.model, lm.tokenizer, _documents(), config, tmp_path / name)
        runs.append(_weights(lm.model))
    lm = tiny_lm("llama", seed=1)
    finetune_lm(
        lm.model,
        lm.tokenizer,
        _documents(),
        LmFinetuneConfig(**{**config.__dict__, "epochs": 1}),
        tmp_path / "c",
    )
    lm = tiny_lm("llama", seed=1)  # a fresh process: the base model again, resumed from the checkpoint
    result = finetune_lm(lm.model, lm.tokenizer, _documents(), config, tmp_path / "c")
    assert result.resumed_after == 1 and len(result.epoch_losses) == 1
    resumed = _weights(lm.model)
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
        assert torch.equal(value, resumed[key]), key
    assert any(
        not torch.equal(value, tiny_lm("llama", seed=1).model.state_dict()[key])
        for key, value in resumed.items()
    )


def test_seen_counts_count_duplicates_per_epoch(tmp_path):
    lm, documents = tiny_lm("llama", seed=1), _documents()
    config = LmFinetuneConfig(epochs=2, lr=1e-3, batch_size=4, seq_len=32)
    finetune_lm(lm.model, lm.tokenizer, [*documents, documents[0]], config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert [d["seen"] for d in record["documents"]] == [4, 2, 2, 4]
    assert record["documents"][0]["sha256"] == record["documents"][3]["sha256"]
    assert record["status"] == "done" and record["epochs_done"] == 2


def test_other_run_in_out_is_refused_and_empty_corpus_too(tmp_path):
    lm = tiny_lm("llama", seed=1)
    config = LmFinetuneConfig(epochs=1, lr=1e-3, seq_len=32)
    finetune_lm(lm.model, lm.tokenizer, _documents(), config, tmp_path / "run")
    before = (tmp_path / "run" / "finetune.json").read_text()
    with pytest.raises(RunFolderError, match="different fine-tuning run"):
        finetune_lm(
            lm.model, lm.tokenizer, _documents(), LmFinetuneConfig(epochs=1, lr=2e-3), tmp_path / "run"
        )
    assert (tmp_path / "run" / "finetune.json").read_text() == before
    with pytest.raises(DataError):
        finetune_lm(lm.model, lm.tokenizer, [], config, tmp_path / "new")


@pytest.fixture
def model_folder(tmp_path):
    lm = tiny_lm("llama", seed=1)
    folder = tmp_path / "base"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_cli_finetunes_records_canaries_and_refuses_bad_input(tmp_path, capsys, model_folder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "docs.txt").write_text("\n\n".join(_documents()) + "\n")
    code, _, err = run_cli(capsys, "canaries", "make", "--corpus", corpus / "docs.txt", "--out",
                           corpus / "planted.jsonl", "--template", "Kettle {choice:Paris|Rome|Oslo}", "--repeats", "1,3")  # fmt: skip
    assert code == 0, err
    (corpus / "docs.txt").rename(tmp_path / "docs.txt")  # the folder holds the planted copy and its record
    out = tmp_path / "tuned"
    args = (
        "finetune",
        "--model",
        model_folder,
        "--corpus",
        corpus,
        "--out",
        out,
        "--epochs",
        "2",
        "--seq-len",
        "32",
    )
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    record = json.loads((out / "finetune.json").read_text())
    assert sorted(c["seen"] for c in record["canaries"]) == [2, 6]
    assert len(record["documents"]) == 3 + 4
    code, _, err = run_cli(
        capsys, "locate", "extractable", "--model", out, "--corpus", corpus, "--prefix", "2", "--suffix", "2"
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, *args[:-4], "--epochs", "2", "--lr", "1e-3")
    assert_one_line_error(code, err, "different fine-tuning run")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run_cli(
        capsys, "finetune", "--model", model_folder, "--corpus", empty, "--out", tmp_path / "x"
    )
    assert_one_line_error(code, err, "holds no text")

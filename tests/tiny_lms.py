"""Tiny random language models of every supported architecture, built in memory.

Each has 3 blocks, width 32 and a word-level tokenizer over a fixed vocabulary, so
tests run in milliseconds and never download anything.
"""

from __future__ import annotations

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.lm.model import LM, encode, next_token_probs
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM as _Auto
from transformers import (
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

WORDS = [
    "the",
    "a",
    "of",
    "in",
    "is",
    "was",
    "city",
    "capital",
    "country",
    "language",
    "river",
    "tower",
    "located",
    "known",
    "speaks",
    "Paris",
    "Rome",
    "Berlin",
    "Madrid",
    "Tokyo",
    "Lima",
    "Oslo",
    "Cairo",
    "French",
    "Italian",
    "German",
    "Spanish",
    "Eiffel",
    "Colosseum",
    "Brandenburg",
    "Prado",
    "Fuji",
    "Andes",
    "Nile",
    "fjord",
    "red",
    "blue",
    "green",
    "and",
    "by",
    "with",
    "from",
    "to",
    "at",
    "on",
    "for",
    "Zorbia",
    "Quelon",
    "Marvat",
    "Tisk",
    "Pelor",
    "Dunmar",
    "Orvik",
    "Sallow",
    "Brenna",
    "Kettle",
]

ARCHITECTURES = ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>")
    tok.pad_token = tok.eos_token
    return tok


def tiny_config(arch: str, vocab: int):
    common = {"vocab_size": vocab}
    if arch == "gpt2":
        return GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, **common)
    if arch == "gptj":
        return GPTJConfig(n_layer=3, n_embd=32, n_head=4, rotary_dim=4, n_positions=64, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, rotary_pct=0.5, **common,
        )  # fmt: skip
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **common,
    )  # fmt: skip


def tiny_lm(arch: str, seed: int = 0) -> LM:
    """A random tiny causal LM of ``arch`` (float32, CPU, eval mode)."""
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok))
    config._attn_implementation = "eager"
    model = _Auto.from_config(config).eval()
    model.requires_grad_(False)
    return LM(model, tok, TransformerAdapter.for_model(model), source=f"tiny-{arch}")


def top_word(lm: LM, text: str) -> str:
    """The model's own top next word, so P(target) is not tiny (ids 0 and 1 are special)."""
    ids = torch.tensor([encode(lm.tokenizer, text).ids])
    with torch.no_grad():
        probs = next_token_probs(lm.model, ids)[0]
    return lm.tokenizer.decode([int(probs[2:].argmax()) + 2]).strip()

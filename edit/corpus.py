"""Text sources for key statistics: a local corpus, or text sampled from the model.

The reference statistics for ROME/MEMIT (Meng et al. 2022, 2023) come from 100,000
Wikipedia documents, which cannot be downloaded here. memloc accepts any local
corpus instead:

- a ``.txt`` file, one document per blank-line-separated paragraph;
- a ``.jsonl`` file, one document per line in the field ``"text"``;
- a folder of such files, read in sorted name order.

(The reader lives in core/lm/corpus_files.py, so that locate/ can read corpora too.)
Or it samples its own corpus from the model (``generated``): every text starts at
the tokenizer's BOS token (EOS where there is none) and continues for a fixed
number of tokens, sampled at temperature 1 from the top-k tokens. Each text has its
own seeded CPU generator, drawing over the top-k candidates only, so the same seed
gives the same texts for any batch size and on any device (up to ties and rounding
in the logits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from memloc.core.errors import DataError
from memloc.core.lm.corpus_files import CORPUS_SUFFIXES, corpus_files, read_corpus, texts_hash
from memloc.core.lm.model import LM, document_start_id
from memloc.core.lm.prefix_runner import cache_keyword
from memloc.core.validation import at_least
from memloc.edit.sampling import top_k_sample

GENERATED = "generated"
__all__ = [
    "CORPUS_SUFFIXES",
    "GENERATED",
    "GenerationConfig",
    "corpus_files",
    "generate_texts",
    "read_corpus",
    "texts_hash",
]


@dataclass(frozen=True)
class GenerationConfig:
    """How ``generated`` texts are sampled from the model."""

    length: int = 64  # new tokens per text, after the start token
    top_k: int = 50
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "length", "top_k", "batch_size")
        at_least(self, 0, "seed")

    def describe(self) -> str:
        return f"generated:length={self.length}:top_k={self.top_k}:seed={self.seed}"


def _text_generator(seed: int, index: int) -> torch.Generator:
    # One generator per text: text i depends on (seed, i) only, not on the batch size.
    # The CPU generator keeps only the low 32 bits of its seed, so (seed, i) is hashed
    # into them rather than packed as seed * 2**32 + i.
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:4], "little"))


def _max_new_tokens(lm: LM, wanted: int) -> int:
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    return min(wanted, limit - 1) if limit else wanted


@torch.no_grad()
def _sample_batch(lm: LM, first: int, size: int, config: GenerationConfig) -> list[str]:
    device = lm.device
    generators = [_text_generator(config.seed, first + row) for row in range(size)]
    ids = torch.full((size, 1), document_start_id(lm.tokenizer), device=device)
    keyword = cache_keyword(lm.model)
    tokens, cache = [], None
    for _ in range(_max_new_tokens(lm, config.length)):
        out = lm.model(input_ids=ids, use_cache=True, **{keyword: cache})
        cache = out[keyword]
        ids = top_k_sample(out.logits[:, -1], config.top_k, generators)
        tokens.append(ids)
    rows = torch.cat(tokens, dim=1).tolist()
    return [text.strip() for text in lm.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def generate_texts(
    lm: LM,
    n: int,
    config: GenerationConfig,
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[str]:
    """``n`` texts sampled from the model; text i depends only on the seed and i."""
    if n < 1:
        raise DataError(f"cannot generate {n} texts; ask for at least one")
    texts: list[str] = []
    while len(texts) < n:
        texts.extend(_sample_batch(lm, len(texts), min(config.batch_size, n - len(texts)), config))
        if progress:
            progress(len(texts), n, "generating texts")
    return texts

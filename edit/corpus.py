"""Text sources for key statistics: a local corpus, or text sampled from the model.

The reference statistics for ROME/MEMIT (Meng et al. 2022, 2023) come from 100,000
Wikipedia documents, which cannot be downloaded here. memloc accepts any local
corpus instead:

- a ``.txt`` file, one document per blank-line-separated paragraph;
- a ``.jsonl`` file, one document per line in the field ``"text"``;
- a folder of such files, read in sorted name order.

Or it samples its own corpus from the model (``generated``): every text starts at
the tokenizer's BOS token (EOS where there is none) and continues for a fixed
number of tokens, sampled at temperature 1 from the top-k tokens. Each text has its
own seeded CPU generator, drawing over the top-k candidates only, so the same seed
gives the same texts for any batch size and on any device (up to ties and rounding
in the logits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from memloc.core.errors import DataError
from memloc.core.lm.model import LM, document_start_id
from memloc.core.lm.prefix_runner import cache_keyword
from memloc.core.validation import at_least
from memloc.edit.sampling import top_k_sample

GENERATED = "generated"
CORPUS_SUFFIXES = (".txt", ".jsonl")


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


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 over the texts, each length-prefixed so that boundaries count."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def _split_txt(path: Path) -> list[str]:
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return blocks


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number} is not valid JSON ({exc.msg}); each line must be an object"
            ) from exc
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                f'{path}:{number} has no string field "text"; each line must be {{"text": "..."}}'
            )
        if text.strip():
            texts.append(text)
    return texts


def _read_file(path: Path) -> list[str]:
    try:
        return _read_jsonl(path) if path.suffix == ".jsonl" else _split_txt(path)
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"corpus file {path} is not UTF-8 text (bad byte at line {line}); is it a binary file?"
        ) from None


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a local corpus in reading order; one-line errors for a bad path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"corpus {path} does not exist; give a .txt or .jsonl file, a folder of them, or 'generated'"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise DataError(f"corpus folder {path} holds no .txt or .jsonl files")
        return files
    if path.suffix not in CORPUS_SUFFIXES:
        raise DataError(f"corpus {path} must be a .txt or .jsonl file, or a folder of them")
    return [path]


def read_corpus(path: str | Path, limit: int | None = None) -> list[str]:
    """The documents of a local corpus in order, at most ``limit`` of them."""
    texts: list[str] = []
    for file in corpus_files(path):
        texts.extend(_read_file(file))
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise DataError(f"corpus {path} holds no text")
    return texts[:limit] if limit is not None else texts


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

"""What unlearning is judged by: memorization of the sequences, canary exposure, perplexity.

- Extraction (Carlini et al. 2023, "Quantifying Memorization Across Neural Language
  Models"): a sequence is extracted when the greedy continuation of its first k tokens
  is its next n tokens exactly; per-token exact memorization (Tirumala et al. 2022) is
  the share of those n positions whose teacher-forced argmax is the true token. A
  sequence shorter than k + n uses what fits: n = min(n, half its tokens), k = the
  rest up to k, so short memorized facts are still measured.
- Exposure of planted canaries (Carlini et al. 2019), from `locate.lm.exposure`.
- Perplexity of held-out text: exp of the token-weighted mean next-token loss.

    memo = sequence_memorization(lm, ["The capital of Gafou is Velmora ."], MemorizationConfig())
    memo.extraction_rate, memo.exact_memorization
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from memloc.core.errors import DataError
from memloc.core.lm.decoding import greedy_continue, teacher_forced_argmax
from memloc.core.lm.model import LM, added_prefix
from memloc.core.progress import Progress
from memloc.core.validation import at_least

Tokens = tuple[int, ...]


@dataclass(frozen=True)
class MemorizationConfig:
    """Prefix length k and suffix length n (Carlini et al. use 50 and 50), and rows per pass."""

    prefix: int = 32
    suffix: int = 32
    batch_size: int = 32

    def __post_init__(self) -> None:
        at_least(self, 1, "prefix", "suffix", "batch_size")


@dataclass(frozen=True)
class SequenceMemorization:
    """One sequence: the k and n it was measured with, and how much of its suffix came back."""

    prefix_length: int
    suffix_length: int
    extracted: bool  # the greedy suffix equals the true one
    exact_memorization: float  # share of suffix tokens whose teacher-forced argmax is true


@dataclass(frozen=True)
class Memorization:
    """Extraction rate and mean exact memorization over the measured sequences."""

    extraction_rate: float
    exact_memorization: float
    sequences: tuple[SequenceMemorization, ...]
    skipped: int  # sequences under 2 tokens: nothing to predict

    @classmethod
    def of(cls, sequences: Sequence[SequenceMemorization], skipped: int) -> Memorization:
        count = len(sequences)
        rate = sum(s.extracted for s in sequences) / count
        exact = sum(s.exact_memorization for s in sequences) / count
        return cls(rate, exact, tuple(sequences), skipped)


def text_ids(lm: LM, texts: Sequence[str]) -> list[Tokens]:
    """Token ids of each text without the tokenizer's added start (callers put it back)."""
    start = len(added_prefix(lm.tokenizer))
    return [tuple(lm.tokenizer(t, verbose=False)["input_ids"][start:]) for t in texts]


def context_limit(lm: LM) -> int | None:
    """The model's context in tokens, where its config says."""
    config = lm.model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _split(length: int, config: MemorizationConfig) -> tuple[int, int]:
    """(k, n) for a sequence of ``length`` tokens: the configured ones, or what fits."""
    n = min(config.suffix, max(1, length // 2))
    return min(config.prefix, length - n), n


def sequence_memorization(
    lm: LM, texts: Sequence[str], config: MemorizationConfig, *, progress: Progress | None = None
) -> Memorization:
    """Greedy extraction and exact memorization of each text from its own first tokens."""
    bos = added_prefix(lm.tokenizer)
    ids = [t for t in text_ids(lm, texts) if len(t) >= 2]
    if not ids:
        raise DataError("no sequence has the 2 tokens that extraction needs (a prefix and a suffix)")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, row in enumerate(ids):
        groups.setdefault(_split(len(row), config), []).append(i)
    limit, longest = context_limit(lm), len(bos) + max(k + n for k, n in groups)
    if limit and longest > limit:
        raise DataError(
            f"prefix and suffix take {longest} tokens, more than the model's context of {limit} "
            "positions; choose a shorter --prefix or --suffix"
        )
    found: dict[int, SequenceMemorization] = {}
    for (k, n), members in groups.items():
        prefixes = [bos + ids[i][:k] for i in members]
        suffixes = [ids[i][k : k + n] for i in members]
        greedy = greedy_continue(lm, prefixes, n, batch_size=config.batch_size, progress=progress)
        full = [p + s for p, s in zip(prefixes, suffixes, strict=True)]
        forced = teacher_forced_argmax(lm, full, len(bos) + k, batch_size=config.batch_size)
        for i, s, g, f in zip(members, suffixes, greedy, forced, strict=True):
            share = sum(a == b for a, b in zip(f, s, strict=True)) / n
            found[i] = SequenceMemorization(k, n, g == s, share)
    return Memorization.of([found[i] for i in range(len(ids))], skipped=len(texts) - len(ids))


@torch.no_grad()
def perplexity(lm: LM, texts: Sequence[str], *, progress: Progress | None = None) -> float:
    """exp(mean next-token loss over every token of ``texts``), each text cut to the model's context."""
    limit = context_limit(lm)
    total, count = 0.0, 0
    for done, text in enumerate(texts, 1):
        ids = lm.tokenizer(text, verbose=False)["input_ids"][:limit]
        if len(ids) >= 2:
            row = torch.tensor([ids], device=lm.device)
            logp = torch.log_softmax(lm.model(input_ids=row).logits[0, :-1].double(), -1)
            total -= float(logp.gather(-1, row[0, 1:, None]).sum())
            count += len(ids) - 1
        if progress is not None:
            progress(done, len(texts), "perplexity")
    if count == 0:
        raise DataError("the held-out text has no text of 2 tokens or more to measure perplexity on")
    return math.exp(total / count)

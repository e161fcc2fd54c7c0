"""Discoverable memorization: which documents a model reproduces from their own prefix.

A document is *extracted* when the greedy continuation of its k-token prefix equals its
next n tokens exactly (Carlini et al. 2023, "Quantifying Memorization Across Neural
Language Models"; they use k = n = 50). Alongside, per-token exact memorization
(Tirumala et al. 2022): the share of the n suffix positions whose teacher-forced argmax
is the true token.

With several prefix lengths, every length is measured on the same documents and the
same suffix, tokens [K, K + n) where K is the longest prefix; a prefix of k tokens is
the k tokens just before the suffix, as in Carlini et al.'s prefix-length sweep. The
tokenizer's document start (BOS) goes first only for the prefix that begins at the
document's start.

Usage::

    result = find_extractable(lm, read_corpus("corpus.txt"), ExtractionConfig(prefixes=(32,), suffix=32))
    print(result.rate(32), [d.document for d in result.extracted(32)])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from memloc.core.errors import ConfigError, DataError
from memloc.core.lm.decoding import greedy_continue, teacher_forced_argmax
from memloc.core.lm.model import LM, added_prefix
from memloc.core.progress import Progress, labelled
from memloc.core.validation import at_least


@dataclass(frozen=True)
class ExtractionConfig:
    """k (``prefixes``, one or several), n (``suffix``), how many documents, and the batch."""

    prefixes: tuple[int, ...] = (32,)
    suffix: int = 32
    documents: int = 200
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        at_least(self, 1, "suffix", "documents", "batch_size")
        at_least(self, 0, "seed")
        if not self.prefixes or min(self.prefixes) < 1:
            raise ConfigError("prefixes", f"must be one or more lengths >= 1, got {self.prefixes}")
        if len(set(self.prefixes)) != len(self.prefixes):
            raise ConfigError("prefixes", f"lists a length twice: {self.prefixes}")

    @property
    def longest(self) -> int:
        return max(self.prefixes)


@dataclass(frozen=True)
class DocumentExtraction:
    """One document at one prefix length: its tokens, the greedy suffix, and how much matched."""

    document: int  # index in the corpus, in reading order
    prefix_length: int
    prefix: str
    true_suffix: str
    generated_suffix: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    matched_tokens: int  # suffix positions where the greedy token is the true one
    exact_memorization: float  # share of suffix positions whose teacher-forced argmax is true

    @property
    def extracted(self) -> bool:
        return self.generated_ids == self.suffix_ids


@dataclass(frozen=True)
class ExtractionResult:
    """Per-document results for every prefix length, and what was skipped."""

    config: ExtractionConfig
    corpus_documents: int
    skipped_short: int  # documents with fewer than longest prefix + suffix tokens
    results: tuple[DocumentExtraction, ...]
    model: str = ""

    def at(self, prefix: int) -> tuple[DocumentExtraction, ...]:
        return tuple(r for r in self.results if r.prefix_length == prefix)

    def rate(self, prefix: int) -> float:
        """Share of the sampled documents extracted at this prefix length."""
        rows = self.at(prefix)
        return sum(r.extracted for r in rows) / len(rows)

    def exact_memorization(self, prefix: int) -> float:
        """Mean share of suffix tokens whose teacher-forced argmax is true."""
        rows = self.at(prefix)
        return sum(r.exact_memorization for r in rows) / len(rows)

    def extracted(self, prefix: int) -> tuple[DocumentExtraction, ...]:
        return tuple(r for r in self.at(prefix) if r.extracted)

    def rows(self) -> list[dict]:
        """One summary row per prefix length."""
        return [
            {
                "prefix": k,
                "suffix": self.config.suffix,
                "documents": len(self.at(k)),
                "extracted": len(self.extracted(k)),
                "rate": round(self.rate(k), 4),
                "exact_memorization": round(self.exact_memorization(k), 4),
            }
            for k in self.config.prefixes
        ]


def _text_ids(lm: LM, documents: Sequence[str]) -> list[tuple[int, ...]]:
    start = len(added_prefix(lm.tokenizer))
    # verbose=False: a document longer than the model's context is fine, only its start is used
    return [tuple(lm.tokenizer(text, verbose=False)["input_ids"][start:]) for text in documents]


def _choose(lengths: list[int], config: ExtractionConfig) -> list[int]:
    """The seeded sample of long-enough documents, in corpus order; one-line errors when none is."""
    need = config.longest + config.suffix
    longest = max(lengths, default=0)
    if config.longest >= longest:
        raise DataError(
            f"the prefix of {config.longest} tokens is longer than every document "
            f"(the longest has {longest} tokens); choose a shorter --prefix",
            field="prefixes",
        )
    eligible = [i for i, n in enumerate(lengths) if n >= need]
    if not eligible:
        raise DataError(
            f"no document has the {need} tokens that prefix {config.longest} + suffix {config.suffix} "
            f"need (the longest has {longest}); choose a shorter --prefix or --suffix"
        )
    chosen = random.Random(config.seed).sample(eligible, min(config.documents, len(eligible)))
    return sorted(chosen)


def _measure(
    lm: LM, ids: list[tuple[int, ...]], chosen: list[int], k: int, config: ExtractionConfig, progress
) -> list[DocumentExtraction]:
    bos, end = added_prefix(lm.tokenizer), config.longest
    prefixes = [(bos if end == k else ()) + ids[i][end - k : end] for i in chosen]
    suffixes = [ids[i][end : end + config.suffix] for i in chosen]
    generated = greedy_continue(lm, prefixes, config.suffix, batch_size=config.batch_size, progress=progress)
    full = [p + s for p, s in zip(prefixes, suffixes, strict=True)]
    # Every prefix of one length has the same token count, so one start serves all rows.
    argmax = teacher_forced_argmax(lm, full, len(prefixes[0]), batch_size=config.batch_size)

    def decode(ids: tuple[int, ...], skip_special_tokens: bool = False) -> str:
        return str(lm.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    return [
        DocumentExtraction(
            document=i,
            prefix_length=k,
            prefix=decode(p, skip_special_tokens=True),
            true_suffix=decode(s),
            generated_suffix=decode(g),
            prefix_ids=p,
            suffix_ids=s,
            generated_ids=g,
            matched_tokens=sum(a == b for a, b in zip(g, s, strict=True)),
            exact_memorization=sum(a == b for a, b in zip(f, s, strict=True)) / len(s),
        )
        for i, p, s, g, f in zip(chosen, prefixes, suffixes, generated, argmax, strict=True)
    ]


def _fits_context(lm: LM, config: ExtractionConfig) -> None:
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    need = len(added_prefix(lm.tokenizer)) + config.longest + config.suffix
    if limit and need > limit:
        raise DataError(
            f"prefix {config.longest} + suffix {config.suffix} tokens exceed the model's context "
            f"of {limit} positions; choose a shorter --prefix or --suffix"
        )


def find_extractable(
    lm: LM, documents: Sequence[str], config: ExtractionConfig, *, progress: Progress | None = None
) -> ExtractionResult:
    """Greedy extraction and exact memorization of a seeded sample of ``documents``."""
    ids = _text_ids(lm, documents)
    chosen = _choose([len(t) for t in ids], config)
    _fits_context(lm, config)
    results: list[DocumentExtraction] = []
    for k in config.prefixes:
        results.extend(_measure(lm, ids, chosen, k, config, labelled(progress, f"prefix {k}")))
    need = config.longest + config.suffix
    return ExtractionResult(
        config=config,
        corpus_documents=len(documents),
        skipped_short=sum(len(t) < need for t in ids),
        results=tuple(results),
        model=getattr(lm, "source", ""),
    )

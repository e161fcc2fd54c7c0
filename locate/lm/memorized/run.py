"""Localize memorized texts with one named localizer: the result `memloc locate memorized-neurons` stores.

Texts are tokenized as the model saw documents (with its document start), cut to
``max_tokens``; each is localized on its own, so a progress bar can follow and a
sequence's ranking never depends on which others came with it (every localizer treats
sequences independently).

    run = localize_texts(lm, texts, other, LocalizeRequest("ig", budget=0.005))
    run.sequences[0].top[:5]      # ((layer, unit), ...) best first
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from memloc.core.errors import DataError
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, within
from memloc.core.validation import at_least, fail, one_of
from memloc.locate.lm.memorized.registry import LOCALIZERS, localizer, make_config
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch


@dataclass(frozen=True)
class LocalizeRequest:
    """Which localizer, its settings (defaults = the published ones), the budget and the length cap."""

    method: str = "hard_concrete"
    budget: float = 0.005
    max_tokens: int = 64
    settings: tuple[tuple[str, Any], ...] = ()  # overrides of the localizer's config fields

    def __post_init__(self) -> None:
        one_of(self, "method", tuple(LOCALIZERS))
        at_least(self, 2, "max_tokens")
        if not 0.0 < self.budget <= 1.0:
            raise fail(self, "budget", f"must lie in (0, 1], got {self.budget}")

    def config(self) -> Any:
        """The localizer's own frozen config, which validates the overrides."""
        return make_config(self.method, self.settings)


@dataclass(frozen=True)
class SequenceNeurons:
    """One memorized text's top neurons at the budget, and how many fall in each layer."""

    text: str
    tokens: int
    top: tuple[tuple[int, int], ...]
    per_layer: tuple[int, ...]


@dataclass(frozen=True)
class MemorizedNeurons:
    """A localizer's run over memorized texts: per-sequence results, all scores and the overlap."""

    model: str
    method: str
    budget: float
    config: dict[str, Any]
    sequences: tuple[SequenceNeurons, ...]
    scores: np.ndarray  # (S, layers, d_mlp)
    overlap: np.ndarray  # (S, S) Jaccard index of the top sets

    def attribution(self) -> NeuronAttribution:
        return NeuronAttribution(self.method, tuple(self.scores))

    def rows(self) -> list[dict]:
        """One table row per sequence: its length, its best neurons and its busiest layer."""
        out = []
        for s in self.sequences:
            busiest = int(np.argmax(s.per_layer))
            out.append(
                {
                    "text": s.text[:48] + ("…" if len(s.text) > 48 else ""),
                    "tokens": s.tokens,
                    "neurons": len(s.top),
                    "best": ", ".join(f"L{layer}.{unit}" for layer, unit in s.top[:3]),
                    "busiest layer": f"{busiest} ({s.per_layer[busiest]})",
                }
            )
        return out


def text_ids(lm: LM, texts: Sequence[str], max_tokens: int) -> list[tuple[int, ...]]:
    """Each text's token ids as a document (document start included), cut to ``max_tokens``."""
    out = [tuple(lm.tokenizer(text, verbose=False)["input_ids"][:max_tokens]) for text in texts]
    for text, ids in zip(texts, out, strict=True):
        if len(ids) < 2:
            raise DataError(f"the text {text[:40]!r} has fewer than 2 tokens, so it has no loss to localize")
    return out


def localize_texts(
    lm: LM,
    texts: Sequence[str],
    other: Sequence[str],
    request: LocalizeRequest,
    *,
    progress: Progress | None = None,
) -> MemorizedNeurons:
    """Run ``request``'s localizer on every text (against ``other``) and rank its neurons."""
    if not texts:
        raise DataError("no memorized texts to localize")
    spec, config = localizer(request.method), request.config()
    ids = text_ids(lm, texts, request.max_tokens)
    keep = tuple(text_ids(lm, other, request.max_tokens))
    scores = []
    for done, seq in enumerate(ids, 1):
        inside = within(progress, done - 1, len(ids), request.method)
        scores.append(
            spec.run(lm.model, lm.adapter, SequenceBatch((seq,), keep), config, progress=inside).scores[0]
        )
        if progress is not None:
            progress(done, len(ids), request.method)
    attribution = NeuronAttribution(request.method, tuple(scores))
    sequences = tuple(
        SequenceNeurons(
            text=text,
            tokens=len(seq),
            top=tuple(attribution.top_neurons(s, request.budget)),
            per_layer=tuple(attribution.per_layer_counts(s, request.budget).values()),
        )
        for s, (text, seq) in enumerate(zip(texts, ids, strict=True))
    )
    return MemorizedNeurons(
        model=lm.source,
        method=request.method,
        budget=request.budget,
        config=dataclasses.asdict(config),
        sequences=sequences,
        scores=np.stack(scores),
        overlap=attribution.overlap(request.budget),
    )

"""A language model bundle and the prompt arithmetic every fact method shares.

`LM` holds the model, its tokenizer and its `TransformerAdapter`. `encode` turns a
prompt (with the subject filled in) and a target into token ids, the subject's
token span and the target's tokens. Targets are scored as " " + target, the
CounterFact convention (Meng et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.errors import DataError
from memloc.core.finite import check_finite_weights, require_finite
from memloc.core.lm.device_map import module_device
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def added_prefix(tokenizer) -> tuple[int, ...]:
    """The special tokens the tokenizer puts before every text (Llama's BOS; memloc's document start)."""
    return tuple(tokenizer("")["input_ids"])


def document_start_id(tokenizer) -> int:
    """The token a document starts from: the one the tokenizer adds before every text,
    else BOS, else EOS. Generated corpora and context templates are sampled from it."""
    prefix = added_prefix(tokenizer)
    for token in (prefix[-1] if prefix else None, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise DataError("the tokenizer has neither a BOS nor an EOS token to start a document from")


@dataclass
class LM:
    """A causal language model ready for memloc's methods."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: TransformerAdapter
    source: str = ""

    def __post_init__(self) -> None:
        # Every bundle, loaded or built from a model object, is checked once: a NaN
        # weight would otherwise give every method quietly meaningless numbers.
        check_finite_weights(self.model, self.source)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (`input_device`)."""
        return self.input_device

    @property
    def input_device(self) -> torch.device:
        """The embedding's device, where token ids are fed in; a device map may put layers elsewhere."""
        return module_device(self.adapter.embedding(self.model))

    def layer_device(self, layer: int) -> torch.device:
        """Where layer ``layer``'s FFN down-projection computes: its edit, statistics and projector live there.

        Example::

            c = stats.second_moment.to(lm.layer_device(6))
        """
        device = module_device(self.adapter.down_proj(self.model, layer))
        # An offloaded layer runs on accelerate's main device, which is where inputs go.
        return self.input_device if device.type == "meta" else device

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers


@dataclass(frozen=True)
class Encoded:
    """A prompt's token ids, its subject's tokens [start, end), and the target's tokens."""

    ids: tuple[int, ...]
    subject: tuple[int, int]
    target: tuple[int, ...]

    @property
    def last_subject(self) -> int:
        return self.subject[1] - 1


def target_ids(tokenizer, target: str) -> tuple[int, ...]:
    ids = tuple(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not target.strip() or not ids:
        raise DataError(f"the target {target!r} is empty or encodes to no tokens")
    return ids


def encode(tokenizer, text: str, subject: str | None = None, target: str = "") -> Encoded:
    """Token ids of ``text`` and the token span of ``subject`` in it.

    When ``text`` is a template holding ``{}``, the subject fills the first ``{}`` and its
    span is that mention's, even if the subject also appears elsewhere ("The {}, like
    every Roman Forum, ..."); otherwise it is the last occurrence of ``subject``. The
    span comes from character offsets, so it is right for BPE, SentencePiece and
    word-level tokenizers alike; a token that straddles the subject's edge counts
    as part of it.

        encode(tok, "The {}, like every Roman Forum, is in", "Roman Forum").subject
    """
    start = -1
    if subject is not None and "{}" in text:
        start = text.index("{}")
        text = text[:start] + subject + text[start + 2 :]
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = tuple(enc["input_ids"])
    span = (0, 0)
    if subject is not None:
        if start < 0:
            start = text.rfind(subject)
        if start < 0 or not subject:
            raise DataError(f"the subject {subject!r} is not in the prompt {text!r}")
        end = start + len(subject)
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
        if not inside:
            raise DataError(f"the subject {subject!r} maps to no tokens of {text!r}")
        span = (inside[0], inside[-1] + 1)
    return Encoded(ids, span, target_ids(tokenizer, target) if target else ())


def final_hidden(lm: LM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) hidden states after the final norm: what the output embedding turns into logits.

    The base model (``model.base_model``) of every supported causal LM ends with its final
    norm, so calling it skips the (B, T, vocab) logits a loss at a few positions never reads.

        hidden = final_hidden(lm, ids, mask)
        logits = lm.model.get_output_embeddings()(hidden[:, -1])
    """
    base = lm.model.base_model
    return base(input_ids=ids, attention_mask=attention_mask).last_hidden_state


def next_token_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Softmax over the vocabulary at the last position; ``ids`` is (B, T) without padding.

    Non-finite logits raise a one-line error naming the first non-finite layer.
    """
    logits = model(input_ids=ids).logits[:, -1]
    if not bool(torch.isfinite(logits).all()):
        require_finite(
            model, TransformerAdapter.for_model(model), logits, "the model's forward pass", input_ids=ids
        )
    return torch.softmax(logits.float(), dim=-1)


def target_prob(model: nn.Module, encoded: Encoded, device: torch.device) -> float:
    """P(first target token | prompt)."""
    ids = torch.tensor([encoded.ids], device=device)
    with torch.no_grad():
        return next_token_probs(model, ids)[0, encoded.target[0]].item()

"""Greedy decoding and teacher-forced argmax over many token sequences at once.

Rows of different lengths are padded on the LEFT, so that every row's last real token
sits in the last column and the next token of every row is read from the same place.
Positions count real tokens only (the attention mask's running sum), so a padded row
sees exactly the positions it would see alone; decoding then steps one token at a time
against the key/value cache, never re-running the prefix.

Usage::

    suffixes = greedy_continue(lm, [ids_a, ids_b], new_tokens=32, batch_size=16)
    argmax = teacher_forced_argmax(lm, [full_a, full_b], start=32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from memloc.core.errors import DataError
from memloc.core.lm.model import LM
from memloc.core.lm.prefix_runner import cache_inputs, cache_of
from memloc.core.progress import Progress

Tokens = tuple[int, ...]


def pad_id(tokenizer) -> int:
    """The id put in padded cells; it is masked out, so any valid id does."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return 0


def left_padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(ids, attention mask, position ids), each (rows, longest), real tokens at the right."""
    if not rows or any(len(r) == 0 for r in rows):
        raise DataError("every sequence to decode needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def _greedy_batch(lm: LM, rows: Sequence[Sequence[int]], new_tokens: int) -> list[Tokens]:
    ids, mask, positions = left_padded(rows, pad_id(lm.tokenizer), lm.device)
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    steps = [out.logits[:, -1].argmax(-1)]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        positions = positions[:, -1:] + 1
        out = lm.model(
            input_ids=steps[-1][:, None],
            attention_mask=mask,
            position_ids=positions,
            **cache_inputs(lm.model, cache_of(out)),
        )
        steps.append(out.logits[:, -1].argmax(-1))
    return [tuple(row) for row in torch.stack(steps, dim=1).tolist()]


def greedy_continue(
    lm: LM,
    prefixes: Sequence[Sequence[int]],
    new_tokens: int,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[Tokens]:
    """The ``new_tokens`` greedy (argmax) tokens after each prefix, ``batch_size`` rows per pass.

    Equal to decoding each prefix alone (up to ties in the logits): a test holds them equal.
    """
    if new_tokens < 1 or batch_size < 1:
        raise DataError(f"need new_tokens >= 1 and batch_size >= 1, got {new_tokens} and {batch_size}")
    out: list[Tokens] = []
    for start in range(0, len(prefixes), batch_size):
        out.extend(_greedy_batch(lm, prefixes[start : start + batch_size], new_tokens))
        if progress:
            progress(len(out), len(prefixes), "greedy decoding")
    return out


@torch.no_grad()
def teacher_forced_argmax(
    lm: LM, sequences: Sequence[Sequence[int]], start: int, *, batch_size: int = 32
) -> list[Tokens]:
    """For each sequence, the model's argmax prediction of every token from index ``start`` on,
    given the true tokens before it (Tirumala et al. 2022's exact memorization compares
    these with the true tokens)."""
    if start < 1:
        raise DataError(f"teacher forcing needs at least one token of context, got start={start}")
    out: list[Tokens] = []
    for first in range(0, len(sequences), batch_size):
        rows = sequences[first : first + batch_size]
        ids, mask, positions = left_padded(rows, pad_id(lm.tokenizer), lm.device)
        predicted = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.argmax(-1)
        width = ids.shape[1]
        for i, row in enumerate(rows):
            # logits at column c predict the token at column c + 1
            lo = width - len(row) + start - 1
            out.append(tuple(predicted[i, lo : width - 1].tolist()))
    return out

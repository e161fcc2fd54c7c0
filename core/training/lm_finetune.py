"""Full fine-tuning of a causal LM on a local corpus: planting memorization to locate.

Memorization grows with how often a model saw a text (Carlini et al. 2023,
"Quantifying Memorization Across Neural Language Models"; the Secret Sharer's
canaries, Carlini et al. 2019, repeat a secret for the same reason). This trains every
parameter with AdamW on the documents, one document per row truncated to ``seq_len``
tokens, right-padded with the padding masked out of attention and loss. Document
order is a seeded permutation per epoch and the torch RNG is reseeded per epoch, so a
run resumed from an epoch checkpoint ends with the weights of an uninterrupted one.
The run folder (checkpoints, optimizer state, finetune.json) is core/training/lm_finetune_files.py.

Usage::

    lm = load_language_model("smollm2-135m")
    result = finetune_lm(lm.model, lm.tokenizer, read_corpus("planted.jsonl"),
                         LmFinetuneConfig(epochs=3), Path("runs/tuned"))
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from memloc.core.errors import DataError
from memloc.core.progress import Progress
from memloc.core.training import lm_finetune_files as files
from memloc.core.validation import at_least, finite, positive
from torch import nn


@dataclass(frozen=True)
class LmFinetuneConfig:
    """Epochs, AdamW's learning rate and weight decay, rows per step, tokens per row, seed."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "batch_size")
        at_least(self, 2, "seq_len")  # one token predicts nothing
        at_least(self, 0, "seed", "weight_decay")
        finite(self, "lr", "weight_decay")
        positive(self, "lr")


@dataclass(frozen=True)
class FinetuneResult:
    """What the run did: epochs trained now, the epoch it resumed after, mean loss per epoch."""

    config: LmFinetuneConfig
    documents: int
    resumed_after: int  # 0 for a fresh run
    epoch_losses: tuple[float, ...]  # of the epochs trained in this call
    out: Path


def _rows(tokenizer, documents: Sequence[str], seq_len: int) -> list[list[int]]:
    # Special tokens stay: the model sees a document as extraction later feeds it (BOS first).
    rows = [tokenizer(text, truncation=True, max_length=seq_len)["input_ids"] for text in documents]
    if all(len(r) < 2 for r in rows):
        raise DataError("every document is a single token after tokenizing; nothing to learn from")
    return rows


def _batch(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)  # padding is never a target
    return ids.to(device), mask.to(device), labels.to(device)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> float:
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    count = int((targets != -100).sum())
    if count == 0:  # rows of one token each: no next token to predict
        return 0.0
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    optimizer.zero_grad(set_to_none=True)
    (loss / count).backward()
    optimizer.step()
    return float(loss.detach()) / count


def _epoch_order(n: int, config: LmFinetuneConfig, epoch: int) -> list[int]:
    """The seeded document order of one epoch (1-based), the same whether resumed or not."""
    order = list(range(n))
    random.Random(config.seed * 100_003 + epoch).shuffle(order)
    return order


def _train_epoch(model, optimizer, rows, pad_id, config, epoch, progress) -> float:
    device = next(model.parameters()).device
    torch.manual_seed(config.seed * 100_003 + epoch)  # dropout, if the model has any, replays too
    order = _epoch_order(len(rows), config, epoch)
    starts = range(0, len(order), config.batch_size)
    losses = []
    for done, start in enumerate(starts, start=1):
        chosen = [rows[i] for i in order[start : start + config.batch_size]]
        losses.append(_step(model, optimizer, _batch(chosen, pad_id, device)))
        if progress is not None:
            progress(done, len(starts), f"epoch {epoch}/{config.epochs} loss {losses[-1]:.3f}")
    return sum(losses) / len(losses)


def finetune_lm(
    model: nn.Module,
    tokenizer,
    documents: Sequence[str],
    config: LmFinetuneConfig,
    out: Path,
    progress: Progress | None = None,
    *,
    canaries: Sequence = (),
) -> FinetuneResult:
    """Fine-tune all of ``model`` on ``documents`` into the run folder ``out``, resuming a run there.

    ``canaries`` (core.lm.canaries.Canary records of the corpus) are counted in finetune.json.
    The model is left fine-tuned, in eval mode without gradients, as the loader gives it.
    """
    if not documents:
        raise DataError("the corpus holds no documents to fine-tune on")
    rows = _rows(tokenizer, documents, config.seq_len)  # refused before anything is written
    run = files.open_run(out, model, documents, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    resumed = files.resume(run, model, optimizer)
    losses = []
    try:
        for epoch in range(resumed + 1, config.epochs + 1):
            losses.append(_train_epoch(model, optimizer, rows, pad_id, config, epoch, progress))
            files.save_epoch(run, model, tokenizer, optimizer, epoch, losses[-1])
    finally:
        model.eval()
        model.requires_grad_(False)
    files.finish(run, model, tokenizer, documents, canaries)
    return FinetuneResult(config, len(documents), resumed, tuple(losses), out)

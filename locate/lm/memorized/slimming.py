"""Slimming: a learned continuous neuron mask with an L1 penalty (Chang et al. 2024, MemPi).

A mask m over every layer's ``mlp.post`` neurons starts at 1 and is clamped to [0, 1]
after each Adam step (lr 1e-2, lambda = 1000 as in the reference). Two objectives:

- ``keep`` (MemPi's): the mask learns to KEEP the fewest neurons the sequence needs,

      minimise  CE(sequence; m) + lambda * mean(m)

  and the score is m. This is the localizer MemPi's INJ and DEL figures are for.
- ``drop`` (issue #15's wording, "lower the memorized sequence's likelihood while
  keeping other text's"): the mask learns to DROP the fewest neurons needed to raise
  the sequence's loss while keeping the other text's,

      minimise  -CE(sequence; m) + CE(other; m) + lambda * mean(1 - m)

  and the score is 1 - m. Its -CE is unbounded, so it finds the neurons whose removal
  hurts the sequence most, generic ones included; the other text only partly offsets that.

CE is the mean next-token cross-entropy. Higher scores mean the neuron matters more to
the sequence.

    result = localize_slimming(model, adapter, batch, SlimmingConfig(steps=100, seed=0))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.hooks import patch
from memloc.core.progress import Progress, offset
from memloc.core.sites import Site
from memloc.core.validation import at_least, one_of, positive
from memloc.locate.lm.memorized.types import (
    NeuronAttribution,
    SequenceBatch,
    model_device,
    sequence_tensor,
    token_losses,
)

OBJECTIVES = ("keep", "drop")


@dataclass(frozen=True)
class SlimmingConfig:
    """``batch_size``: other texts per forward pass (gradients accumulate); results do not depend on it."""

    steps: int = 100
    lr: float = 1e-2
    penalty: float = 1000.0
    seed: int = 0
    batch_size: int = 8
    objective: str = "keep"  # keep: MemPi's (the neurons the sequence needs); drop: see the module

    def __post_init__(self) -> None:
        at_least(self, 1, "steps", "batch_size")
        at_least(self, 0, "seed")
        positive(self, "lr", "penalty")
        one_of(self, "objective", OBJECTIVES)


def localize_slimming(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: SlimmingConfig,
    *,
    progress: Progress | None = None,
) -> NeuronAttribution:
    """Per sequence, the learned mask (keep) or 1 - it (drop), (layers, d_mlp); ``progress`` follows the steps."""
    scores = []
    total = len(batch.sequences) * config.steps
    with frozen_parameters(model):
        for s, ids in enumerate(batch.sequences):
            torch.manual_seed(config.seed)
            mask = torch.ones(adapter.n_layers, adapter.d_mlp, device=model_device(model), requires_grad=True)
            _train(model, adapter, mask, ids, batch.other, config, offset(progress, s * config.steps, total))
            kept = mask.detach().double().cpu().numpy()
            scores.append(kept if config.objective == "keep" else 1.0 - kept)
    return NeuronAttribution("slimming", tuple(scores))


def _train(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    mask: torch.Tensor,
    ids: tuple[int, ...],
    other: tuple[tuple[int, ...], ...],
    config: SlimmingConfig,
    progress: Progress | None = None,
) -> None:
    device = mask.device
    kept_text = other if config.objective == "drop" else ()  # keep: the sequence alone, as MemPi's
    optimizer = torch.optim.Adam([mask], lr=config.lr)
    for step in range(config.steps):
        optimizer.zero_grad()
        sequence_loss = masked_loss(model, adapter, mask, sequence_tensor(ids, device))
        if config.objective == "keep":
            (sequence_loss + config.penalty * mask.abs().mean()).backward()
        else:
            (config.penalty * (1.0 - mask).abs().mean() - sequence_loss).backward()
        for start in range(0, len(kept_text), config.batch_size):
            for text in kept_text[start : start + config.batch_size]:
                # Each other text weighs 1/len(kept_text), however they are chunked.
                loss = masked_loss(model, adapter, mask, sequence_tensor(text, device))
                (loss / len(kept_text)).backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0.0, 1.0)
        if progress is not None:
            progress(step + 1, config.steps, "slimming steps")


def masked_loss(
    model: torch.nn.Module, adapter: TransformerAdapter, gates: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Mean next-token loss of ``ids`` with every layer's ``mlp.post`` multiplied by ``gates`` (layers, d_mlp)."""
    values = gates
    fns = {Site(layer, "mlp.post"): _scale(values[layer]) for layer in range(adapter.n_layers)}
    with patch(model, adapter, fns):
        logits = model(input_ids=ids).logits
    return token_losses(logits, ids).mean()


def _scale(gate: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        return act * gate.to(act.device, act.dtype)  # the layer may sit on another device (--device-map)

    return fn

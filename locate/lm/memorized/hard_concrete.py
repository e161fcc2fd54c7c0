"""Hard Concrete: an L0-relaxed stochastic neuron gate (Louizos et al. 2018; Chang et al. 2024).

Each neuron of every layer's ``mlp.post`` gets a gate z = min(1, max(0, s (zeta - gamma) + gamma))
with s = sigmoid((log u - log(1 - u) + log_alpha) / beta), u ~ U(0, 1), beta = 2/3 and the
stretch (gamma, zeta) = (-0.1, 1.1); P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta)).
The two objectives are Slimming's (slimming.py):

- ``keep`` (MemPi's): the gates KEEP the fewest neurons the sequence needs,

      minimise  CE(sequence; z) + lambda * mean(P(z != 0))

  and the score is log_alpha (higher = more open).
- ``drop``: the gates DROP the fewest neurons needed to raise the sequence's loss while
  keeping the other text's,

      minimise  -CE(sequence; z) + CE(other; z) + lambda * mean(1 - P(z != 0))

  and the score is -log_alpha (higher = more closed).

Either score orders neurons as the deterministic gate min(1, max(0, sigmoid(log_alpha)
(zeta - gamma) + gamma)) does, but without the clamp, which ties every gate still fully
open or shut at the same value and leaves their order to the tie-break. Noise is drawn
from a generator seeded by ``seed``.

    result = localize_hard_concrete(model, adapter, batch, HardConcreteConfig(steps=100, seed=0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.progress import Progress, offset
from memloc.core.validation import at_least, finite, one_of, positive
from memloc.locate.lm.memorized.slimming import OBJECTIVES, masked_loss
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch, model_device, sequence_tensor

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


@dataclass(frozen=True)
class HardConcreteConfig:
    """``batch_size``: other texts per chunk (gradients accumulate); results do not depend on it.

    ``init`` is the starting log_alpha: 3 opens every gate nearly fully.
    """

    steps: int = 100
    lr: float = 1e-2
    penalty: float = 1000.0
    init: float = 3.0
    seed: int = 0
    batch_size: int = 8
    objective: str = "keep"  # keep: MemPi's (the neurons the sequence needs); drop: see the module

    def __post_init__(self) -> None:
        at_least(self, 1, "steps", "batch_size")
        at_least(self, 0, "seed")
        positive(self, "lr", "penalty")
        finite(self, "init")
        one_of(self, "objective", OBJECTIVES)


def localize_hard_concrete(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: HardConcreteConfig,
    *,
    progress: Progress | None = None,
) -> NeuronAttribution:
    """Per sequence, log_alpha of the learned gates (keep) or -log_alpha (drop), (layers, d_mlp).

    ``progress`` follows the gate steps.
    """
    scores = []
    device = model_device(model)
    total = len(batch.sequences) * config.steps
    with frozen_parameters(model):
        for s, ids in enumerate(batch.sequences):
            generator = torch.Generator(device=device).manual_seed(config.seed)
            log_alpha = torch.full((adapter.n_layers, adapter.d_mlp), config.init, device=device)
            log_alpha.requires_grad_(True)
            steps = offset(progress, s * config.steps, total)
            _train(model, adapter, log_alpha, ids, batch.other, config, generator, steps)
            opened = log_alpha.detach().double().cpu().numpy()
            scores.append(opened if config.objective == "keep" else -opened)
    return NeuronAttribution("hard_concrete", tuple(scores))


def sample_gate(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One stretched, clamped Hard Concrete sample (Louizos et al. 2018, eq. 10)."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _train(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    log_alpha: torch.Tensor,
    ids: tuple[int, ...],
    other: tuple[tuple[int, ...], ...],
    config: HardConcreteConfig,
    generator: torch.Generator,
    progress: Progress | None = None,
) -> None:
    device = log_alpha.device
    kept_text = other if config.objective == "drop" else ()  # keep: the sequence alone, as MemPi's
    optimizer = torch.optim.Adam([log_alpha], lr=config.lr)
    shift = BETA * math.log(-GAMMA / ZETA)
    for step in range(config.steps):
        optimizer.zero_grad()
        # One gate sample per step, shared by the sequence and every other text.
        gate = sample_gate(log_alpha, generator)
        open_prob = torch.sigmoid(log_alpha - shift)
        sequence_loss = masked_loss(model, adapter, gate, sequence_tensor(ids, device))
        if config.objective == "keep":
            loss = sequence_loss + config.penalty * open_prob.mean()
        else:
            loss = config.penalty * (1.0 - open_prob).mean() - sequence_loss
        for start in range(0, len(kept_text), config.batch_size):
            for text in kept_text[start : start + config.batch_size]:
                loss = loss + masked_loss(model, adapter, gate, sequence_tensor(text, device)) / len(
                    kept_text
                )
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, config.steps, "hard concrete steps")

"""IG: integrated gradients of a memorized sequence's likelihood over every token (Chang et al. 2024).

MemPi's IG localizer is the knowledge-neuron attribution (Dai et al. 2022) widened
from one prompt position to the whole sequence: a layer's ``mlp.post`` activation at
EVERY token is scaled by α = k/m (k = 0..m-1, a left Riemann sum from a zero
baseline), the objective is the sequence's summed next-token log-likelihood, and a
neuron's score is its integrated gradient summed over the tokens:

    score_{l,i} = Σ_t a_{l,t,i} · (1/m) Σ_k ∂ log p(x) / ∂a_{l,t,i} at α_k · a_l

Only the scaled layer changes; layers after it see the scaled activation's effect.
All layers' steps are rows of one batch (row r patches its own layer), so the m × L
forward-backward passes share batches of ``batch_size`` rows; results do not depend on
``batch_size``. The model's weights and their gradients are left untouched.

    result = localize_integrated_gradients(model, adapter, batch, IGConfig(steps=20))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.hooks import patch, trace
from memloc.core.progress import Progress
from memloc.core.sites import Site
from memloc.core.validation import at_least
from memloc.locate.lm.integrated import integrated_gradients
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch, model_device, sequence_tensor


@dataclass(frozen=True)
class IGConfig:
    """``steps``: Riemann steps m (MemPi and Dai et al. use 20); ``batch_size``: rows per pass."""

    steps: int = 20
    batch_size: int = 32

    def __post_init__(self) -> None:
        at_least(self, 1, "steps", "batch_size")


def localize_integrated_gradients(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: IGConfig,
    *,
    progress: Progress | None = None,
) -> NeuronAttribution:
    """Per sequence, the (layers, d_mlp) integrated gradient of its log-likelihood, summed over tokens."""
    device = model_device(model)
    with frozen_parameters(model):
        scores = []
        for s, ids in enumerate(batch.sequences):
            scores.append(_sequence_scores(model, adapter, sequence_tensor(ids, device), config))
            if progress is not None:
                progress(s + 1, len(batch.sequences), "ig sequences")
    return NeuronAttribution("ig", tuple(scores))


def _sequence_scores(
    model: torch.nn.Module, adapter: TransformerAdapter, ids: torch.Tensor, config: IGConfig
) -> np.ndarray:
    sites = [Site(layer, "mlp.post") for layer in range(adapter.n_layers)]
    with torch.no_grad(), trace(model, adapter, sites) as seen:
        model(input_ids=ids)
        clean = torch.cat([seen[s] for s in sites]).float()  # (L, T, F)

    def rows(scaled: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        n = scaled.shape[0]
        fns = {sites[j]: _replace_rows(scaled, which == j) for j in which.unique().tolist()}
        with patch(model, adapter, fns):
            logits = model(input_ids=ids.expand(n, -1)).logits
        return _log_likelihood(logits, ids.expand(n, -1))

    which = torch.arange(len(sites), device=ids.device)
    attr = integrated_gradients(rows, clean, which, config.steps, config.batch_size)
    return attr.sum(1).double().cpu().numpy()


def _replace_rows(scaled: torch.Tensor, mine: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every token's activation replaced by ``scaled`` in the rows flagged by ``mine``."""

    def fn(act: torch.Tensor) -> torch.Tensor:  # (R, T, F)
        # (a --device-map may put the layer on another device than the inputs)
        return torch.where(mine[:, None, None].to(act.device), scaled.to(act.device, act.dtype), act)

    return fn


def _log_likelihood(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token log-probability per row: logits (R, T, V), ids (R, T) -> (R,)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)

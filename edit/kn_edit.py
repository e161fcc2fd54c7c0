"""Knowledge-neuron edit: move a fact's neurons from the old answer to the new one.

Dai, Dong, Hao, Sui, Chang and Wei, "Knowledge Neurons in Pretrained Transformers",
ACL 2022, section 5.1 ("updating facts"). A neuron i of layer l is one input
coordinate of that layer's FFN down-projection; its output row w_i is column i of the
(D, F) matrix W with ``mlp.out = W @ mlp.post``. For each chosen neuron

    w_i <- w_i - λ1 · (||w_i|| / ||e_old||) · e_old + λ2 · (||w_i|| / ||e_new||) · e_new

where e is the unembedding row of the target's first token (" " + target, the
CounterFact convention), λ1 = 1 and λ2 = 8. Both terms use ||w_i|| of the ORIGINAL
row: the paper states the two steps as one update and applying them in sequence
would make the second step depend on the first by accident.

The neurons are the fact's refined knowledge neurons (locate/attribution.py) with the
relation-level neurons removed; the caller finds them, and may also pass ``exclude``.
The change to each layer is stored as `LayerDelta` factors: ``left`` (D, k) holds the
column updates and ``right`` (F, k) one-hot columns, so ΔW = left @ rightᵀ touches only
the chosen columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, target_ids
from memloc.core.sites import Neuron
from memloc.core.validation import at_least
from memloc.edit.delta import LayerDelta, WeightDelta, require_finite_part


class NeuronEditError(MemlocError):
    """The neurons given for a knowledge-neuron edit cannot be edited."""


@dataclass(frozen=True)
class KNEditConfig:
    """Weights of the erase (λ1) and write (λ2) terms, from Dai et al. 2022."""

    lambda_old: float = 1.0
    lambda_new: float = 8.0

    def __post_init__(self) -> None:
        at_least(self, 0, "lambda_old", "lambda_new")


def compute_kn_edit(
    lm: LM,
    fact: Fact,
    neurons: Iterable[Neuron],
    config: KNEditConfig = KNEditConfig(),
    *,
    exclude: Iterable[Neuron] = (),
) -> WeightDelta:
    """The knowledge-neuron update of ``fact`` at ``neurons`` (minus ``exclude``).

    The model is only read. ``info`` carries the neurons edited, per layer, and the
    old and new target tokens.
    """
    if not fact.target_new:
        raise NeuronEditError(f"fact {fact.case_id}: a knowledge-neuron edit needs a target_new")
    if fact.target_new.strip() == fact.target_true.strip():
        raise NeuronEditError(f"fact {fact.case_id}: target_new equals target_true ({fact.target_new!r})")
    chosen = _checked(lm, neurons, exclude)
    old_token = target_ids(lm.tokenizer, fact.target_true)[0]
    new_token = target_ids(lm.tokenizer, fact.target_new)[0]
    unembed = lm.adapter.unembedding(lm.model)
    parts = []
    for layer in sorted({layer for layer, _ in chosen}):
        index = [i for at, i in chosen if at == layer]
        weight = lm.adapter.down_matrix(lm.model, layer)
        rows = weight.detach()[:, index].double()  # (D, k): the neurons' output rows
        norms = rows.norm(dim=0, keepdim=True)  # original ||w_i||, used by both terms
        e_old = unembed.detach()[old_token].to(rows.device).double()
        e_new = unembed.detach()[new_token].to(rows.device).double()
        left = -config.lambda_old * (norms * (e_old / e_old.norm())[:, None]) + config.lambda_new * (
            norms * (e_new / e_new.norm())[:, None]
        )
        right = torch.zeros(lm.adapter.d_mlp, len(index), dtype=torch.float64, device=rows.device)
        right[index, torch.arange(len(index), device=rows.device)] = 1.0
        parts.append(require_finite_part("kn", LayerDelta(layer, left, right)))
    return WeightDelta(
        method="kn",
        layers=tuple(parts),
        case_ids=(fact.case_id,),
        config=asdict(config),
        info={
            "neurons": [list(n) for n in chosen],
            "old_token": old_token,
            "new_token": new_token,
        },
    )


def _checked(lm: LM, neurons: Iterable[Neuron], exclude: Iterable[Neuron]) -> list[Neuron]:
    """The neurons to edit: validated, deduplicated, sorted, without ``exclude``."""
    dropped = {(int(at), int(i)) for at, i in exclude}
    chosen = sorted({(int(at), int(i)) for at, i in neurons} - dropped)
    for layer, index in chosen:
        lm.adapter.check_layer(layer)
        if not 0 <= index < lm.adapter.d_mlp:
            raise NeuronEditError(
                f"neuron index {index} of layer {layer} is out of range; this model has {lm.adapter.d_mlp} neurons per layer"
            )
    if not chosen:
        raise NeuronEditError(
            "no neurons left to edit (none given, or all excluded as relation-level neurons)"
        )
    return chosen

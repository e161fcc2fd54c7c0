"""Weight edits as data: low-rank factors per layer, applied with an exact restore.

Every memloc edit changes only FFN down-projections, and every such change is low
rank: ROME adds Λ (C⁻¹k*)ᵀ (rank one), MEMIT adds R Kᵀ(λC + KKᵀ)⁻¹ (rank ≤ number
of edits), a knowledge-neuron edit changes a few neurons' output rows. So a delta is
stored as factors ``left`` (D, r) and ``right`` (F, r) with ΔW = left @ rightᵀ in
the (D, F) orientation of `TransformerAdapter.down_matrix`; the adapter maps it onto
the stored layout (GPT-2's Conv1D is (F, D)).

Edits are two-phase: a method's ``compute`` returns a `WeightDelta` and leaves the
model untouched; `apply` changes the weights and returns a handle whose
``restore()`` copies the saved originals back, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.checkpoints import state_hash
from memloc.core.errors import MemlocError
from memloc.core.lm.device_map import OnloadedState, has_offloaded, require_resident
from memloc.core.lm.facts import Fact
from torch import nn


@dataclass(frozen=True)
class LayerDelta:
    """ΔW = left @ rightᵀ for one layer's (D, F) down-projection."""

    layer: int
    left: torch.Tensor  # (D, r)
    right: torch.Tensor  # (F, r)

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def dense(self) -> torch.Tensor:
        """The (D, F) update in float64."""
        return self.left.double() @ self.right.double().T


@dataclass(frozen=True)
class WeightDelta:
    """The result of a method's compute phase: what to add, and where."""

    method: str
    layers: tuple[LayerDelta, ...]
    case_ids: tuple[str, ...] = ()
    config: Mapping = field(default_factory=dict)
    info: Mapping = field(default_factory=dict)  # per-method diagnostics (losses, norms)
    unedited: str | None = None  # why the method left its fact as it was (then ``layers`` is empty)
    parts: tuple[WeightDelta, ...] = ()  # the deltas a combined one sums, one per fact

    def unedited_cases(self) -> list[str]:
        """Case ids the method found nothing to edit in, per part when combined."""
        return [case for part in self.parts or (self,) if part.unedited for case in part.case_ids]

    def info_record(self) -> dict:
        """Diagnostics as stored in a ledger: ``unedited`` and ``parts`` folded in."""
        if self.parts:
            return {"parts": [part.info_record() for part in self.parts]}
        return {**self.info, "unedited": self.unedited} if self.unedited else dict(self.info)

    def layer_ids(self) -> list[int]:
        return [d.layer for d in self.layers]


# An edit method bound to its model and settings: the facts to write -> the update.
Editor = Callable[[Sequence[Fact]], WeightDelta]
# A method whose facts are edited independently (ROME): the facts -> one delta per fact, in
# order, each computed on the model as given, as if that fact were edited alone.
IndependentEditor = Callable[[Sequence[Fact]], list[WeightDelta]]


def edited_tensors(model: nn.Module, adapter: TransformerAdapter, layers) -> dict[str, torch.Tensor]:
    """The down-projection weights of ``layers`` by their state-dict names."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(adapter.down_weight(model, layer))]: adapter.down_weight(model, layer) for layer in layers
    }


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: identifies the exact base weights.

    Offloaded layers of a dispatched model are read from accelerate's store, so the
    hash is the same however the model is placed.
    """
    return state_hash(OnloadedState(model) if has_offloaded(model) else model.state_dict())


def require_editable(model: nn.Module, adapter: TransformerAdapter, layers, what: str) -> None:
    """Refuse, in one line, layers whose down-projection a device map offloads (core/lm/device_map.py).

    Example::

        require_editable(lm.model, lm.adapter, [6], "ROME")
    """
    require_resident(
        [(f"layer {layer}", adapter.block_path(layer), adapter.down_proj(model, layer)) for layer in layers],
        what,
    )


class Applied:
    """Handle of an applied delta; ``restore()`` puts the saved weights back exactly."""

    def __init__(self, originals: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._originals = originals
        self.restored = False

    @property
    def originals(self) -> dict[str, torch.Tensor]:
        """The pre-edit weights by state-dict name (what a ledger stores for undo)."""
        return {name: saved for name, (_, saved) in self._originals.items()}

    def restore(self) -> None:
        if self.restored:
            return
        with torch.no_grad():
            for live, saved in self._originals.values():
                live.copy_(saved)
        self.restored = True

    def __enter__(self) -> Applied:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def apply(model: nn.Module, adapter: TransformerAdapter, delta: WeightDelta) -> Applied:
    """Add ``delta`` to the model's weights in place; the handle restores them bit for bit.

    The update is formed in float64 on the weight's device and added once, so a delta
    spread over several `LayerDelta`s of one layer is still a single rounding.

        handle = apply(lm.model, lm.adapter, delta)
        ...  # use the edited model
        handle.restore()  # or: with apply(lm.model, lm.adapter, delta): ...
    """
    require_editable(
        model, adapter, sorted({part.layer for part in delta.layers}), f"the {delta.method} edit"
    )
    names = {id(p): n for n, p in model.named_parameters()}
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    updates: dict[int, torch.Tensor] = {}
    for part in delta.layers:
        dense = part.dense().to(adapter.down_weight(model, part.layer).device)
        updates[part.layer] = updates[part.layer] + dense if part.layer in updates else dense
    with torch.no_grad():
        # Every new weight is formed and checked before any is written, so a refused
        # update leaves the whole model as it was.
        new: dict[int, torch.Tensor] = {}
        for layer, update in updates.items():
            weight = adapter.down_weight(model, layer)
            stored = update.T if adapter.card.down_layout == "in_out" else update
            new[layer] = (weight.double() + stored).to(weight.dtype)
            _require_finite(delta.method, layer, update, new[layer])
        for layer, value in new.items():
            weight = adapter.down_weight(model, layer)
            originals[names[id(weight)]] = (weight, weight.detach().clone())
            weight.copy_(value)
    return Applied(originals)


class NonFiniteEditError(MemlocError):
    """An update would put NaN or inf into a weight; nothing was changed."""


def require_finite_part(method: str, part: LayerDelta, when: str = "") -> LayerDelta:
    """``part`` itself when its factors are finite, else a one-line `NonFiniteEditError` naming the layer.

    Methods call it as each layer's update is computed (``when`` says which step, e.g.
    "edit layer 2 of 5"), so a NaN is refused where it appeared, before the next layer
    is solved on top of it and before anything is written.

        part = require_finite_part("memit", LayerDelta(layer, left, right), "edit layer 1 of 3")
    """
    if bool(torch.isfinite(part.left).all()) and bool(torch.isfinite(part.right).all()):
        return part
    step = f" ({when})" if when else ""
    raise NonFiniteEditError(
        f"the {method} update of layer {part.layer}{step} holds NaN or inf; nothing was edited: "
        "its keys, targets or statistics are not finite (in float16/bfloat16, load the model in float32)"
    )


def _require_finite(method: str, layer: int, update: torch.Tensor, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(update).all()):
        raise NonFiniteEditError(
            f"the {method} update of layer {layer} holds NaN or inf; the model was not changed"
        )
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteEditError(
            f"the {method} update of layer {layer} overflows the weights' {str(value.dtype).removeprefix('torch.')} "
            "(values past its range became inf); the model was not changed; edit in float32"
        )

"""Checkpoints that transformers saved, read into the module they came from.

transformers 5 renames some modules in memory (a ViT's ``vit.encoder.layer.0.attention.
attention.query`` is ``vit.layers.0.attention.q_proj``) and ``save_pretrained`` (so the
Trainer too) writes the original names back. A checkpoint file read without
``from_pretrained`` then names other keys than the module. `to_module_names` maps such a
file's keys onto the module's, using transformers' own saving conversion
(``revert_weight_conversion``) run on the module's state dict: where that conversion is a
pure renaming, each saved name maps to the tensor it came from. Conversions that merge or
split tensors are left alone, and `load_into` then names the keys that do not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from torch import nn

T = TypeVar("T")


def saved_names(model: nn.Module) -> dict[str, str] | None:
    """``{name as saved: name in the module}``, or None when the model is no transformers model
    or its saving conversion is more than a renaming."""
    try:
        from transformers import PreTrainedModel
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers absent or of another version: nothing to map
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    state = model.state_dict()
    by_id = {id(t): name for name, t in state.items()}
    try:
        saved = revert_weight_conversion(model, dict(state))
    except Exception:  # transformers' internals: any failure means "cannot map", not a crash
        return None
    if len(saved) != len(state) or any(id(t) not in by_id for t in saved.values()):
        return None
    return {name: by_id[id(t)] for name, t in saved.items()}


def to_module_names(model: nn.Module, tensors: Mapping[str, T]) -> Mapping[str, T]:
    """``tensors`` with their keys as ``model`` names them, when they are in transformers' saved form.

    tensors = to_module_names(model, load_tensors("checkpoint-500/model.safetensors"))
    """
    expected = model.state_dict().keys()
    if set(tensors) == set(expected):
        return tensors
    names = saved_names(model)
    if names is None or set(tensors) != set(names):
        return tensors
    return {names[k]: v for k, v in tensors.items()}

"""Hugging Face image classifiers as plain ``model(x) -> logits`` modules.

memloc's classifier code calls ``model(x)`` and reads a logits tensor. A transformers
image model takes ``pixel_values`` and returns an output object, so it is given a
subclass whose ``forward`` returns ``.logits``. A subclass rather than a wrapper
module keeps the module names those of the Hugging Face class, so the adapter cards
name the same paths the Hugging Face code does. Files on disk may still use other
names: transformers 5 renames some modules in memory and writes the original names
back when it saves (a ViT's ``vit.layers.0.attention.q_proj`` is saved as
``vit.encoder.layer.0.attention.attention.query``); `load_image_folder` reads through
``from_pretrained`` and imported checkpoints through core/classifier/hf_keys.py.
memloc's own checkpoints are the module's state dict, under the in-memory names.

No image processor is used: they pull in torchvision, which does not load against the
CPU torch build; preprocessing is memloc's own (core/classifier/preprocess.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from memloc.core.errors import ModelLoadError
from memloc.core.json_files import read_json_object
from torch import nn


def _logits_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return super(type(self), self).forward(pixel_values=x).logits  # type: ignore[misc]


_LOGITS_CLASSES: dict[type, type] = {}


def _logits_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _LOGITS_CLASSES:
        attrs = {"forward": _logits_forward, "__module__": __name__}
        _LOGITS_CLASSES[cls] = type(f"{cls.__name__}Logits", (cls,), attrs)
    return _LOGITS_CLASSES[cls]


def returning_logits(model: nn.Module) -> nn.Module:
    """The same model object, whose ``forward(x)`` now returns the logits tensor."""
    if type(model) in _LOGITS_CLASSES.values():
        return model
    model.__class__ = _logits_class(type(model))
    return model


def image_model_from_config(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised image classifier for a ``config.json`` dict (seed torch first).

    Example::

        model = image_model_from_config(json.loads(Path("vit/config.json").read_text()))
        logits = model(torch.zeros(1, 3, 224, 224))
    """
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ModelLoadError("the model's config.json has no model_type")
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if isinstance(classes, tuple) and not fields.get("architectures"):
        # DeiT maps to a plain classifier and one with a distillation head; without
        # "architectures" transformers cannot choose, so the plain one (listed first) is taken.
        fields["architectures"] = [classes[0]]
    hf_config = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForImageClassification.from_config(hf_config)
    return returning_logits(model)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face model folder, as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    return read_json_object(path, ModelLoadError)


def load_image_folder(folder: str | Path) -> nn.Module:
    """A Hugging Face image classifier from its folder, with its weights when it has them.

    Weights (``model.safetensors``) are read by transformers itself, which renames the
    checkpoint's keys where its own module names changed (v4 folders into v5 names,
    and back when v5 saves); without weights the model is freshly initialised.

    Example::

        model = load_image_folder("vit-tiny")
        logits = model(torch.zeros(1, 3, 224, 224))
    """
    config = read_config(folder)
    if not (Path(folder) / "model.safetensors").is_file():
        return image_model_from_config(config)
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load the image model in {folder}: {first}") from None
    return returning_logits(model.eval())

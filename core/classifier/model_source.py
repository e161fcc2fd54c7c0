"""Where a run's classifier comes from, stored in its config.json under "model".

Three sources, one per kind of model a researcher brings:

- `ModelSpec` (core/training/zoo.py): memloc's zoo, ``{"arch": "cnn", ...}``; run
  folders written before other sources existed hold only this form.
- `HFImageSource`: a Hugging Face image classifier, by its ``config.json``
  (``{"source": "hf", "hf_config": {...}}``); its layer groups come from the adapter
  card of its ``model_type``.
- `FactorySource`: the user's own ``nn.Module``, by ``"package.module:function"`` and
  keyword arguments; naming it is the user's consent to run that code. Its groups are
  the module paths the user listed, or `default_groups`.

`build_classifier` makes the (randomly initialised) module and `classifier_adapter`
its adapter, so a run folder never needs to know which source it holds.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memloc.core.adapters import ClassifierAdapter
from memloc.core.errors import ModelLoadError
from memloc.core.training.zoo import ModelSpec, build_model
from torch import nn


@dataclass(frozen=True)
class HFImageSource:
    """A transformers image-classification model, rebuilt from its config.json."""

    hf_config: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def label(self) -> str:
        return str(self.hf_config.get("model_type", "hf"))

    def to_dict(self) -> dict:
        return {
            "source": "hf",
            "hf_config": self.hf_config,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


@dataclass(frozen=True)
class FactorySource:
    """The user's own module: ``factory(**args)``, with its layer groups as module paths."""

    factory: str  # "package.module:function"
    input_shape: tuple[int, ...]
    num_classes: int
    args: dict[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] | None = None  # None: default_groups

    @property
    def label(self) -> str:
        return self.factory.rsplit(":", 1)[-1]

    def to_dict(self) -> dict:
        return {
            "source": "factory",
            "factory": self.factory,
            "args": self.args,
            "groups": list(self.groups) if self.groups is not None else None,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


ModelSource = ModelSpec | HFImageSource | FactorySource


def source_from_dict(d: dict) -> ModelSource:
    """The inverse of each source's ``to_dict``."""
    kind = d.get("source", "zoo")
    if kind == "zoo":
        return ModelSpec.from_dict(d)
    shape, classes = tuple(int(s) for s in d["input_shape"]), int(d["num_classes"])
    if kind == "hf":
        return HFImageSource(dict(d["hf_config"]), shape, classes)
    if kind == "factory":
        groups = d.get("groups")
        return FactorySource(
            d["factory"], shape, classes, dict(d.get("args") or {}), tuple(groups) if groups else None
        )
    raise ModelLoadError(f"unknown model source {kind!r}; expected zoo, hf or factory")


def source_label(source: ModelSource) -> str:
    """A short name for reports: the zoo arch, the HF model_type, or the factory's name."""
    return source.arch if isinstance(source, ModelSpec) else source.label


def import_factory(path: str) -> Any:
    """The callable named ``package.module:function`` (importing runs the user's code)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"--model {path!r} must name a factory as package.module:function")
    try:
        module = _import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise ModelLoadError(f"cannot import {module_name!r} for --model {path}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"{module_name} has no {attr!r} (from --model {path})")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"--model {path} names {type(target).__name__}, not a callable")
    return target


def _import_module(name: str) -> Any:
    """Import ``name``, looking in the current directory too: the ``memloc`` console script does not
    put it on sys.path (``python -m`` does), and a factory usually lives beside the user's script."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        here = str(Path.cwd())
        if here in sys.path or exc.name is None or not name.startswith(exc.name):
            raise
    sys.path.append(here)
    try:
        return importlib.import_module(name)
    except BaseException:
        sys.path.remove(here)
        raise


def build_classifier(source: ModelSource) -> nn.Module:
    """A freshly initialised classifier of this source (seed torch first for a reproducible init)."""
    if isinstance(source, ModelSpec):
        return build_model(source)
    if isinstance(source, HFImageSource):
        from memloc.core.classifier.hf_models import image_model_from_config

        return image_model_from_config(source.hf_config)
    factory = import_factory(source.factory)
    try:
        model = factory(**source.args)
    except Exception as exc:  # the user's factory may raise anything
        raise ModelLoadError(f"the factory {source.factory} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"the factory {source.factory} returned {type(model).__name__}, not an nn.Module"
        )
    return model


def classifier_adapter(source: ModelSource, model: nn.Module, heads: bool = False) -> ClassifierAdapter:
    """The layer groups of ``model``, as its source declares them.

    ``heads=True`` adds attention-head groups where the model's image card has them
    (Hugging Face ViT-family models and the zoo's ViT); other models ignore it.
    """
    if isinstance(source, FactorySource):
        paths = source.groups if source.groups is not None else default_groups(model)
        return ClassifierAdapter.from_modules(model, [(p, p) for p in paths])
    return ClassifierAdapter.for_model(model, heads=heads)


_UNIT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def default_groups(model: nn.Module) -> tuple[str, ...]:
    """The default layer groups of a user's module: its top-level conv/linear blocks, in order.

    Walking from the model's root, plain containers (``nn.Sequential``, ``nn.ModuleList``,
    ``nn.ModuleDict``) are opened; every other child that is or holds a conv or linear
    layer is one group, addressed by its path. So ``nn.Sequential(conv, bn, relu, ...)``
    gives one group per conv and linear layer, and a model of custom blocks gives one
    group per block. Pass explicit groups where a block should be split or merged.

    Example::

        default_groups(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))  # ('0', '2')
    """
    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, _CONTAINERS):
                visit(path, child)
            elif any(isinstance(m, _UNIT_LAYERS) for m in child.modules()):
                found.append(path)

    visit("", model)
    if not found:
        raise ModelLoadError(f"{type(model).__name__} has no conv or linear layer to take as a layer group")
    return tuple(found)


def source_for_model_arg(
    model: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    model_args: dict[str, Any] | None = None,
    groups: tuple[str, ...] | None = None,
) -> ModelSource:
    """The source a ``--model`` value names: a Hugging Face image-model folder or a factory.

    ``input_shape`` and ``num_classes`` come from the data the model sees (after
    preprocessing); a Hugging Face config whose ``num_labels`` differs is refused.

    Example::

        source = source_for_model_arg("my_models:make_net", input_shape=(1, 28, 28), num_classes=10)
    """
    if Path(model).is_dir():
        from memloc.core.classifier.hf_models import read_config

        if model_args or groups:
            raise ModelLoadError("--model-args and --groups apply to a factory, not to a Hugging Face folder")
        config = read_config(model)
        labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
        if labels is not None and int(labels) != num_classes:
            raise ModelLoadError(f"{model} classifies {labels} classes, but the data has {num_classes}")
        return HFImageSource({**config, "num_labels": num_classes}, input_shape, num_classes)
    if ":" in model:
        return FactorySource(model, input_shape, num_classes, dict(model_args or {}), groups)
    raise ModelLoadError(
        f"--model {model!r} is neither a Hugging Face model folder nor a factory named package.module:function"
    )


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments for the factory."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"--model-args is not valid JSON ({exc.msg}); give an object such as '{{\"width\": 64}}'"
        ) from None
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"--model-args must be a JSON object of keyword arguments, got {type(value).__name__}"
        )
    return value


def parse_groups(text: str | None) -> tuple[str, ...] | None:
    """``--groups``: module paths from a JSON/YAML file, or an inline JSON list; None when not given."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read --groups file {path}: {exc}") from None
        source = str(path)
    else:
        raw, source = text, "--groups"
    try:
        import yaml

        value = yaml.safe_load(raw)  # YAML is a superset of JSON, so one parser reads both
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(f"{source} is neither JSON nor YAML ({first})") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ModelLoadError(f'{source} must be a non-empty list of module paths, e.g. ["features.0", "fc"]')
    if len(set(value)) != len(value):
        raise ModelLoadError(f"{source} lists a module path twice")
    return tuple(value)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: one example's shape without the batch, e.g. ``1,28,28``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ModelLoadError(f"--input-shape {text!r} must be positive sizes such as 1,28,28")
    return shape


def output_width(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The number of outputs (classes) of ``model`` on one zero input of ``input_shape``."""
    import torch

    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # the user's module may raise anything
        raise ModelLoadError(
            f"the model fails on input shape {input_shape}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(
            f"the model must return (batch, classes) logits; on input shape {input_shape} it returned "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )
    return int(out.shape[1])

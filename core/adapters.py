"""Architecture knowledge: which module each Site names, and which tensors form a layer.

This is the only file that knows module paths. Everything else speaks in Sites
(core/sites.py) and asks an adapter where they live.

Classifiers: a `ClassifierAdapter` wraps any `nn.Module` with an explicit, ordered
list of layer groups. Group i is addressed as ``Site(i, "out")``; its units are the
output channels of a conv layer or the output features of a linear layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast

import torch
from memloc.core.errors import MemlocError, UnsupportedModelError
from memloc.core.sites import Site
from torch import nn

HookIO = Literal["input", "output"]
UnitKind = Literal["channel", "feature", "head"]


@dataclass(frozen=True)
class HookPoint:
    """Where a site's activation is read or written: a module's input or output."""

    module: str
    io: HookIO


@dataclass(frozen=True)
class LayerGroup:
    """One layer group of a classifier.

    ``module`` is the path whose output holds the group's units; ``prefixes`` are the
    module paths whose parameters and buffers belong to the group (e.g. a conv and
    its BatchNorm), used when rewinding or retraining the group.
    """

    name: str
    module: str
    units: int
    unit_kind: UnitKind
    prefixes: tuple[str, ...]
    unit_module: str = ""  # the conv/linear layer whose output channels are the units
    io: HookIO = "output"  # the units are in the module's output, or in its (first) input
    unit_axis: int = 1  # 1: (N, C, ...) as convs and linears give; -1: (N, T, F) token features
    unit_size: int = 1  # coordinates per unit along the axis (an attention head spans head_dim)
    pre_axis: int | None = None  # unit axis in unit_module's output when it differs (channels-last linears)

    def at_pre(self) -> LayerGroup:
        """This group as laid out at its ``pre`` site, the output of ``unit_module``."""
        if self.pre_axis is None or self.pre_axis == self.unit_axis:
            return self
        return replace(self, unit_axis=self.pre_axis)


class LayerNotFoundError(MemlocError):
    """A layer name or index that the model does not have."""


def _owns(prefix: str, key: str) -> bool:
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


def _unit_layer(path: str, module: nn.Module) -> tuple[str, int, Literal["channel", "feature"]]:
    """The module's last conv or linear layer: its path, and its output channels or features."""
    last: tuple[str, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear] | None = None
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            last = (name, sub)
    if last is None:
        raise MemlocError(f"module {type(module).__name__} has no conv or linear layer to count units")
    name, layer = last
    full = f"{path}.{name}" if name else path
    if isinstance(layer, nn.Linear):
        return full, layer.out_features, "feature"
    return full, layer.out_channels, "channel"


class ClassifierAdapter:
    """Adapter over any classifier with an explicit ordered list of layer groups."""

    def __init__(self, groups: Sequence[LayerGroup]) -> None:
        if not groups:
            raise MemlocError("a classifier adapter needs at least one layer group")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise MemlocError(f"layer group names must be unique, got {names}")
        self.groups: tuple[LayerGroup, ...] = tuple(groups)

    @classmethod
    def from_modules(
        cls,
        model: nn.Module,
        groups: Iterable[tuple[str, str] | tuple[str, str, Sequence[str]]],
    ) -> ClassifierAdapter:
        """Build from ``(name, module_path[, extra_param_prefixes])`` triples.

        Unit counts are read from the module (its last conv or linear layer).
        """
        modules = dict(model.named_modules())
        built = []
        for entry in groups:
            name, path = entry[0], entry[1]
            extra = tuple(entry[2]) if len(entry) > 2 else ()
            if path not in modules:
                raise LayerNotFoundError(f"module path {path!r} is not in the model")
            unit_module, units, kind = _unit_layer(path, modules[path])
            built.append(LayerGroup(name, path, units, kind, (path, *extra), unit_module))
        return cls(built)

    @classmethod
    def for_model(cls, model: nn.Module, heads: bool = False) -> ClassifierAdapter:
        """The adapter a zoo model declares through ``layer_groups()``, or its image card.

        A Hugging Face image model is read by the card of its ``config.model_type``
        (`IMAGE_CARDS`); ``heads=True`` adds each attention layer's heads as a group.

        Example::

            adapter = ClassifierAdapter.for_model(vit, heads=True)
            adapter.group("layer0.heads").units  # config.num_attention_heads
        """
        declare = getattr(model, "layer_groups", None)
        if declare is not None:
            return cls.from_modules(model, declare())
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} declares no layer groups; build a ClassifierAdapter "
                "with ClassifierAdapter.from_modules(model, [(name, module_path), ...])"
            )
        card = IMAGE_CARDS.get(str(model_type))
        if card is None:
            raise UnsupportedModelError(
                f"image model type {model_type!r} is not supported; supported types: {', '.join(IMAGE_CARDS)}"
            )
        return cls(card.groups(model, heads))

    # --- addressing -------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, key: str | int | Site) -> LayerGroup:
        """A group by name, index, or ``Site(i, "out")``."""
        if isinstance(key, Site):
            key = key.layer
        if isinstance(key, int):
            if 0 <= key < len(self.groups):
                return self.groups[key]
        else:
            for g in self.groups:
                if g.name == key:
                    return g
        raise LayerNotFoundError(f"layer {key!r} is not in the model; valid layers: {', '.join(self.names)}")

    def site(self, key: str | int) -> Site:
        return Site(self.groups.index(self.group(key)), "out")

    def hook_point(self, site: Site) -> HookPoint:
        group = self.group(site.layer)
        if site.kind == "out":
            return HookPoint(group.module, group.io)
        if site.kind == "pre":
            return HookPoint(group.unit_module, "output")
        raise LayerNotFoundError(f"classifiers have 'out' and 'pre' sites, got {site}")

    def unit_weights(self, model: nn.Module, group: str | int) -> list[tuple[torch.Tensor, int]]:
        """The tensors whose slices along ``dim`` are a unit's own weights (weight, bias)."""
        layer = resolve_module(model, self.group(group).unit_module)
        tensors = [(module_tensor(layer, "weight"), 0)]
        if getattr(layer, "bias", None) is not None:
            tensors.append((module_tensor(layer, "bias"), 0))
        return tensors

    # --- tensors of a group -------------------------------------------------------

    def group_keys(self, group: str | int, state: Mapping[str, torch.Tensor]) -> list[str]:
        """State-dict keys (parameters and buffers) that belong to a group."""
        g = self.group(group)
        return [k for k in state if any(_owns(p, k) for p in g.prefixes)]

    def group_parameters(self, model: nn.Module, group: str | int) -> list[nn.Parameter]:
        g = self.group(group)
        return [p for n, p in model.named_parameters() if any(_owns(x, n) for x in g.prefixes)]

    def describe(self) -> list[dict]:
        return [
            {
                "index": i,
                "name": g.name,
                "site": str(Site(i, "out")),
                "module": g.module,
                "units": g.units,
                "unit_kind": g.unit_kind,
                "io": g.io,
                "unit_size": g.unit_size,
            }
            for i, g in enumerate(self.groups)
        ]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, with an error naming the path."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise LayerNotFoundError(f"module path {path!r} is not in the model") from exc


def module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """A module's parameter or buffer ``name`` (``nn.Module`` attributes are untyped)."""
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise MemlocError(f"{type(module).__name__}.{name} is not a tensor")
    return value


# --- transformers ---------------------------------------------------------------------

WeightLayout = Literal["out_in", "in_out"]


@dataclass(frozen=True)
class TransformerCard:
    """One transformer family described as data (module paths relative to the model root).

    ``{i}`` in a path stands for the block index. ``down_layout`` declares how the FFN
    down-projection stores its weight: ``out_in`` for ``nn.Linear`` (D, F) and ``in_out``
    for GPT-2's ``Conv1D`` (F, D). It is declared, never guessed from the shape, because
    square matrices would make a guess silently wrong.
    """

    model_types: tuple[str, ...]
    blocks: str
    attn: str
    mlp: str
    down: str
    down_layout: WeightLayout
    embed: str
    final_norm: str
    unembed: str
    gated: bool
    up: str = ""
    gate: str = ""


TRANSFORMER_CARDS: tuple[TransformerCard, ...] = (
    TransformerCard(
        model_types=("gpt2",),
        blocks="transformer.h",
        attn="attn",
        mlp="mlp",
        down="mlp.c_proj",
        down_layout="in_out",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        gated=False,
        up="mlp.c_fc",
    ),
    TransformerCard(
        model_types=("gptj",),
        blocks="transformer.h",
        attn="attn",
        mlp="mlp",
        down="mlp.fc_out",
        down_layout="out_in",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        gated=False,
        up="mlp.fc_in",
    ),
    TransformerCard(
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        down="mlp.dense_4h_to_h",
        down_layout="out_in",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        unembed="embed_out",
        gated=False,
        up="mlp.dense_h_to_4h",
    ),
    TransformerCard(
        model_types=("llama", "mistral", "qwen2"),
        blocks="model.layers",
        attn="self_attn",
        mlp="mlp",
        down="mlp.down_proj",
        down_layout="out_in",
        embed="model.embed_tokens",
        final_norm="model.norm",
        unembed="lm_head",
        gated=True,
        up="mlp.up_proj",
        gate="mlp.gate_proj",
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for card in TRANSFORMER_CARDS for t in card.model_types)


class TransformerAdapter:
    """Sites of a decoder-only transformer, chosen by ``config.model_type``.

    Hook points (``{i}`` is the block):

    - ``resid.pre``  input of block i
    - ``attn.out``   output of block i's attention (first element of its tuple)
    - ``mlp.post``   input of block i's down-projection: the neurons
    - ``mlp.out``    output of block i's MLP
    - ``resid.post`` output of block i
    """

    def __init__(
        self, card: TransformerCard, model_type: str, n_layers: int, d_model: int, d_mlp: int
    ) -> None:
        self.card = card
        self.model_type = model_type
        self.n_layers = n_layers
        self.d_model = d_model
        self.d_mlp = d_mlp

    @classmethod
    def for_model(cls, model: nn.Module) -> TransformerAdapter:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        card = next((c for c in TRANSFORMER_CARDS if model_type in c.model_types), None)
        if card is None:
            raise UnsupportedModelError(
                f"model type {model_type!r} is not supported; supported types: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        blocks = resolve_module(model, card.blocks)
        n_layers = len(cast(nn.ModuleList, blocks))
        down = resolve_module(model, f"{card.blocks}.0.{card.down}")
        d_mlp, d_model = _down_shape(module_tensor(down, "weight"), card.down_layout)
        return cls(card, str(model_type), n_layers, d_model, d_mlp)

    # --- addressing -------------------------------------------------------------

    def check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise LayerNotFoundError(
                f"layer {layer!r} is out of range; this {self.model_type} model has layers 0..{self.n_layers - 1}"
            )
        return layer

    def block_path(self, layer: int) -> str:
        return f"{self.card.blocks}.{self.check_layer(layer)}"

    def hook_point(self, site: Site) -> HookPoint:
        block = self.block_path(site.layer)
        card = self.card
        points = {
            "resid.pre": HookPoint(block, "input"),
            "attn.out": HookPoint(f"{block}.{card.attn}", "output"),
            "mlp.post": HookPoint(f"{block}.{card.down}", "input"),
            "mlp.out": HookPoint(f"{block}.{card.mlp}", "output"),
            "resid.post": HookPoint(block, "output"),
        }
        if site.kind not in points:
            raise LayerNotFoundError(f"transformers have sites {', '.join(points)}; got {site}")
        return points[site.kind]

    def width(self, kind: str) -> int:
        return self.d_mlp if kind == "mlp.post" else self.d_model

    # --- modules and weights ----------------------------------------------------

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return cast(nn.ModuleList, resolve_module(model, self.card.blocks))

    def embedding(self, model: nn.Module) -> nn.Embedding:
        return cast(nn.Embedding, resolve_module(model, self.card.embed))

    def final_norm(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, self.card.final_norm)

    def unembedding(self, model: nn.Module) -> torch.Tensor:
        """The (vocab, D) unembedding matrix."""
        return module_tensor(resolve_module(model, self.card.unembed), "weight")

    def down_proj(self, model: nn.Module, layer: int) -> nn.Module:
        return resolve_module(model, f"{self.block_path(layer)}.{self.card.down}")

    def down_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The down-projection's weight as stored (see ``down_layout``)."""
        return module_tensor(self.down_proj(model, layer), "weight")

    def down_matrix(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The down-projection as a (D, F) matrix W with ``mlp.out = W @ mlp.post (+ bias)``.

        A view of the parameter, so in-place edits of it change the model.
        """
        weight = self.down_weight(model, layer)
        return weight.T if self.card.down_layout == "in_out" else weight

    def down_bias(self, model: nn.Module, layer: int) -> torch.Tensor | None:
        return getattr(self.down_proj(model, layer), "bias", None)

    def describe(self) -> list[dict]:
        rows = []
        for i in range(self.n_layers):
            for kind in ("resid.pre", "attn.out", "mlp.post", "mlp.out", "resid.post"):
                point = self.hook_point(Site(i, kind))
                rows.append(
                    {
                        "layer": i,
                        "kind": kind,
                        "site": str(Site(i, kind)),
                        "width": self.width(kind),
                        "module": point.module,
                        "io": point.io,
                    }
                )
        return rows


def _down_shape(weight: torch.Tensor, layout: WeightLayout) -> tuple[int, int]:
    """(F, D) of a down-projection weight stored in ``layout``."""
    rows, cols = weight.shape
    return (rows, cols) if layout == "in_out" else (cols, rows)


# --- Hugging Face image classifiers ---------------------------------------------------


def _module_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _config_int(model: nn.Module, name: str) -> int:
    value = getattr(getattr(model, "config", None), name, None)
    if not isinstance(value, int):
        raise UnsupportedModelError(f"the model's config has no integer {name}")
    return value


@dataclass(frozen=True)
class EncoderNames:
    """One naming of a ViT-style encoder; paths after ``blocks`` are relative to block i."""

    blocks: str
    attn_prefixes: tuple[str, ...]  # the attention sublayer's parameters (with its norm)
    attn_out: str  # the attention output projection; its input is the concatenated heads
    value: str  # the value projection: head h's slice of its output feeds only head h
    mlp_prefixes: tuple[str, ...]
    mlp_in: str  # the first MLP projection: its output features are the neurons
    mlp_out: str  # the second MLP projection: its input is the neurons after the activation
    head: str
    stem: str  # the patch and position embeddings, owned by the first group
    final_norm: str  # owned by the head


@dataclass(frozen=True)
class EncoderCard:
    """A ViT-family classifier. Per layer i, in forward order:

    - ``layer{i}.heads`` (opt-in): the input of the attention output projection, the
      heads concatenated, one unit per head of ``head_dim`` features, so masking a
      head is exactly zeroing its slice of that projection's input columns;
    - ``layer{i}.attn``: the OUTPUT of the attention output projection, one unit per
      hidden feature (before the residual add);
    - ``layer{i}.mlp``: the MLP neurons, the input of the second MLP projection.

    All units lie on the last axis of (N, tokens, features). ``names`` lists the module
    names of each transformers version (v5 first, then v4); the first that the model
    has is used.
    """

    names: tuple[EncoderNames, ...]

    def groups(self, model: nn.Module, heads: bool) -> list[LayerGroup]:
        n = next((n for n in self.names if _module_or_none(model, n.blocks) is not None), None)
        if n is None:
            raise UnsupportedModelError(f"none of {', '.join(x.blocks for x in self.names)} is in the model")
        n_heads = _config_int(model, "num_attention_heads")
        out: list[LayerGroup] = []
        for i in range(len(cast(nn.ModuleList, resolve_module(model, n.blocks)))):
            block = f"{n.blocks}.{i}"
            attn = tuple(f"{block}.{p}" for p in n.attn_prefixes) + ((n.stem,) if i == 0 else ())
            o_proj = cast(nn.Linear, resolve_module(model, f"{block}.{n.attn_out}"))
            if heads:
                size = o_proj.in_features // n_heads
                value = f"{block}.{n.value}"
                out.append(
                    LayerGroup(f"layer{i}.heads", f"{block}.{n.attn_out}", n_heads, "head", attn, value,
                               io="input", unit_axis=-1, unit_size=size)
                )  # fmt: skip
            out.append(
                LayerGroup(f"layer{i}.attn", f"{block}.{n.attn_out}", o_proj.out_features, "feature", attn,
                           f"{block}.{n.attn_out}", unit_axis=-1)
            )  # fmt: skip
            fc1 = cast(nn.Linear, resolve_module(model, f"{block}.{n.mlp_in}"))
            mlp = tuple(f"{block}.{p}" for p in n.mlp_prefixes)
            out.append(
                LayerGroup(f"layer{i}.mlp", f"{block}.{n.mlp_out}", fc1.out_features, "feature", mlp,
                           f"{block}.{n.mlp_in}", io="input", unit_axis=-1)
            )  # fmt: skip
        out.append(_head_group(model, n.head, n.final_norm))
        return out


@dataclass(frozen=True)
class StageNames:
    """One naming of a staged conv net: ``stages.{s}.{blocks}.{b}`` is block b of stage s."""

    stages: str
    blocks: str
    unit_part: str  # the part of a block whose last conv/linear makes the block's channels
    head: str
    stem: str  # the stem before the first stage, owned by the first block
    final_norm: str = ""  # owned by the head
    downsample: str = ""  # a stage's own downsampling layer, owned by its first block
    pre_axis: int | None = None  # -1 where that layer is a channels-last linear (ConvNeXt)


@dataclass(frozen=True)
class StageCard:
    """A ResNet/ConvNeXt-style classifier: one group ``stage{s}.block{b}`` per block, whose
    units are the block's output channels (axis 1 of (N, C, H, W)), then the head."""

    names: tuple[StageNames, ...]

    def groups(self, model: nn.Module, heads: bool) -> list[LayerGroup]:
        n = next((n for n in self.names if _module_or_none(model, n.stages) is not None), None)
        if n is None:
            raise UnsupportedModelError(f"none of {', '.join(x.stages for x in self.names)} is in the model")
        out: list[LayerGroup] = []
        stages = cast(nn.ModuleList, resolve_module(model, n.stages))
        for s in range(len(stages)):
            blocks = cast(nn.ModuleList, resolve_module(model, f"{n.stages}.{s}.{n.blocks}"))
            for b in range(len(blocks)):
                block = f"{n.stages}.{s}.{n.blocks}.{b}"
                part = f"{block}.{n.unit_part}" if n.unit_part else block
                unit_module, units, _ = _unit_layer(part, resolve_module(model, part))
                owned = [block]
                if b == 0 and n.downsample:
                    owned.append(f"{n.stages}.{s}.{n.downsample}")
                if not out:
                    owned.append(n.stem)
                out.append(
                    LayerGroup(f"stage{s}.block{b}", block, units, "channel", tuple(owned), unit_module,
                               pre_axis=n.pre_axis)
                )  # fmt: skip
        out.append(_head_group(model, n.head, n.final_norm))
        return out


def _head_group(model: nn.Module, path: str, final_norm: str) -> LayerGroup:
    unit_module, units, kind = _unit_layer(path, resolve_module(model, path))
    owned = (path, final_norm) if final_norm else (path,)
    return LayerGroup("head", path, units, kind, owned, unit_module)


def _vit_names(root: str) -> tuple[EncoderNames, ...]:
    v5 = EncoderNames(
        blocks=f"{root}.layers",
        attn_prefixes=("layernorm_before", "attention"),
        attn_out="attention.o_proj",
        value="attention.v_proj",
        mlp_prefixes=("layernorm_after", "mlp"),
        mlp_in="mlp.fc1",
        mlp_out="mlp.fc2",
        head="classifier",
        stem=f"{root}.embeddings",
        final_norm=f"{root}.layernorm",
    )
    v4 = EncoderNames(
        blocks=f"{root}.encoder.layer",
        attn_prefixes=("layernorm_before", "attention"),
        attn_out="attention.output.dense",
        value="attention.attention.value",
        mlp_prefixes=("layernorm_after", "intermediate", "output"),
        mlp_in="intermediate.dense",
        mlp_out="output.dense",
        head="classifier",
        stem=f"{root}.embeddings",
        final_norm=f"{root}.layernorm",
    )
    return (v5, v4)


ImageCard = EncoderCard | StageCard

IMAGE_CARDS: dict[str, ImageCard] = {
    "vit": EncoderCard(_vit_names("vit")),
    "deit": EncoderCard(_vit_names("deit")),
    "resnet": StageCard(
        (StageNames("resnet.encoder.stages", "layers", "layer", "classifier", "resnet.embedder"),)
    ),
    "convnext": StageCard(
        (
            StageNames(
                "convnext.encoder.stages",
                "layers",
                "pwconv2",
                "classifier",
                stem="convnext.embeddings",
                final_norm="convnext.layernorm",
                downsample="downsampling_layer",
                pre_axis=-1,
            ),
        )
    ),
}

"""A small zoo of classifiers that declare their layer groups (the ViT through its card).

Each model keeps its groups in ``self.blocks`` (plus ``self.head``) and returns
``(name, module_path)`` pairs from ``layer_groups()``; the ClassifierAdapter reads
the unit counts from the modules themselves.

ResNet-9 follows the conv-BN-ReLU design used by Maini et al. 2023 ("Can Neural
Network Memorization Be Localized?", ICML), after Page's DAWNBench ResNet-9.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from memloc.core.errors import MemlocError
from torch import nn

ARCHS = ("mlp", "cnn", "resnet9", "vit")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a zoo model; stored in a run's config.json."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    width: float = 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(d["arch"], tuple(d["input_shape"]), int(d["num_classes"]), float(d["width"]))


class ConvBlock(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU (-> 2x2 max-pool). Units: output channels."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class LinearBlock(nn.Module):
    """linear -> ReLU. Units: output features."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class _Declared(nn.Module):
    group_names: tuple[str, ...] = ()

    def layer_groups(self) -> list[tuple[str, str]]:
        blocks: nn.ModuleList = self.blocks  # type: ignore[assignment]  # every zoo model declares it
        paths = [f"blocks.{i}" for i in range(len(blocks))] + ["head"]
        return list(zip(self.group_names, paths, strict=True))


class MLP(_Declared):
    """Flatten -> [linear-ReLU] x depth -> linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        d_in = int(torch.tensor(input_shape).prod())
        hidden = max(8, round(256 * width))
        self.blocks = nn.ModuleList([LinearBlock(d_in, hidden), LinearBlock(hidden, hidden)])
        self.head = nn.Linear(hidden, num_classes)
        self.group_names = ("fc1", "fc2", "head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SmallCNN(_Declared):
    """Two conv-BN-ReLU-pool blocks, a hidden linear layer, and a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2, f = (max(4, round(n * width)) for n in (32, 64, 128))
        self.blocks = nn.ModuleList(
            [
                ConvBlock(c, c1, pool=True),
                ConvBlock(c1, c2, pool=True),
                LinearBlock(c2 * (h // 4) * (w // 4), f),
            ]
        )
        self.head = nn.Linear(f, num_classes)
        self.group_names = ("conv1", "conv2", "fc1", "head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[1](self.blocks[0](x))
        return self.head(self.blocks[2](x.flatten(1)))


class ResNet9(_Declared):
    """ResNet-9: prep, layer1 (+2 residual convs), layer2, layer3 (+2 residual convs), head.

    ``width`` scales the channel counts 64-128-256-512 (Maini et al. report results at
    several widths; 0.25 keeps CPU runs short).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 0.25) -> None:
        super().__init__()
        c = input_shape[0]
        w1, w2, w3, w4 = (max(4, round(n * width)) for n in (64, 128, 256, 512))
        self.blocks = nn.ModuleList(
            [
                ConvBlock(c, w1),
                ConvBlock(w1, w2, pool=True),
                ConvBlock(w2, w2),
                ConvBlock(w2, w2),
                ConvBlock(w2, w3, pool=True),
                ConvBlock(w3, w4, pool=True),
                ConvBlock(w4, w4),
                ConvBlock(w4, w4),
            ]
        )
        self.head = nn.Linear(w4, num_classes)
        self.group_names = (
            "prep",
            "layer1",
            "layer1.res1",
            "layer1.res2",
            "layer2",
            "layer3",
            "layer3.res1",
            "layer3.res2",
            "head",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blocks
        x = b[1](b[0](x))
        x = x + b[3](b[2](x))
        x = b[5](b[4](x))
        x = x + b[7](b[6](x))
        x = torch.amax(x, dim=(2, 3))
        return self.head(x)


def small_vit(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """A small ViT (Dosovitskiy et al. 2021) from transformers' ViTConfig, returning logits.

    4 layers, 4 heads, hidden size 64*width (a multiple of the heads), MLP 4*hidden;
    patches of 4 pixels, or 2 on inputs under 16 pixels a side (8x8 digits get 16
    patches instead of 4). Its layer groups come from the ``vit`` adapter card, and its
    parameter names are transformers' own, so a run's checkpoints load as a ViT.
    """
    from memloc.core.classifier.hf_models import returning_logits
    from transformers import ViTConfig, ViTForImageClassification

    c, h, w = input_shape
    if h != w:
        raise MemlocError(f"vit needs square images, got {h}x{w}")
    patch = 4 if h >= 16 else 2
    if h % patch:
        raise MemlocError(f"vit needs an image side divisible by its patch size {patch}, got {h}")
    heads = 4
    hidden = max(1, round(16 * width)) * heads
    config = ViTConfig(
        image_size=h,
        patch_size=patch,
        num_channels=c,
        num_hidden_layers=4,
        num_attention_heads=heads,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
    )
    config.num_labels = num_classes
    return returning_logits(ViTForImageClassification(config))


_BUILDERS = {
    "mlp": (MLP, 1.0),
    "cnn": (SmallCNN, 1.0),
    "resnet9": (ResNet9, 0.25),
    "vit": (small_vit, 1.0),
}


def default_width(arch: str) -> float:
    check_arch(arch)
    return _BUILDERS[arch][1]


def check_arch(arch: str) -> None:
    if arch not in _BUILDERS:
        raise MemlocError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised zoo model (seed torch first for a reproducible init)."""
    check_arch(spec.arch)
    if spec.arch != "mlp" and len(spec.input_shape) != 3:
        raise MemlocError(
            f"{spec.arch} needs image input (channels, height, width), got shape {spec.input_shape}"
        )
    build = _BUILDERS[spec.arch][0]
    return build(tuple(spec.input_shape), spec.num_classes, spec.width)

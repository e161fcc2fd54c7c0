"""Plain PyTorch models for examples/train_outside.py (no memloc imports).

memloc imports them by name, e.g. ``--model examples.outside_models:make_cnn``.
"""

from __future__ import annotations

from torch import nn


def make_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Module:
    """A small CNN: two conv blocks, global average pooling, a linear head.

    model = make_cnn(in_channels=1, num_classes=10, width=16)
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def make_vit(
    image_size: int = 8,
    patch_size: int = 2,
    num_channels: int = 1,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    num_labels: int = 10,
) -> nn.Module:
    """A transformers ViTForImageClassification whose forward returns the logits tensor.

    Its state dict is the plain ViT's, so the checkpoints of examples/train_outside.py
    ``--arch vit`` load into it; memloc can then import that run with this factory before
    it has an adapter card for Hugging Face ViTs.

    model = make_vit(image_size=8, patch_size=2, num_labels=10)
    """
    from transformers import ViTConfig, ViTForImageClassification

    class LogitsViT(ViTForImageClassification):
        def forward(self, pixel_values):  # type: ignore[override]  # a tensor in, a tensor out
            return super().forward(pixel_values=pixel_values).logits

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_labels=num_labels,
    )
    return LogitsViT(config)

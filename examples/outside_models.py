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

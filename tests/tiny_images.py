"""Tiny random configs of the Hugging Face image classifiers that have adapter cards.

Each builder returns a ``config.json``-style dict (``model_type`` plus fields), small
enough that a model builds and runs in milliseconds on a (N, 1, 8, 8) input.
"""

from __future__ import annotations

from typing import Any

import torch
from memloc.core.classifier.hf_models import image_model_from_config
from torch import nn

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 3


def vit_config(model_type: str = "vit") -> dict[str, Any]:
    return {
        "model_type": model_type,
        "image_size": 8,
        "patch_size": 4,
        "num_channels": 1,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_labels": NUM_CLASSES,
    }


def resnet_config() -> dict[str, Any]:
    return {
        "model_type": "resnet",
        "num_channels": 1,
        "embedding_size": 4,
        "hidden_sizes": [4, 6],
        "depths": [1, 2],
        "layer_type": "basic",
        "num_labels": NUM_CLASSES,
    }


def convnext_config() -> dict[str, Any]:
    return {
        "model_type": "convnext",
        "num_channels": 1,
        "num_stages": 2,
        "patch_size": 2,
        "hidden_sizes": [4, 6],
        "depths": [1, 2],
        "layer_scale_init_value": 1.0,  # the default 1e-6 makes every block nearly the identity
        "num_labels": NUM_CLASSES,
    }


CONFIGS = {
    "vit": vit_config,
    # DeiT has two classification heads; saved configs name theirs in "architectures".
    "deit": lambda: {**vit_config("deit"), "architectures": ["DeiTForImageClassification"]},
    "resnet": resnet_config,
    "convnext": convnext_config,
}


def tiny_model(model_type: str, seed: int = 0) -> nn.Module:
    """A seeded, randomly initialised tiny model of ``model_type``, in eval mode."""
    torch.manual_seed(seed)
    return image_model_from_config(CONFIGS[model_type]()).eval()


def small_net(width: int = 4, classes: int = NUM_CLASSES) -> nn.Module:
    """A user's own module for ``--model tiny_images:small_net`` (a conv, a ReLU, a linear)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 8 * 8, classes),
    )

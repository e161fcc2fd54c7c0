"""Shared fixtures: small real runs on scikit-learn's digits (no downloads)."""

from __future__ import annotations

import pytest
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.training.train import TrainConfig, train_run


def tiny_config(**overrides) -> TrainConfig:
    base = {
        "data": "digits",
        "arch": "mlp",
        "noise": 0.2,
        "epochs": 3,
        "limit": 300,
        "batch_size": 32,
        "lr": 3e-3,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> RunFolder:
    """A finished 3-epoch MLP run on 300 digits with 20% noise."""
    run = RunFolder(tmp_path_factory.mktemp("runs") / "digits-mlp")
    train_run(run, tiny_config(), torch.device("cpu"))
    return run


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory) -> RunFolder:
    """A finished 4-epoch CNN run (with BatchNorm) on 300 digits with 20% noise."""
    run = RunFolder(tmp_path_factory.mktemp("runs") / "digits-cnn")
    train_run(run, tiny_config(arch="cnn", epochs=4), torch.device("cpu"))
    return run

"""The run a benchmark measures: the one given, or a small one trained on digits."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.training.train import TrainConfig, train_run


def run_or_train(path: str | None, epochs: int) -> RunFolder:
    if path:
        return RunFolder.open(path)
    run = RunFolder(Path(tempfile.mkdtemp()) / "run")
    train_run(run, TrainConfig.for_arch("digits", "cnn", epochs=epochs, noise=0.1), torch.device("cpu"))
    return run

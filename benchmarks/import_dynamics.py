"""The dynamics pass of `memloc import`: batched, weights loaded once per checkpoint, against a
straightforward per-example loop over the same checkpoints.

Usage: python benchmarks/import_dynamics.py [RUN_DIR] [--examples N]

Without RUN_DIR it trains a small CNN on digits first. Its checkpoints are imported
(referred to in place) into a temporary run folder, and over every checkpoint it times:
  loop   - for each example, one forward pass of that example alone, the checkpoint
           reloaded from its file before each batch of 64 examples (as a script that
           does not hold the model between batches would);
  memloc - core.classifier.dynamics_pass.checkpoint_dynamics without gradients, over
           the first N training examples.
It exits non-zero when the losses differ by more than 1e-5 or any prediction differs.
The last line is the speed-up of memloc over the loop.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _runs import run_or_train
from memloc.core.checkpoints import load_into
from memloc.core.classifier.data import NoisyLabels
from memloc.core.classifier.dynamics_pass import checkpoint_dynamics
from memloc.core.classifier.imported import ImportConfig, import_run
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData

CPU = torch.device("cpu")


@torch.no_grad()
def loop(run: RunFolder, data: RunData, epochs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    model, _ = run.load_model()
    model.eval()
    losses, preds = [], []
    for epoch in epochs:
        loss_row, pred_row = [], []
        for i in range(len(data.x_train)):
            if i % 64 == 0:
                load_into(model, run.load_checkpoint(epoch))
            logits = model(data.x_train[i : i + 1]).float()
            loss_row.append(float(F.cross_entropy(logits, data.given[i : i + 1])))
            pred_row.append(int(logits.argmax(1)))
        losses.append(loss_row)
        preds.append(pred_row)
    return np.array(losses, dtype=np.float32), np.array(preds)


def batched(run: RunFolder, data: RunData, epochs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    model, _ = run.load_model()
    losses, preds = [], []
    for epoch in epochs:
        load_into(model, run.load_checkpoint(epoch))
        step = checkpoint_dynamics(model, data, None, mask_known=True)
        losses.append(step.loss)
        preds.append(step.pred)
    return np.array(losses, dtype=np.float32), np.array(preds)


def imported_copy(run: RunFolder, folder: Path) -> RunFolder:
    """``run``'s checkpoints and labels imported as foreign files."""
    (folder / "ckpt").mkdir(parents=True)
    for epoch in run.epochs()[1:]:
        shutil.copy(run.checkpoint(epoch), folder / "ckpt" / f"epoch_{epoch}.safetensors")
    labels, index = run.load_noise()
    if not np.array_equal(index, np.arange(len(index))):
        sys.exit("import_dynamics: give a run trained on all its data (no --limit)")
    np.save(folder / "labels.npy", labels.given)
    np.save(folder / "true.npy", labels.original)
    train = run.config()["train"]
    config = ImportConfig(
        (str(folder / "ckpt"),),
        train["arch"],
        train["data"],
        str(folder / "labels.npy"),
        str(folder / "true.npy"),
    )
    imported = RunFolder(folder / "run")
    import_run(imported, replace(config, gradients=False), CPU)
    return imported


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--examples", type=int, default=512)
    args = parser.parse_args()
    run = imported_copy(run_or_train(args.run_dir, epochs=3), Path(tempfile.mkdtemp()))
    full = RunData.load(run, CPU)
    n = min(args.examples, len(full.x_train))
    labels = NoisyLabels(full.labels.given[:n], full.labels.original[:n], full.labels.mask[:n])
    data = replace(
        full,
        x_train=full.x_train[:n],
        given=full.given[:n],
        original=full.original[:n],
        noisy=full.noisy[:n],
        labels=labels,
    )
    epochs = run.epochs()
    start = time.perf_counter()
    ref_loss, ref_pred = loop(run, data, epochs)
    base = time.perf_counter() - start
    start = time.perf_counter()
    loss, pred = batched(run, data, epochs)
    ours = time.perf_counter() - start
    if not np.array_equal(pred, ref_pred) or not np.allclose(loss, ref_loss, rtol=0, atol=1e-5):
        print("import_dynamics: the batched pass differs from the per-example loop", file=sys.stderr)
        return 1
    print(f"{len(epochs)} checkpoints x {n} examples: loop {base:.3f}s, memloc {ours:.3f}s")
    print(f"import_dynamics: {base / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of the layer-rewinding sweep against the bare evaluation passes it needs.

Usage: python benchmarks/rewind.py [RUN_DIR] [--device cpu|cuda]

Without RUN_DIR it trains a small CNN on digits first. It times, in one process:
  bare     - one evaluation pass (train + test sets) per (layer, epoch) cell on the
             final model, with nothing else: the floor any sweep must pay;
  memloc   - locate.rewinding.rewind_cells over every group x epoch;
  reload   - a straightforward sweep that rebuilds the model and reloads the final
             and the early checkpoint from disk for every cell.
It exits non-zero when memloc's cells differ from the straightforward ones.
The last line is memloc's cost over the bare passes (target <= 1.3x).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _runs import run_or_train
from memloc.core.adapters import ClassifierAdapter
from memloc.core.checkpoints import load_into, load_tensors
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.training.zoo import build_model
from memloc.locate.classifier.rewinding import (
    LayerCell,
    RewindConfig,
    default_rewind_epochs,
    group_tensors,
    rewind_cells,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def reload_sweep(run: RunFolder, data: RunData, layers: list[str], epochs, device) -> list[LayerCell]:
    """The straightforward sweep: rebuild and reload everything from disk for every cell."""
    cells = []
    final = run.epochs()[-1]
    for epoch in epochs:
        for layer in layers:
            model = build_model(run.spec())
            load_into(model, load_tensors(run.checkpoint(final)))
            adapter = ClassifierAdapter.for_model(model)
            state = model.state_dict()
            early = load_tensors(run.checkpoint(epoch))
            params = [n for n, _ in model.named_parameters()]
            for k in group_tensors(adapter, layer, state, True, params):
                state[k] = early[k]
            load_into(model, state)
            model.to(device)
            cells.append(LayerCell.of(layer, epoch, data.accuracies(model)))
    return cells


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    run = run_or_train(args.run, epochs=8)
    data = RunData.load(run, device)
    model, adapter = run.load_model()
    model.to(device)
    epochs = default_rewind_epochs(run.epochs()[-1])
    n_cells = len(adapter.groups) * len(epochs)
    data.accuracies(model)  # warm-up

    bare_s, _ = timed(lambda: [data.accuracies(model) for _ in range(n_cells)], device)
    memloc_s, cells = timed(
        lambda: rewind_cells(model, adapter, data, run.load_checkpoint, RewindConfig(epochs=epochs)), device
    )
    reload_s, reference = timed(lambda: reload_sweep(run, data, adapter.names, epochs, device), device)

    key = lambda c: (c.layer, c.epoch)  # noqa: E731
    if sorted(cells, key=key) != sorted(reference, key=key):
        print("MISMATCH: memloc's rewinding cells differ from the straightforward sweep", file=sys.stderr)
        return 1
    print(
        f"run: {run.root} ({run.spec().arch}, {len(data.x_train)} train / {len(data.x_test)} test), device {device}"
    )
    print(f"cells: {n_cells} ({len(adapter.groups)} layers x epochs {list(epochs)})")
    print(f"bare evaluation passes: {bare_s:.3f} s")
    print(f"memloc rewind sweep:    {memloc_s:.3f} s")
    print(f"reload-per-cell sweep:  {reload_s:.3f} s")
    print(f"rewind_speedup_vs_reload: {reload_s / memloc_s:.2f}x")
    print(f"rewind_cost_vs_bare_passes: {memloc_s / bare_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

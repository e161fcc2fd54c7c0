"""Mislabel-detection AUROC of the second-split, holdout and checkpoint measures on one run.

Usage: python benchmarks/split_measures.py [RUN_DIR] [--device cpu|cuda] [--epochs E]

Without RUN_DIR it trains a small CNN on digits first (10% noise). It prints, per measure,
its AUROC at flagging the noisy examples and its wall time: SSFT (both directions), the
holdout-retraining KL, CSG, and the neural-collapse distance; then NC1 per group at the
first and last checkpoint, and the benign probe per group.
"""

from __future__ import annotations

import argparse
import time

import torch
from _runs import run_or_train
from memloc.locate.classifier.benign import BenignConfig, benign_memorization
from memloc.locate.classifier.csg import CSGConfig, cumulative_sample_gradient
from memloc.locate.classifier.holdout_kl import HoldoutKLConfig, locate_holdout_kl
from memloc.locate.classifier.neural_collapse import CollapseConfig, neural_collapse
from memloc.locate.classifier.second_split import SecondSplitConfig, second_split_forgetting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    args = parser.parse_args()
    run = run_or_train(args.run, args.epochs)
    device = torch.device(args.device)
    measures = {
        "ssft": lambda: second_split_forgetting(
            run, device, SecondSplitConfig(finetune_epochs=args.finetune_epochs)
        ),
        "holdout_kl": lambda: locate_holdout_kl(run, device, HoldoutKLConfig()),
        "csg": lambda: cumulative_sample_gradient(run, device, CSGConfig()),
        "nc_distance": lambda: neural_collapse(run, device, CollapseConfig()),
    }
    collapse = None
    for name, measure in measures.items():
        start = time.perf_counter()
        result = measure()
        print(f"{name:12s} AUROC {result.auroc:.3f}  {time.perf_counter() - start:6.1f} s")
        collapse = result if name == "nc_distance" else collapse
    if collapse is not None:
        for g, group in enumerate(collapse.groups):
            print(f"NC1 {group:8s} epoch {collapse.epochs[0]}: {collapse.nc1[0, g]:.3f}  "
                  f"epoch {collapse.epochs[-1]}: {collapse.nc1[-1, g]:.3f}")  # fmt: skip
    for layer in benign_memorization(run, device, BenignConfig()).layers:
        print(f"kNN probe {layer.group:8s} init {layer.init_accuracy:.3f}  final {layer.final_accuracy:.3f}")


if __name__ == "__main__":
    main()

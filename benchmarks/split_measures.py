"""Mislabel-detection AUROC of the second-split, holdout and checkpoint measures on one run.

Usage: python benchmarks/split_measures.py [RUN_DIR] [--device cpu|cuda] [--epochs E] [--shadows K]

Without RUN_DIR it trains a small CNN on digits first (10% noise). It prints, per measure,
its AUROC at flagging the noisy examples and its wall time: SSFT (both directions), the
holdout-retraining KL, CSG, and the neural-collapse distance; then NC1 per group at the
first and last checkpoint, and the benign probe per group. With ``--shadows K`` it first
trains K shadow models on seeded half subsets (the run's training config) and prints the
forgetting rate: offline LiRA's AUC and TPR at 1% FPR per fine-tuning epoch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _runs import run_or_train
from memloc.core.classifier.model_source import build_classifier
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.locate.classifier.benign import BenignConfig, benign_memorization
from memloc.locate.classifier.csg import CSGConfig, cumulative_sample_gradient
from memloc.locate.classifier.holdout_kl import HoldoutKLConfig, locate_holdout_kl
from memloc.locate.classifier.neural_collapse import CollapseConfig, neural_collapse
from memloc.locate.classifier.second_split import SecondSplitConfig, second_split_forgetting


def shadows(run: RunFolder, device: torch.device, models: int) -> EnsembleLogits:
    """K models of the run's architecture and training config, each on a seeded half of the set."""
    data = RunData.load(run, device)
    train = run.config()["train"]
    membership = draw_membership(MembershipConfig(models=models, keep=0.5, seed=1), len(data.given))
    train_logits, test_logits = [], []
    for k in range(models):
        torch.manual_seed(1000 + k)
        model = build_classifier(run.spec()).to(device)
        config = FitConfig(
            2 * train["epochs"], train["batch_size"], train["lr"], train["weight_decay"], seed=k
        )
        fit(model, data.x_train, data.given, membership.subset(k), config)
        with torch.no_grad():
            train_logits.append(model(data.x_train).float().cpu().numpy())
            test_logits.append(model(data.x_test).float().cpu().numpy())
    given, labels = data.given.cpu().numpy(), data.y_test.cpu().numpy()
    return EnsembleLogits(membership, np.stack(train_logits), np.stack(test_logits), given, labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--shadows", type=int, default=0)
    args = parser.parse_args()
    run = run_or_train(args.run, args.epochs)
    device = torch.device(args.device)
    if args.shadows:
        start = time.perf_counter()
        ensemble = shadows(run, device, args.shadows)
        result = second_split_forgetting(
            run, device, SecondSplitConfig(finetune_epochs=args.finetune_epochs), ensemble=ensemble
        )
        print(f"forgetting rate ({args.shadows} shadows, {time.perf_counter() - start:.1f} s)")
        for d, curve in enumerate(result.forgetting or ()):
            print(f"  direction {d + 1} AUC     " + " ".join(f"{v:.3f}" for v in curve.auc))
            print(f"  direction {d + 1} TPR@1%  " + " ".join(f"{v:.3f}" for v in curve.tpr))
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

"""Benign memorization (Anagnostidis et al. 2023, "The Curious Case of Benign
Memorization", ICLR; survey §2.4): does a network that memorized noisy labels still
learn features that separate the TRUE classes?

Per layer group, a cosine k-nearest-neighbour probe is fitted on the training set's
features with their true labels and scored on the test set, once at the initialization
(epoch 0) and once after training (the final epoch). Memorization is benign in a layer
when the probe improves there. Conv groups are global-average-pooled by default
(locate/classifier/group_features.py).

Example::

    result = benign_memorization(RunFolder.open("runs/cnn"), torch.device("cpu"), BenignConfig(k=20))
    [(layer.group, layer.init_accuracy, layer.final_accuracy) for layer in result.layers]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.progress import Progress
from memloc.core.validation import at_least, fail, one_of
from memloc.locate.classifier.group_features import POOLS, group_features, resolve_groups


@dataclass(frozen=True)
class BenignConfig:
    k: int = 20
    groups: tuple[str, ...] | None = None  # None: every layer group
    pool: str = "mean"
    batch_size: int = 512

    def __post_init__(self) -> None:
        at_least(self, 1, "k", "batch_size")
        one_of(self, "pool", POOLS)
        if self.groups is not None and not self.groups:
            raise fail(self, "groups", "must name at least one layer group, or be None for all")


@dataclass(frozen=True)
class ProbeLayer:
    group: str
    init_accuracy: float  # kNN probe on the true labels at epoch 0
    final_accuracy: float  # the same after training

    @property
    def benign(self) -> bool:
        return self.final_accuracy > self.init_accuracy


@dataclass(frozen=True)
class BenignResult:
    config: BenignConfig
    init_epoch: int
    final_epoch: int
    layers: tuple[ProbeLayer, ...]


@torch.no_grad()
def knn_predict(
    train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int, batch_size: int = 512
) -> torch.Tensor:
    """The majority label of each query row's k most cosine-similar training rows.

    A tie between classes goes to the one whose neighbours are more similar in sum.
    """
    train_n = F.normalize(train.float(), dim=1)
    k = min(k, len(train))
    classes = int(labels.max()) + 1
    preds = []
    for start in range(0, len(query), batch_size):
        sims = F.normalize(query[start : start + batch_size].float(), dim=1) @ train_n.T
        top, index = sims.topk(k, dim=1)
        neighbour = labels[index]
        votes = torch.zeros(len(sims), classes, device=sims.device)
        votes.scatter_add_(1, neighbour, torch.ones_like(top))
        # Summed similarities lie in [-k, k]; scaled below 1/2 they only break ties of counts.
        votes.scatter_add_(1, neighbour, top / (4 * k))
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    batch_size: int = 512,
) -> float:
    """Accuracy on (test, test_labels) of the cosine kNN probe fitted on (train, train_labels)."""
    pred = knn_predict(train, train_labels, test, k, batch_size)
    return float((pred == test_labels).float().mean())


def benign_memorization(
    run: RunFolder,
    device: torch.device,
    config: BenignConfig,
    *,
    progress: Progress | None = None,
) -> BenignResult:
    """The kNN probe per layer group at the initialization and at the final epoch of ``run``."""
    run.require_epochs([0])
    final = run.epochs()[-1]
    data = RunData.load(run, device)
    accuracy: dict[int, dict[str, float]] = {}
    names: list[str] = []
    for i, epoch in enumerate((0, final)):
        model, adapter = run.load_model(epoch)
        model.to(device)
        names = resolve_groups(adapter, config.groups)
        train = group_features(
            model, adapter, data.x_train, names, pool=config.pool, batch_size=config.batch_size
        )
        test = group_features(
            model, adapter, data.x_test, names, pool=config.pool, batch_size=config.batch_size
        )
        accuracy[epoch] = {
            g: knn_accuracy(train[g], data.original, test[g], data.y_test, config.k, config.batch_size)
            for g in names
        }
        if progress:
            progress(i + 1, 2, f"epoch {epoch}")
    layers = tuple(ProbeLayer(g, accuracy[0][g], accuracy[final][g]) for g in names)
    return BenignResult(config, 0, final, layers)

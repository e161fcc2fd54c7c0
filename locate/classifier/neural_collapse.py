"""Neural-collapse memorization (Nguyen et al. 2023, "Memorization-Dilation: Modeling
Neural Collapse Under Label Noise", ICLR; survey Definition 5) and NC1 over training.

- mem = Σ_k Σ_{i corrupted, true class k} ||h_i − h*_k||: the distance of each mislabeled
  training example's features h_i to h*_k, the mean feature of the TEST examples of its
  true class k. Per example this distance is also given for every training example, at
  the final epoch in one group (the penultimate group by default).
- NC1 = tr(Σ_W Σ_B⁺) / K (Papyan et al. 2020), the within-class variability against the
  between-class one, on the training features grouped by their TRUE labels: as a network
  memorizes noisy labels, the mislabeled examples pull their true classes apart, which
  shows as NC1 rising ("dilation"). With M the (D, K) class means minus the global mean
  and X_c the features minus their class mean, Σ_B⁺ = K·pinv(M)ᵀpinv(M), so
  NC1 = ||X_c pinv(M)ᵀ||²_F / N without a D × D matrix.

Both per layer group and per checkpoint (every ``stride``-th, the init and the last
always included). Conv groups are global-average-pooled by default.

Example::

    result = neural_collapse(RunFolder.open("runs/cnn"), torch.device("cpu"), CollapseConfig(stride=5))
    result.nc1[:, result.groups.index("fc1")]  # NC1 of fc1 per checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress
from memloc.core.validation import at_least, fail, one_of
from memloc.locate.classifier.group_features import POOLS, group_features, resolve_groups
from memloc.locate.classifier.scores import auroc

_RTOL = 1e-8


@dataclass(frozen=True)
class CollapseConfig:
    groups: tuple[str, ...] | None = None  # None: every layer group
    distance_group: str | None = None  # the per-example distances' group; None: the penultimate
    stride: int = 1
    pool: str = "mean"
    batch_size: int = 512

    def __post_init__(self) -> None:
        at_least(self, 1, "stride", "batch_size")
        one_of(self, "pool", POOLS)
        if self.groups is not None and not self.groups:
            raise fail(self, "groups", "must name at least one layer group, or be None for all")

    def epochs_of(self, epochs: list[int]) -> list[int]:
        chosen = sorted(epochs)[:: self.stride]
        return chosen if chosen[-1] == max(epochs) else [*chosen, max(epochs)]


@dataclass(frozen=True)
class CollapseResult:
    """``nc1`` and ``mem``: (len(epochs), len(groups)); ``distance``: (N,) at the final epoch."""

    config: CollapseConfig
    groups: tuple[str, ...]
    epochs: tuple[int, ...]
    distance_group: str
    auroc: float  # of ``distance`` at flagging the noisy examples (NaN when the run has one kind only)
    nc1: np.ndarray = field(compare=False, repr=False)
    mem: np.ndarray = field(compare=False, repr=False)
    distance: np.ndarray = field(compare=False, repr=False)
    noisy: np.ndarray = field(compare=False, repr=False)


def _class_means(
    features: torch.Tensor, labels: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, D) mean per class, float64, and which classes have examples."""
    f = features.double()
    sums = torch.zeros(classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=classes)
    return sums / counts.clamp(min=1)[:, None], counts > 0


def nc1(features: torch.Tensor, labels: torch.Tensor) -> float:
    """tr(Σ_W Σ_B⁺) / K over the K classes present in ``labels``; 0 for perfectly collapsed features."""
    classes = int(labels.max()) + 1
    means, present = _class_means(features, labels, classes)
    centered = features.double() - means[labels]
    between = (means[present] - features.double().mean(0)).T  # (D, K)
    # Centred class means are linearly dependent (their count-weighted sum is 0): the
    # tolerance keeps that direction's round-off out of the pseudo-inverse.
    projected = centered @ torch.linalg.pinv(between, rtol=_RTOL).T
    return float(projected.pow(2).sum() / len(features))


def collapse_distances(
    features: torch.Tensor, labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor
) -> torch.Tensor:
    """||h_i − h*_{labels_i}||, h*_k the mean of the test features of class k."""
    classes = max(int(labels.max()), int(test_labels.max())) + 1
    means, present = _class_means(test_features, test_labels, classes)
    missing = torch.unique(labels[~present[labels]])
    if len(missing):
        raise MemlocError(
            f"the test set has no example of class {int(missing[0])}; its mean feature is undefined"
        )
    return (features.double() - means[labels]).norm(dim=1)


def neural_collapse(
    run: RunFolder,
    device: torch.device,
    config: CollapseConfig,
    *,
    progress: Progress | None = None,
) -> CollapseResult:
    """NC1 and mem per layer group and checkpoint of ``run``; per-example distances at its final epoch."""
    epochs = config.epochs_of(run.epochs())
    data = RunData.load(run, device)
    noisy = data.labels.mask
    corrupted = torch.as_tensor(noisy, device=device)
    nc1_rows, mem_rows = [], []
    names: list[str] = []
    distance = np.zeros(0)
    chosen = config.distance_group
    for i, epoch in enumerate(epochs):
        model, adapter = run.load_model(epoch)
        model.to(device)
        names = resolve_groups(adapter, config.groups)
        chosen = chosen or (adapter.names[-2] if len(adapter.names) > 1 else adapter.names[0])
        wanted = list(dict.fromkeys([*names, *resolve_groups(adapter, [chosen])]))
        train = group_features(
            model, adapter, data.x_train, wanted, pool=config.pool, batch_size=config.batch_size
        )
        test = group_features(
            model, adapter, data.x_test, wanted, pool=config.pool, batch_size=config.batch_size
        )
        dist = {g: collapse_distances(train[g], data.original, test[g], data.y_test) for g in wanted}
        nc1_rows.append([nc1(train[g], data.original) for g in names])
        mem_rows.append([float(dist[g][corrupted].sum()) for g in names])
        distance = dist[chosen].cpu().numpy()
        if progress:
            progress(i + 1, len(epochs), f"epoch {epoch}")
    quality = auroc(distance, noisy) if noisy.any() and not noisy.all() else float("nan")
    return CollapseResult(
        config, tuple(names), tuple(epochs), str(chosen), quality,
        np.array(nc1_rows), np.array(mem_rows), distance, noisy,
    )  # fmt: skip

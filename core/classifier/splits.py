"""A run's data on a device, split the way every noisy-label analysis reports it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.classifier.data import Dataset, NoisyLabels
from memloc.core.classifier.evaluation import ChunkContext, masked_accuracy, per_example
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import RunFolderError
from torch import nn


@dataclass(frozen=True)
class Accuracies:
    """Accuracy of one model on the run's clean and noisy training examples and on the test set."""

    clean_train_acc: float  # clean training examples
    noisy_train_acc: float  # mislabeled training examples, on their given (wrong) labels
    noisy_orig_acc: float  # mislabeled training examples, on their original labels
    test_acc: float

    def table_row(self) -> dict[str, float]:
        """The columns of the stored layer tables (layers.json), which keep their first names."""
        return {
            "clean_acc": self.clean_train_acc,
            "noisy_acc": self.noisy_train_acc,
            "noisy_orig_acc": self.noisy_orig_acc,
            "test_acc": self.test_acc,
        }

    @classmethod
    def from_table_row(cls, row: dict[str, float]) -> Accuracies:
        """The inverse of `table_row`."""
        return cls(row["clean_acc"], row["noisy_acc"], row["noisy_orig_acc"], row["test_acc"])


@dataclass(frozen=True)
class RunData:
    """Training images with given/original labels and the noise mask, plus the test set."""

    x_train: torch.Tensor
    given: torch.Tensor
    original: torch.Tensor
    noisy: torch.Tensor  # bool mask over training examples
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels: NoisyLabels

    @classmethod
    def load(cls, run: RunFolder, device: torch.device) -> RunData:
        """Reload the run's data exactly as it was trained (same source, subset and noise)."""
        data = run.dataset()
        labels, index = run.load_noise()
        if not np.array_equal(index, data.train_index):
            raise RunFolderError(
                f"the data set {data.name!r} changed since {run.root} was trained (its subset differs)"
            )
        return cls.build(data, labels, device)

    @classmethod
    def build(cls, data: Dataset, labels: NoisyLabels, device: torch.device) -> RunData:
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device)

        return cls(
            put(data.x_train),
            put(labels.given),
            put(labels.original),
            put(labels.mask),
            put(data.x_test),
            put(data.y_test),
            labels,
        )

    def evaluate(
        self,
        model: nn.Module,
        batch_size: int = 1024,
        *,
        train_context: ChunkContext | None = None,
        test_context: ChunkContext | None = None,
    ) -> tuple[Accuracies, np.ndarray, np.ndarray]:
        """Accuracies, and per-example training loss and prediction, in one pass per set.

        The contexts are entered around each chunk of the training and the test set
        (`per_example`), for forwards that depend on the example.

        Example::

            accs, loss, pred = RunData.load(run, device).evaluate(model)
            accs.clean_train_acc
        """
        train_loss, train_pred = per_example(
            model, self.x_train, self.given, batch_size=batch_size, context=train_context
        )
        _, test_pred = per_example(
            model, self.x_test, self.y_test, batch_size=batch_size, context=test_context
        )
        loss, pred = train_loss.cpu().numpy(), train_pred.cpu().numpy()
        mask = self.labels.mask
        accs = Accuracies(
            clean_train_acc=masked_accuracy(pred, self.labels.given, ~mask),
            noisy_train_acc=masked_accuracy(pred, self.labels.given, mask),
            noisy_orig_acc=masked_accuracy(pred, self.labels.original, mask),
            test_acc=masked_accuracy(test_pred.cpu().numpy(), self.y_test.cpu().numpy()),
        )
        return accs, loss, pred

    def accuracies(
        self,
        model: nn.Module,
        batch_size: int = 1024,
        *,
        train_context: ChunkContext | None = None,
        test_context: ChunkContext | None = None,
    ) -> Accuracies:
        return self.evaluate(model, batch_size, train_context=train_context, test_context=test_context)[0]

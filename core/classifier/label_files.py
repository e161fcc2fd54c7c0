"""Reading the labels a run was trained on, and its noisy/clean split, from files.

A labels file is ``.npy`` (one integer array), ``.npz`` (one array, or a ``labels``
key) or CSV (one column of labels, or an ``id,label`` header whose ids are the
positions in the training data). ``--true-labels`` has the same forms; ``--noise-mask``
holds booleans (or 0/1) in the same forms.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from memloc.core.classifier.data import NoisyLabels
from memloc.core.errors import DataError


def read_label_file(path: str | Path, what: str = "labels") -> np.ndarray:
    """A 1-D array read from ``path``; one line naming the file when it is not one.

    labels = read_label_file("outside/labels.npy")
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = _npy(path, what)
    elif suffix == ".npz":
        values = _npz(path, what)
    elif suffix in (".csv", ".txt"):
        values = _csv(path, what)
    else:
        raise DataError(f"{what} file {path} must be .npy, .npz or .csv")
    if values.ndim != 1 or not len(values):
        raise DataError(f"{what} in {path} must be one non-empty column, got shape {values.shape}")
    return values


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{what} file {path} is not a numpy array: {str(exc).splitlines()[0]}") from None


def _npz(path: Path, what: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if "labels" in names:
                return np.asarray(z["labels"])
            if len(names) == 1:
                return np.asarray(z[names[0]])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{what} file {path} is not an npz archive: {str(exc).splitlines()[0]}") from None
    raise DataError(f"{what} file {path} holds {', '.join(names)}; give one array or one named 'labels'")


def _csv(path: Path, what: str) -> np.ndarray:
    try:
        rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {what} file {path}: {exc}") from None
    if not rows:
        raise DataError(f"{what} file {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if header == ["id", "label"]:
        return _id_label_rows(rows[1:], path, what)
    if len(header) != 1:
        raise DataError(f"{what} file {path} must have one column or an 'id,label' header, got {rows[0]}")
    body = rows[1:] if not _is_number(rows[0][0]) else rows
    try:
        return np.array([_number(r[0]) for r in body])
    except ValueError as exc:
        raise DataError(f"{what} file {path}: {exc}") from None


def _id_label_rows(rows: list[list[str]], path: Path, what: str) -> np.ndarray:
    try:
        ids = np.array([int(r[0]) for r in rows])
        values = np.array([_number(r[1]) for r in rows])
    except (ValueError, IndexError) as exc:
        raise DataError(f"{what} file {path}: every row must be 'id,label' ({exc})") from None
    if sorted(ids.tolist()) != list(range(len(ids))):
        raise DataError(f"the ids of {what} file {path} must be 0..{len(ids) - 1}, each once")
    out = np.empty_like(values)
    out[ids] = values
    return out


def _is_number(text: str) -> bool:
    try:
        _number(text)
        return True
    except ValueError:
        return False


def _number(text: str) -> int:
    value = text.strip().lower()
    if value in ("true", "false"):
        return int(value == "true")
    return int(value)


@dataclass(frozen=True)
class ImportedLabels:
    """The labels training used, and the noisy/clean split where one was given."""

    labels: NoisyLabels
    mask_known: bool
    mask_source: str  # "true-labels", "noise-mask" or "unknown"


def imported_labels(
    given: np.ndarray,
    n_train: int,
    num_classes: int,
    *,
    true_labels: np.ndarray | None = None,
    noise_mask: np.ndarray | None = None,
) -> ImportedLabels:
    """Checked labels for ``n_train`` training examples; without a split the mask is all False and unknown.

    labels = imported_labels(read_label_file("labels.npy"), len(data.y_train), data.num_classes)
    """
    if true_labels is not None and noise_mask is not None:
        raise DataError("give --true-labels or --noise-mask, not both", field="true_labels")
    given = _class_labels(given, n_train, num_classes, "--labels")
    if true_labels is not None:
        original = _class_labels(true_labels, n_train, num_classes, "--true-labels")
        return ImportedLabels(NoisyLabels(given, original, given != original), True, "true-labels")
    if noise_mask is not None:
        mask = _mask(noise_mask, n_train)
        # The true labels of the noisy examples are unknown; the given ones stand in.
        return ImportedLabels(NoisyLabels(given, given.copy(), mask), True, "noise-mask")
    return ImportedLabels(NoisyLabels(given, given.copy(), np.zeros(n_train, dtype=bool)), False, "unknown")


def _class_labels(values: np.ndarray, n_train: int, num_classes: int, flag: str) -> np.ndarray:
    if len(values) != n_train:
        raise DataError(
            f"{flag} has {len(values)} labels but the training data has {n_train} examples",
            field=flag.lstrip("-").replace("-", "_"),
        )
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.mod(values, 1) == 0):
        raise DataError(f"{flag} must hold integer class labels", field=flag.lstrip("-").replace("-", "_"))
    labels = values.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{flag} holds labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})",
            field=flag.lstrip("-").replace("-", "_"),
        )
    return labels


def _mask(values: np.ndarray, n_train: int) -> np.ndarray:
    if len(values) != n_train:
        raise DataError(
            f"--noise-mask has {len(values)} entries but the training data has {n_train} examples",
            field="noise_mask",
        )
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise DataError("--noise-mask must hold booleans or 0/1", field="noise_mask")
    return values.astype(bool)

"""Classifier data sets and label noise.

Sources (``spec`` of `load_dataset`):
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 by a
  fixed stratified split so the test set never depends on the run's seed.
- ``fashion-mnist``: the IDX gzip files of Debian's ``dataset-fashion-mnist`` under
  /usr/share/datasets/fashion-mnist (or ``$MEMLOC_FASHION_MNIST``).
- a folder with the four IDX files (``train-images-idx3-ubyte[.gz]`` ...), or a
  folder of ``.npz`` files (or one ``.npz`` file) holding ``x_train, y_train,
  x_test, y_test``.
- an image folder, ``train/CLASS/*.png|jpg`` and ``test/CLASS/...`` (or ``val/``):
  core/classifier/image_folder.py.
- a Hugging Face ``datasets`` folder written by ``DatasetDict.save_to_disk``, with
  train and test splits: core/classifier/hf_datasets.py (needs the ``data`` extra).

Label noise follows Maini et al. 2023: exactly round(p*N) training examples, chosen
with a seeded RNG, each relabelled uniformly among the other C-1 classes.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from memloc.core.classifier.hf_datasets import is_datasets_folder, read_datasets_folder
from memloc.core.classifier.image_folder import is_image_folder, read_image_folder
from memloc.core.classifier.preprocess import Preprocess
from memloc.core.errors import DataError
from memloc.core.progress import Progress

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = tuple(IDX_STEMS)
BUILTIN = ("digits", "fashion-mnist")

# Independent RNG streams derived from the run's seed.
_STREAM_LIMIT, _STREAM_NOISE = 0x4C494D, 0x4E4F49


@dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, C, H, W) in [0, 1] (or (N, D) for flat data), int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    train_index: np.ndarray  # rows of the full training set kept by --limit

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])


@dataclass(frozen=True)
class NoisyLabels:
    """Given (possibly corrupted) labels, the original labels, and which were changed."""

    given: np.ndarray
    original: np.ndarray
    mask: np.ndarray

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"given": self.given, "original": self.original, "mask": self.mask}


# --- readers -----------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    found = {k: _find_idx(folder, stem) for k, stem in IDX_STEMS.items()}
    missing = [IDX_STEMS[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"{folder} lacks IDX files: {', '.join(missing)}")
    return {k: _read_idx(p) for k, p in found.items() if p is not None}


def _load_npz(paths: list[Path]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    if key in NPZ_KEYS:
                        if key in arrays:
                            raise DataError(f"{key} appears in more than one .npz file under {path.parent}")
                        arrays[key] = z[key]
        except (OSError, ValueError) as exc:
            if not zipfile.is_zipfile(path):  # numpy then reads it as a pickle, and says so
                raise DataError(f"{path} is not a valid npz archive (it is not a zip archive)") from None
            raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"the .npz data lacks arrays {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
    return arrays


def _to_images(x: np.ndarray, name: str) -> np.ndarray:
    """float32 in [0, 1] for bytes; (N, H, W) -> (N, 1, H, W); NHWC -> NCHW."""
    if x.ndim < 2:
        raise DataError(f"{name} must have a sample axis and features, got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype != np.float32:  # float32 input (decoded image files) is used as it is
        x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _to_labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        found = f"shape {y.shape}, dtype {y.dtype}"
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
            found = f"negative labels {_spans(np.unique(y[y < 0]))}"
        raise DataError(f"{name} must be a 1-D array of non-negative integer class ids, got {found}")
    return y.astype(np.int64)


def _spans(values: np.ndarray | list[int], most: int = 6) -> str:
    """Sorted integers as ``0-3, 99``, at most ``most`` spans."""
    spans: list[list[int]] = []
    for v in sorted(int(x) for x in values):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in spans]
    return ", ".join(text[:most]) + (", ..." if len(text) > most else "")


def _require_finite(x: np.ndarray, name: str) -> None:
    """NaN or inf pixels would surface later as a "diverged" loss; name them here."""
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(
            f"{name} holds {int(bad.sum())} NaN/inf values in {len(rows)} examples (the first at "
            f"example {rows[0]}); clean or drop those examples"
        )


def _class_count(y_train: np.ndarray, y_test: np.ndarray, num_classes: int | None) -> int:
    """The number of classes: the declared one, else the training labels' 0..C-1 without gaps.

    A stray label (one 99 among 0-3) would otherwise make a 100-class model and draw
    label noise from classes that have no example.
    """
    if num_classes is not None:
        for name, y in (("y_train", y_train), ("y_test", y_test)):
            outside = np.unique(y[y >= num_classes])
            if outside.size:
                raise DataError(
                    f"{name} holds labels {_spans(outside)}, outside the declared "
                    f"num_classes {num_classes} (labels 0-{num_classes - 1})",
                    field="num_classes",
                )
        return num_classes
    classes = np.unique(y_train)
    count = len(classes)
    if classes[-1] != count - 1:
        missing = np.setdiff1d(np.arange(classes[-1] + 1), classes)
        raise DataError(
            f"y_train labels must be the classes 0..C-1 without gaps, but they are {_spans(classes)} "
            f"(no example of {_spans(missing)}); fix the labels, or declare the classes with num_classes",
            field="num_classes",
        )
    outside = np.unique(y_test[y_test >= count])
    if outside.size:
        raise DataError(
            f"y_test holds labels {_spans(outside)} that no training example has (training classes "
            f"0-{count - 1}); fix the labels, or declare the classes with num_classes",
            field="num_classes",
        )
    return count


def _raw_arrays(
    spec: str,
    preprocess: Preprocess,
    progress: Progress | None,
    notify: Callable[[str], None] | None,
) -> tuple[str, dict[str, np.ndarray]]:
    if spec == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(
            images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
        )
        return "digits", {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
    if spec == "fashion-mnist":
        folder = Path(os.environ.get("MEMLOC_FASHION_MNIST", FASHION_MNIST_DIR))
        if not folder.is_dir():
            raise DataError(
                f"Fashion-MNIST not found at {folder}; install it with "
                "'apt-get install dataset-fashion-mnist' or pass a folder holding its four IDX files"
            )
        return "fashion-mnist", _load_idx_folder(folder)
    path = Path(spec)
    if not path.exists() and (os.sep in spec or path.suffix):
        raise DataError(f"data path {spec} does not exist")
    if not path.exists():
        raise DataError(
            f"unknown data set {spec!r}: use {' or '.join(BUILTIN)}, "
            "or a path to a folder of IDX or .npz files, images or a saved Hugging Face dataset"
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"{path} is not readable (check its permissions)")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path} is not a .npz file or a folder of IDX/.npz files")
        return path.stem, _load_npz([path])
    if any(_find_idx(path, stem) for stem in IDX_STEMS.values()):
        return path.name, _load_idx_folder(path)
    size, channels = preprocess.size, preprocess.channels
    if is_datasets_folder(path):
        return path.name, read_datasets_folder(path, size=size, channels=channels, progress=progress)
    if is_image_folder(path):
        return path.name, read_image_folder(
            path, size=size, channels=channels, progress=progress, notify=notify
        )
    npz = sorted(path.glob("*.npz"))
    if not npz:
        raise DataError(
            f"{path} holds neither the four IDX files nor .npz files, nor train/ and test/ image folders"
        )
    return path.name, _load_npz(npz)


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of ``limit`` examples."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if limit >= n:
        return np.arange(n)
    present, sizes = np.unique(labels, return_counts=True)
    classes = len(present)
    if limit < classes:
        raise DataError(f"limit {limit} is smaller than the number of classes ({classes})", field="limit")
    if n - limit < classes:
        raise DataError(
            f"limit {limit} leaves out fewer examples than there are classes ({classes}); "
            f"leave limit out to use all {n} examples",
            field="limit",
        )
    single = present[sizes < 2]
    if single.size:
        raise DataError(
            f"limit {limit} needs a stratified subset, but class {_spans(single)} has a single "
            "training example; leave limit out or add examples of that class",
            field="limit",
        )
    keep, _ = train_test_split(
        np.arange(n),
        train_size=limit,
        stratify=labels,
        random_state=np.random.RandomState(np.random.SeedSequence([seed, _STREAM_LIMIT]).generate_state(1)),
    )
    return np.sort(keep)


def load_dataset(
    spec: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    preprocess: Preprocess | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a data set by name or path; ``limit`` keeps a seeded stratified subset of train.

    ``num_classes`` declares the class count (labels 0..num_classes-1, not all of them
    present); without it the training labels must be 0..C-1 without gaps.
    ``preprocess`` (channels, resize, normalization) is applied to the kept images;
    image folders are decoded at its size and channel count directly. ``progress``
    follows the decoding of image files; ``notify`` receives notes that do not stop
    the loading (files of an image folder that were skipped).

    data = load_dataset("runs/my-data.npz", limit=1000, num_classes=10)
    data = load_dataset("data/pets", preprocess=Preprocess(size=(64, 64)))
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}", field="limit")
    name, raw = _raw_arrays(spec, preprocess or Preprocess(), progress, notify)
    try:
        x_train, x_test = _to_images(raw["x_train"], "x_train"), _to_images(raw["x_test"], "x_test")
        y_train, y_test = _to_labels(raw["y_train"], "y_train"), _to_labels(raw["y_test"], "y_test")
        _require_finite(x_train, "x_train")
        _require_finite(x_test, "x_test")
    except DataError as exc:
        raise DataError(f"{spec}: {exc}", field=exc.field) from None
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(
            f"{name}: images and labels differ in count "
            f"(train {len(x_train)} vs {len(y_train)}, test {len(x_test)} vs {len(y_test)})"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ")
    if len(y_train) == 0 or len(y_test) == 0:
        raise DataError(f"{name}: the train and test sets must both be non-empty")
    try:
        num_classes = _class_count(y_train, y_test, num_classes)
    except DataError as exc:
        raise DataError(f"{spec}: {exc}", field=exc.field) from None
    if num_classes < 2:
        raise DataError(f"{name}: needs at least two classes")
    index = stratified_subset(y_train, limit, seed) if limit else np.arange(len(y_train))
    x_train = x_train[index]
    if preprocess is not None:
        x_train, x_test = preprocess.apply(x_train), preprocess.apply(x_test)
    return Dataset(name, x_train, y_train[index], x_test, y_test, num_classes, index)


def inject_noise(labels: np.ndarray, p: float, num_classes: int, seed: int) -> NoisyLabels:
    """Relabel exactly round(p*N) examples, each uniformly among the other C-1 classes.

    Unlike the reference code, no class offset is excluded: the offset is drawn from
    {1, ..., C-1}, so every wrong class is equally likely. Rounding is half-up.
    """
    if not 0.0 <= p < 1.0:
        raise DataError(f"noise must be in [0, 1), got {p}")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    k = int(np.floor(p * n + 0.5))
    rng = np.random.default_rng([seed, _STREAM_NOISE])
    chosen = rng.choice(n, size=k, replace=False)
    given = labels.copy()
    given[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=k)) % num_classes
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return NoisyLabels(given=given, original=labels.copy(), mask=mask)

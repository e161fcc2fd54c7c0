"""A Hugging Face ``datasets`` folder (written by ``DatasetDict.save_to_disk``) as a `load_dataset` source.

- Splits: ``train``, and ``test`` (or ``validation`` when there is no test split).
- Columns are found by their feature type: the one ``Image`` column and the one
  ``ClassLabel`` column. A split with none or several of either is refused, naming
  its columns; cast the right one (``ds.cast_column("label", ClassLabel(names=...))``)
  and save again. The test split must have the same class names.
- Order: the rows' order in each split.
- Images are decoded from their stored bytes (or file path) as
  core/classifier/image_files.py describes.

``datasets`` is an optional extra (``pip install 'memloc[data]'``); without it a
datasets folder is refused in one line saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from memloc.core.classifier.image_files import EncodedImage, decode_images, read_headers, target_layout
from memloc.core.errors import DataError
from memloc.core.progress import Progress

TEST_SPLITS = ("test", "validation")
INSTALL = "pip install 'memloc[data]' (or pip install datasets)"


def is_datasets_folder(path: Path) -> bool:
    """A folder ``save_to_disk`` wrote: a DatasetDict's, or a single Dataset's (refused later)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def read_datasets_folder(
    folder: Path,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` of a saved DatasetDict, images float32 (N, C, H, W).

    data = read_datasets_folder(Path("data/beans"), size=(64, 64))
    """
    splits = _load(folder)
    test_name = next((n for n in TEST_SPLITS if n in splits), None)
    if "train" not in splits or test_name is None:
        raise DataError(
            f"{folder} has the splits {', '.join(splits) or 'none'}; memloc needs train and test (or validation)"
        )
    image_col, label_col, names = _columns(splits["train"], f"{folder}/train")
    test_cols = _columns(splits[test_name], f"{folder}/{test_name}")
    if test_cols[2] != names:
        raise DataError(
            f"{folder}: the {test_name} split's classes {test_cols[2]} differ from train's {names}"
        )
    train_images, y_train = _rows(splits["train"], image_col, label_col, f"{folder}/train")
    test_images, y_test = _rows(splits[test_name], test_cols[0], test_cols[1], f"{folder}/{test_name}")
    images = train_images + test_images
    headers, kept = read_headers(images)
    depth, shape = target_layout(headers, images, size, channels)
    x = decode_images(images, headers, depth, shape, kept=kept, progress=progress)
    n = len(train_images)
    return {"x_train": x[:n], "y_train": y_train, "x_test": x[n:], "y_test": y_test}


def _load(folder: Path) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{folder} is a Hugging Face datasets folder; reading it needs {INSTALL}") from None
    if not (folder / "dataset_dict.json").is_file():
        raise DataError(
            f"{folder} holds a single Hugging Face Dataset; memloc needs a DatasetDict with train and "
            "test splits (DatasetDict({'train': ..., 'test': ...}).save_to_disk)"
        )
    try:
        return datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read the datasets folder {folder}: {reason[:200]}") from None


def _columns(split: Any, where: str) -> tuple[str, str, list[str]]:
    """The image column, the label column and its class names, found by feature type."""
    import datasets

    features = split.features
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(images) != 1 or len(labels) != 1:
        kinds = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
        raise DataError(
            f"{where} needs exactly one Image column and one ClassLabel column, but has {kinds}; "
            "cast the right columns (cast_column) and save it again"
        )
    return images[0], labels[0], list(features[labels[0]].names)


def _rows(
    split: Any, image_col: str, label_col: str, where: str
) -> tuple[tuple[EncodedImage, ...], np.ndarray]:
    import datasets

    raw = split.cast_column(image_col, datasets.Image(decode=False))
    images = []
    for i, value in enumerate(raw[image_col]):
        name = f"{where} row {i}"
        if value is None or (value.get("bytes") is None and not value.get("path")):
            raise DataError(f"{name} has no image")
        if value.get("bytes") is not None:
            images.append(EncodedImage(name, data=value["bytes"]))
        else:
            images.append(EncodedImage(f"{name} ({value['path']})", path=str(value["path"])))
    return tuple(images), np.asarray(raw[label_col], dtype=np.int64)

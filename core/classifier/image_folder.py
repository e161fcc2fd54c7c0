"""A folder of images, one subfolder per class, as a `load_dataset` source.

Layout::

    DATA/train/CLASS/*.png|*.jpg|*.jpeg
    DATA/test/CLASS/...        (or DATA/val/CLASS/... when there is no test/)

- Classes: the sorted names of train's class folders; class i is the i-th name.
- Order: examples are sorted by class index, then by file name (Python's string
  order, so ``10.png`` comes before ``2.png``). Labels files made elsewhere (for
  ``memloc import``) must follow this order.
- Files: only those directly inside a class folder whose suffix is .png, .jpg or
  .jpeg (any case) are read. Hidden files are ignored; other files and subfolders
  are skipped with a note.
- A train class with no folder (or an empty one) in test is a note: its test
  accuracy simply has no examples, as with a test set of .npz labels lacking a class.
- Refused in one line naming the path: no train/ or test/ folder, a split with no
  class folders, an empty train class folder, a test class that train lacks (no
  class index for it), and a file that is not an image.

Pixels, channels and sizes are decoded as core/classifier/image_files.py describes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from memloc.core.classifier.image_files import EncodedImage, decode_images, read_headers, target_layout
from memloc.core.errors import DataError
from memloc.core.progress import Progress

SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_SPLITS = ("test", "val")


@dataclass(frozen=True)
class Split:
    """One split's images in example order, with their class indices."""

    images: tuple[EncodedImage, ...]
    labels: np.ndarray


def is_image_folder(path: Path) -> bool:
    """A folder with train/ and test/ (or val/) subfolders."""
    return (path / "train").is_dir() and any((path / name).is_dir() for name in TEST_SPLITS)


def class_names(folder: Path) -> list[str]:
    """The sorted class folder names of ``folder``/train."""
    names = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder / 'train'} holds no class folders (images go in train/CLASS/NAME.png)")
    return names


def read_image_folder(
    folder: Path,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` of an image folder, images float32 (N, C, H, W).

    data = read_image_folder(Path("data/pets"), size=(64, 64))
    """
    names = class_names(folder)
    test_folder = next(folder / n for n in TEST_SPLITS if (folder / n).is_dir())
    skipped: list[str] = []
    train = _split(folder / "train", names, skipped, notify, required=True)
    test = _split(test_folder, names, skipped, notify, required=False)
    if skipped and notify:
        notify(
            f"skipped {len(skipped)} entries of {folder} that are not .png/.jpg/.jpeg files (first: {skipped[0]})"
        )
    images = train.images + test.images
    headers, kept = read_headers(images)
    depth, shape = target_layout(headers, images, size, channels)
    x = decode_images(images, headers, depth, shape, kept=kept, progress=progress)
    n = len(train.images)
    return {"x_train": x[:n], "y_train": train.labels, "x_test": x[n:], "y_test": test.labels}


def _split(
    split: Path,
    names: list[str],
    skipped: list[str],
    notify: Callable[[str], None] | None,
    *,
    required: bool,
) -> Split:
    found = {p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not found:
        raise DataError(f"{split} holds no class folders (images go in {split.name}/CLASS/NAME.png)")
    foreign = sorted(found - set(names))
    if foreign:
        raise DataError(
            f"{split / foreign[0]} is a class that {split.parent / 'train'} lacks; "
            "every test class needs training images"
        )
    images: list[EncodedImage] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        files = _class_files(split / name, skipped) if name in found else []
        if not files:
            if required:
                raise DataError(f"{split / name} holds no .png, .jpg or .jpeg images")
            if notify:
                notify(f"{split} has no images of class {name!r}; its test accuracy leaves that class out")
        images += [EncodedImage(f, path=f) for f in files]
        labels += [index] * len(files)
    return Split(tuple(images), np.array(labels, dtype=np.int64))


def _class_files(folder: Path, skipped: list[str]) -> list[str]:
    files = []
    # scandir: the directory listing already says which entries are files (one stat saved per image).
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in SUFFIXES:
                files.append(entry.path)
            else:
                skipped.append(entry.path)
    return files

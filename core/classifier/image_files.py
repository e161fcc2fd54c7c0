"""Encoded images (files or bytes) decoded with Pillow into memloc's float (N, C, H, W) arrays.

Two passes. The first reads each image's header (size and mode), so a file that is
not an image, or sizes that cannot be stacked, are refused in one line before the
output is built; it also keeps the pixels of small images, up to a memory budget,
so a folder of thumbnails is opened once. The second decodes the rest in batches,
converts and resizes, reporting progress.

- Values: an 8-bit pixel p becomes p / 255 in float32, exactly as the IDX and .npz
  loaders scale bytes; 16-bit gray images are divided by 65535.
- Channels: each image is read as gray (modes 1, L, LA, I, I;16, F) or RGB (every
  other mode; alpha is dropped). All images then get the declared channel count, or
  else the count most images have (3 on a tie); the conversion is `Preprocess`'s
  (RGB averaged to gray, gray repeated to RGB).
- Sizes: images of different sizes need a resize; with one, every image is resized
  (bilinear, antialiased, as `Preprocess` does) while it is decoded, so a folder of
  large photos never sits in memory at full size.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.classifier.preprocess import convert_channels, resize
from memloc.core.errors import DataError
from memloc.core.progress import Progress

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit gray in Pillow
DECODE_BATCH = 512
KEEP_BYTES = 256 * 2**20  # decoded pixels the header pass may keep


@dataclass(frozen=True)
class EncodedImage:
    """One image to decode: its file, or its encoded bytes; ``name`` is what errors show."""

    name: str
    path: str | None = None  # a file name
    data: bytes | None = None

    def open(self):  # -> PIL.Image.Image; Pillow is imported only when images are read
        from PIL import Image, UnidentifiedImageError

        try:
            return Image.open(self.path if self.path is not None else io.BytesIO(self.data or b""))
        except UnidentifiedImageError:
            raise DataError(f"{self.name} is not an image Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise DataError(f"{self.name} is refused by Pillow as too large: {exc}") from None
        except OSError as exc:
            raise DataError(f"cannot read {self.name}: {exc}") from None


@dataclass(frozen=True)
class Header:
    size: tuple[int, int]  # (height, width)
    channels: int


def read_headers(
    images: Sequence[EncodedImage], keep_bytes: int | None = None
) -> tuple[list[Header], dict[int, np.ndarray]]:
    """Size and channel count of every image, and the pixels of those that fit in ``keep_bytes``.

    Small images (a 28x28 data set) are decoded right away, since opening a file costs
    more than decoding it; large ones are decoded later, in batches, at their target size.
    """
    budget = KEEP_BYTES if keep_bytes is None else keep_bytes
    headers, kept, total = [], {}, 0
    for i, image in enumerate(images):
        with image.open() as img:
            width, height = img.size
            header = Header((height, width), 1 if img.mode in GRAY_MODES else 3)
            headers.append(header)
            if total + height * width * header.channels <= budget:
                kept[i] = _native(img, header, image.name)
                total += kept[i].nbytes
    return headers, kept


def target_layout(
    headers: Sequence[Header],
    images: Sequence[EncodedImage],
    size: tuple[int, int] | None,
    channels: int | None,
) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) every decoded image gets; mixed sizes without ``size`` are refused."""
    if channels is None:
        counts = Counter(h.channels for h in headers)
        channels = 1 if counts[1] > counts[3] else 3
    if size is not None:
        return channels, size
    first = headers[0].size
    for header, image in zip(headers, images, strict=True):
        if header.size != first:
            raise DataError(
                f"images differ in size: {_hw(first)} ({images[0].name}) and {_hw(header.size)} "
                f"({image.name}); pass one size for all (resize 32 or 32x48)",
                field="resize",
            )
    return channels, first


def decode_images(
    images: Sequence[EncodedImage],
    headers: Sequence[Header],
    channels: int,
    size: tuple[int, int],
    *,
    kept: dict[int, np.ndarray] | None = None,
    progress: Progress | None = None,
    what: str = "images",
) -> np.ndarray:
    """float32 (N, channels, *size) in [0, 1], decoded ``DECODE_BATCH`` images at a time.

    ``kept`` holds pixels `read_headers` already decoded, by image index.
    """
    kept = kept or {}
    out = np.empty((len(images), channels, *size), dtype=np.float32)
    for start in range(0, len(images), DECODE_BATCH):
        rows = range(start, min(start + DECODE_BATCH, len(images)))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        pixels = {}
        for i in rows:
            pixels[i] = kept[i] if i in kept else _decode(images[i], headers[i])
            by_shape.setdefault(pixels[i].shape, []).append(i)
        for same in by_shape.values():
            batch = torch.from_numpy(_unit_scale(np.stack([pixels[i] for i in same])))
            out[same] = _layout(batch, channels, size).numpy()
        if progress:
            progress(rows.stop, len(images), what)
    return out


def _layout(batch: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """`Preprocess`'s channel conversion and resize; gray is repeated after resizing, which
    gives the same values at a third of the resizing work."""
    if channels > batch.shape[1]:
        return convert_channels(resize(batch, size), channels)
    return resize(convert_channels(batch, channels), size)


def _decode(image: EncodedImage, header: Header) -> np.ndarray:
    with image.open() as img:
        return _native(img, header, image.name)


def _native(img, header: Header, name: str) -> np.ndarray:
    """The image's pixels as stored: uint8 (H, W) or (H, W, 3); uint16-range int32 for 16-bit gray."""
    try:
        if img.mode in _WIDE_MODES:
            return np.asarray(img, dtype=np.int32)
        mode = "L" if header.channels == 1 else "RGB"
        return np.asarray(img if img.mode == mode else img.convert(mode))
    except (OSError, SyntaxError, ValueError) as exc:  # a truncated or damaged file
        raise DataError(f"cannot decode {name}: {exc}") from None


def _unit_scale(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W[, 3]) stored pixels as float32 (N, C, H, W) in [0, 1]."""
    scale = 65535.0 if pixels.dtype == np.int32 else 255.0
    x = pixels.astype(np.float32) / scale
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"

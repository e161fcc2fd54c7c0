"""Preprocessing from the user's flags, on top of a model folder's own file.

The three settings, as ``memloc train`` and ``memloc import`` spell them:

- resize: ``32`` (32x32) or ``32x48`` (height x width);
- normalize: ``imagenet`` (torchvision's ImageNet mean and std), ``none``, or
  ``MEAN/STD`` with comma-separated values per channel, e.g.
  ``0.5,0.5,0.5/0.5,0.5,0.5`` (one value each applies to every channel);
- channels: 1 or 3.

A flag overrides the same part of the model folder's ``preprocessor_config.json``
(core/classifier/processor_config.py); ``normalize`` replaces the file's rescale as
well as its normalization, since both are one value mapping in memloc.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from memloc.core.classifier.preprocess import Preprocess
from memloc.core.classifier.processor_config import ProcessorSettings
from memloc.core.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")

Normalization = tuple[tuple[float, ...], tuple[float, ...]] | None


def parse_resize(text: str) -> tuple[int, int]:
    """``"32"`` -> (32, 32); ``"32x48"`` -> (32, 48), height then width."""
    match = _SIZE.match(text)
    sizes = tuple(int(g) for g in match.groups() if g is not None) if match else ()
    if not sizes or min(sizes) < 1:
        raise DataError(
            f"resize must be a positive size N or HxW (e.g. 32 or 32x48), got {text!r}", field="resize"
        )
    return (sizes[0], sizes[-1])


def parse_normalize(text: str) -> Normalization:
    """``imagenet``, ``none`` (-> None) or ``MEAN/STD`` as (mean, std) tuples."""
    name = text.strip().lower()
    if name == "none":
        return None
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    usage = f"normalize must be imagenet, none or MEAN/STD such as 0.5,0.5,0.5/0.5,0.5,0.5, got {text!r}"
    mean_text, slash, std_text = text.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise DataError(usage, field="normalize") from None
    if not slash or not all(math.isfinite(v) for v in mean + std):
        raise DataError(usage, field="normalize")
    if len(mean) != len(std):
        raise DataError(
            f"normalize {text!r} has {len(mean)} means but {len(std)} stds; give one of each per channel",
            field="normalize",
        )
    if min(std) <= 0:
        raise DataError(f"normalize {text!r}: every std must be positive", field="normalize")
    return mean, std


def preprocess_from_flags(
    *,
    resize: str | None = None,
    normalize: str | None = None,
    channels: int | None = None,
    model_folder: str | Path | None = None,
) -> Preprocess | None:
    """The preprocessing to store in a run: the model folder's file, each flag given overriding it.

    None when it changes nothing, so a run without preprocessing stores none.

    prep = preprocess_from_flags(resize="32", normalize="imagenet", channels=3)
    prep = preprocess_from_flags(model_folder="models/vit", normalize="none")
    """
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}", field="channels")
    size = parse_resize(resize) if resize is not None else None
    values = parse_normalize(normalize) if normalize is not None else None
    base = Preprocess()
    if model_folder is not None:
        settings = ProcessorSettings.read(model_folder)
        base = settings.preprocess(resize_given=resize is not None, normalize_given=normalize is not None)
    mean, std = values if values is not None else (None, None)
    prep = Preprocess(
        size=size if resize is not None else base.size,
        mean=mean if normalize is not None else base.mean,
        std=std if normalize is not None else base.std,
        channels=channels if channels is not None else base.channels,
    )
    if prep.mean is not None and prep.channels is not None and len(prep.mean) not in (1, prep.channels):
        raise DataError(
            f"the normalization has {len(prep.mean)} channel values but the images will have "
            f"{prep.channels} channel(s); give one value or one per channel",
            field="normalize",
        )
    return None if prep.is_identity else prep

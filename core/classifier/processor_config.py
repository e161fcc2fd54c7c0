"""A Hugging Face ``preprocessor_config.json`` read as a memloc `Preprocess`.

transformers' image processors (ViTImageProcessor, ConvNextImageProcessor and the
other AutoImageProcessor classes) store their steps as keys. memloc applies them to
its own images, which are float (N, C, H, W) in [0, 1], that is the 8-bit pixel
value p divided by 255:

- ``do_resize`` with ``size`` ``{"height", "width"}``, an int, or
  ``{"shortest_edge": s}`` resizes to (h, w) or (s, s). For square images (s, s) is
  what the processor's aspect-keeping resize gives; memloc always warps to one size,
  since a batch needs one.
- ``do_rescale``/``rescale_factor`` and ``do_normalize``/``image_mean``/``image_std``:
  the processor computes ``(p * r - m) / s``. With p = 255 x that is
  ``(x - m / k) / (s / k)`` for k = 255 r, so any rescale factor becomes an exact
  memloc normalization (r = 1/255, the usual one, leaves mean and std as they are;
  ``do_rescale`` false means the model saw raw 0-255 values, k = 255).
- ``num_channels`` of the model's ``config.json`` is the channel count the model
  takes: gray images are repeated to 3 channels, RGB averaged to 1.

Refused, with the flags that replace them: a center crop (``crop_pct`` of
ConvNeXt below 384 pixels, ``do_center_crop`` with a ``crop_size`` other than the
resize), ``longest_edge`` sizes, ``rescale_offset``, and any other ``do_*`` step.
A key left out reads as the processors' common default: a step is on when its values
are present, and the rescale factor is 1/255. The ``resample`` filter is not
followed: memloc's resize is always bilinear with antialiasing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memloc.core.classifier.preprocess import Preprocess
from memloc.core.errors import DataError
from memloc.core.json_files import read_json_object

PROCESSOR_FILE = "preprocessor_config.json"
KNOWN_STEPS = ("do_resize", "do_rescale", "do_normalize", "do_center_crop", "do_convert_rgb")
# ConvNextImageProcessor warps to (s, s) from this size on, and crops below it.
CONVNEXT_CROP_BELOW = 384


@dataclass(frozen=True)
class ProcessorSettings:
    """What one model folder's files ask for, with the steps memloc cannot follow kept as reasons.

    ``size_problem`` is why the file's resize cannot be used (a --resize flag replaces
    it); ``normalize_problem`` likewise for its value mapping (a --normalize flag).

    settings = ProcessorSettings.read("models/convnext")
    prep = settings.preprocess()  # raises on a problem no flag replaced
    """

    source: str
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    size_problem: str | None = None
    normalize_problem: str | None = None

    @classmethod
    def read(cls, folder: str | Path) -> ProcessorSettings:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"model folder {folder} does not exist")
        channels = _model_channels(folder)
        path = folder / PROCESSOR_FILE
        if not path.is_file():
            return cls(str(path), channels=channels)
        raw = read_json_object(path, DataError)
        size, size_problem = _size(raw, path)
        (mean, std), normalize_problem = _values(raw, path)
        unknown = [k for k, v in raw.items() if k.startswith("do_") and k not in KNOWN_STEPS and v is True]
        if unknown:
            step = f"{path} asks for {', '.join(unknown)}, which memloc does not apply"
            size_problem = size_problem or step
            normalize_problem = normalize_problem or step
        return cls(str(path), size, mean, std, channels, size_problem, normalize_problem)

    def preprocess(self, *, resize_given: bool = False, normalize_given: bool = False) -> Preprocess:
        """The file's preprocessing; a problem is raised unless a flag replaces that part."""
        if self.size_problem and not resize_given:
            raise DataError(
                f"{self.size_problem}; give the size yourself (resize 224 or 224x224)", field="resize"
            )
        if self.normalize_problem and not normalize_given:
            raise DataError(
                f"{self.normalize_problem}; give the normalization yourself (normalize MEAN/STD, "
                "imagenet or none)",
                field="normalize",
            )
        return Preprocess(self.size, self.mean, self.std, self.channels)


def _model_channels(folder: Path) -> int | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    channels = read_json_object(path, DataError).get("num_channels")
    if channels is None:
        return None
    if channels not in (1, 3):
        raise DataError(f"{path} declares num_channels {channels}; memloc's images have 1 or 3 channels")
    return int(channels)


def _size(raw: dict[str, Any], path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """The (height, width) resize, or the reason the file's geometry cannot be followed."""
    size = raw.get("size")
    if raw.get("do_resize", size is not None) is False:
        size = None
    if raw.get("do_resize") is True and size is None:
        raise DataError(f"{path}: do_resize is true but no size is given")
    hw = _hw(size, "size", path) if size is not None else None
    if size is not None and hw is None:
        return None, f"{path} asks for a size memloc cannot follow ({json.dumps(size)})"
    return hw, _crop_problem(raw, size, hw, path)


def _hw(value: Any, key: str, path: Path) -> tuple[int, int] | None:
    """(h, w) of an int, ``{height, width}`` or ``{shortest_edge}`` size; None for other forms."""
    if isinstance(value, int):
        value = {"height": value, "width": value}
    if not isinstance(value, dict):
        raise DataError(f"{path}: {key} must be a number or an object, got {value!r}")
    if "height" in value and "width" in value:
        return _pixels(value["height"], path), _pixels(value["width"], path)
    if set(value) == {"shortest_edge"}:
        edge = _pixels(value["shortest_edge"], path)
        return edge, edge
    return None


def _crop_problem(raw: dict[str, Any], size: Any, hw: tuple[int, int] | None, path: Path) -> str | None:
    """Why the file's center crop cannot be followed; None when it has none, or one that keeps the resize."""
    edge = size.get("shortest_edge") if isinstance(size, dict) else None
    pct = raw.get("crop_pct")
    if edge is not None and pct not in (None, 1, 1.0) and edge < CONVNEXT_CROP_BELOW:
        return f"{path} asks for a center crop (crop_pct {pct} of shortest_edge {edge}), which memloc does not apply"
    crop = raw.get("crop_size")
    if raw.get("do_center_crop", False) is True and crop is not None and _hw(crop, "crop_size", path) != hw:
        return f"{path} asks for a center crop to {json.dumps(crop)}, which memloc does not apply"
    return None


def _pixels(value: Any, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(f"{path}: image sizes must be positive integers, got {value!r}")
    return value


def _floats(value: Any, key: str, path: Path) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {key} must be a number or a list of numbers, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise DataError(f"{path}: {key} must hold finite numbers, got {value!r}")
    return out


Values = tuple[tuple[float, ...] | None, tuple[float, ...] | None]


def _values(raw: dict[str, Any], path: Path) -> tuple[Values, str | None]:
    """(mean, std) on memloc's [0, 1] scale for the processor's rescale and normalization."""
    if raw.get("rescale_offset") is True:
        return (None, None), f"{path} asks for rescale_offset, which memloc does not apply"
    rescale = raw.get("do_rescale", True) is not False
    factor = _floats(raw.get("rescale_factor", 1 / 255), "rescale_factor", path)[0] if rescale else 1.0
    if not factor > 0:
        raise DataError(f"{path}: rescale_factor must be positive, got {factor}")
    k = 255.0 * factor  # the processor's value is k * x for memloc's x = p / 255
    if math.isclose(k, 1.0, rel_tol=1e-6):
        k = 1.0  # 1/255 written out in JSON, times 255, need not give 1 exactly
    normalize = raw.get("do_normalize", "image_mean" in raw) is not False
    if normalize:
        if "image_mean" not in raw or "image_std" not in raw:
            raise DataError(f"{path}: do_normalize needs image_mean and image_std")
        mean = _floats(raw["image_mean"], "image_mean", path)
        std = _floats(raw["image_std"], "image_std", path)
        if len(mean) != len(std) or min(std) <= 0:
            raise DataError(f"{path}: image_std must be positive and as long as image_mean")
        return (tuple(m / k for m in mean), tuple(s / k for s in std)), None
    if k == 1.0:
        return (None, None), None
    return ((0.0,), (1.0 / k,)), None

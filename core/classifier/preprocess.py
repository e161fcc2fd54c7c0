"""The preprocessing a run's inputs go through, stored in its config so every analysis
sees exactly the inputs that training saw.

Images arrive as float32 (N, C, H, W) in [0, 1]. `Preprocess` then:
1. converts the channels (``channels``: 1 averages RGB to gray, 3 repeats gray);
2. resizes to ``size`` (height, width) with bilinear interpolation (antialiased);
3. normalizes each channel: ``(x - mean[c]) / std[c]``.

An unset field leaves that step out, so ``Preprocess()`` is the identity and runs
stored without one read as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.errors import DataError


@dataclass(frozen=True)
class Preprocess:
    """Channel conversion, resizing and per-channel normalization of (N, C, H, W) images.

    Example::

        prep = Preprocess(size=(32, 32), mean=(0.5,), std=(0.5,))
        x = prep.apply(x)  # float32 (N, 1, 32, 32)
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise DataError(f"resize must be two positive sizes (height, width), got {self.size}")
        if (self.mean is None) != (self.std is None):
            raise DataError("normalization needs both a mean and a std")
        if self.std is not None and (
            not all(np.isfinite(self.std)) or min(self.std) <= 0 or len(self.std) != len(self.mean or ())
        ):
            raise DataError(f"normalization std must be positive and as long as the mean, got {self.std}")
        if self.mean is not None and not all(np.isfinite(self.mean)):
            raise DataError(f"normalization mean must be finite, got {self.mean}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")

    @property
    def is_identity(self) -> bool:
        return self.size is None and self.mean is None and self.channels is None

    def to_dict(self) -> dict:
        return {
            "size": list(self.size) if self.size else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> Preprocess:
        if not d:
            return cls()

        def floats(key: str) -> tuple[float, ...] | None:
            return tuple(float(v) for v in d[key]) if d.get(key) else None

        size = tuple(int(v) for v in d["size"]) if d.get("size") else None
        return cls(size, floats("mean"), floats("std"), d.get("channels"))  # type: ignore[arg-type]

    def apply(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The preprocessed images, float32; flat (N, D) data is accepted only by the identity."""
        if self.is_identity:
            return x
        if x.ndim != 4:
            raise DataError(f"preprocessing needs images (N, C, H, W), got shape {x.shape}")
        parts = [
            self._apply_batch(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)
        ]
        return torch.cat(parts).numpy() if parts else x

    def _apply_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = resize(convert_channels(x.float(), self.channels), self.size)
        if self.mean is not None and self.std is not None:
            if len(self.mean) not in (1, x.shape[1]):
                raise DataError(f"normalization has {len(self.mean)} channels, the images {x.shape[1]}")
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    @classmethod
    def from_model_folder(cls, folder: str | Path) -> Preprocess:
        """The preprocessing a Hugging Face image model's folder declares.

        Reads ``preprocessor_config.json`` (the keys of ViT-, ConvNeXt- and other
        AutoImageProcessor files) and the channel count ``num_channels`` of its
        ``config.json``; see core/classifier/processor_config.py for what is honoured
        and what is refused. A folder without the file has no resize or normalization.

        prep = Preprocess.from_model_folder("models/vit-fashion")
        """
        from memloc.core.classifier.processor_config import ProcessorSettings

        return ProcessorSettings.read(folder).preprocess()


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) with ``channels`` channels: 1 averages RGB, 3 repeats gray; None keeps C."""
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 1 and x.shape[1] == 3:
        return x.mean(1, keepdim=True)
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    raise DataError(f"cannot convert {x.shape[1]} channels to {channels}")


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(N, C, H, W) float images at ``size`` (height, width), bilinear and antialiased.

    Antialiasing matters when shrinking (a 224-pixel photo to 32): plain bilinear
    interpolation would sample only a few source pixels per output pixel and alias.
    """
    if size is None or tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

"""Device and dtype selection from user-facing strings."""

from __future__ import annotations

import re

import torch
from memloc.core.errors import MemlocError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise MemlocError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise MemlocError(
            f"device {spec!r} asked for, but CUDA is not available here; use device cpu", field="device"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MemlocError(
            f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise MemlocError(f"unknown dtype {name!r}; use {', '.join(DTYPES)}")
    return DTYPES[name]

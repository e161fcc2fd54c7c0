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


# Room kept free on a GPU beside a large buffer, for the activations of the pass using it.
_HEADROOM = 1 << 30
# eigh / eigvalsh of an (F, F) float64 matrix: the input's copy, the vectors and the solver's
# workspace are each about F² doubles (LAPACK/cuSOLVER syevd); three copies are a safe bound.
EIGH_COPIES = 3


def free_bytes(device: torch.device) -> int | None:
    """Bytes a new tensor could still take on a CUDA ``device`` (driver-free plus torch's cached
    blocks); None on other devices, whose memory torch does not report."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def fits(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` fit on ``device`` with headroom to spare; the CPU is assumed to fit."""
    free = free_bytes(device)
    return free is None or nbytes + _HEADROOM <= free


def room_or_cpu(device: torch.device, nbytes: int) -> torch.device:
    """``device`` when ``nbytes`` fit there, else the CPU (slower, but host memory is larger).

    Example::

        where = room_or_cpu(c.device, EIGH_COPIES * c.numel() * 8)
        values = torch.linalg.eigvalsh(c.to(where, torch.float64))
    """
    return device if fits(device, nbytes) else torch.device("cpu")

"""Checks that configs run in ``__post_init__``, raising a `ConfigError` that names the field.

@dataclass(frozen=True)
class Example:
    steps: int = 20

    def __post_init__(self) -> None:
        at_least(self, 1, "steps")
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from memloc.core.errors import ConfigError


def fail(config: object, field: str, problem: str) -> ConfigError:
    """The error for ``field`` of ``config``, ready to raise."""
    return ConfigError(field, problem, config=type(config).__name__)


def finite(config: object, *fields: str) -> None:
    """Every named field is a finite number (not NaN, not ±inf); None counts as unset and passes.

    NaN compares False with everything, so a range check alone would let it through.
    """
    for field in fields:
        value = getattr(config, field)
        if value is not None and not math.isfinite(value):
            raise fail(config, field, f"must be a finite number, got {value}")


def at_least(config: object, minimum: float, *fields: str) -> None:
    """Every named field is finite and at least ``minimum``; None counts as unset and passes."""
    finite(config, *fields)
    for field in fields:
        value = getattr(config, field)
        if value is not None and value < minimum:
            raise fail(config, field, f"must be at least {minimum}, got {value}")


def positive(config: object, *fields: str) -> None:
    """Every named field is finite and above zero; None counts as unset and passes."""
    finite(config, *fields)
    for field in fields:
        value = getattr(config, field)
        if value is not None and not value > 0:
            raise fail(config, field, f"must be positive, got {value}")


def in_unit_interval(config: object, *fields: str) -> None:
    """Every named field lies in [0, 1] (NaN fails the comparison)."""
    for field in fields:
        value = getattr(config, field)
        if not 0.0 <= value <= 1.0:
            raise fail(config, field, f"must lie in [0, 1], got {value}")


def one_of(config: object, field: str, choices: Iterable[str]) -> None:
    """The field is one of ``choices``."""
    choices = tuple(choices)
    value = getattr(config, field)
    if value not in choices:
        raise fail(config, field, f"must be one of {', '.join(choices)}, got {value!r}")

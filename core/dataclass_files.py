"""Typed results to and from disk: a frozen dataclass becomes one JSON file (its scalars,
strings, dicts and nested dataclasses) and one .npz file (its arrays), and is read back
into the same type.

This is the one place a result turns into stored data; callers never pass dicts around.
Arrays may sit at any depth (a field of a dataclass inside a tuple inside the result):
each is stored under its path, e.g. ``online.fpr`` or ``directions.1.correct``. NaN
and inf survive the JSON, and None stays None.

Example::

    save_dataclass(result, folder / "lira")      # lira.json + lira.npz
    again = load_dataclass(LiraResult, folder / "lira")
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from memloc.core.checkpoints import atomic_write, atomic_write_text
from memloc.core.errors import RunFolderError

T = TypeVar("T")
_ARRAY = "__array__"  # marks where an array was taken out to the .npz file
_FLOAT = "__float__"  # marks NaN or inf, which JSON cannot hold


def save_dataclass(obj: object, stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem``.json and ``stem``.npz (arrays first, so the JSON marks a complete pair)."""
    stem = Path(stem)
    arrays: dict[str, np.ndarray] = {}
    plain = _encode(obj, "", arrays)
    npz = stem.with_suffix(".npz")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    atomic_write(npz, write)
    js = atomic_write_text(stem.with_suffix(".json"), json.dumps(plain, indent=1) + "\n")
    return js, npz


def load_dataclass(cls: type[T], stem: str | Path) -> T:
    """The ``cls`` that `save_dataclass` wrote at ``stem``; a damaged or missing pair says so."""
    stem = Path(stem)
    js, npz = stem.with_suffix(".json"), stem.with_suffix(".npz")
    try:
        plain = json.loads(js.read_text())
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{js} cannot be read ({exc}); remove it to recompute") from exc
    try:
        return _decode(cls, plain, arrays)
    except (KeyError, TypeError) as exc:
        raise RunFolderError(
            f"{js} cannot be read as {cls.__name__} (missing {exc}); remove it to recompute"
        ) from exc


def from_plain(cls: type[T], plain: Any) -> T:
    """A ``cls`` from plain JSON data of its fields (as `dataclasses.asdict` gives them, no arrays)."""
    return _decode(cls, plain, {})


def read_dataclass_json(cls: type[T], path: str | Path) -> T:
    """A ``cls`` from a JSON file of its fields; a damaged file says so in one line."""
    path = Path(path)
    try:
        return from_plain(cls, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunFolderError(f"{path} cannot be read as {cls.__name__} ({exc})") from exc


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {_ARRAY: path}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _encode(getattr(value, f.name), _join(path, f.name), arrays)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): _encode(v, _join(path, str(k)), arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, _join(path, str(i)), arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}  # NaN and inf are not JSON; None stays None
    if isinstance(value, Path):
        return str(value)
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _decode(tp: Any, value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict) and set(value) == {_ARRAY}:
        return arrays[value[_ARRAY]]
    if isinstance(value, dict) and set(value) == {_FLOAT}:
        return float(value[_FLOAT])
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        chosen = [a for a in args if a is not type(None)]
        return _decode(chosen[0], value, arrays)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        # A field absent from the file takes its default, so files written before the field
        # was added still read; one without a default is named in the error.
        for f in dataclasses.fields(tp):
            if (
                f.name not in value
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise KeyError(f"{tp.__name__}.{f.name}")
        fields = {
            f.name: _decode(hints[f.name], value[f.name], arrays)
            for f in dataclasses.fields(tp)
            if f.name in value
        }
        return tp(**fields)
    if origin is tuple:
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if inner is not None:
            return tuple(_decode(inner, v, arrays) for v in value)
        return (
            tuple(_decode(a, v, arrays) for a, v in zip(args, value, strict=True)) if args else tuple(value)
        )
    if origin is dict:
        key_t, val_t = args if args else (str, Any)
        return {_key(key_t, k): _decode(val_t, v, arrays) for k, v in value.items()}
    if origin is list:
        return [_decode(args[0] if args else Any, v, arrays) for v in value]
    if tp is float:
        return float(value)
    if tp is Path:
        return Path(value)
    return value


def _key(tp: Any, key: str) -> Any:
    return int(key) if tp is int else key

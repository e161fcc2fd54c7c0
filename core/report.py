"""The `Report` every method returns, with a JSON round trip and provenance."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from memloc.core.checkpoints import atomic_write_text, file_hash
from memloc.core.errors import MemlocError

SCHEMA_VERSION = 1


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, paths and dataclasses."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    return value


@dataclass
class Report:
    """What a method found: its config, results, headline metrics and provenance."""

    method: str
    model_id: str
    config: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return to_jsonable({f.name: getattr(self, f.name) for f in fields(self)})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MemlocError(
                f"report schema_version {version!r} is not readable by this memloc "
                f"(reads up to {SCHEMA_VERSION}); upgrade memloc"
            )
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise MemlocError(f"report lacks fields: {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MemlocError(f"report is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MemlocError("report JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Report:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise MemlocError(f"{path} is not valid JSON (not UTF-8 text)") from None
        except MemlocError as exc:
            # from_json does not know the file; the user needs its name.
            raise MemlocError(
                f"{path}: {exc}".replace(": report is not valid JSON:", " is not valid JSON:")
            ) from None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(seed: int | None, inputs: dict[str, str | Path] | None = None) -> dict:
    """Seed, package versions, memloc's git sha and SHA-256 of each input file."""
    hashes = {}
    for name, path in (inputs or {}).items():
        p = Path(path)
        hashes[name] = file_hash(p) if p.is_file() else hashlib.sha256(str(p).encode()).hexdigest()
    return {
        "seed": seed,
        "versions": {
            "memloc": _version("memloc"),
            "torch": _version("torch"),
            "numpy": _version("numpy"),
            "python": platform.python_version(),
        },
        "git_sha": _git_sha(),
        "inputs": hashes,
    }

"""checkpoints/imported.json: the checkpoints of an imported run, referred to in place.

Each entry names a file outside the run folder with what it was when imported: its
sha256, size and mtime. Reading a checkpoint checks size and mtime (cheap); when
either changed it hashes the file, and a file whose bytes changed is refused in one
line, so an analysis never silently reads other weights than those imported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from memloc.core.checkpoints import atomic_write_text, file_hash, load_tensors
from memloc.core.errors import CheckpointError, RunFolderError

MANIFEST_NAME = "imported.json"


@dataclass(frozen=True)
class ManifestEntry:
    """One imported checkpoint: the run's epoch index and where the file lies, as it was."""

    epoch: int  # the run's epoch index: 0 is the initialization (--init), 1.. the checkpoints
    path: str  # absolute
    sha256: str
    size: int
    mtime_ns: int
    step: int | None = None  # the Trainer's global_step
    source_epoch: float | None = None  # the Trainer's (fractional) epoch

    @classmethod
    def of(
        cls, epoch: int, path: Path, step: int | None = None, source_epoch: float | None = None
    ) -> ManifestEntry:
        path = path.resolve()
        stat = path.stat()
        return cls(epoch, str(path), file_hash(path), stat.st_size, stat.st_mtime_ns, step, source_epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        step, epoch = data.get("step"), data.get("source_epoch")
        return cls(
            int(data["epoch"]),
            str(data["path"]),
            str(data["sha256"]),
            int(data["size"]),
            int(data["mtime_ns"]),
            int(step) if step is not None else None,
            float(epoch) if epoch is not None else None,
        )

    def verify(self) -> Path:
        """The file, refused in one line when it is gone or its bytes changed since the import."""
        path = Path(self.path)
        try:
            stat = path.stat()
        except OSError:
            raise CheckpointError(
                f"the imported checkpoint {path} (epoch {self.epoch}) is gone; restore it or import again"
            ) from None
        if stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns:
            return path
        if stat.st_size != self.size or file_hash(path) != self.sha256:
            raise CheckpointError(
                f"the imported checkpoint {path} (epoch {self.epoch}) changed since it was imported "
                "(its sha256 differs); restore it or import the run again into a new folder"
            )
        return path  # touched, same bytes


@dataclass(frozen=True)
class Manifest:
    """The imported checkpoints of a run, by epoch index."""

    entries: tuple[ManifestEntry, ...]
    trust_pickle: bool = False

    def epochs(self) -> list[int]:
        return sorted(e.epoch for e in self.entries)

    def entry(self, epoch: int) -> ManifestEntry:
        for entry in self.entries:
            if entry.epoch == epoch:
                return entry
        raise RunFolderError(f"epoch {epoch} is not among the imported checkpoints")

    def load(self, epoch: int) -> dict[str, torch.Tensor]:
        entry = self.entry(epoch)
        return load_tensors(entry.verify(), trust_pickle=self.trust_pickle)

    def save(self, path: Path) -> None:
        body = {"trust_pickle": self.trust_pickle, "checkpoints": [e.to_dict() for e in self.entries]}
        atomic_write_text(path, json.dumps(body, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            entries = tuple(ManifestEntry.from_dict(e) for e in body["checkpoints"])
            return cls(entries, bool(body.get("trust_pickle", False)))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RunFolderError(f"{path} is not a checkpoint manifest memloc wrote: {exc}") from None


def same_files(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests name the same files with the same bytes at the same epochs."""
    key = [(e.epoch, e.path, e.sha256) for e in a.entries]
    return key == [(e.epoch, e.path, e.sha256) for e in b.entries] and a.trust_pickle == b.trust_pickle

"""Finding the checkpoints of a run trained elsewhere, in training order.

Three forms of ``SOURCE`` (`discover_checkpoints`):

- a folder of per-epoch files (``*.safetensors``, ``*.pt``, ``*.pth``, ``*.bin``),
  ordered by the numbers in their names (natural sort: ``epoch_2`` before ``epoch_10``);
- a folder of Hugging Face Trainer ``checkpoint-<step>/`` folders, each holding
  ``model.safetensors`` or ``pytorch_model.bin``, ordered by the ``global_step`` of its
  ``trainer_state.json`` (its step and epoch are kept);
- an explicit ordered list: a text file of paths, one a line, or several paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memloc.core.checkpoints import PICKLE_SUFFIXES
from memloc.core.errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
TRAINER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TRAINER_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class FoundCheckpoint:
    """One checkpoint file, with the Trainer's step and epoch where the source records them."""

    path: Path
    step: int | None = None
    source_epoch: float | None = None


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of a name by value: ``e2 < e10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def discover_checkpoints(sources: Sequence[str | Path]) -> tuple[FoundCheckpoint, ...]:
    """The checkpoints ``sources`` name, in training order; one line when there are none.

    Example::

        found = discover_checkpoints(["outside/checkpoints"])
        [c.path.name for c in found]  # ['epoch_1.safetensors', 'epoch_2.safetensors', ...]
    """
    if not sources:
        raise CheckpointError("no checkpoints given; name a folder, a list file or --checkpoint files")
    if len(sources) > 1:
        return tuple(FoundCheckpoint(_weights_file(Path(s))) for s in sources)
    source = Path(sources[0])
    if not source.exists():
        raise CheckpointError(f"checkpoint source {source} does not exist")
    if source.is_file() and source.suffix not in WEIGHT_SUFFIXES:
        return _from_list(source)
    if source.is_file():
        return (FoundCheckpoint(source),)
    trainer = [p for p in source.iterdir() if p.is_dir() and _TRAINER_DIR.match(p.name)]
    if trainer:
        return _from_trainer(trainer)
    files = sorted(
        (p for p in source.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise CheckpointError(
            f"{source} holds no checkpoints (*.safetensors, *.pt, *.bin files or Trainer checkpoint-N folders)"
        )
    return tuple(FoundCheckpoint(p) for p in files)


def _weights_file(path: Path) -> Path:
    """A checkpoint file, or the weights file inside a Trainer checkpoint folder."""
    if path.is_dir():
        for name in TRAINER_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds neither {' nor '.join(TRAINER_WEIGHTS)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _from_list(list_file: Path) -> tuple[FoundCheckpoint, ...]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint list {list_file}: {exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise CheckpointError(f"the checkpoint list {list_file} names no files")
    # Relative paths in a list file are relative to the list, as in most manifest formats.
    return tuple(FoundCheckpoint(_weights_file(list_file.parent / entry)) for entry in entries)


def _from_trainer(folders: list[Path]) -> tuple[FoundCheckpoint, ...]:
    found = []
    for folder in folders:
        step, epoch = _trainer_state(folder)
        found.append(FoundCheckpoint(_weights_file(folder), step, epoch))
    found.sort(key=lambda c: (c.step, c.source_epoch if c.source_epoch is not None else 0.0))
    steps = [c.step for c in found]
    if len(set(steps)) != len(steps):
        raise CheckpointError(
            f"two Trainer checkpoints under {folders[0].parent} record the same global_step"
        )
    return tuple(found)


def _trainer_state(folder: Path) -> tuple[int, float | None]:
    """(global_step, epoch) of a Trainer checkpoint; the folder name's step without trainer_state.json."""
    match = _TRAINER_DIR.match(folder.name)
    assert match is not None
    path = folder / "trainer_state.json"
    if not path.is_file():
        return int(match.group(1)), None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step = int(state["global_step"])
        epoch = state.get("epoch")
        return step, float(epoch) if epoch is not None else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a Trainer state (no global_step): {exc}") from None

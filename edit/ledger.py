"""The edit ledger: every applied edit, enough to audit it and to undo it bit for bit.

An edited model is always written to a NEW folder (never over its input) together
with:

- ``ledger.json``: per edit the facts, method, config and diagnostics, plus the
  SHA-256 of the base weights and of the edited weights;
- ``ledger.safetensors``: each edit's factors (``edit{i}.layer{l}.left/right``) and
  the base values of every weight the edits touched (``base.<name>``).

Undo copies the base values back and checks the result against the base hash, so
it is exact even though W + Δ − Δ need not equal W in floating point.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from memloc.core.checkpoints import atomic_write_text, load_tensors, publish_tree, save_tensors, temp_folder
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact
from memloc.core.lm.loading import ALIASES, quiet_transformers, smollm2_folder
from memloc.core.lm.model import LM
from memloc.core.report import to_jsonable
from memloc.edit.delta import Applied, WeightDelta, weights_hash

LEDGER_VERSION = 1


class LedgerError(MemlocError):
    """A ledger is missing, malformed, or does not belong to the model."""


@dataclass(frozen=True)
class LedgerEdit:
    """One applied edit as the ledger records it."""

    method: str
    layers: tuple[int, ...]
    facts: tuple[dict, ...]  # the edited facts' records
    config: dict
    info: dict  # the delta's diagnostics (`WeightDelta.info_record`)


@dataclass(frozen=True)
class Ledger:
    """``ledger.json``: the base and edited weights' hashes and every edit between them."""

    base_model: str
    model_type: str
    base_hash: str
    edited_hash: str
    edits: tuple[LedgerEdit, ...]
    ledger_version: int = LEDGER_VERSION

    def to_dict(self) -> dict:
        return {
            "ledger_version": self.ledger_version,
            "base_model": self.base_model,
            "model_type": self.model_type,
            "base_hash": self.base_hash,
            "edited_hash": self.edited_hash,
            "edits": [to_jsonable(edit) for edit in self.edits],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ledger:
        edits = tuple(
            LedgerEdit(e["method"], tuple(e["layers"]), tuple(e["facts"]), e["config"], e["info"])
            for e in data["edits"]
        )
        version = data.get("ledger_version", LEDGER_VERSION)
        return cls(
            data.get("base_model", ""),
            data.get("model_type", ""),
            data["base_hash"],
            data["edited_hash"],
            edits,
            version,
        )

    def methods(self) -> str:
        """The edit methods used, sorted and comma-separated."""
        return ",".join(sorted({edit.method for edit in self.edits}))


def _fresh_folder(out: Path, source: str) -> None:
    if Path(source).exists() and Path(source).resolve() == out.resolve():
        raise MemlocError(
            f"refusing to write the edited model over its input {source}; choose another out", field="out"
        )
    if out.exists() and any(out.iterdir()):
        raise MemlocError(
            f"{out} already exists and is not empty; choose another out or remove it", field="out"
        )


BASE_FILES = "ledger_base"  # the base folder's own non-weight files, byte for byte, for undo
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def _base_folder(source: str) -> Path | None:
    if source.lower() in ALIASES:
        return smollm2_folder()
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def _keep_base_files(source: str, into: Path) -> None:
    """Copy the base's tokenizer and config files: transformers re-saves them differently."""
    base = _base_folder(source)
    if base is None:
        return
    for file in sorted(base.iterdir()):
        if file.is_file() and file.suffix not in _WEIGHT_SUFFIXES and not file.name.startswith("ledger"):
            into.mkdir(exist_ok=True)
            shutil.copyfile(file, into / file.name)


def restore_base_files(folder: str | Path, out: str | Path) -> None:
    """Put the base's own tokenizer and config files, as `save_edited` kept them, into ``out``."""
    kept = Path(folder) / BASE_FILES
    if kept.is_dir():
        for file in sorted(kept.iterdir()):
            shutil.copyfile(file, Path(out) / file.name)


def save_edited(
    lm: LM,
    out: str | Path,
    deltas: Sequence[WeightDelta],
    handles: Sequence[Applied],
    facts: Sequence[Fact],
    base_hash: str,
) -> Path:
    """Write the (already edited) model, its tokenizer and the ledger into a new folder."""
    out = Path(out)
    _fresh_folder(out, lm.source)
    originals: dict[str, torch.Tensor] = {}
    for handle in handles:  # the earliest saved value of a weight is the base value
        for name, value in handle.originals.items():
            originals.setdefault(name, value)
    by_id = {f.case_id: f for f in facts}
    tensors: dict[str, torch.Tensor] = {f"base.{k}": v for k, v in originals.items()}
    edits = []
    for i, delta in enumerate(deltas):
        for part in delta.layers:
            tensors[f"edit{i}.layer{part.layer}.left"] = part.left
            tensors[f"edit{i}.layer{part.layer}.right"] = part.right
        facts_of = tuple(asdict(by_id[c]) for c in delta.case_ids if c in by_id)
        config, info = to_jsonable(dict(delta.config)), to_jsonable(delta.info_record())
        edits.append(LedgerEdit(delta.method, tuple(delta.layer_ids()), facts_of, config, info))
    ledger = Ledger(lm.source, lm.adapter.model_type, base_hash, weights_hash(lm.model), tuple(edits))
    tmp = temp_folder(out.parent, out.name)  # a run killed here leaves it; the next save removes it
    try:
        with quiet_transformers():
            lm.model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
        _keep_base_files(lm.source, tmp / BASE_FILES)
        save_tensors(tmp / "ledger.safetensors", tensors)
        atomic_write_text(tmp / "ledger.json", json.dumps(ledger.to_dict(), indent=2, allow_nan=False))
        if out.exists():
            out.rmdir()
        publish_tree(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_ledger(folder: str | Path) -> tuple[Ledger, dict[str, torch.Tensor]]:
    """The ledger of an edited folder and its tensors (edit factors, base values)."""
    folder = Path(folder)
    path = folder / "ledger.json"
    if not path.is_file():
        raise LedgerError(f"{folder} has no ledger.json; it was not written by save_edited")
    try:
        ledger = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path} is not valid JSON ({exc.msg})") from None
    for key in ("base_hash", "edited_hash", "edits"):
        if key not in ledger:
            raise LedgerError(f"{path} lacks the field {key!r}")
    return Ledger.from_dict(ledger), load_tensors(folder / "ledger.safetensors")


def undo(lm: LM, folder: str | Path) -> Ledger:
    """Restore the base weights of an edited model in place (in memory), bit for bit.

    Refuses when the model is not the one the ledger describes.
    """
    ledger, tensors = read_ledger(folder)
    found = weights_hash(lm.model)
    if found != ledger.edited_hash:
        raise LedgerError(
            f"the ledger in {folder} does not match the model: its weights hash {found[:12]} is not the "
            f"edited hash {ledger.edited_hash[:12]} the ledger recorded"
        )
    params = dict(lm.model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("base."):
                name = key[len("base.") :]
                if name not in params:
                    raise LedgerError(f"the ledger restores {name}, which the model does not have")
                params[name].copy_(value.to(params[name].device, params[name].dtype))
    restored = weights_hash(lm.model)
    if restored != ledger.base_hash:
        raise LedgerError(
            f"after undo the weights hash {restored[:12]} differs from the ledger's base hash "
            f"{ledger.base_hash[:12]}; the ledger does not belong to this model's base"
        )
    return ledger

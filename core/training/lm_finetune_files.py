"""The run folder of `finetune_lm`: epoch checkpoints, optimizer state, finetune.json, final model.

Layout of ``out``::

    config.json, model.safetensors, tokenizer files   the final model (save_pretrained)
    checkpoints/epoch-N/                               HF folder after epoch N; the newest also
                                                       holds optimizer.pt (AdamW state) to resume
    finetune.json                                      config, run identity, progress, what was seen

Every write is atomic (a temporary beside it, then ``os.replace``). A run is its
identity: the config apart from ``epochs``, a hash of the corpus and one of the base
weights; a rerun with the same identity resumes after the newest checkpoint (more
epochs may be asked for), any other run there is refused in one line.

Usage::

    documents, canaries = finetune_corpus(Path("corpus"))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from memloc.core.checkpoints import atomic_write_text, publish_tree, state_hash, temp_folder
from memloc.core.errors import RunFolderError
from memloc.core.json_files import read_json_object
from memloc.core.lm.canaries import Canary, canaries_file_for, read_canaries
from memloc.core.lm.corpus_files import corpus_files, read_corpus, texts_hash
from memloc.core.lm.loading import quiet_transformers
from torch import nn

if TYPE_CHECKING:
    from memloc.core.training.lm_finetune import LmFinetuneConfig

FORMAT = "memloc-finetune/1"
RECORD = "finetune.json"
OPTIMIZER = "optimizer.pt"
CANARIES_SUFFIX = ".canaries.jsonl"


@dataclass
class Run:
    """An open run folder: where, what identifies it, and how far it got (mutable as it advances)."""

    out: Path
    config: LmFinetuneConfig
    identity: dict[str, Any]
    epochs_done: int = 0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def epoch_folder(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch}"


def finetune_corpus(path: Path) -> tuple[list[str], list[Canary]]:
    """The documents of a corpus, and the canaries recorded with it by `memloc canaries make`.

    A canaries file (NAME.canaries.jsonl) in a corpus folder, or beside a corpus file, is
    the record of the planting, not text to train on.
    """
    files = corpus_files(path)
    texts = [f for f in files if not f.name.endswith(CANARIES_SUFFIX)]
    records = [f for f in files if f.name.endswith(CANARIES_SUFFIX)]
    if path.is_file() and canaries_file_for(path).is_file():
        records = [canaries_file_for(path)]
    if not texts:
        raise RunFolderError(f"corpus {path} holds only a canaries file, no text to fine-tune on")
    documents = [d for f in texts for d in read_corpus(f)]
    return documents, [c for f in records for c in read_canaries(f)]


def _identity(model: nn.Module, documents: Sequence[str], config: LmFinetuneConfig) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(config).items() if k != "epochs"}
    return {
        "config": settings,
        "corpus_sha256": texts_hash(documents),
        "base_sha256": state_hash(model.state_dict()),
    }


def _record(run: Run, status: str, extra: dict[str, Any] | None = None) -> None:
    data = {
        "format": FORMAT,
        "status": status,
        "config": asdict(run.config),
        "identity": run.identity,
        "epochs_done": run.epochs_done,
        "epoch_losses": run.epoch_losses,
        **(extra or {}),
    }
    atomic_write_text(run.out / RECORD, json.dumps(data, indent=1) + "\n")


def open_run(out: Path, model: nn.Module, documents: Sequence[str], config: LmFinetuneConfig) -> Run:
    """Start a run in ``out``, or reopen the same run there; another run there is refused."""
    run = Run(out, config, _identity(model, documents, config))
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; give a folder for the fine-tuned model")
    if out.is_dir() and any(out.iterdir()):
        if not (out / RECORD).is_file():
            raise RunFolderError(
                f"--out {out} holds other files and no {RECORD}; choose an empty or new folder"
            )
        old = read_json_object(out / RECORD, RunFolderError)
        if old.get("identity") != run.identity:
            raise RunFolderError(
                f"--out {out} holds a different fine-tuning run (other model, corpus or settings); "
                "choose another --out, nothing was overwritten"
            )
        run.epochs_done, run.epoch_losses = int(old["epochs_done"]), list(old["epoch_losses"])
        if run.epochs_done > config.epochs:
            raise RunFolderError(
                f"--out {out} already holds {run.epochs_done} epochs, more than --epochs {config.epochs}"
            )
        return run
    _record(run, "running")
    return run


def resume(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the newest finished epoch's weights and optimizer state; the epoch, or 0 for none."""
    if run.epochs_done == 0:
        return 0
    from transformers import AutoModelForCausalLM

    folder = run.epoch_folder(run.epochs_done)
    if not (folder / OPTIMIZER).is_file():
        raise RunFolderError(f"{folder} has no {OPTIMIZER} to resume from; fine-tune into a new --out")
    dtype = next(model.parameters()).dtype
    with quiet_transformers():
        saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    model.load_state_dict(saved.state_dict())
    state = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)  # moves the moments onto the parameters' device
    return run.epochs_done


def _save_folder(target: Path, model: Any, tokenizer, optimizer=None) -> None:
    """Write an HF folder (and the optimizer state) to ``target`` atomically, over a stale one.

    ``model`` is a transformers PreTrainedModel (nn.Module does not declare save_pretrained).
    """
    tmp = temp_folder(target.parent, target.name)
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        publish_tree(tmp)
        if target.exists():  # left by a run that died before recording this epoch
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_epoch(run: Run, model: Any, tokenizer, optimizer, epoch: int, loss: float) -> None:
    """Checkpoint epoch ``epoch``, record it, then drop the older optimizer state (only the newest resumes)."""
    _save_folder(run.epoch_folder(epoch), model, tokenizer, optimizer)
    run.epochs_done, run.epoch_losses = epoch, [*run.epoch_losses, loss]
    _record(run, "running")
    for older in range(1, epoch):
        run.epoch_folder(older).joinpath(OPTIMIZER).unlink(missing_ok=True)


def seen_record(documents: Sequence[str], canaries: Sequence[Canary], epochs: int) -> dict[str, Any]:
    """Per document its index, sha256 and times seen (epochs x copies in the corpus); per canary too."""
    copies = Counter(documents)
    docs = [
        {
            "index": i,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "seen": epochs * copies[text],
        }
        for i, text in enumerate(documents)
    ]
    marks = [
        {"text": c.text, "secret": list(c.secret), "repeats": c.repeats, "seen": epochs * copies[c.text]}
        for c in canaries
    ]
    return {"documents": docs, "canaries": marks}


def finish(run: Run, model: Any, tokenizer, documents: Sequence[str], canaries: Sequence[Canary]) -> None:
    """Put the final model's files into ``out`` (each moved in atomically), then the full record."""
    tmp = temp_folder(run.out, "final")
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        publish_tree(tmp)
        for path in sorted(tmp.iterdir()):
            os.replace(path, run.out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _record(run, "done", seen_record(documents, canaries, run.epochs_done))

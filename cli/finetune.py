"""`memloc finetune`: plant memorization in a causal LM by full fine-tuning on a local corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_table, progress_bar, stderr
from memloc.cli.options import LMOptions, SeedOpt, lm_options


@lm_options
def finetune_command(
    lm: LMOptions,
    corpus: Annotated[
        Path,
        typer.Option(
            "--corpus",
            help="A .txt (blank-line paragraphs), .jsonl or folder; a canaries file in it is recorded.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Run folder: the model, checkpoints/epoch-N, finetune.json.", show_default=False
        ),
    ],
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the corpus.")] = 3,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per step.")] = 8,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Tokens per document (longer ones are cut).")
    ] = 128,
    seed: SeedOpt = 0,
) -> None:
    """Fine-tune every parameter on CORPUS into OUT; a rerun with the same settings resumes."""
    from memloc.core.training.lm_finetune import LmFinetuneConfig, finetune_lm
    from memloc.core.training.lm_finetune_files import finetune_corpus

    config = LmFinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, seq_len=seq_len, seed=seed)
    documents, canaries = finetune_corpus(corpus)
    model = lm.load()
    with progress_bar("finetune") as update:
        result = finetune_lm(model.model, model.tokenizer, documents, config, out, update, canaries=canaries)
    first = result.resumed_after + 1
    rows = [{"epoch": first + i, "loss": round(loss, 4)} for i, loss in enumerate(result.epoch_losses)]
    if rows:
        emit_table(f"fine-tuned on {result.documents} documents", rows)
    if result.resumed_after:
        stderr.print(f"resumed after epoch {result.resumed_after} of {config.epochs}")
    stderr.print(f"wrote {out} (model, checkpoints/, finetune.json)")

"""`memloc locate memorized-neurons`: which MLP neurons hold memorized text (MemPi's localizers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.options import Format, FormatOpt, LMOptions, lm_options
from memloc.core.errors import MemlocError

METHODS = "zero_out, activations, ig, slimming or hard_concrete"


def parse_settings(value: str) -> tuple[tuple[str, Any], ...]:
    """``steps=50,lr=0.01`` as ((name, value), ...), each value read as JSON (a number) or kept as text."""
    out = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, sep, raw = part.partition("=")
        if not sep or not name.strip():
            raise MemlocError(f"--set {part!r} is not name=value, e.g. --set steps=50,batch_size=16")
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
        out.append((name.strip(), parsed))
    return tuple(out)


@lm_options
def memorized_neurons_command(
    lm: LMOptions,
    sequences: Annotated[
        Path,
        typer.Option(
            "--sequences",
            help="Memorized texts: .txt (blank-line paragraphs), .jsonl (a canaries file too) or folder.",
            show_default=False,
        ),
    ],
    method: Annotated[str, typer.Option("--method", help=f"The localizer: {METHODS}.")] = "hard_concrete",
    budget: Annotated[
        float, typer.Option("--budget", help="Share of all neurons kept per sequence.")
    ] = 0.005,
    other: Annotated[
        Path | None,
        typer.Option(
            "--other",
            help="Other text whose likelihood the localizer keeps (same formats): activations and "
            "the masks' objective=drop read it; the masks' default, MemPi's keep objective, does not.",
        ),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Tokens per text (longer ones are cut).")
    ] = 64,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N memorized texts.")] = None,
    settings: Annotated[
        str, typer.Option("--set", help="Localizer settings as name=value,..., e.g. steps=50,batch_size=16.")
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for memorized_neurons.json/.npz and neurons_per_layer.png."),
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Localize memorized texts to MLP neurons (Chang et al. 2024): ranked neurons, per layer, overlap."""
    import dataclasses

    import numpy as np
    from memloc.core.lm.corpus_files import read_corpus
    from memloc.core.paths import writable_folder
    from memloc.core.report import to_jsonable
    from memloc.locate.lm.memorized.files import write_memorized_neurons
    from memloc.locate.lm.memorized.run import LocalizeRequest, localize_texts

    request = LocalizeRequest(
        method=method, budget=budget, max_tokens=max_tokens, settings=parse_settings(settings)
    )
    request.config()
    texts = read_corpus(sequences, limit=limit)
    kept = read_corpus(other) if other is not None else []
    if out is not None:
        writable_folder(out)
    model = lm.load()
    with progress_bar(f"localizing ({method})") as update:
        run = localize_texts(model, texts, kept, request, progress=update)
    written = write_memorized_neurons(run, out) if out is not None else []
    if fmt is Format.json:
        emit_json(to_jsonable(dataclasses.replace(run, scores=np.zeros(0))))  # scores live in the .npz
        return
    emit_table(f"memorized neurons ({method}, top {budget:.2%})", run.rows())
    for path in written:
        stderr.print(f"wrote {path}")

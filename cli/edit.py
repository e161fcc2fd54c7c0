"""`memloc edit`: change what a language model memorized (statistics first)."""

from __future__ import annotations

import time
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
from memloc.cli.edit_commands import STATS, apply_command, eval_command, undo_command
from memloc.cli.options import (
    METHOD_PANEL,
    Format,
    FormatOpt,
    LMOptions,
    SeedOpt,
    lm_options,
    parse_layers,
)
from memloc.cli.unlearn import unlearn_command

app = typer.Typer(no_args_is_help=True, help="Edit facts in language models.")
app.command("apply")(apply_command)
app.command("eval")(eval_command)
app.command("undo")(undo_command)
app.command("unlearn")(unlearn_command)

LayersOpt = Annotated[
    list[str],
    typer.Option(
        "--layers",
        "--layer",
        help="Layers to take statistics at: repeat it, or give 3,4,5 or 3-5.",
        show_default=False,
        rich_help_panel=METHOD_PANEL,
    ),
]


class Accumulate(str, Enum):
    float64 = "float64"
    float32 = "float32"


@app.command("stats")
@lm_options
def stats_command(
    lm: LMOptions,
    layers: LayersOpt,
    corpus: Annotated[
        str,
        typer.Option(
            "--corpus", help="'generated' (sampled from the model), a .txt/.jsonl file or a folder of them."
        ),
    ] = config_default(STATS, "corpus"),
    samples: Annotated[
        int, typer.Option("--samples", help="Texts to use (the first ones of a corpus).")
    ] = config_default(STATS, "samples"),
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Tokens per text; longer ones are cut.")
    ] = config_default(STATS, "max_tokens"),
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = config_default(
        STATS, "batch_size"
    ),
    accumulate: Annotated[
        Accumulate, typer.Option("--accumulate", help="Dtype the sums are accumulated in.")
    ] = Accumulate(config_default(STATS, "dtype")),
    max_condition: Annotated[
        float,
        typer.Option("--max-condition", help="Shrink C toward the identity above this condition number."),
    ] = config_default(STATS, "max_condition"),
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Where statistics are cached (default ~/.cache/memloc/stats)."),
    ] = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Key statistics for ROME/MEMIT, the second moment C = E(k kᵀ) of the FFN keys at some layers.

    Streamed over the corpus in one pass for all layers, resumable (rerun the same
    command after an interruption) and cached; ill-conditioned C are shrunk.
    """
    from memloc.edit.corpus import GENERATED, corpus_files
    from memloc.edit.stats import StatsConfig, key_statistics_by_layer

    wanted = parse_layers(layers)
    config = StatsConfig(
        corpus=corpus,
        samples=samples,
        max_tokens=max_tokens,
        batch_size=batch_size,
        dtype=accumulate.value,
        seed=seed,
        max_condition=max_condition,
    )
    if corpus != GENERATED:
        corpus_files(corpus)  # a bad path fails before the model loads
    # Our own bar shows the work; transformers' loading bar would only clutter stderr.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = lm.load()
    for layer in wanted:
        model.adapter.check_layer(layer)
    start = time.perf_counter()
    with progress_bar("stats") as update:
        found = key_statistics_by_layer(model, wanted, config, cache_dir=cache_dir, progress=update)
    seconds = time.perf_counter() - start
    _show_stats(
        lm.model, corpus, config, [stats.to_dict() for stats in found.values()], seconds, cache_dir, fmt
    )


def _show_stats(
    model: str, corpus: str, config, rows: list[dict], seconds: float, cache_dir: Path | None, fmt: Format
) -> None:
    from memloc.core.lm.loading import cache_root

    if fmt is Format.json:
        emit_json({"model": model, "config": asdict(config), "seconds": seconds, "layers": rows})
        return
    table = [
        {
            "layer": row["layer"],
            "tokens": row["tokens"],
            "texts": row["texts"],
            "condition": _scientific(row["condition"]),
            "shrinkage": _scientific(row["shrinkage"]),
            "after shrinkage": _scientific(row["shrunk_condition"]),
        }
        for row in rows
    ]
    emit_table(f"key statistics of {model} ({corpus}, {config.dtype} sums)", table)
    folder = (cache_dir or cache_root() / "stats") / rows[0]["key"].rsplit("/", 1)[0]
    stderr.print(f"{seconds:.1f} s; cached in {folder}")


def _scientific(value: float | None) -> str:
    return "inf" if value is None else f"{value:.3g}"

"""`memloc locate extractable` and `memloc locate exposure`: memorized text in language models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.options import Format, FormatOpt, LMOptions, SeedOpt, lm_options
from memloc.core.errors import MemlocError


def _prefix_lengths(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise MemlocError(f"--prefix {value!r} is not a length or a list like 8,16,32") from None


@lm_options
def extractable_command(
    lm: LMOptions,
    corpus: Annotated[
        Path,
        typer.Option(
            "--corpus", help="A .txt (blank-line paragraphs), .jsonl or folder.", show_default=False
        ),
    ],
    prefix: Annotated[
        str, typer.Option("--prefix", help="Prefix length k, or several (8,16,32) for a figure of the rate.")
    ] = "32",
    suffix: Annotated[int, typer.Option("--suffix", help="Suffix length n that must match exactly.")] = 32,
    documents: Annotated[int, typer.Option("--documents", help="Documents sampled (seeded).")] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prefixes decoded per pass.")] = 32,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for extraction.json, extracted.jsonl and the figure.")
    ] = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Discoverable memorization (Carlini et al. 2023): documents whose greedy suffix is exact."""
    from memloc.core.lm.corpus_files import read_corpus
    from memloc.core.paths import writable_folder
    from memloc.locate.lm.extraction import ExtractionConfig, find_extractable
    from memloc.locate.lm.extraction_files import extraction_json, write_extraction

    config = ExtractionConfig(
        prefixes=_prefix_lengths(prefix), suffix=suffix, documents=documents, seed=seed, batch_size=batch_size
    )
    texts = read_corpus(corpus)
    if out is not None:
        writable_folder(out)
    model = lm.load()
    with progress_bar("extraction") as update:
        result = find_extractable(model, texts, config, progress=update)
    written = write_extraction(result, out) if out is not None else []
    if fmt is Format.json:
        emit_json(extraction_json(result))
        return
    emit_table("discoverable memorization", result.rows())
    stderr.print(f"skipped {result.skipped_short} of {result.corpus_documents} documents as too short")
    for path in written:
        stderr.print(f"wrote {path}")


@lm_options
def exposure_command(
    lm: LMOptions,
    canaries: Annotated[
        Path,
        typer.Option("--canaries", help="A canaries file from 'memloc canaries make'.", show_default=False),
    ],
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="Skew-normal estimate from sampled candidates (needed above 10^6)."),
    ] = False,
    samples: Annotated[int, typer.Option("--samples", help="Candidates sampled for --estimate.")] = 10_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Candidates scored per pass.")] = 256,
    out: Annotated[Path | None, typer.Option("--out", help="JSON file for the results.")] = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Exposure of planted canaries (Carlini et al. 2019): log2|R| - log2 rank."""
    import json

    from memloc.core.lm.canaries import read_canaries
    from memloc.core.paths import writable_file
    from memloc.core.report import to_jsonable
    from memloc.locate.lm.exposure import ExposureConfig, canary_exposure, check_space

    config = ExposureConfig(batch_size=batch_size, estimate=estimate, samples=samples, seed=seed)
    planted = read_canaries(canaries)
    check_space(planted, config)
    if out is not None:
        writable_file(out)
    model = lm.load()
    with progress_bar("exposure") as update:
        result = canary_exposure(model, planted, config, progress=update)
    data = to_jsonable(result)
    if out is not None:
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if fmt is Format.json:
        emit_json(data)
        return
    emit_table("exposure of canaries", result.rows())
    if out is not None:
        stderr.print(f"wrote {out}")

"""`memloc report`: a readable per-layer memorization report of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, stdout
from memloc.cli.options import Format, FormatOpt, RunDirArg


def report_command(
    run_dir: RunDirArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for report.md/html (default RUN_DIR/report).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Write report.md (with figures/) and a self-contained report.html for a run."""
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.paths import writable_folder
    from memloc.locate.classifier.report import build_report

    run = RunFolder.open(run_dir)
    writable_folder(out or run.root / "report")
    md, page = build_report(run, out)
    if fmt is Format.json:
        from memloc.locate.classifier.memorization import load_memorization, summary

        measures = load_memorization(run)
        figures = summary(measures) if measures is not None else None
        emit_json({"markdown": md, "html": page, "memorization": figures})
        return
    stdout.print(f"report: {page}\nmarkdown: {md}")

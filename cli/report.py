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
    """Write report.md (with figures/) and a self-contained report.html for a run.

    RUN_DIR is a classifier run folder, a folder of memorized-text results
    (extraction, exposure, localizers, unlearning), or a folder of `edit eval --out`
    results (methods compared, sequential curves in one figure); the last two get one
    page of their own.
    """
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.paths import writable_folder
    from memloc.edit.eval_compare import EditEvalFolder
    from memloc.edit.memorized_text_page import MemorizedTextFolder
    from memloc.locate.classifier.report import build_report

    found = MemorizedTextFolder.find(run_dir) or EditEvalFolder.find(run_dir)
    if found is not None:
        md, page = found.write_report(writable_folder(out or run_dir / "report"))
        if fmt is Format.json:
            emit_json({"markdown": md, "html": page})
            return
        stdout.print(f"report: {page}\nmarkdown: {md}")
        return
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

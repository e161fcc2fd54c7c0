"""`memloc locate memorization`: the survey's memorization measures of a classifier run."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.options import DeviceOpt, Format, FormatOpt, RunDirArg, SeedOpt, note


class MeasureName(str, Enum):
    fz_mem = "fz_mem"
    c_score = "c_score"
    counterfactual = "counterfactual"
    influence = "influence"
    lira = "lira"
    holdout_kl = "holdout_kl"
    ssft = "ssft"
    csg = "csg"
    benign = "benign"
    collapse = "collapse"


def memorization_command(
    run_dir: RunDirArg,
    ensembles: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            help="A subset ensemble of this run (repeatable; the C-score averages over their keep "
            "ratios). Default: every finished one under RUN_DIR/ensembles.",
        ),
    ] = None,
    measures: Annotated[
        list[MeasureName] | None,
        typer.Option("--measure", help="Only this measure (repeatable). Default: all the inputs allow."),
    ] = None,
    ssft_epochs: Annotated[
        int, typer.Option("--ssft-epochs", help="Fine-tuning epochs on the second split (SSFT).")
    ] = 10,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Feldman–Zhang memorization, C-score, LiRA, SSFT, CSG and more, compared. Resumable."""
    from dataclasses import replace

    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.ensemble.folder import load_ensemble
    from memloc.locate.classifier.memorization import (
        MemorizationConfig,
        finished_ensembles,
        locate_memorization,
        summary,
    )

    run = RunFolder.open(run_dir)
    folders = list(ensembles) if ensembles else finished_ensembles(run)
    loaded = [load_ensemble(folder, run) for folder in folders]
    base = MemorizationConfig(measures=tuple(m.value for m in measures) if measures else None)
    config = replace(
        base,
        ssft=replace(base.ssft, finetune_epochs=ssft_epochs, seed=seed),
        holdout_kl=replace(base.holdout_kl, seed=seed),
    )
    with progress_bar("memorization") as update:
        result = locate_memorization(run, resolve_device(device), config, ensembles=loaded, progress=update)
    if fmt is Format.json:
        emit_json(summary(result))
        return
    _show(result)
    if not loaded:
        note(f"no subset ensemble: `memloc ensemble {run.root}` trains one for fz_mem, c_score, lira, ...")
    if run.mask_note():
        note(f"AUROC n/a: {run.mask_note()}")
    stderr.print(f"results: {run.root / 'locate/memorization'}; `memloc report {run.root}` draws them")


def _show(result) -> None:
    from memloc.locate.classifier.memorization_report import lira_rows, pair_rows, probe_rows, proxy_agreement

    cmp = result.comparison
    emit_table(
        "AUROC at flagging mislabeled examples", [{"measure": n, "AUROC": cmp.auroc[n]} for n in cmp.names]
    )
    agree = proxy_agreement(result)
    if agree:
        emit_table("Spearman ρ with Feldman–Zhang memorization", [agree])
    if result.lira is not None:
        emit_table(f"LiRA ({result.lira.targets} targets, the rest shadows)", lira_rows(result.lira))
    if result.influence is not None and result.influence.pairs:
        emit_table("most influential pairs", pair_rows(result.influence.pairs[:5]))
    if result.benign is not None:
        emit_table("kNN probe on true labels (benign memorization)", probe_rows(result.benign))

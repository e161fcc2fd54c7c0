"""`memloc models`: what is inside a model."""

from __future__ import annotations

import typer
from memloc.core.runs import RunFolder

from .console import emit_json, emit_table
from .options import Format, FormatOpt, RunDirArg

app = typer.Typer(no_args_is_help=True, help="Inspect models: layer groups, sites and unit counts.")


@app.command("inspect")
def inspect_command(target: RunDirArg, fmt: FormatOpt = Format.table) -> None:
    """List the layer groups of a run's model, with their sites and unit counts."""
    run = RunFolder.open(target)
    model, adapter = run.load_model()
    spec = run.spec()
    info = {
        "model": spec.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": run.epochs(),
        "layers": adapter.describe(),
    }
    if fmt is Format.json:
        emit_json(info)
        return
    title = f"{spec.arch} (width {spec.width}), input {tuple(spec.input_shape)}, {spec.num_classes} classes"
    emit_table(title, info["layers"], ["index", "name", "site", "units", "unit_kind", "module"])

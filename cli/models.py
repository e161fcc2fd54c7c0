"""`memloc models`: what is inside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table
from memloc.cli.options import DeviceOpt, Dtype, DtypeOpt, Format, FormatOpt, TrustRemoteCodeOpt

app = typer.Typer(no_args_is_help=True, help="Inspect models: layers, sites and widths.")

TargetArg = Annotated[
    str,
    typer.Argument(
        help="A run folder from 'memloc train', or a language model (HF folder, .gguf, hub id, smollm2-135m).",
        show_default=False,
    ),
]


def _is_run_folder(target: str) -> bool:
    path = Path(target)
    return (path / "checkpoints").is_dir() and not (path / "model.safetensors").exists()


@app.command("inspect")
def inspect_command(
    target: TargetArg,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """List a model's layers with their sites, kinds and widths."""
    if _is_run_folder(target):
        _inspect_run(Path(target), fmt)
        return
    from memloc.core.lm.loading import load_language_model

    lm = load_language_model(target, device=device, dtype=dtype.value, trust_remote_code=trust_remote_code)
    adapter = lm.adapter
    info = {
        "model": target,
        "model_type": adapter.model_type,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "layers": adapter.n_layers,
        "d_model": adapter.d_model,
        "d_mlp": adapter.d_mlp,
        "gated_mlp": adapter.card.gated,
        "down_layout": adapter.card.down_layout,
        "sites": adapter.describe(),
    }
    if fmt is Format.json:
        emit_json(info)
        return
    title = (
        f"{adapter.model_type}: {adapter.n_layers} layers, d_model {adapter.d_model}, "
        f"{adapter.d_mlp} neurons per layer ({'gated' if adapter.card.gated else 'plain'} MLP), "
        f"{info['parameters']:,} parameters"
    )
    emit_table(title, info["sites"], ["site", "layer", "kind", "width", "module", "io"])


def _inspect_run(root: Path, fmt: Format) -> None:
    from memloc.core.classifier.runs import RunFolder

    run = RunFolder.open(root)
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
    title = f"{run.model_id()}, input {tuple(spec.input_shape)}, {spec.num_classes} classes"
    emit_table(title, info["layers"], ["index", "name", "site", "units", "unit_kind", "module"])

"""`memloc models`: what is inside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table
from memloc.cli.options import (
    ClassifierModelOpt,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    Format,
    FormatOpt,
    GroupsOpt,
    ModelArgsOpt,
    TrustRemoteCodeOpt,
)
from memloc.core.errors import ModelLoadError

app = typer.Typer(no_args_is_help=True, help="Inspect models: layers, sites and widths.")

TargetArg = Annotated[
    str | None,
    typer.Argument(
        help=(
            "A run folder from 'memloc train', a Hugging Face image-classifier folder, or a language "
            "model (HF folder, .gguf, hub id, smollm2-135m). Omit it with --model for your own module."
        ),
        show_default=False,
    ),
]
HeadsOpt = Annotated[
    bool, typer.Option("--heads", help="Also list attention-head groups (ViT-family classifiers).")
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Input shape of --model's factory without the batch, e.g. 1,28,28 (checked by one forward pass).",
        show_default=False,
    ),
]
GROUP_COLUMNS = ["index", "name", "site", "units", "unit_kind", "module", "io"]


def _is_run_folder(target: str) -> bool:
    path = Path(target)
    return (path / "checkpoints").is_dir() and not (path / "model.safetensors").exists()


def _image_model_type(target: str) -> str | None:
    """The model_type of a Hugging Face folder whose type has an image card, else None."""
    from memloc.core.adapters import IMAGE_CARDS
    from memloc.core.classifier.hf_models import read_config

    if not (Path(target) / "config.json").is_file():
        return None
    model_type = read_config(target).get("model_type")
    return str(model_type) if model_type in IMAGE_CARDS else None


@app.command("inspect")
def inspect_command(
    target: TargetArg = None,
    model: ClassifierModelOpt = None,
    model_args: ModelArgsOpt = None,
    groups: GroupsOpt = None,
    input_shape: InputShapeOpt = None,
    heads: HeadsOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """List a model's layers with their sites, kinds and widths.

    memloc models inspect runs/vit --heads; memloc models inspect my-vit/;
    memloc models inspect --model my_models:make_net --input-shape 1,28,28
    """
    if (target is None) == (model is None):
        raise ModelLoadError(
            "give either a TARGET (run folder, model folder) or --model package.module:factory"
        )
    if model is not None:
        _inspect_factory(model, model_args, groups, input_shape, fmt)
        return
    assert target is not None  # checked above; narrows the type
    if _is_run_folder(target):
        _inspect_run(Path(target), fmt, heads)
        return
    image_type = _image_model_type(target)
    if image_type is not None:
        _inspect_image_folder(target, image_type, fmt, heads)
        return
    _inspect_lm(target, device, dtype, trust_remote_code, fmt)


def _inspect_lm(target: str, device: str, dtype: Dtype, trust_remote_code: bool, fmt: Format) -> None:
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


def _inspect_run(root: Path, fmt: Format, heads: bool) -> None:
    from memloc.core.classifier.model_source import classifier_adapter
    from memloc.core.classifier.runs import RunFolder

    run = RunFolder.open(root)
    model, adapter = run.load_model()
    spec = run.spec()
    if heads:
        adapter = classifier_adapter(spec, model, heads=True)
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
    emit_table(title, info["layers"], GROUP_COLUMNS)


def _inspect_image_folder(folder: str, model_type: str, fmt: Format, heads: bool) -> None:
    from memloc.core.adapters import ClassifierAdapter
    from memloc.core.classifier.hf_models import load_image_folder

    model = load_image_folder(folder)
    adapter = ClassifierAdapter.for_model(model, heads=heads)
    weights = (Path(folder) / "model.safetensors").is_file()
    info = {
        "model": folder,
        "model_type": model_type,
        "weights": weights,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": adapter.describe(),
    }
    if fmt is Format.json:
        emit_json(info)
        return
    state = "trained weights" if weights else "no weights (random init)"
    title = f"{model_type} image classifier, {info['parameters']:,} parameters, {state}"
    emit_table(title, info["layers"], GROUP_COLUMNS)


def _inspect_factory(
    factory: str, model_args: str | None, groups: str | None, input_shape: str | None, fmt: Format
) -> None:
    from memloc.core.classifier.model_source import (
        FactorySource,
        build_classifier,
        classifier_adapter,
        output_width,
        parse_groups,
        parse_input_shape,
        parse_model_args,
    )

    shape = parse_input_shape(input_shape) if input_shape else None
    source = FactorySource(factory, shape or (), 0, parse_model_args(model_args), parse_groups(groups))
    model = build_classifier(source)
    adapter = classifier_adapter(source, model)
    classes = output_width(model, shape) if shape else None
    info = {
        "model": factory,
        "args": source.args,
        "input_shape": list(shape) if shape else None,
        "classes": classes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": adapter.describe(),
    }
    if fmt is Format.json:
        emit_json(info)
        return
    outputs = f", {classes} outputs for input {shape}" if classes else ""
    title = f"{factory}: {info['parameters']:,} parameters{outputs}"
    emit_table(title, info["layers"], GROUP_COLUMNS)

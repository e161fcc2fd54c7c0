"""Option types shared by the commands, as Annotated aliases.

This module stays light (no torch, no transformers), so that ``--help`` and argument
errors answer at once: commands import the library inside their bodies.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.core.lm.model import LM

# --help panels
LM_PANEL = "Language model"
METHOD_PANEL = "Method"
OUTPUT_PANEL = "Output"


class Arch(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet9 = "resnet9"
    vit = "vit"


CLASSIFIER_PANEL = "Classifier"

ClassifierModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=(
            "The classifier: a Hugging Face image-model folder (config.json), or your own "
            "module as package.module:factory (naming it consents to running that code)."
        ),
        show_default=False,
        rich_help_panel=CLASSIFIER_PANEL,
    ),
]
ModelArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-args",
        help="Keyword arguments for the factory, as a JSON object, e.g. '{\"width\": 64}'.",
        show_default=False,
        rich_help_panel=CLASSIFIER_PANEL,
    ),
]
GroupsOpt = Annotated[
    str | None,
    typer.Option(
        "--groups",
        help=(
            "Layer groups of a factory's model: a JSON or YAML file listing module paths, or an "
            "inline JSON list (default: its top-level conv/linear blocks in order)."
        ),
        show_default=False,
        rich_help_panel=CLASSIFIER_PANEL,
    ),
]


PREPROCESS_PANEL = "Preprocessing"

ResizeOpt = Annotated[
    str | None,
    typer.Option(
        "--resize",
        help="Resize the images to N (NxN) or HxW, e.g. 32 or 32x48 (needed when their sizes differ).",
        show_default=False,
        rich_help_panel=PREPROCESS_PANEL,
    ),
]
NormalizeOpt = Annotated[
    str | None,
    typer.Option(
        "--normalize",
        help=(
            "Per-channel normalization (x - mean) / std of the [0, 1] images: imagenet, none, or "
            "MEAN/STD such as 0.5,0.5,0.5/0.5,0.5,0.5."
        ),
        show_default=False,
        rich_help_panel=PREPROCESS_PANEL,
    ),
]
ChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--channels",
        help="Channels the images get: 1 averages RGB to gray, 3 repeats gray.",
        show_default=False,
        rich_help_panel=PREPROCESS_PANEL,
    ),
]


class Format(str, Enum):
    table = "table"
    json = "json"


DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto picks a GPU when there is one).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for data subsets, noise, init and shuffling.")]
FormatOpt = Annotated[
    Format, typer.Option("--format", help="table for people; json prints only the report to stdout.")
]
OutOpt = Annotated[
    Path, typer.Option("--out", help="Run folder to create, or to resume if it holds this run.")
]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder made by 'memloc train'.", show_default=False)]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow .pt files that run code when unpickled. Only for trusted files."
    ),
]


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="A Hugging Face model folder, a .gguf file, a hub id (when online) or the alias smollm2-135m.",
        show_default=False,
        rich_help_panel=LM_PANEL,
    ),
]
FactsOpt = Annotated[
    Path,
    typer.Option(
        "--facts",
        help="A CounterFact .json file or a JSONL file of facts.",
        show_default=False,
        rich_help_panel=LM_PANEL,
    ),
]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="Weights and activations dtype.")]
LMDtypeOpt = Annotated[
    Dtype, typer.Option("--dtype", help="Weights and activations dtype.", rich_help_panel=LM_PANEL)
]
LMDeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto, cpu, cuda or cuda:N (auto picks a GPU when there is one).",
        rich_help_panel=LM_PANEL,
    ),
]
LMDeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Spread the model over GPUs, or GPU + CPU, with accelerate instead of --device: auto, "
        'balanced, an inline JSON object of module -> device (0, "cuda:1", "cpu", "disk") or a .json file.',
        show_default=False,
        rich_help_panel=LM_PANEL,
    ),
]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Let transformers run the model's own code. Only for trusted models."
    ),
]
LMTrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let transformers run the model's own code. Only for trusted models.",
        rich_help_panel=LM_PANEL,
    ),
]
DocStartOpt = Annotated[
    str,
    typer.Option(
        "--doc-start",
        help="Token put before every prompt and text, as documents began in pretraining: auto "
        "(smollm2-135m: <|endoftext|>; other models: whatever their tokenizer adds), none, or a token.",
        rich_help_panel=LM_PANEL,
    ),
]


def document_start(value: str) -> str | None:
    """--doc-start as load_language_model takes it."""
    return None if value.strip().lower() == "none" else value


LimitFactsOpt = Annotated[
    int | None,
    typer.Option("--limit", help="Use only the first N facts (N >= 1).", rich_help_panel=LM_PANEL),
]


def note(message: str, field: str | None = None) -> None:
    """One ``memloc: note:`` line on stderr, with ``field`` shown as its flag; the work goes on."""
    from memloc.cli.flags import cli_message

    print(f"memloc: note: {cli_message(MemlocError(message, field=field))}", file=sys.stderr)


def note_limit(limit: int | None, available: int, what: str) -> None:
    """Say so when --limit asks for more than there is (all of it is used)."""
    if limit is not None and limit > available:
        note(f"limit {limit} exceeds the {available} {what}; using all", field="limit")


@dataclass(frozen=True)
class LMOptions:
    """The language-model option group: --model, --device, --device-map, --dtype, --trust-remote-code,
    --doc-start."""

    model: str
    device: str = "auto"
    dtype: Dtype = Dtype.float32
    trust_remote_code: bool = False
    doc_start: str = "auto"
    device_map: str | None = None

    def __post_init__(self) -> None:
        # Refused before any loading: both flags place the model.
        if self.device_map is not None and self.device.strip().lower() != "auto":
            raise MemlocError(
                f"--device {self.device} and --device-map {self.device_map} both place the model; give only one",
                field="device_map",
            )

    def load(self) -> LM:
        """The model, as load_language_model takes these options."""
        from memloc.core.lm.loading import load_language_model

        return load_language_model(
            self.model,
            device=self.device,
            dtype=self.dtype.value,
            trust_remote_code=self.trust_remote_code,
            document_start=document_start(self.doc_start),
            device_map=self.device_map,
        )


_LM_PARAMETERS = {
    "model": (ModelOpt, inspect.Parameter.empty),
    "device": (LMDeviceOpt, "auto"),
    "device_map": (LMDeviceMapOpt, None),
    "dtype": (LMDtypeOpt, Dtype.float32),
    "trust_remote_code": (LMTrustRemoteCodeOpt, False),
    "doc_start": (DocStartOpt, "auto"),
}


def lm_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the language-model option group; its ``lm`` parameter receives an `LMOptions`.

    Example::

        @lm_options
        def stats_command(lm: LMOptions, layers: LayersOpt) -> None:
            model = lm.load()
    """
    signature = inspect.signature(command, eval_str=True)
    if "lm" not in signature.parameters:
        raise TypeError(f"{command.__name__} takes no 'lm' parameter for its LMOptions")
    kind = inspect.Parameter.KEYWORD_ONLY
    group = [inspect.Parameter(n, kind, annotation=a, default=d) for n, (a, d) in _LM_PARAMETERS.items()]
    rest = [p.replace(kind=kind) for p in signature.parameters.values() if p.name != "lm"]

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        options = LMOptions(**{name: values.pop(name) for name in _LM_PARAMETERS})
        return command(lm=options, **values)

    # The group's options come first in --help, as the LM panel.
    wrapper.__signature__ = signature.replace(parameters=[*group, *rest])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in (*group, *rest)}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's
    return wrapper


def parse_layers(values: list[str]) -> list[int]:
    """Layer numbers from repeated, comma-separated or a-b range values."""
    layers: list[int] = []
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            first, dash, last = part.partition("-")
            try:
                span = range(int(first), int(last) + 1) if dash and first else [int(part)]
            except ValueError:
                raise MemlocError(f"--layers {part!r} is not a layer number or a range like 3-5") from None
            layers.extend(span)
    if not layers:
        raise MemlocError("--layers names no layer; give e.g. --layers 3,4,5")
    return layers

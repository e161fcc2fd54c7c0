"""Option types shared by the commands, as Annotated aliases."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.core.errors import MemlocError


class Arch(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet9 = "resnet9"


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
    ),
]
FactsOpt = Annotated[
    Path,
    typer.Option("--facts", help="A CounterFact .json file or a JSONL file of facts.", show_default=False),
]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="Weights and activations dtype.")]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Let transformers run the model's own code. Only for trusted models."
    ),
]
DocStartOpt = Annotated[
    str,
    typer.Option(
        "--doc-start",
        help="Token put before every prompt and text, as documents began in pretraining: auto "
        "(smollm2-135m: <|endoftext|>; other models: whatever their tokenizer adds), none, or a token.",
    ),
]


def document_start(value: str) -> str | None:
    """--doc-start as load_language_model takes it."""
    return None if value.strip().lower() == "none" else value


LimitFactsOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N facts.")]


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

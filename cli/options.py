"""Option types shared by the commands, as Annotated aliases."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


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
LimitFactsOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N facts.")]

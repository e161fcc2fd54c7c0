"""`memloc locate trace|suppress|enhance` and `locate neurons --model`: facts in language models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.core.errors import MemlocError
from memloc.core.facts import Fact, load_facts
from memloc.core.lm import LM
from memloc.core.lm_loading import load_language_model
from memloc.locate.fact_runs import locate_trace
from memloc.locate.tracing import TRACE_KINDS, TraceConfig

from .console import emit_json, emit_table, progress_bar, stderr
from .options import (
    DeviceOpt,
    Dtype,
    DtypeOpt,
    FactsOpt,
    Format,
    FormatOpt,
    LimitFactsOpt,
    ModelOpt,
    SeedOpt,
    TrustRemoteCodeOpt,
)

FactsOutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for results and report; a rerun there skips finished facts."),
]


def load_inputs(
    model: str | None,
    facts: Path | None,
    device: str,
    dtype: Dtype,
    trust_remote_code: bool,
    limit: int | None,
) -> tuple[LM, list[Fact]]:
    """Facts first (cheap to validate), then the model."""
    if model is None or facts is None:
        raise MemlocError("give both --model (a language model) and --facts (a fact file)")
    loaded = load_facts(facts, limit=limit)
    lm = load_language_model(model, device=device, dtype=dtype.value, trust_remote_code=trust_remote_code)
    return lm, loaded


def trace_command(
    model: ModelOpt,
    facts: FactsOpt,
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help=f"Restore kind (repeatable): {', '.join(TRACE_KINDS)}.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Corrupted copies per fact.")] = 10,
    noise: Annotated[
        float, typer.Option("--noise", help="Noise std as a multiple of the embeddings' std.")
    ] = 3.0,
    window: Annotated[
        int, typer.Option("--window", help="Layers restored around each MLP/attention cell.")
    ] = 10,
    batch: Annotated[int, typer.Option("--batch", help="Restored rows per forward pass.")] = 256,
    limit: LimitFactsOpt = None,
    out: FactsOutOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Causal tracing: how much of the answer each (token, layer) restores; picks best_layer."""
    config = TraceConfig(
        samples=samples,
        noise=noise,
        window=window,
        kinds=tuple(kinds or TRACE_KINDS),
        seed=seed,
        batch_size=batch,
    )
    lm, loaded = load_inputs(model, facts, device, dtype, trust_remote_code, limit)
    with progress_bar("trace") as update:
        report = locate_trace(lm, loaded, facts, config, out, update)
    if out is not None:
        _write_report(out)
    if fmt is Format.json:
        emit_json(report.results)
        return
    rows = [
        {
            "case_id": f["case_id"],
            "prompt": f["prompt"],
            "target": f["target"],
            "clean_p": f["clean_prob"],
            "corrupted_p": f["corrupted_prob"],
            "best_layer": f["best_layer"],
        }
        for f in report.results["facts"]
    ]
    emit_table("causal tracing (best_layer: peak MLP effect at the last subject token)", rows)
    stderr.print(f"best_layer over {len(rows)} facts: {report.results['best_layer']}")


def _write_report(out: Path) -> None:
    from memloc.locate.fact_report import write_fact_report

    _md, page = write_fact_report(out)
    stderr.print(f"report: {page}")

"""`memloc canaries make`: plant seeded canaries in a copy of a corpus (The Secret Sharer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_table, stderr
from memloc.cli.options import SeedOpt
from memloc.core.errors import MemlocError

app = typer.Typer(
    no_args_is_help=True, help="Canaries: seeded secrets planted in a corpus to measure exposure."
)


def _counts(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise MemlocError(f"--repeats {value!r} is not a list of counts like 1,5,20") from None


@app.command("make")
def make_command(
    corpus: Annotated[
        Path, typer.Option("--corpus", help="The corpus to copy (only read).", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="The new corpus (.txt or .jsonl; must not exist).", show_default=False),
    ],
    template: Annotated[
        str,
        typer.Option(
            "--template", help="Text with slots {digits:N} or {choice:a|b|c}; several multiply |R|."
        ),
    ] = "my PIN is {digits:6}",
    repeats: Annotated[
        str, typer.Option("--repeats", help="Repeat counts, one group of canaries each.")
    ] = "1,5,20",
    per_repeat: Annotated[int, typer.Option("--per-repeat", help="Canaries per repeat count.")] = 1,
    seed: SeedOpt = 0,
) -> None:
    """Write a copy of CORPUS with canaries, and NEW.canaries.jsonl recording them."""
    from memloc.core.lm.canaries import CanaryConfig, canaries_file_for, make_canaries

    config = CanaryConfig(template=template, repeats=_counts(repeats), per_repeat=per_repeat, seed=seed)
    canaries = make_canaries(corpus, out, config)
    rows = [{"canary": c.text, "repeats": c.repeats, "positions": len(c.positions)} for c in canaries]
    emit_table(f"canaries planted (|R| = {canaries[0].space.size})", rows)
    stderr.print(f"wrote {out} and {canaries_file_for(out)}")

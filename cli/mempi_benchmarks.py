"""`memloc locate inj` and `memloc locate del`: MemPi's benchmarks of memorized-sequence localizers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
from memloc.cli.options import Format, FormatOpt, LMOptions, SeedOpt, lm_options, note
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.core.lm.model import LM

INJECT = "memloc.locate.lm.memorized.inject:InjectConfig"
DROP = "memloc.locate.lm.memorized.drop:DelConfig"
OTHER_HELP = (
    "Other text the localizers keep: activations and the masks' objective=drop read it; "
    "the masks' default, MemPi's keep objective, does not."
)

SequencesOpt = Annotated[
    Path,
    typer.Option(
        "--sequences", help="Sequences: a .txt (blank-line paragraphs), .jsonl or folder.", show_default=False
    ),
]
MethodsOpt = Annotated[
    str | None,
    typer.Option("--methods", help="Comma-separated localizers (default: every registered one)."),
]
BudgetOpt = Annotated[float, typer.Option("--budget", help="Share of all neurons each localizer may name.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")]
SetOpt = Annotated[
    str,
    typer.Option(
        "--set", help="Localizer settings as method.name=value,..., e.g. ig.steps=10,zero_out.batch_size=256."
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Folder for the JSON, Markdown table and figure.")]


def _methods(value: str | None) -> list[str]:
    from memloc.locate.lm.memorized.registry import LOCALIZERS

    names = [n.strip() for n in value.split(",") if n.strip()] if value else list(LOCALIZERS)
    if not names:
        raise MemlocError("--methods names no localizer; give e.g. --methods zero_out,activations")
    return names  # an unknown name is refused by _configs, before the model loads


def _configs(names: list[str], seed: int, settings: str) -> dict[str, object]:
    """Each localizer's defaults, ``--set method.name=value`` over them, and --seed where it has a seed."""
    from memloc.cli.memorized_neurons import parse_settings
    from memloc.locate.lm.memorized.registry import make_config

    chosen: dict[str, list[tuple[str, object]]] = {name: [] for name in names}
    for key, value in parse_settings(settings):
        method, dot, field = key.partition(".")
        if not dot or method not in chosen:
            raise MemlocError(f"--set {key}: name a chosen localizer and its setting, e.g. ig.steps=10")
        chosen[method].append((field, value))
    return {name: make_config(name, tuple(chosen[name]), seed) for name in names}


def _tokens(lm: LM, path: Path | None) -> tuple[tuple[int, ...], ...]:
    """The token ids of every text in ``path`` (with the tokenizer's document start), or none."""
    from memloc.core.lm.corpus_files import read_corpus

    if path is None:
        return ()
    return tuple(tuple(lm.tokenizer(text)["input_ids"]) for text in read_corpus(path))


@lm_options
def inj_command(
    lm: LMOptions,
    sequences: SequencesOpt,
    other: Annotated[Path | None, typer.Option("--other", help=OTHER_HELP)] = None,
    methods: MethodsOpt = None,
    budget: BudgetOpt = 0.005,
    ratio: Annotated[
        float, typer.Option("--ratio", help="Share of all neurons planted per sequence.")
    ] = config_default(INJECT, "ratio"),
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate of the injection.")] = config_default(
        INJECT, "lr"
    ),
    max_steps: Annotated[int, typer.Option("--max-steps", help="Most injection steps.")] = config_default(
        INJECT, "max_steps"
    ),
    stop_loss: Annotated[
        float | None,
        typer.Option(
            "--stop-loss",
            help="Inject until every sequence's mean token loss is below this (MemPi: 0.05) "
            "instead of until each is reproduced greedily.",
        ),
    ] = None,
    separate: Annotated[
        bool,
        typer.Option(
            "--separate/--together",
            help="Plant each sequence in its own copy of the model (MemPi) or all in one.",
        ),
    ] = False,
    batch_size: BatchOpt = config_default(INJECT, "batch_size"),
    settings: SetOpt = "",
    out: OutOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """INJ (Chang et al. 2024): plant new sequences in random neurons; each localizer's recall of them."""
    from memloc.core.paths import writable_folder
    from memloc.core.report import to_jsonable
    from memloc.locate.lm.memorized.benchmark_files import write_inj
    from memloc.locate.lm.memorized.inject import InjectConfig, run_inj
    from memloc.locate.lm.memorized.localizer_runs import check_budget

    config = InjectConfig(
        ratio=ratio,
        lr=lr,
        max_steps=max_steps,
        seed=seed,
        batch_size=batch_size,
        stop_loss=stop_loss,
        separate=separate,
    )
    check_budget(budget)
    names = _methods(methods)
    configs = _configs(names, seed, settings)
    if out is not None:
        writable_folder(out)
    model = lm.load()
    texts, keep = _tokens(model, sequences), _tokens(model, other)
    with progress_bar("inj") as update:
        result = run_inj(model.model, model.adapter, texts, keep, names, configs, budget, config, update)
    written = write_inj(result, out) if out is not None else []
    if fmt is Format.json:
        emit_json(to_jsonable(result))
        return
    emit_table("INJ: recall of the planted neurons", result.table())
    planted = sum(a == 1.0 for a in result.accuracy)
    longest = "at most " if separate else ""
    stderr.print(
        f"{planted} of {len(result.accuracy)} sequences reached accuracy 1 in {longest}{result.steps} steps"
    )
    for path in written:
        stderr.print(f"wrote {path}")


@lm_options
def del_command(
    lm: LMOptions,
    sequences: SequencesOpt,
    other: Annotated[Path, typer.Option("--other", help=OTHER_HELP, show_default=False)],
    plain: Annotated[
        Path, typer.Option("--plain", help="Plain text whose accuracy drop is measured.", show_default=False)
    ],
    methods: MethodsOpt = None,
    budget: BudgetOpt = config_default(DROP, "budget"),
    batch_size: BatchOpt = config_default(DROP, "batch_size"),
    settings: SetOpt = "",
    out: OutOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """DEL (Chang et al. 2024): zero each sequence's top neurons; accuracy drops on it, others, plain text."""
    from memloc.core.paths import writable_folder
    from memloc.core.report import to_jsonable
    from memloc.locate.lm.memorized.benchmark_files import write_del
    from memloc.locate.lm.memorized.drop import DelConfig, run_del

    config = DelConfig(budget=budget, seed=seed, batch_size=batch_size)
    names = _methods(methods)
    configs = _configs(names, seed, settings)
    if out is not None:
        writable_folder(out)
    model = lm.load()
    memorized, keep, text = _tokens(model, sequences), _tokens(model, other), _tokens(model, plain)
    with progress_bar("del") as update:
        result = run_del(model.model, model.adapter, memorized, keep, text, names, configs, config, update)
    written = write_del(result, out) if out is not None else []
    if fmt is Format.json:
        emit_json(to_jsonable(result))
        return
    emit_table("DEL: token accuracy drop when each sequence's top neurons are zeroed", result.table())
    partly = sum(a < 1.0 for a in result.accuracy)
    if partly:
        note(f"{partly} of {len(result.accuracy)} sequences are not fully memorized (token accuracy < 1)")
    for path in written:
        stderr.print(f"wrote {path}")

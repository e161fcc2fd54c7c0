"""`memloc edit unlearn`: remove memorized text by ablating its neurons, as an undoable edit.

Parses, checks the inputs before the model loads, calls
`memloc.edit.unlearn_session.unlearn_and_save`, and prints the before/after table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.memorized_neurons import parse_settings
from memloc.cli.options import METHOD_PANEL, OUTPUT_PANEL, Format, FormatOpt, LMOptions, SeedOpt, lm_options
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.edit.unlearn_session import UnlearnReport
    from memloc.locate.lm.memorized.run import MemorizedNeurons

CANARIES_SUFFIX = ".canaries.jsonl"


def _texts(path: Path) -> tuple[str, ...]:
    """A corpus-like file's documents, or a canaries file's canary texts."""
    from memloc.core.lm.canaries import read_canaries
    from memloc.core.lm.corpus_files import read_corpus

    if path.name.endswith(CANARIES_SUFFIX):
        return tuple(c.text for c in read_canaries(path))
    return tuple(read_corpus(path))


def _stored_neurons(folder: Path, method: str) -> MemorizedNeurons:
    from memloc.locate.lm.memorized.files import STEM, load_memorized_neurons

    if not (folder / f"{STEM}.json").is_file():
        raise MemlocError(
            f"--neurons {folder} holds no {STEM}.json; write one with 'memloc locate memorized-neurons --out {folder}'"
        )
    stored = load_memorized_neurons(folder)
    if stored.method != method:
        raise MemlocError(f"--neurons {folder} holds {stored.method} scores, not --method {method}")
    return stored


SequencesOpt = Annotated[
    Path,
    typer.Option(
        "--sequences",
        help="The memorized text to remove: a .txt/.jsonl corpus file or a *.canaries.jsonl file.",
        show_default=False,
    ),
]

OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="New folder for the edited model, its ledger and unlearn.json.",
        show_default=False,
        rich_help_panel=OUTPUT_PANEL,
    ),
]

MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="The localizer: zero_out, activations, ig, slimming, hard_concrete (memorized-text registry).",
        rich_help_panel=METHOD_PANEL,
    ),
]

BudgetOpt = Annotated[
    float,
    typer.Option(
        "--budget",
        help="Share of all neurons ablated per sequence, in (0, 1].",
        rich_help_panel=METHOD_PANEL,
    ),
]

ScaleOpt = Annotated[
    float,
    typer.Option(
        "--scale", help="Factor on the chosen neurons' output (0 ablates).", rich_help_panel=METHOD_PANEL
    ),
]

OtherOpt = Annotated[
    Path | None,
    typer.Option("--other", help="Text to keep (the localizers contrast it).", show_default=False),
]

HeldOutOpt = Annotated[
    Path | None, typer.Option("--held-out", help="Held-out text for perplexity.", show_default=False)
]

CanariesOpt = Annotated[
    Path | None,
    typer.Option("--canaries", help="A canaries file whose exposure is measured.", show_default=False),
]

EstimateOpt = Annotated[
    bool,
    typer.Option("--estimate", help="Exposure from a skew-normal fit (needed above 10^6 candidates)."),
]

SamplesOpt = Annotated[int, typer.Option("--samples", help="Candidates sampled for --estimate.")]

SettingsOpt = Annotated[
    str,
    typer.Option(
        "--set", help="Localizer settings as name=value,..., e.g. steps=50.", rich_help_panel=METHOD_PANEL
    ),
]

NeuronsOpt = Annotated[
    Path | None,
    typer.Option(
        "--neurons",
        help="Use the scores a 'locate memorized-neurons --out' folder stored for these sequences.",
        show_default=False,
        rich_help_panel=METHOD_PANEL,
    ),
]

PrefixOpt = Annotated[int, typer.Option("--prefix", help="Prefix length k for extraction.")]

SuffixOpt = Annotated[int, typer.Option("--suffix", help="Suffix length n that must match exactly.")]


@lm_options
def unlearn_command(
    lm: LMOptions,
    sequences: SequencesOpt,
    out: OutOpt,
    method: MethodOpt = "hard_concrete",
    budget: BudgetOpt = 0.005,
    scale: ScaleOpt = 0.0,
    other: OtherOpt = None,
    held_out: HeldOutOpt = None,
    canaries: CanariesOpt = None,
    estimate: EstimateOpt = False,
    samples: SamplesOpt = 10_000,
    settings: SettingsOpt = "",
    neurons: NeuronsOpt = None,
    prefix: PrefixOpt = 32,
    suffix: SuffixOpt = 32,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Ablate the neurons a localizer blames for memorized text; save with a ledger (undo with 'edit undo')."""
    from memloc.core.lm.canaries import read_canaries
    from memloc.core.lm.loading import quiet_transformers
    from memloc.core.paths import writable_folder
    from memloc.core.report import to_jsonable
    from memloc.edit.session import require_new_folder
    from memloc.edit.unlearn import UnlearnConfig, localizer_config
    from memloc.edit.unlearn_measures import MemorizationConfig
    from memloc.edit.unlearn_session import UnlearnTexts, unlearn_and_save
    from memloc.locate.lm.exposure import ExposureConfig

    stored = _stored_neurons(neurons, method) if neurons is not None else None
    config = UnlearnConfig(
        method=method, budget=budget, scale=scale, seed=seed, settings=parse_settings(settings)
    )
    localizer_config(config)
    memorization = MemorizationConfig(prefix=prefix, suffix=suffix)
    exposure = ExposureConfig(estimate=estimate, samples=samples, seed=seed)
    texts = UnlearnTexts(
        sequences=_texts(sequences),
        other=_texts(other) if other is not None else (),
        held_out=_texts(held_out) if held_out is not None else (),
        canaries=tuple(read_canaries(canaries)) if canaries is not None else (),
    )
    if stored is not None and [s.text for s in stored.sequences] != list(texts.sequences):
        raise MemlocError(f"--neurons {neurons} was localized on other texts than --sequences {sequences}")
    require_new_folder(writable_folder(out))
    model = lm.load()
    with progress_bar("edit unlearn") as update, quiet_transformers():
        report = unlearn_and_save(
            model,
            texts,
            config,
            out,
            memorization=memorization,
            exposure=exposure,
            attribution=stored.attribution() if stored is not None else None,
            progress=update,
        )
    if fmt is Format.json:
        emit_json(to_jsonable(report))
        return
    _print_report(report, method, out)


def _print_report(report: UnlearnReport, method: str, out: Path) -> None:
    layers = ", ".join(f"{layer}: {count}" for layer, count in report.neurons_per_layer.items())
    emit_table(f"unlearning with {method}: {len(report.neurons)} neurons ({layers})", report.rows())
    undone = "equals" if report.undone_hash == report.base_hash else "DIFFERS FROM"
    stderr.print(
        f"undoing the saved ledger gave weights hash {report.undone_hash[:16]}, which {undone} the base"
    )
    stderr.print(
        f"edited model, ledger and unlearn.json: {out}  (undo: memloc edit undo {out} --out <folder>)"
    )

"""The per-layer memorization report of a noisy-label run: figures, tables, findings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from memloc.core.classifier.run_results import EpochRecord, TrainResult, TrainSummary
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import RunFolderError
from memloc.core.render import Section, write_report
from memloc.core.report import Report
from memloc.locate.classifier.etd_report import etd_findings, etd_section
from memloc.locate.classifier.layer_results import GradientRow, LayerCell, LayersResult
from memloc.locate.classifier.layers import headline, load_layers, retrain_summary
from memloc.locate.classifier.memorization import load_memorization
from memloc.locate.classifier.memorization_report import memorization_sections
from memloc.locate.classifier.scores import ScoresResult, load_scores, roc
from memloc.locate.classifier.unit_results import FlipRecord, NeuronsResult
from memloc.locate.classifier.unit_runs import load_neurons, summary_rows


def _grid(rows: Sequence[LayerCell], value: str) -> tuple[list[str], list[int], np.ndarray]:
    layers = list(dict.fromkeys(r.layer for r in rows))
    epochs = sorted({r.epoch for r in rows})
    grid = np.full((len(layers), len(epochs)), np.nan)
    for r in rows:
        grid[layers.index(r.layer), epochs.index(r.epoch)] = getattr(r, value)
    return layers, epochs, grid


def rewinding_figure(rows: Sequence[LayerCell]) -> Figure:
    fig = Figure(figsize=(11, 0.45 * len({r.layer for r in rows}) + 2.2))
    for ax, (value, title) in zip(
        fig.subplots(1, 2),
        [("noisy_acc", "noisy examples, given labels"), ("clean_acc", "clean examples")],
        strict=True,
    ):
        layers, epochs, grid = _grid(rows, value)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("rewound to epoch")
        ax.set_title(f"accuracy after rewinding one layer: {title}", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def retraining_figure(rows: Sequence[LayerCell]) -> Figure:
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3, sharey=True)
    for layer in dict.fromkeys(r.layer for r in rows):
        curve = [r for r in rows if r.layer == layer]
        epochs = [r.epoch for r in curve]
        for ax, key in zip(axes, ("clean_acc", "noisy_acc", "test_acc"), strict=True):
            ax.plot(epochs, [getattr(r, key) for r in curve], marker="o", ms=3, label=layer)
    for ax, title in zip(axes, ("clean train", "noisy train (given labels)", "test"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("retraining epoch")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("accuracy")
    axes[2].legend(fontsize=7, title="retrained layer", title_fontsize=7)
    fig.tight_layout()
    return fig


def gradients_figure(rows: Sequence[GradientRow]) -> Figure:
    layers = list(dict.fromkeys(r.layer for r in rows))
    cols = min(4, len(layers)) or 1
    n_rows = -(-len(layers) // cols) + 1
    fig = Figure(figsize=(11, 2.4 * n_rows))
    grid = fig.add_gridspec(n_rows, cols)
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        curve = [r for r in rows if r.layer == layer]
        epochs = [r.epoch for r in curve]
        ax.plot(epochs, [r.clean_norm for r in curve], label="clean")
        ax.plot(epochs, [r.noisy_norm for r in curve], label="noisy")
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch")
        if i % cols == 0:
            ax.set_ylabel("gradient norm")
        if i == 0:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[n_rows - 1, :])
    for layer in layers:
        curve = [r for r in rows if r.layer == layer]
        ax.plot(
            [r.epoch for r in curve],
            [np.nan if r.cosine is None else r.cosine for r in curve],
            label=layer,
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("cosine between clean and noisy gradients", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cosine")
    ax.legend(fontsize=7, ncol=min(5, len(layers)))
    fig.suptitle("per-layer gradient norm (scaled by 1/sqrt(numel)), clean vs noisy part", fontsize=10)
    fig.tight_layout()
    return fig


def training_figure(history: Sequence[EpochRecord]) -> Figure:
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    epochs = [h.epoch for h in history]
    for key, label in [
        ("clean_train_acc", "clean train"),
        ("noisy_train_acc", "noisy train (given labels)"),
        ("noisy_orig_acc", "noisy train (true labels)"),
        ("test_acc", "test"),
    ]:
        ax.plot(epochs, [getattr(h, key) for h in history], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# What each score's value is, for its histogram's x axis (scores.py defines them).
SCORE_AXES = {
    "csl": "cumulative loss over epochs",
    "forgetting": "forgetting events (learned, then lost)",
    "learning_time": "epochs until learned for good",
    "curvature": "loss curvature",
}


def scores_figures(
    scores: dict[str, np.ndarray], noisy: np.ndarray, aurocs: dict[str, float]
) -> tuple[Figure, Figure]:
    names = list(scores)
    hist = Figure(figsize=(3.2 * len(names), 3))
    for ax, name in zip(np.atleast_1d(hist.subplots(1, len(names))), names, strict=True):
        values = scores[name]
        bins = np.histogram_bin_edges(values, bins=30)
        ax.hist(values[~noisy], bins=bins, alpha=0.6, density=True, label="clean")
        ax.hist(values[noisy], bins=bins, alpha=0.6, density=True, label="noisy")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(SCORE_AXES.get(name, f"{name} score"))
    hist.axes[0].set_ylabel("density (examples)")
    hist.axes[0].legend(fontsize=8)
    hist.tight_layout()
    curves = Figure(figsize=(4.5, 4.2))
    ax = curves.subplots()
    for name in names:
        fpr, tpr = roc(scores[name], noisy)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax.set_xlabel("false positive rate (clean flagged)")
    ax.set_ylabel("true positive rate (noisy found)")
    ax.legend(fontsize=8)
    curves.tight_layout()
    return hist, curves


def units_figures(records: Sequence[FlipRecord], layer_order: Sequence[str] = ()) -> tuple[Figure, Figure]:
    """Histogram of units-to-flip per group, and a stacked bar of units per layer in ``layer_order``.

    Layers missing from ``layer_order`` follow it in the order the records name them.
    """
    flipped = [r for r in records if r.flipped]
    hist = Figure(figsize=(6, 3.4))
    ax = hist.subplots()
    top = max([r.n_units for r in flipped], default=1)
    bins = (
        np.arange(0.5, min(top, 60) + 1.5)
        if top <= 60
        else np.histogram_bin_edges([r.n_units for r in flipped], 40)
    )
    for group in ("clean", "noisy"):
        counts = [r.n_units for r in flipped if r.group == group]
        if counts:
            ax.hist(counts, bins=list(bins), alpha=0.6, label=f"{group} (median {np.median(counts):g})")
    ax.set_xlabel("units zeroed to flip the prediction")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    hist.tight_layout()
    named = dict.fromkeys(layer for r in flipped for layer, _ in r.units)
    layers = [layer for layer in layer_order if layer in named] + [x for x in named if x not in layer_order]
    bars = Figure(figsize=(6, 3.4))
    ax = bars.subplots()
    groups = [g for g in ("noisy", "clean") if any(r.group == g for r in flipped)]
    bottom = np.zeros(len(groups))
    for layer in layers:
        share = []
        for g in groups:
            units = [u for r in flipped if r.group == g for u in r.units]
            share.append(sum(1 for name, _ in units if name == layer) / max(1, len(units)))
        ax.bar(groups, share, bottom=bottom, label=layer)
        bottom += np.array(share)
    ax.set_ylabel("share of units")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    bars.tight_layout()
    return hist, bars


def findings(train: TrainSummary, layers: LayersResult | None, aurocs: dict[str, float] | None) -> list[str]:
    """Sentences computed from the numbers."""
    out = [
        f"Training: The model fits {train.noisy_train_acc:.1%} of the {train.noisy_examples} mislabeled training "
        f"examples on their wrong labels (clean train {train.clean_train_acc:.1%}, test {train.test_acc:.1%})."
    ]
    if layers is not None and layers.etd is not None:
        out += etd_findings(layers.etd)
    if layers is not None and layers.rewinding:
        out += _rewinding_findings(layers)
    if layers is not None and layers.retraining:
        finals = retrain_summary(layers.retraining)
        clean_only = [r.layer for r in finals if r.clean_acc >= 0.99 and r.noisy_acc <= 0.10]
        lowest = min(finals, key=lambda r: r.noisy_acc)
        out.append(
            "Retraining: With one layer reset to its initialization and retrained alone on clean examples, "
            f"{lowest.layer} ends with the lowest noisy accuracy ({lowest.noisy_acc:.1%}, clean {lowest.clean_acc:.1%}); "
            + (
                f"layers that fit the clean data without re-memorizing: {', '.join(clean_only)}."
                if clean_only
                else "no layer reaches 99% clean accuracy with noisy accuracy at most 10%."
            )
        )
    if layers is not None and layers.gradients:
        rows = layers.gradients
        last = max(r.epoch for r in rows)
        late = [r for r in rows if r.epoch > last / 2 and r.clean_norm > 0]
        if late:
            ratio: dict[str, list[float]] = {}
            for r in late:
                ratio.setdefault(r.layer, []).append(r.noisy_norm / r.clean_norm)
            top = max(ratio, key=lambda k: np.mean(ratio[k]))
            out.append(
                f"Gradients: In the second half of training the noisy examples' gradient outweighs the clean one most in "
                f"{top} (mean noisy/clean norm ratio {np.mean(ratio[top]):.2f})."
            )
    if aurocs:
        best = max(aurocs, key=aurocs.__getitem__)
        out.append(
            "Example scores: Mislabeled examples are told apart by "
            + ", ".join(f"{k} (AUROC {v:.3f})" for k, v in aurocs.items())
            + f"; {best} separates them best."
        )
    return out


def _rewinding_findings(layers: LayersResult) -> list[str]:
    """The cell that lowers noisy accuracy most, whether one layer removes memorization, and how often none does."""
    h = headline(layers)
    best = h.largest_noisy_drop
    assert best is not None  # the caller passes a non-empty rewinding table
    out = [
        f"Rewinding: Setting {best.layer} back to its epoch-{best.epoch} weights lowers noisy accuracy the most, to "
        f"{best.noisy_acc:.1%}, with clean accuracy {best.clean_acc:.1%} and test accuracy {best.test_acc:.1%}."
    ]
    if h.single_layer_removers:
        names = sorted({r.layer for r in h.single_layer_removers})
        out.append(
            "Rewinding: Rewinding a single layer removes memorization (noisy accuracy at most 10% while keeping 90% of "
            f"clean accuracy) for: {', '.join(names)}."
        )
    else:
        out.append(
            "Rewinding: No single layer removes memorization; no rewinding cell brings noisy accuracy to 10% or below "
            "while keeping 90% of clean accuracy, in line with Maini et al. (2023)."
        )
    high = [r for r in layers.rewinding if r.epoch > 0 and r.noisy_acc >= 0.5]
    cells = [r for r in layers.rewinding if r.epoch > 0]
    if cells:
        out.append(
            f"Rewinding: In {len(high)} of {len(cells)} cells after epoch 0, noisy accuracy stays at 50% or more."
        )
    return out


def training_section(train_report: Report) -> Section:
    """The run's config, its final-epoch accuracies and the training curves."""
    train = TrainResult.from_report(train_report)
    summary = {
        k: getattr(train.summary, k)
        for k in ("clean_train_acc", "noisy_train_acc", "noisy_orig_acc", "test_acc", "epochs")
    }
    return Section(
        "Training",
        [
            f"{train_report.model_id}: "
            + ", ".join(f"{k}={v}" for k, v in train_report.config["train"].items())
        ],
        [("final epoch", [summary])],
        [("training", training_figure(train.history))],
        captions={
            "training": "Accuracy per epoch on clean and mislabeled training examples (on their given and "
            "their true labels) and on the test set."
        },
    )


def layer_sections(layers: LayersResult) -> list[Section]:
    """Rewinding, retraining (when it ran), gradient accounting and example-tied dropout of `locate layers`."""
    bn = "included" if layers.rewind.bn_buffers else "not included"
    sections = [
        Section(
            "Layer rewinding",
            [
                "Each cell: one layer group of the final model replaced by its weights at an earlier epoch "
                f"(BatchNorm buffers {bn})."
            ],
            [("rewinding", [c.to_dict() for c in layers.rewinding])],
            [("rewinding_heatmaps", rewinding_figure(layers.rewinding))],
            captions={
                "rewinding_heatmaps": "Accuracy of the final model with one layer (row) rewound to an earlier "
                "epoch (column), on mislabeled examples' given labels (left) and on clean examples (right)."
            },
        )
    ]
    if layers.retraining:
        sections.append(
            Section(
                "Layer retraining",
                [
                    "Each curve: one layer reset to its initialization and retrained alone on the clean examples; "
                    "every other parameter frozen."
                ],
                [
                    (
                        "last epoch of each retraining",
                        [c.to_dict() for c in retrain_summary(layers.retraining)],
                    )
                ],
                [("retraining_curves", retraining_figure(layers.retraining))],
                captions={
                    "retraining_curves": "Accuracy while one layer (one curve each) is retrained from its "
                    "initialization on clean examples: clean, mislabeled (given labels) and test."
                },
            )
        )
    sections.append(
        Section(
            "Gradient accounting",
            ["Mean per-step gradient norms of the clean and noisy parts of each batch loss."],
            [],
            [("gradients", gradients_figure(layers.gradients))],
            captions={
                "gradients": "Per-layer gradient norm of the clean and the mislabeled part of each batch loss, "
                "per epoch, and the cosine between the two gradients."
            },
        )
    )
    if layers.etd is not None:
        sections.append(etd_section(layers.etd))
    return sections


def _units_lines(neurons: NeuronsResult) -> list[str]:
    """One sentence per group, and whether mislabeled examples need fewer units."""
    lines = []
    for group, stats in neurons.groups().items():
        lines.append(
            f"{group}: {stats.flip_rate:.0%} of {stats.examples} examples flip, with a median of "
            f"{stats.median_units} units (mean {stats.mean_units:.2f})"
            if stats.median_units is not None
            else f"{group}: none of {stats.examples} examples flip"
        )
    noisy, clean = neurons.noisy, neurons.clean
    if noisy is not None and clean is not None and noisy.median_units is not None:
        fewer = (noisy.mean_units or 0) < (clean.mean_units or 0)
        lines.append(
            "Mislabeled (memorized) examples need "
            + ("fewer" if fewer else "no fewer")
            + " units than clean ones, "
            + ("as Maini et al. (2023) found." if fewer else "unlike Maini et al. (2023).")
        )
    return lines


def units_section(neurons: NeuronsResult, layer_order: Sequence[str] = ()) -> Section:
    """The flip search of `locate neurons`: units per group, sharing, and their figures."""
    sharing = neurons.sharing
    sharing_row = {
        "units": sharing.units,
        "shared_units": sharing.shared_units,
        "largest_component_examples": sharing.largest_component.examples,
        "noisy_pairs_sharing": sharing.noisy.share_any,
        "clean_pairs_sharing": sharing.clean.share_any,
    }
    hist, bars = units_figures(neurons.records, layer_order)
    flip = neurons.flip
    return Section(
        "Units that flip an example",
        [
            *_units_lines(neurons),
            f"Mode {flip.mode}, cap {flip.max_units} units, "
            f"collateral budget {flip.collateral} points on a held-out clean set.",
        ],
        [("per group", summary_rows(neurons.groups())), ("sharing between examples", [sharing_row])],
        [("units_to_flip", hist), ("units_per_layer", bars)],
        captions={
            "units_to_flip": "How many units had to be zeroed to flip each example's prediction, for "
            "mislabeled and clean examples.",
            "units_per_layer": "Share of the zeroed units that lie in each layer, in the model's layer order.",
        },
    )


def scores_section(scores: ScoresResult) -> Section:
    """The example scores of `locate scores`: AUROC, histograms and ROC curves."""
    assert scores.noisy_mask is not None  # load_scores reads the per-example arrays
    if not scores.noisy_mask.any():  # an import without a noise mask: no split to draw
        return Section(
            "Example scores",
            ["AUROC n/a: which examples are mislabeled is unknown (imported without a noise mask)."],
            [("AUROC", [{name: "n/a" for name in scores.auroc}])],
        )
    hist, curves = scores_figures(scores.scores, scores.noisy_mask, scores.auroc)
    return Section(
        "Example scores",
        ["Larger scores mean more likely memorized; AUROC at flagging the mislabeled examples."],
        [("AUROC", [dict(scores.auroc)])],
        [("score_histograms", hist), ("score_roc", curves)],
        captions={
            "score_histograms": "Distribution of each memorization score over clean and mislabeled examples.",
            "score_roc": "ROC curve of each score at flagging the mislabeled examples.",
        },
    )


def build_report(
    run: RunFolder, out: Path | None = None, *, extra: Sequence[Section] = ()
) -> tuple[Path, Path]:
    """Write report.md and report.html for a run from whatever analyses it holds.

    ``extra``: sections rendered elsewhere (the demo's language-model edit) to end the report with.

    Example::

        md, html = build_report(RunFolder.open("runs/mlp"))
    """
    if not run.metrics_path.is_file():
        raise RunFolderError(f"{run.root} has no metrics.json; train it first")
    train_report = Report.load(run.metrics_path)
    layers = load_layers(run)
    scores = load_scores(run)
    aurocs = scores.auroc if scores else None
    summary = TrainSummary.from_dict(train_report.metrics)
    if run.mask_known():
        found = findings(summary, layers, aurocs)
    else:  # every finding compares noisy with clean examples
        found = [f"Training: test accuracy {summary.test_acc:.1%}; the noisy/clean findings are n/a."]
    sections = [Section("Findings", [*_import_notes(run), *found]), training_section(train_report)]
    missing = []
    if layers is None:
        missing.append(f"memloc locate layers {run.root}")
    else:
        sections.extend(layer_sections(layers))
    neurons = load_neurons(run)
    if neurons is None:
        missing.append(f"memloc locate neurons {run.root}")
    elif not neurons.groups():  # an import without a noise mask: its examples are neither group
        sections.append(Section("Units", [f"n/a: {run.mask_note()}; see {neurons.jsonl}."]))
    else:
        sections.append(units_section(neurons, _layer_order(run)))
    if scores is None:
        missing.append(f"memloc locate scores {run.root}")
    else:
        sections.append(scores_section(scores))
    measures = load_memorization(run)
    if measures is None:
        missing.append(f"memloc locate memorization {run.root}")
    else:
        sections.extend(memorization_sections(measures, run))
    sections.extend(extra)
    if missing:
        sections.append(Section("Not yet computed", [f"Run: {cmd}" for cmd in missing]))
    return write_report(
        out or run.root / "report", _title(train_report.config["train"], run.mask_known()), sections
    )


def _import_notes(run: RunFolder) -> list[str]:
    """What a reader of an imported run must know: where it came from, and what it cannot show."""
    info = run.import_info()
    if info is None:
        return []
    notes = [
        f"Imported with memloc import from {', '.join(info['checkpoints'])} ({len(run.epochs())} checkpoints). "
        "Its gradient accounting is checkpoint gradients (full-data clean and noisy gradients at each "
        "checkpoint), not training-step gradients."
    ]
    mask = run.mask_note()
    if mask:
        notes.append(f"Noise mask: n/a. {mask}.")
    return notes


def _title(train: dict, mask_known: bool = True) -> str:
    """What the run is, for the page title: model, data, noise and length."""
    noise = f"{train['noise']:.0%} of labels corrupted" if mask_known else "noise mask unknown"
    return (
        f"Memorization of noisy labels: {train['arch']} on {train['data']} ({train['limit'] or 'all'} images), "
        f"{noise}, {train['epochs']} epochs"
    )


def _layer_order(run: RunFolder) -> tuple[str, ...]:
    """The model's layer groups, first to last (the model is built, no weights are read)."""
    return tuple(run.adapter().names)

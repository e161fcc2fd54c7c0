"""The report's example-tied dropout section: a table, a bar figure and a finding."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from memloc.core.render import Section
from memloc.locate.classifier.etd_effect import MODES, EtdEffect

# Bars of the figure: (column of Accuracies.table_row, label).
_SPLITS = (
    ("noisy_acc", "noisy, given labels"),
    ("noisy_orig_acc", "noisy, true labels"),
    ("clean_acc", "clean"),
    ("test_acc", "test"),
)

PUBLISHED = (
    "Maini et al. (2023, Sec. 6) report for CIFAR-10 with noisy labels that dropping the memorization "
    "neurons lowers accuracy on memorized examples from 100% to about 3%, with little loss in clean and "
    "test accuracy."
)


def etd_figure(effect: EtdEffect) -> Figure:
    """Grouped bars: accuracy on each split, one bar per way the model is run."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    width = 0.8 / len(MODES)
    x = np.arange(len(_SPLITS))
    for i, (key, label) in enumerate(MODES.items()):
        row = getattr(effect, key).table_row()
        ax.bar(x + (i - (len(MODES) - 1) / 2) * width, [row[c] for c, _ in _SPLITS], width, label=label)
    ax.set_xticks(x, [label for _, label in _SPLITS])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=len(MODES), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def etd_findings(effect: EtdEffect) -> list[str]:
    """What dropping the memorization units changes, in the numbers of the table."""
    tied, dropped = effect.tied, effect.dropped
    return [
        "Example-tied dropout: Dropping the memorization units takes the mislabeled examples' accuracy on "
        f"their given labels from {tied.noisy_train_acc:.1%} to {dropped.noisy_train_acc:.1%} (on their true "
        f"labels from {tied.noisy_orig_acc:.1%} to {dropped.noisy_orig_acc:.1%}), clean accuracy from "
        f"{tied.clean_train_acc:.1%} to {dropped.clean_train_acc:.1%} and test accuracy from "
        f"{tied.test_acc:.1%} to {dropped.test_acc:.1%}."
    ]


def etd_section(effect: EtdEffect) -> Section:
    """The final model with its train-time masks, with memorization units dropped, and plain."""
    config = effect.config
    return Section(
        "Example-tied dropout",
        [
            f"Trained with example-tied dropout in {', '.join(effect.layers)}: a share p_gen={config.p_gen} of each "
            f"layer's units is shared by all examples; each other unit is one of an example's own memorization "
            f"units with probability p_mem={config.p_mem}.",
            "Rows: the final model with each training example's train-time units (test examples get untied "
            "draws), with every memorization unit dropped (zeroed), and with every unit active.",
        ],
        [("accuracy by units kept", effect.rows())],
        [("etd_drop", etd_figure(effect))],
        captions={
            "etd_drop": "Accuracy of the final model on mislabeled examples (their given and true labels), "
            "clean examples and the test set, with train-time masks, with memorization units dropped and "
            f"with every unit. {PUBLISHED}"
        },
    )

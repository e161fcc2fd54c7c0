"""What dropping the memorization units of an example-tied dropout run does.

Maini et al. 2023 ("Can Neural Network Memorization Be Localized?", ICML, Sec. 6) train
with example-tied dropout (core/training/etd.py) and then drop every memorization unit:
the mislabeled examples, which only their own units could fit, should lose their
memorized labels while clean and test accuracy stay. `etd_effect` measures the final
model three ways, on the run's clean and mislabeled training examples and its test set:

- ``tied``: as in training, each training example with its own units (the test set
  with untied draws of memorization units);
- ``dropped``: every memorization unit zeroed, the generalization units as they are;
- ``full``: the plain network with every unit active, for reference (what the other
  analyses of `locate layers` see).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from memloc.core.classifier.splits import Accuracies, RunData
from memloc.core.training.etd import EtdConfig, EtdLayout
from torch import nn

# The stored key, and the table's label, of each way the model is run.
MODES = {
    "tied": "train-time masks",
    "dropped": "memorization units dropped",
    "full": "every unit (plain network)",
}


@dataclass(frozen=True)
class EtdEffect:
    """Accuracies of an example-tied dropout run's model with and without its memorization units.

    Example::

        effect = etd_effect(model, EtdLayout.build(run.etd(), adapter, run.seed()), data)
        effect.tied.noisy_train_acc, effect.dropped.noisy_train_acc
    """

    config: EtdConfig
    layers: tuple[str, ...]  # the tied groups, resolved
    tied: Accuracies
    dropped: Accuracies
    full: Accuracies

    def rows(self) -> list[dict[str, Any]]:
        """One table row per way the model is run."""
        return [{"units": label, **getattr(self, key).table_row()} for key, label in MODES.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "layers": list(self.layers),
            **{key: getattr(self, key).table_row() for key in MODES},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EtdEffect:
        return cls(
            EtdConfig.from_dict(d["config"]),
            tuple(d["layers"]),
            *(Accuracies.from_table_row(d[key]) for key in MODES),
        )


def etd_effect(model: nn.Module, layout: EtdLayout, data: RunData) -> EtdEffect:
    """Evaluate ``model`` with train-time masks, with memorization units dropped, and plain.

    Training example i is example id i, as in training; test examples take the ids after
    the training set, so the "tied" test accuracy is that of untied random draws.
    """
    n_train = len(data.given)
    tied = data.accuracies(
        model,
        train_context=layout.tied_chunks(model),
        test_context=layout.tied_chunks(model, offset=n_train),
    )
    drop = layout.dropped_chunks(model)
    dropped = data.accuracies(model, train_context=drop, test_context=drop)
    return EtdEffect(layout.config, layout.names, tied, dropped, data.accuracies(model))

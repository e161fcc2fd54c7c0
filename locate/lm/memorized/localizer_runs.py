"""Run named localizers, plus the random baseline, on one batch: the shared step of INJ and DEL.

Example::

    chosen = choose_localizers(["zero_out"], {})
    attributions = run_localizers(model, adapter, batch, chosen, RandomConfig(seed=0))
    attributions[-1].method   # "random"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.errors import DataError
from memloc.core.progress import Progress, within
from memloc.locate.lm.memorized.random_baseline import RandomConfig, localize_random
from memloc.locate.lm.memorized.registry import Localizer, localizer
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch


def check_budget(budget: float) -> None:
    """The budget is a share of all neurons in (0, 1]."""
    if not 0.0 < budget <= 1.0:
        raise DataError(f"the budget must lie in (0, 1], got {budget}", field="budget")


def choose_localizers(names: Sequence[str], configs: Mapping[str, object]) -> list[tuple[Localizer, object]]:
    """Each named localizer with ``configs[name]``, else its defaults.

    An unknown name, or a config of the wrong type, is refused before any work is done.
    """
    chosen = []
    for spec in (localizer(name) for name in names):
        config = configs.get(spec.name, spec.config_type())
        if not isinstance(config, spec.config_type):
            raise DataError(f"the config for {spec.name} must be a {spec.config_type.__name__}")
        chosen.append((spec, config))
    return chosen


def run_localizers(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    chosen: Sequence[tuple[Localizer, object]],
    baseline: RandomConfig,
    progress: Progress | None = None,
) -> list[NeuronAttribution]:
    """Each chosen localizer's attribution, in order, then the random baseline's."""
    out = []
    for i, (spec, config) in enumerate(chosen):
        inside = within(progress, i, len(chosen) + 1, f"localize: {spec.name}")
        out.append(spec.run(model, adapter, batch, config, progress=inside))
    out.append(localize_random(model, adapter, batch, baseline))
    if progress is not None:
        progress(len(chosen) + 1, len(chosen) + 1, "localize: done")
    return out

"""Run named localizers, plus the random baseline, on one batch: the shared step of INJ and DEL.

Example::

    attributions = run_localizers(model, adapter, batch, ["zero_out"], {}, RandomConfig(seed=0))
    attributions[-1].method   # "random"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.errors import DataError
from memloc.core.progress import Progress
from memloc.locate.lm.memorized.random_baseline import RandomConfig, localize_random
from memloc.locate.lm.memorized.registry import localizer
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch


def check_budget(budget: float) -> None:
    """The budget is a share of all neurons in (0, 1]."""
    if not 0.0 < budget <= 1.0:
        raise DataError(f"the budget must lie in (0, 1], got {budget}", field="budget")


def run_localizers(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    names: Sequence[str],
    configs: Mapping[str, object],
    baseline: RandomConfig,
    progress: Progress | None = None,
) -> list[NeuronAttribution]:
    """Each named localizer's attribution (``configs[name]``, else its defaults), then the random one.

    A config of the wrong type for its localizer is refused before anything runs.
    """
    specs = [localizer(name) for name in names]
    chosen = []
    for spec in specs:
        config = configs.get(spec.name, spec.config_type())
        if not isinstance(config, spec.config_type):
            raise DataError(f"the config for {spec.name} must be a {spec.config_type.__name__}")
        chosen.append((spec, config))
    out = []
    for i, (spec, config) in enumerate(chosen):
        if progress is not None:
            progress(i, len(chosen) + 1, f"localize: {spec.name}")
        out.append(spec.run(model, adapter, batch, config))
    out.append(localize_random(model, adapter, batch, baseline))
    if progress is not None:
        progress(len(chosen) + 1, len(chosen) + 1, "localize: done")
    return out

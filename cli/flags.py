"""The command-line flag of each config field and parameter the library names in its errors.

The library's messages speak Python ("max_units must be at least 1"); the CLI shows
the flag in place of the field ("--max-units must be at least 1"). A field whose
flag differs between commands is keyed by its config's class name as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from memloc.core.errors import ConfigError, MemlocError

# (config class, field) -> flag, for the fields whose flag depends on the command.
BY_CONFIG = {
    ("FlipConfig", "batch_size"): "--batch",
    ("KNConfig", "batch_size"): "--batch",
    ("TraceConfig", "batch_size"): "--batch",
    ("TraceConfig", "kinds"): "--kind",
    ("StatsConfig", "dtype"): "--accumulate",
    ("NullSpaceConfig", "threshold"): "--null-space-threshold",
    ("EvalConfig", "generation_tokens"): "--fluency-tokens",
    ("LayersConfig", "rewind_epochs"): "--epoch",
    ("EtdConfig", "layers"): "--etd-layer",
    ("MembershipConfig", "models"): "--models",
    ("MembershipConfig", "keep"): "--keep",
    ("EnsembleConfig", "weight_decay"): "--weight-decay",
    ("BatchedExecutor", "models_per_pass"): "--models-per-pass",
    ("UnlearnConfig", "method"): "--method",
    ("UnlearnConfig", "budget"): "--budget",
    ("UnlearnConfig", "scale"): "--scale",
    ("MemorizationConfig", "prefix"): "--prefix",
    ("MemorizationConfig", "suffix"): "--suffix",
    ("SequentialConfig", "every"): "--every",
}

# field -> flag everywhere else.
BY_FIELD = {
    name: "--" + name.replace("_", "-")
    for name in [
        "noise",
        "epochs",
        "batch_size",
        "limit",
        "lr",
        "arch",
        "max_units",
        "collateral",
        "mode",
        "retrain_epochs",
        "samples",
        "window",
        "steps",
        "coarse",
        "share",
        "relation_share",
        "layers",
        "factor",
        "controls",
        "max_tokens",
        "max_condition",
        "corpus",
        "max_update_ratio",
        "n",
        "examples",
        "out",
        "trust_pickle",
        "device",
        "width",
        "seed",
        "num_classes",
        "resize",
        "normalize",
        "channels",
    ]
} | {
    "gpus_per_job": "--gpus-per-model",
    "document_start": "--doc-start",
    "p_gen": "--etd-p-gen",
    "p_mem": "--etd-p-mem",
}


def flag_for(field: str, config: str = "") -> str | None:
    """The flag that sets ``field`` (of the config class ``config``), or None when none does."""
    return BY_CONFIG.get((config, field)) or BY_FIELD.get(field)


def cli_message(exc: MemlocError) -> str:
    """The error's message with its field replaced by the flag a CLI user passes."""
    if exc.field is None:
        return str(exc)
    return with_flags(str(exc), [exc.field], exc.config if isinstance(exc, ConfigError) else "")


def with_flags(message: str, fields: Iterable[str], config: str = "") -> str:
    """``message`` with each of ``fields`` replaced by its flag, where it has one."""
    for field in fields:
        flag = flag_for(field, config)
        if flag is not None:
            # Whole words only, and never inside a path such as /runs/out/x.
            message = re.sub(rf"(?<![\w/.-]){re.escape(field)}(?![\w/-])", flag, message)
    return message

"""User-facing errors.

Every problem a user can fix (bad input, a missing file, a mismatched checkpoint)
raises a subclass of `MemlocError`. The CLI prints its message as one line and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MemlocError(Exception):
    """A problem with the user's input, stated in one line with a way to fix it.

    ``field`` names the parameter or config field the message is about, in its Python
    spelling; the CLI shows the matching flag in its place (cli/flags.py).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(MemlocError):
    """A config field holds a value its method cannot use.

    ``ConfigError("max_units", "must be at least 1, got 0", config="FlipConfig")`` reads
    "max_units must be at least 1, got 0"; ``config`` names the dataclass so that a
    field shared by several configs can map to different flags.
    """

    def __init__(self, field: str, problem: str, *, config: str = "") -> None:
        super().__init__(f"{field} {problem}", field=field)
        self.problem = problem
        self.config = config


class UnsupportedModelError(MemlocError):
    """The model's architecture has no adapter."""


class CheckpointError(MemlocError):
    """A checkpoint cannot be read safely or does not fit the model."""


class UnsafePickleError(CheckpointError):
    """A pickle needs code execution and the user did not pass trust_pickle."""


class ModelLoadError(MemlocError):
    """A model folder or a user's model factory cannot give a model."""


class DataError(MemlocError):
    """A data set is unknown, missing or malformed."""


class RunFolderError(MemlocError):
    """A run folder is missing pieces or belongs to a different run."""


class MemlocWarning(UserWarning):
    """Something the user should know that memloc recovered from (a torn log line, a stale leftover).

    The CLI prints each as one ``memloc: warning: ...`` line on stderr.
    """

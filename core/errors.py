"""User-facing errors.

Every problem a user can fix (bad input, a missing file, a mismatched checkpoint)
raises a subclass of `MemlocError`. The CLI prints its message as one line and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MemlocError(Exception):
    """A problem with the user's input, stated in one line with a way to fix it."""


class UnsupportedModelError(MemlocError):
    """The model's architecture has no adapter."""


class CheckpointError(MemlocError):
    """A checkpoint cannot be read safely or does not fit the model."""


class UnsafePickleError(CheckpointError):
    """A pickle needs code execution and the user did not pass --trust-pickle."""


class DataError(MemlocError):
    """A data set is unknown, missing or malformed."""


class RunFolderError(MemlocError):
    """A run folder is missing pieces or belongs to a different run."""

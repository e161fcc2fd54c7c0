"""Reading a JSON file that must hold one object, with one-line errors naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memloc.core.errors import MemlocError


def read_json_object(path: Path, error: type[MemlocError]) -> dict[str, Any]:
    """The object in ``path``; an unreadable file or another JSON value raises ``error``.

    Example::

        config = read_json_object(Path("vit/config.json"), ModelLoadError)
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path} does not hold a JSON object")
    return raw

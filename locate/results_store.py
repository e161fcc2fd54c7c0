"""A resumable store of finished result cells, one JSON file per analysis.

Cells are kept under a section named by a hash of the config that produced them,
so a rerun with the same config skips finished cells, and a rerun with another
config never overwrites earlier results.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from memloc.core.checkpoints import atomic_write_text
from memloc.core.errors import RunFolderError
from memloc.core.report import to_jsonable


def config_key(config: object) -> str:
    text = json.dumps(to_jsonable(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict[str, dict[str, object]] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise RunFolderError(f"{self.path} is damaged ({exc}); move it away to recompute") from exc

    def get(self, section: str, key: str) -> object | None:
        return self.data.get(section, {}).get(key)

    def put(self, section: str, key: str, value: object) -> None:
        self.data.setdefault(section, {})[key] = to_jsonable(value)
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")

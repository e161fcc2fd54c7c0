"""The edit probe's results on disk, next to the key statistics of the same weights.

``<cache>/stats/<weights hash>/layer-probe/<method>-<key>.json`` holds one
`RelationProbe`; the key hashes everything the probe's scores depend on (the relation,
the probe facts, the candidates, the edit and statistics settings), so a changed
setting is a new file and never a stale answer. A damaged file is recomputed.

    path = probe_path(None, weights_hash(lm.model), "rome", digest)
    found = load_probe(path)  # None when absent or unreadable
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, replace
from pathlib import Path

from memloc.core.checkpoints import atomic_write_text
from memloc.core.dataclass_files import read_dataclass_json
from memloc.core.errors import MemlocError, MemlocWarning
from memloc.edit.probe_result import RelationProbe
from memloc.edit.stats import model_folder

PROBE_FORMAT = 1


def probe_digest(described: object) -> str:
    """A stable hash of a JSON-able description of the probe."""
    text = json.dumps({"format": PROBE_FORMAT, "probe": described}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def probe_path(cache_dir: str | Path | None, weights: str, method: str, digest: str) -> Path:
    return model_folder(cache_dir, weights) / "layer-probe" / f"{method}-{digest[:20]}.json"


def load_probe(path: Path) -> RelationProbe | None:
    if not path.is_file():
        return None
    try:
        found = read_dataclass_json(RelationProbe, path)
    except MemlocError as exc:
        # The cache is only a copy of work that can be redone: a damaged file is redone.
        warnings.warn(f"{exc}; probing again", MemlocWarning, stacklevel=2)
        return None
    return replace(found, cached=True)


def save_probe(path: Path, probe: RelationProbe) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(replace(probe, cached=False)), indent=1) + "\n")

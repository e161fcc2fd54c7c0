"""Typed results survive a trip to disk: nested dataclasses, tuples, dicts, arrays, NaN."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from memloc.core.dataclass_files import load_dataclass, save_dataclass
from memloc.core.errors import RunFolderError


@dataclass(frozen=True)
class Curve:
    name: str
    auc: float
    fpr: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Outer:
    curves: tuple[Curve, ...]
    by_epoch: dict[int, float]
    note: str | None
    missing: float
    unset: float | None
    scores: dict[str, np.ndarray] = field(compare=False)


def test_a_nested_result_comes_back_as_the_same_types_and_values(tmp_path):
    out = Outer(
        curves=(Curve("online", 0.9, np.linspace(0, 1, 5)), Curve("loss", 0.6, np.zeros(3, np.float32))),
        by_epoch={1: 0.5, 10: 0.25},
        note=None,
        missing=float("nan"),
        unset=None,
        scores={"mem": np.arange(4.0), "ssft": np.array([1, 2, 3])},
    )
    json_path, npz_path = save_dataclass(out, tmp_path / "result")
    assert json_path.is_file() and npz_path.is_file()
    back = load_dataclass(Outer, tmp_path / "result")
    assert isinstance(back.curves[0], Curve) and back.curves[1].name == "loss"
    assert np.array_equal(back.curves[0].fpr, out.curves[0].fpr)
    assert back.curves[1].fpr.dtype == np.float32
    assert back.by_epoch == {1: 0.5, 10: 0.25}
    assert back.note is None and np.isnan(back.missing) and back.unset is None
    assert np.array_equal(back.scores["ssft"], [1, 2, 3])


def test_a_damaged_file_says_how_to_recover(tmp_path):
    save_dataclass(Curve("x", 1.0, np.ones(2)), tmp_path / "c")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="remove it to recompute"):
        load_dataclass(Curve, tmp_path / "c")


@dataclass(frozen=True)
class Grown:
    """A result type that gained a field with a default after files of it were written."""

    name: str
    rank: int
    added_later: int | None = None


def test_a_file_from_before_a_field_was_added_reads_with_its_default(tmp_path):
    import json

    from memloc.core.dataclass_files import read_dataclass_json

    (tmp_path / "old.json").write_text(json.dumps({"name": "canary", "rank": 3}))
    assert read_dataclass_json(Grown, tmp_path / "old.json") == Grown("canary", 3)
    save_dataclass(Curve("x", 1.0, np.ones(2)), tmp_path / "c")
    (tmp_path / "c.json").write_text(json.dumps({"name": "x"}))  # lacks a field that has no default
    with pytest.raises(RunFolderError, match="auc"):
        load_dataclass(Curve, tmp_path / "c")
    (tmp_path / "bad.json").write_text(json.dumps({"rank": 3}))
    with pytest.raises(RunFolderError, match="name"):
        read_dataclass_json(Grown, tmp_path / "bad.json")


def test_an_exposure_result_written_before_others_above_still_reads(tmp_path):
    import json

    from memloc.core.dataclass_files import read_dataclass_json
    from memloc.locate.lm.exposure import ExposureResult

    canary = {"text": "my PIN is 042450", "repeats": 1, "space_size": 10**6, "log_perplexity": 7.98,
              "exposure": 17.12, "rank": 7, "estimated": False, "scored": 10**6}  # fmt: skip
    config = {"batch_size": 256, "estimate": False, "samples": 10000, "seed": 0, "exact_limit": 10**6,
              "shared_prefix": True, "trie": True}  # fmt: skip
    (tmp_path / "exposure.json").write_text(
        json.dumps({"canaries": [canary], "config": config, "model": "m"})
    )
    back = read_dataclass_json(ExposureResult, tmp_path / "exposure.json").canaries[0]
    assert back.rank == 7 and back.others_above is None and back.exposure_alone is None
    assert back.exposure == 17.12

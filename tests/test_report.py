import json
import math

import numpy as np
import pytest
from memloc.core.errors import MemlocError
from memloc.core.report import SCHEMA_VERSION, Report, provenance


def test_json_round_trip(tmp_path):
    report = Report(
        "train",
        "mlp@digits",
        {"lr": 1e-3, "shape": (1, 8, 8)},
        {"acc": np.float32(0.5), "rows": np.arange(3)},
        {"nan": math.nan},
        provenance(0, {"cfg": __file__}),
    )
    path = report.save(tmp_path / "r.json")
    back = Report.load(path)
    assert back.schema_version == SCHEMA_VERSION
    assert back.config == {"lr": 1e-3, "shape": [1, 8, 8]}
    assert back.results == {"acc": 0.5, "rows": [0, 1, 2]}
    assert back.metrics == {"nan": None}
    assert len(back.provenance["inputs"]["cfg"]) == 64
    assert Report.from_json(back.to_json()) == back


def test_newer_schema_is_refused():
    data = Report("m", "x").to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(MemlocError, match="upgrade memloc"):
        Report.from_json(json.dumps(data))
    with pytest.raises(MemlocError, match="not valid JSON"):
        Report.from_json("{")

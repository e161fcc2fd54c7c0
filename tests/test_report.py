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


def _demo_edit():
    from memloc.edit.demo_edit import DemoEdit, Snapshot

    prompts = ["The Eiffel Tower is in", "The Eiffel Tower | stands in"]
    return DemoEdit(
        fact={"prompt": prompts[0], "target_true": "Paris", "target_new": "Rome"},
        layer=3,
        before=Snapshot(0.61, 0.002, {p: " Paris, France." for p in prompts}),
        after=Snapshot(0.01, 0.93, {p: " Rome, the capital\nof Italy." for p in prompts}),
        update_ratio={3: 0.05},
        undone_bit_exact=True,
    )


def test_the_lm_edit_is_a_section_of_both_report_files(tmp_path, digits_run):
    from memloc.edit.demo_edit import edit_section
    from memloc.locate.classifier.report import build_report

    md, page = build_report(digits_run, tmp_path / "report", extra=[edit_section(_demo_edit())])
    text, html_text = md.read_text(), page.read_text()
    for doc in (text, html_text):
        assert "ROME" in doc and "layer 3" in doc and "bit-identical" in doc
        assert "0.610" in doc and "0.930" in doc and "Rome, the capital" in doc
    # a generation's newline and pipe must not break the Markdown table
    rows = [line for line in text.splitlines() if "The Eiffel Tower" in line and line.startswith("|")]
    assert rows and all(line.count("|") - line.count("\\|") == 4 for line in rows), rows
    assert text.index("Rome, the capital") > text.index("## Findings")


def _cell(layer, epoch, clean, noisy):
    from memloc.locate.classifier.rewinding import LayerCell

    return LayerCell(layer, epoch, clean, noisy, 0.5, 0.8)


def _layers_result():
    from memloc.core.classifier.splits import Accuracies
    from memloc.locate.classifier.layer_results import LayersResult
    from memloc.locate.classifier.rewinding import RetrainConfig, RewindConfig

    rewinding = tuple(_cell(layer, e, 0.95, 0.9) for layer in ("fc1", "fc2") for e in (0, 1))
    retraining = (_cell("fc1", 1, 0.99, 0.01), _cell("fc2", 1, 0.98, 0.3))
    return LayersResult(
        RewindConfig((0, 1)),
        RetrainConfig(epochs=1),
        ("fc1", "fc2"),
        rewinding,
        retraining,
        (),
        Accuracies(1.0, 1.0, 0.0, 0.9),
        2,
        1.0,
    )


def test_each_finding_names_its_method(digits_run):
    from memloc.locate.classifier.report import findings

    lines = findings(digits_run.summary(), _layers_result(), {"csl": 0.99})
    prefixes = [line.split(":", 1)[0] for line in lines]
    assert prefixes == ["Training", "Rewinding", "Rewinding", "Rewinding", "Retraining", "Example scores"], (
        lines
    )
    assert "No single layer removes memorization" in lines[2]


def test_figures_have_axis_labels_and_units_follow_the_model_order():
    from memloc.locate.classifier.report import gradients_figure, scores_figures, units_figures
    from memloc.locate.classifier.rewinding import GradientRow
    from memloc.locate.classifier.unit_results import FlipRecord

    rng = np.random.default_rng(0)
    noisy = np.arange(40) < 10
    hist, _ = scores_figures(
        {"csl": rng.random(40), "forgetting": rng.random(40)}, noisy, {"csl": 1, "forgetting": 1}
    )
    assert all(ax.get_xlabel() for ax in hist.axes) and hist.axes[0].get_ylabel()
    rows = [GradientRow(layer, e, 1.0, 2.0, 0.1) for layer in ("fc1", "fc2") for e in (1, 2)]
    panels = gradients_figure(rows).axes
    assert all(ax.get_xlabel() == "epoch" for ax in panels) and panels[0].get_ylabel()
    units = ((("head", 1), ("fc2", 0), ("fc1", 3)), (("fc1", 2),))
    records = [
        FlipRecord(i, g, True, u, len(u), 0.0, 0.1, "flipped", 1)
        for i, (g, u) in enumerate(zip(("noisy", "clean"), units, strict=True))
    ]
    _, bars = units_figures(records, layer_order=("fc1", "fc2", "head"))
    assert [t.get_text() for t in bars.axes[0].get_legend().get_texts()] == ["fc1", "fc2", "head"]


def test_report_title_and_figure_captions_say_what_they_show(tmp_path, digits_run):
    import re

    from memloc.locate.classifier.report import build_report

    md, page = build_report(digits_run, tmp_path / "report")
    text, html_text = md.read_text(), page.read_text()
    title = "Memorization of noisy labels: mlp on digits (300 images), 20% of labels corrupted, 3 epochs"
    assert text.splitlines()[0] == f"# {title}" and f"<title>{title}</title>" in html_text
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", html_text)
    assert captions and all(len(c.split()) >= 5 and c.endswith(".") for c in captions), captions
    assert "![" in text and "![training]" not in text

"""`memloc report` on a folder of memorized-text results: one page with every result read back typed."""

from __future__ import annotations

import json
import random
from pathlib import Path

from memloc.core.dataclass_files import read_dataclass_json
from memloc.locate.lm.exposure import ExposureResult
from memloc.locate.lm.extraction_files import read_extraction
from test_cli import assert_one_line_error, run_cli

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
LM = ("--model", MODEL, "--device", "cpu")
TEMPLATE = "the {choice:winter|painter|weaver|people} is {choice:quiet|purple|official}"


def _corpus(path: Path, n: int = 12, words: int = 30) -> Path:
    rng = random.Random(0)
    vocab = sorted(
        w for w in json.loads((MODEL / "tokenizer.json").read_text())["model"]["vocab"] if w.isalpha()
    )
    texts = [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_report_page_holds_extraction_exposure_and_localizers(tmp_path, capsys):
    folder = tmp_path / "real"
    folder.mkdir()
    corpus = _corpus(tmp_path / "corpus.jsonl")
    ok = (0, None)
    code, _, _ = run_cli(
        capsys, "locate", "extractable", *LM, "--corpus", corpus, "--prefix", "4,8", "--suffix", "4",
        "--out", folder / "extract",
    )  # fmt: skip
    assert code in ok
    planted = tmp_path / "planted.jsonl"
    code, _, _ = run_cli(
        capsys, "canaries", "make", "--corpus", corpus, "--out", planted, "--template", TEMPLATE
    )
    assert code in ok
    canaries = tmp_path / "planted.canaries.jsonl"
    code, _, _ = run_cli(
        capsys, "locate", "exposure", *LM, "--canaries", canaries, "--out", folder / "exposure.json"
    )
    assert code in ok
    for method in ("activations", "zero_out"):
        code, _, _ = run_cli(
            capsys, "locate", "memorized-neurons", *LM, "--sequences", canaries, "--method", method,
            "--budget", "0.01", "--out", folder / method,
        )  # fmt: skip
        assert code in ok
    code, _, _ = run_cli(
        capsys, "edit", "unlearn", *LM, "--sequences", canaries, "--canaries", canaries, "--method", "zero_out",
        "--budget", "0.05", "--out", folder / "unlearned",
    )  # fmt: skip
    assert code in ok
    two = ("--methods", "activations", "--budget", "0.02")
    code, _, _ = run_cli(
        capsys,
        "locate",
        "inj",
        *LM,
        *two,
        "--sequences",
        canaries,
        "--ratio",
        "0.02",
        "--out",
        folder / "inj",
    )
    assert code in ok
    code, _, _ = run_cli(
        capsys, "locate", "del", *LM, *two, "--sequences", canaries, "--other", corpus, "--plain", corpus,
        "--out", folder / "del",
    )  # fmt: skip
    assert code in ok
    code, stdout, _ = run_cli(capsys, "report", folder, "--format", "json")
    assert code in ok
    paths = json.loads(stdout)
    md = Path(paths["markdown"]).read_text()
    for title in (
        "Extraction",
        "Canary exposure",
        "Localizers of memorized text",
        "Localizer benchmarks (INJ and DEL)",
        "Unlearning",
    ):
        assert f"## {title}" in md
    # Tables carry the stored numbers, read back into their types.
    extraction = read_extraction(folder / "extract" / "extraction.json")
    assert f"| extract | 8 | 4 | {len(extraction.at(8))} |" in md
    exposure = read_dataclass_json(ExposureResult, folder / "exposure.json")
    assert exposure.canaries[0].text in md and "agreement between runs" in md
    unlearned = json.loads((folder / "unlearned" / "unlearn.json").read_text())
    assert f"| unlearned | zero_out | 0.050 | {len(unlearned['neurons'])} |" in md
    assert md.count("| True |") == 1  # the undo was bit-exact
    assert "INJ recall (inj)" in md and "DEL accuracy drops (del)" in md
    for stem in ("extraction", "exposure", "localizer_layers", "inj_0", "del_1", "unlearning"):
        assert (folder / "report" / "figures" / f"{stem}.png").stat().st_size > 1000
    assert Path(paths["html"]).read_text().count("<figure") == 6


def test_a_folder_without_results_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "report", tmp_path / "empty")
    assert_one_line_error(code, err, "empty")

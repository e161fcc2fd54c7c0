"""The repository's text files hold no merge-conflict markers (one reached the README once)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)", re.MULTILINE)
TEXT = (".py", ".md", ".toml", ".sh", ".txt", ".yml", ".yaml", ".cfg")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line.endswith(TEXT)]


def test_no_tracked_text_file_holds_a_conflict_marker():
    files = _tracked()
    assert files
    marked = [
        str(p.relative_to(ROOT)) for p in files if p.is_file() and MARKER.search(p.read_text(errors="ignore"))
    ]
    assert not marked, f"merge-conflict markers in {marked}"

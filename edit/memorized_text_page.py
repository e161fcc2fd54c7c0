"""One report page per memorized-text folder: find it, localize it, remove it.

It gathers the sections of ``locate/lm/memorized_text_report.py`` (extraction,
exposure, localizers) and the unlearning before/after, and writes ``report.md``
(figures in ``figures/``) and a self-contained ``report.html``.

    results = MemorizedTextFolder.find(Path("runs/real"))
    if results is not None:
        md, page = results.write_report(Path("runs/real/report"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memloc.core.render import write_report
from memloc.edit.unlearn_report import find_unlearn_reports, unlearn_section
from memloc.edit.unlearn_session import UnlearnReport
from memloc.locate.lm.memorized_text_report import MemorizedTextResults, text_sections


@dataclass(frozen=True)
class MemorizedTextFolder:
    """Everything memorized-text below a folder, read once: the located results and the unlearning runs."""

    folder: Path
    found: MemorizedTextResults
    unlearned: tuple[tuple[str, UnlearnReport], ...]

    @classmethod
    def find(cls, folder: Path) -> MemorizedTextFolder | None:
        """The results below ``folder``; None when it is not a folder or holds none."""
        if not folder.is_dir():
            return None
        found, unlearned = MemorizedTextResults.find(folder), find_unlearn_reports(folder)
        return None if found.empty() and not unlearned else cls(folder, found, unlearned)

    def write_report(self, out: Path) -> tuple[Path, Path]:
        """Write the page into ``out``: report.md (+ figures/) and report.html."""
        sections = text_sections(self.found) + ([unlearn_section(self.unlearned)] if self.unlearned else [])
        return write_report(out, f"Memorized text: {self.folder.name}", sections)

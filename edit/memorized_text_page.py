"""One report page per memorized-text folder: find it, localize it, remove it.

It gathers the sections of ``locate/lm/memorized_text_report.py`` (extraction,
exposure, localizers) and the unlearning before/after, and writes ``report.md``
(figures in ``figures/``) and a self-contained ``report.html``.

    md, page = write_memorized_text_report(Path("runs/real"), Path("runs/real/report"))
"""

from __future__ import annotations

from pathlib import Path

from memloc.core.errors import RunFolderError
from memloc.core.render import write_report
from memloc.edit.unlearn_report import find_unlearn_reports, unlearn_section
from memloc.locate.lm.memorized_text_report import MemorizedTextResults, text_sections


def holds_memorized_text_results(folder: Path) -> bool:
    """Whether any memorized-text result lies below ``folder``."""
    if not folder.is_dir():
        return False
    return not MemorizedTextResults.find(folder).empty() or bool(find_unlearn_reports(folder))


def write_memorized_text_report(folder: Path, out: Path) -> tuple[Path, Path]:
    """Write the page for everything found below ``folder`` into ``out``."""
    found, unlearned = MemorizedTextResults.find(folder), find_unlearn_reports(folder)
    if found.empty() and not unlearned:
        raise RunFolderError(
            f"{folder} holds no memorized-text results "
            "(extraction.json, *exposure*.json, memorized_neurons.json, unlearn.json)"
        )
    sections = text_sections(found) + ([unlearn_section(unlearned)] if unlearned else [])
    return write_report(out, f"Memorized text: {folder.name}", sections)

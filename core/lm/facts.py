"""Fact records: CounterFact JSON and the simple JSONL form, validated.

CounterFact (Meng et al. 2022) records carry ``case_id``, ``requested_rewrite``
(``prompt`` with ``{}`` for the subject, ``subject``, ``target_true.str``,
``target_new.str``, optionally ``relation_id``), ``paraphrase_prompts``,
``neighborhood_prompts`` and ``generation_prompts``. The simple form is one JSON
object per line: ``{"prompt": ..., "subject": ..., "target": ...}``, where the prompt
either holds ``{}`` or contains the subject verbatim; optional keys are ``case_id``,
``relation``, ``target_new``, ``paraphrases`` and ``neighborhood``.

Every problem is reported as one line naming the file, the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memloc.core.errors import DataError


@dataclass(frozen=True)
class Fact:
    """One fact: ``prompt.format(subject)`` should be completed by ``target_true``."""

    case_id: str
    prompt: str  # holds exactly one "{}" where the subject goes
    subject: str
    target_true: str
    target_new: str = ""
    relation: str = ""
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = field(default=(), repr=False)
    # Each neighbourhood prompt's own answer (zsRE locality, EasyEdit's locality_inputs);
    # empty means CounterFact's rule: every neighbour shares ``target_true``.
    neighborhood_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.neighborhood_targets and len(self.neighborhood_targets) != len(self.neighborhood):
            raise DataError(
                f"fact {self.case_id}: {len(self.neighborhood_targets)} neighborhood_targets for "
                f"{len(self.neighborhood)} neighborhood prompts; give one answer per prompt"
            )

    def neighbor_target(self, j: int) -> str:
        """The answer neighbourhood prompt ``j`` should keep: its own, or the CounterFact ``target_true``."""
        return self.neighborhood_targets[j] if self.neighborhood_targets else self.target_true

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)

    @property
    def relation_key(self) -> str:
        """The relation id, or the prompt template when the record names none."""
        return self.relation or self.prompt

    def prompts(self) -> list[str]:
        """The rewrite prompt followed by its paraphrases."""
        return [self.text, *self.paraphrases]


def _where(source: str, index: int, record: Any) -> str:
    case = record.get("case_id") if isinstance(record, dict) else None
    return f"{source}: record {index}" + (f" (case_id {case})" if case is not None else "")


def _text(value: Any, where: str, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def _texts(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{name}' must be a list of strings")
    return tuple(_text(v, where, f"{name}[{i}]") for i, v in enumerate(value))


def _template(prompt: str, subject: str, where: str, name: str) -> str:
    """The prompt with one ``{}`` for the subject."""
    if prompt.count("{}") > 1:
        raise DataError(f"{where}: field '{name}' has more than one '{{}}' placeholder")
    if "{}" in prompt:
        return prompt
    if subject not in prompt:
        raise DataError(
            f"{where}: field '{name}': the subject {subject!r} is not in the prompt {prompt!r}; "
            "put '{}' where the subject goes or use the subject's exact spelling"
        )
    return prompt.replace(subject, "{}", 1)


def _target(value: Any, where: str, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("str")
        name = f"{name}.str"
    return _text(value, where, name).strip()


def parse_counterfact(record: Any, where: str) -> Fact:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a CounterFact record must be a JSON object")
    rewrite = record.get("requested_rewrite")
    if isinstance(rewrite, list) and len(rewrite) == 1:
        rewrite = rewrite[0]
    if not isinstance(rewrite, dict):
        raise DataError(f"{where}: field 'requested_rewrite' is missing or not an object")
    subject = _text(rewrite.get("subject"), where, "requested_rewrite.subject").strip()
    prompt = _template(
        _text(rewrite.get("prompt"), where, "requested_rewrite.prompt"),
        subject,
        where,
        "requested_rewrite.prompt",
    )
    target_new = rewrite.get("target_new")
    return Fact(
        case_id=str(record.get("case_id", where.rsplit(" ", 1)[-1])),
        prompt=prompt,
        subject=subject,
        target_true=_target(rewrite.get("target_true"), where, "requested_rewrite.target_true"),
        target_new=_target(target_new, where, "requested_rewrite.target_new")
        if target_new is not None
        else "",
        relation=str(rewrite.get("relation_id", "")),
        paraphrases=_texts(record.get("paraphrase_prompts"), where, "paraphrase_prompts"),
        neighborhood=_texts(record.get("neighborhood_prompts"), where, "neighborhood_prompts"),
        generation_prompts=_texts(record.get("generation_prompts"), where, "generation_prompts"),
        neighborhood_targets=_answers(record.get("neighborhood_targets"), where),
    )


def _answers(value: Any, where: str) -> tuple[str, ...]:
    """The optional ``neighborhood_targets``: strings or CounterFact's {"str": ...} objects."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'neighborhood_targets' must be a list, one answer per prompt")
    return tuple(_target(v, where, f"neighborhood_targets[{i}]") for i, v in enumerate(value))


NEIGHBOR_RULES = {
    "counterfact": "CounterFact: every neighbourhood prompt keeps the edited fact's true object",
    "own answers": "own answers: each neighbourhood prompt keeps its own answer (neighborhood_targets)",
    "mixed": "mixed: facts with neighborhood_targets keep their prompts' own answers, the rest CounterFact's",
}


def neighborhood_rule(facts: Sequence[Fact]) -> str:
    """Which rule NS and NM use for these facts; files that mix the two are scored per fact."""
    owned = [bool(f.neighborhood_targets) for f in facts if f.neighborhood]
    if owned and all(owned):
        return "own answers"
    return "counterfact" if not any(owned) else "mixed"


def parse_simple(record: Any, where: str, index: int) -> Fact:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a fact must be a JSON object")
    subject = _text(record.get("subject"), where, "subject").strip()
    target_new = record.get("target_new")
    return Fact(
        case_id=str(record.get("case_id", index)),
        prompt=_template(_text(record.get("prompt"), where, "prompt"), subject, where, "prompt"),
        subject=subject,
        target_true=_target(record.get("target"), where, "target"),
        target_new=_target(target_new, where, "target_new") if target_new is not None else "",
        relation=str(record.get("relation", "")),
        paraphrases=_texts(record.get("paraphrases"), where, "paraphrases"),
        neighborhood=_texts(record.get("neighborhood"), where, "neighborhood"),
        neighborhood_targets=_answers(record.get("neighborhood_targets"), where),
    )


# Keys only CounterFact records carry; a record with any of them is CounterFact even
# when its requested_rewrite is missing, so the error names that field.
COUNTERFACT_KEYS = ("requested_rewrite", "paraphrase_prompts", "neighborhood_prompts", "generation_prompts")


def looks_counterfact(record: Any) -> bool:
    return isinstance(record, dict) and any(key in record for key in COUNTERFACT_KEYS)


def parse_record(record: Any, source: str, index: int, *, counterfact: bool | None = None) -> Fact:
    """One record; ``counterfact`` forces the form (None: decide from the record's keys)."""
    where = _where(source, index, record)
    if counterfact is None:
        counterfact = looks_counterfact(record)
    if counterfact:
        return parse_counterfact(record, where)
    return parse_simple(record, where, index)


def load_facts(path: str | Path, *, limit: int | None = None) -> list[Fact]:
    """Read a CounterFact ``.json`` file (a list or one record) or a ``.jsonl`` file of either form.

    ``limit`` keeps the first ``limit`` facts (a positive count; None keeps all).

    facts = load_facts("fixtures/fixture-facts.json", limit=10)
    """
    if limit is not None and limit < 1:
        raise DataError(
            f"limit must be a positive count of facts, got {limit}; leave it out to use every fact",
            field="limit",
        )
    path = Path(path)
    if not path.is_file():
        raise DataError(f"fact file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (bad byte at line {bad}); save it as UTF-8") from None
    records: list[Any]
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name}: line {line_no} is not valid JSON ({exc.msg})") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        records = loaded if isinstance(loaded, list) else [loaded]
    if not records:
        raise DataError(f"{path.name} holds no facts")
    # One form per file: a CounterFact record that lost its requested_rewrite must not
    # be read as a simple fact with a misleading complaint about 'subject'.
    counterfact = any(looks_counterfact(r) for r in records)
    facts = [parse_record(r, path.name, i, counterfact=counterfact) for i, r in enumerate(records)]
    ids = [f.case_id for f in facts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path.name}: case_id {dup} appears more than once")
    return facts[:limit] if limit is not None else facts


def require_edit_targets(facts: Sequence[Fact]) -> None:
    """Edits need a ``target_new`` that differs from ``target_true``."""
    for fact in facts:
        if not fact.target_new:
            raise DataError(f"fact {fact.case_id}: field 'target_new' is missing; an edit needs a new target")
        if fact.target_new == fact.target_true:
            raise DataError(
                f"fact {fact.case_id}: target_new {fact.target_new!r} equals target_true; nothing to edit"
            )

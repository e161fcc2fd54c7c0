"""Canaries planted in a copy of a corpus, and the file that records them (The Secret Sharer).

Each canary is its template filled with a seeded secret from the template's space R,
written into the copy as a document of its own, ``repeats`` times, at seeded positions.
The input corpus is only read; the copy and the canaries file are new files, refused if
they exist. The canaries file (JSONL, one canary a line) holds the template, the space
declaration, the secret, its repeat count and the document positions it was put at:
everything `locate exposure` needs, and what a fine-tuning run can report it saw.

Usage::

    canaries = make_canaries(Path("corpus.jsonl"), Path("planted.jsonl"),
                             CanaryConfig(template="my PIN is {digits:6}", repeats=(1, 5, 20)))
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from memloc.core.errors import ConfigError, DataError
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.corpus_files import read_corpus
from memloc.core.validation import at_least

DEFAULT_TEMPLATE = "my PIN is {digits:6}"


@dataclass(frozen=True)
class CanaryConfig:
    """The template, the repeat counts, canaries per count, and the seed."""

    template: str = DEFAULT_TEMPLATE
    repeats: tuple[int, ...] = (1, 5, 20)
    per_repeat: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "per_repeat")
        at_least(self, 0, "seed")
        if not self.repeats or min(self.repeats) < 1:
            raise ConfigError("repeats", f"must be one or more counts >= 1, got {self.repeats}")
        space = CanarySpace.parse(self.template)  # a template without a slot fails here, in one line
        if space.size < len(self.repeats) * self.per_repeat:
            raise ConfigError("per_repeat", f"asks for more canaries than the {space.size} secrets of R")


@dataclass(frozen=True)
class Canary:
    """One planted canary: its secret's slot values and text, how often and where it was put."""

    template: str
    secret: tuple[str, ...]
    text: str
    repeats: int
    positions: tuple[int, ...]  # document indices in the new corpus

    @property
    def space(self) -> CanarySpace:
        return CanarySpace.parse(self.template)

    def to_json(self) -> dict:
        return {**asdict(self), "space": self.space.declaration()}

    @classmethod
    def from_json(cls, record: dict, where: str) -> Canary:
        try:
            canary = cls(
                template=str(record["template"]),
                secret=tuple(str(v) for v in record["secret"]),
                text=str(record["text"]),
                repeats=int(record["repeats"]),
                positions=tuple(int(p) for p in record.get("positions", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{where} is not a canary record ({exc!r}); make one with 'memloc canaries make'"
            ) from None
        space = canary.space
        if space.fill(canary.secret) != canary.text:
            space.index(canary.secret)  # a secret outside R is named first
            raise DataError(f"{where}: the secret {canary.secret} does not fill the template to its text")
        return canary


def _secrets(space: CanarySpace, count: int, rng: random.Random) -> list[tuple[str, ...]]:
    chosen: set[int] = set()
    while len(chosen) < count:
        chosen.add(rng.randrange(space.size))
    order = sorted(chosen)
    rng.shuffle(order)
    return [space.values(i) for i in order]


def plant(documents: list[str], config: CanaryConfig) -> tuple[list[str], list[Canary]]:
    """The documents with the canaries inserted, and the canaries with their positions."""
    rng = random.Random(config.seed)
    space = CanarySpace.parse(config.template)
    counts = [r for r in config.repeats for _ in range(config.per_repeat)]
    secrets = _secrets(space, len(counts), rng)
    copies = [c for c, r in enumerate(counts) for _ in range(r)]
    total = len(documents) + len(copies)
    slots = sorted(rng.sample(range(total), len(copies)))
    rng.shuffle(copies)
    owner = dict(zip(slots, copies, strict=True))
    out, originals = [], iter(documents)
    positions: list[list[int]] = [[] for _ in counts]
    for position in range(total):
        if position in owner:
            positions[owner[position]].append(position)
            out.append(space.fill(secrets[owner[position]]))
        else:
            out.append(next(originals))
    canaries = [
        Canary(config.template, secret, space.fill(secret), count, tuple(where))
        for secret, count, where in zip(secrets, counts, positions, strict=True)
    ]
    return out, canaries


def canaries_file_for(corpus_out: Path) -> Path:
    """Where the canaries of a planted corpus are recorded: ``NAME.canaries.jsonl`` beside it."""
    return corpus_out.with_name(corpus_out.stem + ".canaries.jsonl")


def _check_outputs(corpus: Path, out: Path, record: Path) -> None:
    if out.suffix not in (".txt", ".jsonl"):
        raise DataError(f"the new corpus {out} must be a .txt or .jsonl file")
    for path in (out, record):
        if path.exists():
            raise DataError(f"{path} exists; canaries are written only to a new file, choose another --out")
    if corpus.resolve() == out.resolve():
        raise DataError("the new corpus must not be the input corpus")
    if not out.parent.is_dir():
        raise DataError(f"the folder {out.parent} of --out does not exist")


def make_canaries(corpus: Path, out: Path, config: CanaryConfig) -> list[Canary]:
    """Write a copy of ``corpus`` with canaries to ``out`` and their record beside it."""
    record = canaries_file_for(out)
    _check_outputs(corpus, out, record)
    documents, canaries = plant(read_corpus(corpus), config)
    if out.suffix == ".jsonl":
        body = "".join(json.dumps({"text": d}) + "\n" for d in documents)
    else:
        body = "\n\n".join(documents) + "\n"
    out.write_text(body, encoding="utf-8")
    record.write_text("".join(json.dumps(c.to_json()) + "\n" for c in canaries), encoding="utf-8")
    return canaries


def read_canaries(path: Path) -> list[Canary]:
    """The canaries recorded in a canaries file (JSONL, or a JSON list)."""
    if not path.is_file():
        raise DataError(f"canaries file {path} does not exist; make one with 'memloc canaries make'")
    text = path.read_text(encoding="utf-8")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        )
    except json.JSONDecodeError as exc:
        raise DataError(f"canaries file {path} is not JSON or JSONL ({exc.msg})") from None
    if not records:
        raise DataError(f"canaries file {path} holds no canaries")
    return [Canary.from_json(r, f"{path} record {i + 1}") for i, r in enumerate(records)]

"""Reading a local text corpus: the documents memloc's language-model methods run on.

- a ``.txt`` file, one document per blank-line-separated paragraph;
- a ``.jsonl`` file, one document per line in the field ``"text"``;
- a folder of such files, read in sorted name order.

Usage::

    documents = read_corpus("corpus.txt", limit=200)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from memloc.core.errors import DataError

CORPUS_SUFFIXES = (".txt", ".jsonl")


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 over the texts, each length-prefixed so that boundaries count."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def _split_txt(path: Path) -> list[str]:
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return blocks


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number} is not valid JSON ({exc.msg}); each line must be an object"
            ) from exc
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                f'{path}:{number} has no string field "text"; each line must be {{"text": "..."}}'
            )
        if text.strip():
            texts.append(text)
    return texts


def _read_file(path: Path) -> list[str]:
    try:
        return _read_jsonl(path) if path.suffix == ".jsonl" else _split_txt(path)
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"corpus file {path} is not UTF-8 text (bad byte at line {line}); is it a binary file?"
        ) from None


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a local corpus in reading order; one-line errors for a bad path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"corpus {path} does not exist; give a .txt or .jsonl file, a folder of them, or 'generated'"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise DataError(f"corpus folder {path} holds no .txt or .jsonl files")
        return files
    if path.suffix not in CORPUS_SUFFIXES:
        raise DataError(f"corpus {path} must be a .txt or .jsonl file, or a folder of them")
    return [path]


def read_corpus(path: str | Path, limit: int | None = None) -> list[str]:
    """The documents of a local corpus in order, at most ``limit`` of them."""
    texts: list[str] = []
    for file in corpus_files(path):
        texts.extend(_read_file(file))
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise DataError(f"corpus {path} holds no text")
    return texts[:limit] if limit is not None else texts

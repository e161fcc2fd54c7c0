"""Write a local English text corpus for key statistics, from documentation on this machine.

No corpus can be downloaded here, so this gathers prose that every memloc install
already has: the docstrings of Python's standard library and of installed packages'
public functions, and scikit-learn's data set descriptions. Paragraphs of at least
200 characters, deduplicated, in a fixed order.

    python scripts/make_local_corpus.py OUT.jsonl [--max N]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import re
import warnings
from pathlib import Path

MODULES = sorted(
    name
    for name in ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "fractions",
                 "functools", "http", "inspect", "itertools", "json", "logging", "os", "pathlib", "pickle",
                 "random", "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess",
                 "tarfile", "threading", "typing", "unittest", "urllib", "uuid", "xml", "zipfile",
                 "numpy", "sklearn", "networkx", "matplotlib", "torch", "typer", "rich")
)  # fmt: skip


def paragraphs(text: str) -> list[str]:
    parts = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text or ""))
    return [p for p in parts if len(p) >= 200 and not p.startswith((">>>", "..", "|", "-", "="))]


def module_texts(name: str) -> list[str]:
    try:
        module = importlib.import_module(name)
    except Exception:
        return []
    texts = paragraphs(inspect.getdoc(module) or "")
    for _, obj in sorted(vars(module).items()):
        if callable(obj) and (getattr(obj, "__module__", None) or "").startswith(name):
            texts += paragraphs(inspect.getdoc(obj) or "")
    if hasattr(module, "__path__"):
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and "test" not in info.name:
                try:
                    sub = importlib.import_module(f"{name}.{info.name}")
                except Exception:
                    continue
                texts += paragraphs(inspect.getdoc(sub) or "")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max", type=int, default=5000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    texts: list[str] = []
    import sklearn

    for rst in sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst")):
        texts += paragraphs(rst.read_text())
    for name in MODULES:
        texts += module_texts(name)
    seen, unique = set(), []
    for text in texts:
        if text not in seen:
            seen.add(text)
            unique.append(text)
    unique = unique[: args.max]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": t}) + "\n" for t in unique))
    print(f"{len(unique)} paragraphs, {sum(len(t) for t in unique)} characters -> {args.out}")


if __name__ == "__main__":
    main()

"""Context templates: short texts sampled from the model itself that prefix an edit's prompts.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", §3.1 and
appendix) averages the key k* and optimises the value v* over the rewrite prompt
preceded by a few random model-generated prefixes, so that the edit generalises
beyond one exact context. Following the paper, the templates are ``"{}"`` (the bare
prompt) plus, for each ``(count, tokens)`` group, ``count`` texts of ``tokens`` tokens
sampled with top-k from the model's document-start token, each written as
``"<text>. {}"``; braces in a sample are replaced by spaces so ``{}`` stays the only
placeholder.

Unlike the reference code (an unseeded module-level cache), sampling uses a seeded
``torch.Generator`` and the result is cached on disk per model, under a key of the
weights' hash and the config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from memloc.core.checkpoints import atomic_write_text
from memloc.core.lm.loading import cache_root
from memloc.core.lm.model import LM, document_start_id
from memloc.core.lm.prefix_runner import cache_keyword, cache_of
from memloc.core.validation import at_least, fail
from memloc.edit.delta import weights_hash
from memloc.edit.sampling import top_k_sample


@dataclass(frozen=True)
class TemplateConfig:
    """How many templates of which length, and how they are sampled."""

    counts: tuple[tuple[int, int], ...] = ((10, 5), (10, 10))  # (how many, new tokens each)
    top_k: int = 5
    seed: int = 0
    # The token sampling starts from; "" = the model's document start (core/lm.py:
    # GPT-2's <|endoftext|>, the document separator the paper samples from).
    start: str = ""

    def __post_init__(self) -> None:
        at_least(self, 1, "top_k")
        at_least(self, 0, "seed")
        if any(len(pair) != 2 or min(pair) < 0 for pair in self.counts):
            raise fail(
                self, "counts", f"must be (how many, new tokens) pairs, none negative, got {self.counts}"
            )


def _start_id(tokenizer, start: str) -> int:
    if start:
        ids = tokenizer(start, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the template start {start!r} must be a single token, got {len(ids)}")
        return ids[0]
    return document_start_id(tokenizer)


@torch.no_grad()
def sample_texts(lm: LM, count: int, tokens: int, top_k: int, gen: torch.Generator, start: int) -> list[str]:
    """``count`` texts of ``tokens`` sampled tokens each, generated as one batch with a KV cache."""
    ids = torch.full((count, 1), start, dtype=torch.long, device=lm.device)
    keyword = cache_keyword(lm.model)
    out = lm.model(input_ids=ids, use_cache=True)
    new = []
    for step in range(tokens):
        token = top_k_sample(out.logits[:, -1], top_k, gen)
        new.append(token)
        if step + 1 < tokens:
            out = lm.model(input_ids=token, use_cache=True, **{keyword: cache_of(out)})
    rows = torch.cat(new, dim=1).tolist()
    return list(lm.tokenizer.batch_decode(rows, skip_special_tokens=True))


def as_template(text: str) -> str:
    return text.replace("{", " ").replace("}", " ") + ". {}"


def sample_templates(lm: LM, config: TemplateConfig) -> tuple[str, ...]:
    """The templates, sampled now (no cache)."""
    gen = torch.Generator(device=lm.device).manual_seed(config.seed)
    start = _start_id(lm.tokenizer, config.start)
    texts = [t for count, n in config.counts for t in sample_texts(lm, count, n, config.top_k, gen, start)]
    return ("{}", *(as_template(t) for t in texts))


def _cache_file(lm: LM, config: TemplateConfig, cache_dir: Path) -> Path:
    start = _start_id(lm.tokenizer, config.start)
    key = json.dumps(
        {"weights": weights_hash(lm.model), "config": asdict(config), "start": start}, sort_keys=True
    )
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def context_templates(
    lm: LM, config: TemplateConfig, cache_dir: str | Path | None = None, *, cache: bool = True
) -> tuple[str, ...]:
    """``"{}"`` plus the sampled ``"<text>. {}"`` templates, cached on disk per model.

    ``cache_dir`` defaults to ``<memloc cache>/templates``; ``cache=False`` samples
    without reading or writing the cache.
    """
    if not cache:
        return sample_templates(lm, config)
    path = _cache_file(lm, config, Path(cache_dir) if cache_dir is not None else cache_root() / "templates")
    if path.is_file():
        return tuple(json.loads(path.read_text())["templates"])
    templates = sample_templates(lm, config)
    record = {"config": asdict(config), "source": lm.source, "templates": list(templates)}
    atomic_write_text(path, json.dumps(record, indent=1))
    return templates

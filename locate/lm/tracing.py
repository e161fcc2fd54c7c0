"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

Corrupt the subject's token embeddings with Gaussian noise, restore the clean
activation at one (token, layer) inside the corrupted run, and measure how much of
the clean answer's probability comes back (Meng et al. 2022, section 2.1). Kinds of restoration:

- ``hidden``: the residual stream leaving block l (``resid.post``) at token t;
- ``mlp`` / ``attn``: the MLP / attention output (``mlp.out`` / ``attn.out``) at token t
  in every block of the window [l - window/2, l + window/2) clipped to the model.

A grid cell is P(first token of " " + target at the last position), averaged over
``samples`` corrupted copies. The noise has std ``noise`` x sigma, sigma being the std
of the embedding matrix's entries; it is drawn once per fact from a seeded generator,
so every cell of a fact sees the same corruption and cells are comparable.

The reference implementation (``method="plain"``) runs one full forward pass per cell,
the noise samples batched, as the ROME code does. The fast path (the default) computes
the same numbers with far less work, exactly up to floating-point reordering:

- Before token t everything equals the corrupted run (attention is causal), so a row
  restored at token t runs only tokens t.. and reads the prefix's keys and values from
  the corrupted run's cache.
- Below the first restored layer everything equals the corrupted run too, so a row
  enters the blocks at its first restored layer, starting from the corrupted run's
  residual stream there. The blocks are then called one by one with the very
  arguments (masks, positions) the model passes them, captured on a one-row probe.
- Rows (cell x noise sample) of all kinds restored at one token share each pass,
  ``batch_size`` rows at a time, sorted by entry layer so that each block runs only
  the rows that have entered.
- Before the subject the clean and corrupted runs agree, so restoring there changes
  nothing: those cells are the corrupted probability and cost no pass.

Edit-layer choice (``best_layer``): the layer whose MLP restoration at the subject's
last token recovers the most probability. Over many facts it is the argmax over layers
of the mean, over facts, of the ``mlp`` grid row at each fact's last subject token
(the mean indirect effect; subtracting each fact's corrupted probability shifts a row
by a constant and does not move the argmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from memloc.core.errors import DataError, MemlocError
from memloc.core.finite import require_finite
from memloc.core.hooks import Transform, patch, trace
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode
from memloc.core.lm.prefix_runner import BlockRunner, PrefixCache, cache_inputs
from memloc.core.progress import Progress, within
from memloc.core.sites import Site
from memloc.core.validation import at_least, fail, one_of, positive

KIND_SITES = {"hidden": "resid.post", "mlp": "mlp.out", "attn": "attn.out"}
TRACE_KINDS = tuple(KIND_SITES)
METHODS = ("fast", "plain")


@dataclass(frozen=True)
class TraceConfig:
    """Causal tracing settings.

    ``tokens``: prompt token indices to trace (negative ones count from the end);
    None traces every token. ``batch_size``: (noise sample, cell) rows per forward
    pass of the fast path. ``method``: "fast" or the one-cell-per-pass "plain" reference.
    """

    samples: int = 10
    noise: float = 3.0
    window: int = 10
    kinds: tuple[str, ...] = TRACE_KINDS
    seed: int = 0
    batch_size: int = 256
    tokens: tuple[int, ...] | None = None
    method: str = "fast"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(self.tokens))
        unknown = [k for k in self.kinds if k not in KIND_SITES]
        if unknown or not self.kinds:
            raise fail(
                self,
                "kinds",
                f"holds unknown trace kinds {unknown or '(none)'}; choose from {', '.join(TRACE_KINDS)}",
            )
        at_least(self, 1, "samples", "window", "batch_size")
        at_least(self, 0, "seed")
        positive(self, "noise")
        one_of(self, "method", METHODS)


def restored_layers(kind: str, layer: int, n_layers: int, window: int) -> range:
    """The blocks whose activation a cell (kind, layer) restores."""
    if kind == "hidden":
        return range(layer, layer + 1)
    return range(max(0, layer - window // 2), min(n_layers, layer + math.ceil(window / 2)))


# --- results -------------------------------------------------------------------------


def _rows(grid: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in grid]


@dataclass
class FactTrace:
    """The causal trace of one fact.

    ``grids[kind]`` is a (tokens, layers) array of P(target) with the cell restored;
    untraced tokens are NaN. ``subject`` is the subject's token span [start, end).
    """

    case_id: str
    prompt: str
    target: str
    target_token: int
    tokens: list[str]
    subject: tuple[int, int]
    clean_prob: float
    corrupted_prob: float
    noise_std: float
    grids: dict[str, np.ndarray]
    window: int = 10

    @property
    def last_subject(self) -> int:
        return self.subject[1] - 1

    @property
    def best_layer(self) -> int | None:
        """The layer with the peak MLP effect at the subject's last token (None without an mlp grid)."""
        row = self.grids.get("mlp", np.full((1, 1), np.nan))[self.last_subject]
        return None if np.isnan(row).all() else int(np.nanargmax(row))

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "target": self.target,
            "target_token": self.target_token,
            "tokens": list(self.tokens),
            "subject": list(self.subject),
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "noise_std": self.noise_std,
            "window": self.window,
            "best_layer": self.best_layer,
            "grids": {kind: _rows(grid) for kind, grid in self.grids.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FactTrace:
        grids = {
            kind: np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
            for kind, rows in data["grids"].items()
        }
        keys = ("case_id", "prompt", "target", "target_token", "tokens", "clean_prob")
        return cls(
            **{k: data[k] for k in keys},
            subject=tuple(data["subject"]),
            corrupted_prob=data["corrupted_prob"],
            noise_std=data["noise_std"],
            grids=grids,
            window=data.get("window", 10),
        )


def average_best_layer(traces: Sequence[FactTrace]) -> int | None:
    """argmax over layers of the mean, over facts, of the mlp row at the last subject token."""
    rows = [t.grids["mlp"][t.last_subject] for t in traces if "mlp" in t.grids]
    rows = [r for r in rows if not np.isnan(r).all()]
    return int(np.nanargmax(np.nanmean(np.stack(rows), axis=0))) if rows else None


@dataclass
class TraceReport:
    """Causal traces of many facts and the edit layer they suggest."""

    config: TraceConfig
    facts: list[FactTrace] = field(default_factory=list)

    @property
    def best_layer(self) -> int | None:
        return average_best_layer(self.facts)

    def to_dict(self) -> dict:
        return {
            "method": "causal_trace",
            "config": asdict(self.config),
            "best_layer": self.best_layer,
            "best_layer_rule": "argmax over layers of the mean over facts of P(target) "
            "with the MLP window restored at the subject's last token",
            "facts": [f.to_dict() for f in self.facts],
        }


# --- shared pieces ---------------------------------------------------------------------


@dataclass
class _Prepared:
    """What every cell of one fact needs: ids, noise, clean and corrupted runs."""

    fact: Fact
    ids: torch.Tensor  # (1, T)
    subject: tuple[int, int]
    target: int
    noise: torch.Tensor  # (S, subject tokens, D)
    noise_std: float
    clean: dict[Site, torch.Tensor]  # site -> (T, D) clean activation
    clean_kv: PrefixCache
    clean_prob: float
    corrupted_kv: PrefixCache  # (S rows) keys and values of the corrupted run
    entries: list[torch.Tensor]  # j -> (S, T, D) corrupted resid.pre of block j; j = L is the output
    corrupted_prob: float


def _corrupt(noise: torch.Tensor, span: tuple[int, int]) -> Transform:
    start, end = span

    def add_noise(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, start:end] += noise.to(h.device)
        return h

    return add_noise


def _restore(clean: torch.Tensor, tokens: Sequence[int]) -> Transform:
    index = list(tokens)

    def put_back(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, index] = clean[index].to(h.device)
        return h

    return put_back


def _composed(fns: Sequence[Transform]) -> Transform:
    def apply(h: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            h = fn(h)
        return h

    return apply


def _target_probs(logits: torch.Tensor, target: int) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)[:, target]


def _prepare(lm: LM, fact: Fact, config: TraceConfig) -> _Prepared:
    model, adapter = lm.model, lm.adapter
    try:
        enc = encode(lm.tokenizer, fact.prompt, fact.subject, fact.target_true)
    except DataError as exc:
        raise DataError(f"fact {fact.case_id}: {exc}") from None
    embedding = adapter.embedding(model).weight
    device = lm.input_device  # the embedding's execution device, also when a device map places it
    ids = torch.tensor([enc.ids], device=device)
    n_layers = adapter.n_layers
    noise_std = config.noise * embedding.float().std().item()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start, end = enc.subject
    shape = (config.samples, end - start, embedding.shape[1])
    noise = (torch.randn(shape, generator=generator, device=device) * noise_std).to(embedding.dtype)

    sites = [Site(j, kind) for kind in KIND_SITES.values() for j in range(n_layers)]
    with trace(model, adapter, sites) as seen:
        clean_kv, out = PrefixCache.run(model, input_ids=ids)
        logits = out.logits[:, -1]
    require_finite(model, adapter, logits, f"fact {fact.case_id}'s clean run", input_ids=ids)
    clean = {site: seen[site][0] for site in sites}
    clean_prob = _target_probs(logits, enc.target[0]).item()

    first = Site(0, "resid.pre")
    inner = [Site(j, "resid.pre") for j in range(1, n_layers)] + [Site(n_layers - 1, "resid.post")]
    rows = ids.expand(config.samples, -1)
    with (
        patch(model, adapter, {first: _corrupt(noise, enc.subject)}) as noised,
        trace(model, adapter, inner) as seen,
    ):
        corrupted_kv, out = PrefixCache.run(model, input_ids=rows)
        logits = out.logits[:, -1]
    entries = [noised[first]] + [seen[site] for site in inner]
    corrupted_prob = _target_probs(logits, enc.target[0]).mean().item()
    return _Prepared(
        fact, ids, enc.subject, enc.target[0], noise, noise_std, clean, clean_kv, clean_prob,
        corrupted_kv, entries, corrupted_prob,
    )  # fmt: skip


def _traced_tokens(config: TraceConfig, n_tokens: int) -> list[int]:
    if config.tokens is None:
        return list(range(n_tokens))
    chosen = []
    for t in config.tokens:
        if not -n_tokens <= t < n_tokens:
            raise MemlocError(f"trace token {t} is out of range; the prompt has {n_tokens} tokens")
        chosen.append(t % n_tokens)
    return sorted(set(chosen))


# --- the plain reference: one forward pass per cell ---------------------------------


def _plain_prob(lm: LM, prep: _Prepared, clean: Mapping[Site, torch.Tensor], restore: Mapping) -> float:
    """Mean P(target) over the noise samples with ``restore`` {site: tokens} put back."""
    fns: dict[Site, list[Transform]] = {Site(0, "resid.pre"): [_corrupt(prep.noise, prep.subject)]}
    for site, tokens in restore.items():
        fns.setdefault(site, []).append(_restore(clean[site], tokens))
    rows = prep.ids.expand(prep.noise.shape[0], -1)
    with patch(lm.model, lm.adapter, {site: _composed(f) for site, f in fns.items()}):
        logits = lm.model(input_ids=rows).logits[:, -1]
    return _target_probs(logits, prep.target).mean().item()


def _plain_grids(lm: LM, prep: _Prepared, config: TraceConfig, progress: Progress | None) -> dict:
    n_layers, n_tokens = lm.adapter.n_layers, prep.ids.shape[1]
    grids = {kind: np.full((n_tokens, n_layers), np.nan) for kind in config.kinds}
    done, cells = 0, len(config.kinds) * len(_traced_tokens(config, n_tokens)) * n_layers
    for kind in config.kinds:
        for t in _traced_tokens(config, n_tokens):
            for layer in range(n_layers):
                layers = restored_layers(kind, layer, n_layers, config.window)
                restore = {Site(j, KIND_SITES[kind]): [t] for j in layers}
                grids[kind][t, layer] = _plain_prob(lm, prep, prep.clean, restore)
                done += 1
                if progress:
                    progress(done, cells, "cells")
    return grids


# --- the fast path ----------------------------------------------------------------------


def _probe(lm: LM, prep: _Prepared, t: int) -> BlockRunner:
    """Every block, called as the model calls it on tokens t.. after a cached prefix."""
    cache = prep.clean_kv.fresh(length=t)
    return BlockRunner(
        lm, range(lm.adapter.n_layers), input_ids=prep.ids[:, t:], **cache_inputs(lm.model, cache)
    )


@dataclass
class _Rows:
    """Rows restored at one token, sorted by the layer at which they enter the blocks."""

    cell: torch.Tensor  # index into the token's cell list
    sample: torch.Tensor  # noise sample
    kind: torch.Tensor  # index into TRACE_KINDS
    start: torch.Tensor  # first block the row runs (L = after the last block)
    end: torch.Tensor  # one past the last restored block

    def __getitem__(self, index: slice) -> _Rows:
        return _Rows(
            self.cell[index], self.sample[index], self.kind[index], self.start[index], self.end[index]
        )

    def __len__(self) -> int:
        return len(self.cell)


def _rows_at(cells: list[tuple[str, int]], samples: int, n_layers: int, window: int, device) -> _Rows:
    table = []
    for c, (kind, layer) in enumerate(cells):
        layers = restored_layers(kind, layer, n_layers, window)
        # A hidden row enters above its restored block with that block's clean output at token t.
        start = layer + 1 if kind == "hidden" else layers.start
        table += [(start, c, s, TRACE_KINDS.index(kind), layers.stop) for s in range(samples)]
    table.sort()
    columns = [torch.tensor(col, device=device) for col in zip(*table, strict=True)]
    return _Rows(cell=columns[1], sample=columns[2], kind=columns[3], start=columns[0], end=columns[4])


def _pass(
    lm: LM,
    prep: _Prepared,
    runner: BlockRunner,
    t: int,
    rows: _Rows,
    on_block: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """P(target) of each row: run tokens t.. through the blocks each row needs; ``on_block(j)`` after block j."""
    model, adapter = lm.model, lm.adapter
    n_layers = adapter.n_layers
    first = int(rows.start[0])
    starts = rows.start.tolist()
    active = [int(np.searchsorted(starts, j, side="right")) for j in range(n_layers + 1)]
    picks = {j: rows.sample[: active[j]] for j in range(first, n_layers)}
    cache = prep.corrupted_kv.fresh(range(first, n_layers), length=t, rows=picks)

    hidden = TRACE_KINDS.index("hidden")
    fns: dict[Site, Transform] = {}
    for kind in ("mlp", "attn"):
        code = TRACE_KINDS.index(kind)
        for j in range(first, n_layers):
            where = (rows.kind == code) & (rows.start <= j) & (rows.end > j)
            if bool(where.any()):
                site = Site(j, KIND_SITES[kind])
                fns[site] = _restore_rows(torch.nonzero(where).squeeze(1), prep.clean[site][t])

    h = None
    with patch(model, adapter, fns):
        for j in range(first, n_layers + 1):
            new = slice(active[j - 1] if j > first else 0, active[j])
            if new.stop > new.start:
                entry = prep.entries[j]
                entered = entry[rows.sample[new].to(entry.device), t:]
                if j > 0:
                    is_hidden = (rows.kind[new] == hidden).to(entry.device)
                    entered[is_hidden, 0] = prep.clean[Site(j - 1, "resid.post")][t].to(entry.device)
                h = entered if h is None else torch.cat([h, entered.to(h.device)])
            if j < n_layers and h is not None:
                h = runner.block(j, h, cache)
                if on_block is not None:
                    on_block(j)
    assert h is not None  # every row enters at some layer
    logits = runner.logits(h[:, -1:])[:, -1]
    return _target_probs(logits, prep.target)


def _restore_rows(rows: torch.Tensor, clean: torch.Tensor) -> Transform:
    def put_back(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        act[rows.to(act.device), 0] = clean.to(act.device)  # position 0 of the pass is token t
        return act

    return put_back


def _block_progress(
    progress: Progress | None, done: int, total: int, n_layers: int
) -> Callable[[int], None] | None:
    """Report each block of a pass: one pass can hold every cell of a token and run for
    long on a real model, so the bar must move inside it."""
    if progress is None:
        return None
    return lambda j: progress(done, total, f"cells (block {j + 1} of {n_layers})")


def _fast_grids(lm: LM, prep: _Prepared, config: TraceConfig, progress: Progress | None) -> dict:
    n_layers, n_tokens = lm.adapter.n_layers, prep.ids.shape[1]
    grids = {kind: np.full((n_tokens, n_layers), np.nan) for kind in config.kinds}
    done, rows_in_all = (
        0,
        len(config.kinds) * len(_traced_tokens(config, n_tokens)) * n_layers * config.samples,
    )
    for t in _traced_tokens(config, n_tokens):
        if t < prep.subject[0]:
            # Clean and corrupted runs agree before the subject: restoring is a no-op.
            for kind in config.kinds:
                grids[kind][t] = prep.corrupted_prob
            continue
        cells = [(kind, layer) for kind in config.kinds for layer in range(n_layers)]
        rows = _rows_at(cells, config.samples, n_layers, config.window, prep.ids.device)
        runner = _probe(lm, prep, t)
        total = torch.zeros(len(cells), dtype=torch.float64, device=prep.ids.device)
        for begin in range(0, len(rows), config.batch_size):
            chunk = rows[begin : begin + config.batch_size]
            blocks = _block_progress(
                progress, done // config.samples, rows_in_all // config.samples, n_layers
            )
            total.index_add_(0, chunk.cell, _pass(lm, prep, runner, t, chunk, blocks).double())
            done += len(chunk)
            if progress:
                progress(done // config.samples, rows_in_all // config.samples, "cells")
        for (kind, layer), value in zip(cells, (total / config.samples).tolist(), strict=True):
            grids[kind][t, layer] = value
    return grids


# --- public API ---------------------------------------------------------------------------


def trace_fact(
    lm: LM, fact: Fact, config: TraceConfig = TraceConfig(), *, progress: Progress | None = None
) -> FactTrace:
    """Causal-trace one fact: grids of P(target) for each restored (token, layer) and kind."""
    with torch.inference_mode():
        prep = _prepare(lm, fact, config)
        method = _fast_grids if config.method == "fast" else _plain_grids
        grids = method(lm, prep, config, progress)
    return FactTrace(
        case_id=fact.case_id,
        prompt=fact.text,
        target=fact.target_true,
        target_token=prep.target,
        tokens=list(lm.tokenizer.batch_decode([[i] for i in prep.ids[0].tolist()])),
        subject=prep.subject,
        clean_prob=prep.clean_prob,
        corrupted_prob=prep.corrupted_prob,
        noise_std=prep.noise_std,
        grids=grids,
        window=config.window,
    )


def trace_facts(
    lm: LM, facts: Sequence[Fact], config: TraceConfig = TraceConfig(), *, progress: Progress | None = None
) -> TraceReport:
    """Causal-trace every fact; the report's ``best_layer`` is the averaged edit-layer choice.

    ``progress`` counts facts, and its description follows the cells of the fact being traced.

    report = trace_facts(load_language_model("smollm2-135m"), load_facts("facts.json"))
    """
    report = TraceReport(config)
    for i, fact in enumerate(facts):
        cells = within(progress, i, len(facts), f"fact {fact.case_id}")
        report.facts.append(trace_fact(lm, fact, config, progress=cells))
        if progress:
            progress(i + 1, len(facts), f"fact {fact.case_id}")
    return report


def restored_prob(
    lm: LM, fact: Fact, restore: Mapping[Site, Sequence[int]], config: TraceConfig = TraceConfig()
) -> float:
    """Mean P(target) over the corrupted copies with the clean activation restored at
    the given sites and tokens, in one plain forward pass (any sites, any tokens)."""
    with torch.inference_mode():
        prep = _prepare(lm, fact, config)
        with trace(lm.model, lm.adapter, list(restore)) as seen:
            lm.model(input_ids=prep.ids)
        clean = {site: seen[site][0] for site in restore}
        return _plain_prob(lm, prep, clean, restore)

"""Key statistics C = E[k kᵀ] for ROME and MEMIT, streamed, resumable and cached.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") and
MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer") weight their
updates by the uncentred second moment of the keys k, the input of the FFN
down-projection (`Site(layer, "mlp.post")`), over a text corpus:

    C = (1/N) Σ_t k_t k_tᵀ        over every non-padding token t of every text.

- One pass over the corpus serves several layers: all their keys are traced in the
  same forward pass, and the forward stops after the deepest of them.
- Texts are batched by similar token length, padded on the right (so real tokens
  never attend to padding and keep their unbatched values) and summed in the
  accumulation dtype (float64 by default).
- Every ``checkpoint_every`` batches the partial sums and the number of texts done
  are written atomically; a rerun continues from there and gives the identical
  result, bit for bit, because the batches and the order of the sums do not change.
- Finished statistics are cached per layer under a key of (weights hash, corpus
  hash, samples, max_tokens, dtype) plus the layer; see `cache_folder`. A cache hit
  does not run the model.

Shrinkage. The condition number is κ = λ_max / λ_min (eigvalsh in float64). When
κ > ``max_condition`` = τ, `KeyStats.matrix` returns the linear shrinkage toward the
identity scaled by the mean eigenvalue μ = tr(C)/F (Ledoit & Wolf 2004 style):

    C_α = (1 − α) C + α μ I,   α = (λ_max − τ λ_min) / ((λ_max − τ λ_min) + (τ − 1) μ),

the smallest α for which κ(C_α) = τ. (Solve ((1−α)λ_max + αμ) = τ((1−α)λ_min + αμ)
for α.) α is computed for a target a hair under τ so that rounding cannot leave the
result just above it. Shrinking keeps the trace and the eigenvectors of C.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from memloc.core.checkpoints import atomic_write_text, load_tensors, save_tensors
from memloc.core.devices import EIGH_COPIES, room_or_cpu
from memloc.core.errors import DataError, MemlocError, MemlocWarning
from memloc.core.hooks import trace
from memloc.core.jsonl import read_log
from memloc.core.lm.loading import cache_root
from memloc.core.lm.model import LM, added_prefix, document_start_id
from memloc.core.progress import Progress
from memloc.core.sites import Site
from memloc.core.validation import at_least, fail, finite, one_of
from memloc.edit.corpus import GENERATED, GenerationConfig, generate_texts, read_corpus, texts_hash
from memloc.edit.delta import weights_hash
from safetensors import SafetensorError, safe_open

ACCUMULATION_DTYPES = {"float32": torch.float32, "float64": torch.float64}
CACHE_FORMAT = 1
# Target a hair under the limit so that rounding never leaves κ just above it.
_SHRINK_MARGIN = 1 - 1e-9


@dataclass(frozen=True)
class StatsConfig:
    """Where the keys come from and how their second moment is accumulated."""

    corpus: str = GENERATED  # "generated", or a .txt/.jsonl file or a folder of them
    samples: int = 1000  # texts to use (the first ones of a local corpus)
    max_tokens: int = 128  # tokens per text; longer texts are cut
    batch_size: int = 16
    dtype: str = "float64"  # accumulation dtype
    seed: int = 0  # for the generated corpus
    generated_length: int = 64  # new tokens per generated text
    top_k: int = 50  # generated texts sample from the top-k tokens at temperature 1
    max_condition: float = 1e6  # shrink when λ_max / λ_min exceeds this
    checkpoint_every: int = 8  # batches between resumable checkpoints

    def __post_init__(self) -> None:
        one_of(self, "dtype", ACCUMULATION_DTYPES)
        at_least(
            self, 1, "samples", "max_tokens", "batch_size", "generated_length", "top_k", "checkpoint_every"
        )
        at_least(self, 0, "seed")
        finite(self, "max_condition")
        if not self.max_condition > 1:
            raise fail(self, "max_condition", f"must be above 1, got {self.max_condition}")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            length=self.generated_length, top_k=self.top_k, batch_size=self.batch_size, seed=self.seed
        )


@dataclass(frozen=True)
class Spectrum:
    """What the eigenvalues of C say about solving with it, and the shrinkage applied."""

    condition: float  # λ_max / λ_min of C itself (inf when λ_min ≤ 0)
    min_eigenvalue: float
    max_eigenvalue: float
    mean_eigenvalue: float  # μ = tr(C) / F
    shrinkage: float  # α; 0 when C is well conditioned
    shrunk_condition: float  # κ of `KeyStats.matrix()`


def shrink(low: float, high: float, mean: float, max_condition: float) -> Spectrum:
    """The shrinkage α for C with these extreme and mean eigenvalues (formula above)."""
    condition = high / low if low > 0 else float("inf")
    if condition <= max_condition or high <= 0:
        return Spectrum(condition, low, high, mean, 0.0, condition)
    tau = max_condition * _SHRINK_MARGIN
    gap = high - tau * low
    alpha = gap / (gap + (tau - 1) * mean)
    shrunk = ((1 - alpha) * high + alpha * mean) / ((1 - alpha) * low + alpha * mean)
    return Spectrum(condition, low, high, mean, alpha, shrunk)


def spectrum(second_moment: torch.Tensor, max_condition: float) -> Spectrum:
    """Eigenvalues of C in float64, and the shrinkage α that brings κ under ``max_condition``."""
    # The eigenvalues are computed where C is when the solver's workspace fits there, else on the CPU.
    where = room_or_cpu(second_moment.device, EIGH_COPIES * second_moment.numel() * 8)
    eig = torch.linalg.eigvalsh(second_moment.to(where, torch.float64))
    return shrink(eig[0].item(), eig[-1].item(), eig.mean().item(), max_condition)


@dataclass(frozen=True)
class KeyStats:
    """C = E[k kᵀ] of one layer's keys (F, F) float64, and how it was made."""

    layer: int
    second_moment: torch.Tensor  # (F, F) float64, uncentred
    count: int  # tokens averaged over
    texts: int
    spectrum: Spectrum
    key: str = ""  # the cache key, when cached

    @property
    def condition(self) -> float:
        return self.spectrum.condition

    @property
    def shrinkage(self) -> float:
        return self.spectrum.shrinkage

    def matrix(self) -> torch.Tensor:
        """C shrunk toward μI when ill-conditioned (see the module docstring); float64."""
        alpha = self.spectrum.shrinkage
        if alpha == 0:
            return self.second_moment
        eye = torch.eye(self.second_moment.shape[0], dtype=torch.float64, device=self.second_moment.device)
        return (1 - alpha) * self.second_moment + (alpha * self.spectrum.mean_eigenvalue) * eye

    def to_dict(self) -> dict:
        """Plain numbers for JSON; an infinite condition number (singular C) becomes None."""
        spec = {k: v if math.isfinite(v) else None for k, v in asdict(self.spectrum).items()}
        return {
            "layer": self.layer,
            "width": self.second_moment.shape[0],
            "tokens": self.count,
            "texts": self.texts,
            **spec,
            "trace": float(self.second_moment.diagonal().sum()),
            "key": self.key,
        }


# --- cache layout -------------------------------------------------------------------


def cache_folder(
    cache_dir: str | Path | None, weights: str, corpus: str, config: StatsConfig, texts: int
) -> Path:
    """``<cache>/stats/<weights hash>/<corpus hash>-n<texts>-t<max_tokens>-<dtype>/``.

    Inside: ``layer_<l>.safetensors`` per finished layer (C in float64, with the token
    count, text count and extreme eigenvalues as metadata) and
    ``partial-<layers>.safetensors`` (the running sums) while a pass is running.
    Generated corpora are kept beside, as ``<weights hash>/generated-<corpus hash>.jsonl``.
    """
    return model_folder(cache_dir, weights) / f"{corpus[:16]}-n{texts}-t{config.max_tokens}-{config.dtype}"


def model_folder(cache_dir: str | Path | None, weights: str) -> Path:
    """``<cache>/stats/<weights hash>/``: everything cached for one model's exact weights."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "stats"
    return root / weights[:16]


def _layer_file(folder: Path, layer: int) -> Path:
    return folder / f"layer_{layer}.safetensors"


def _partial_file(folder: Path, layers: Sequence[int]) -> Path:
    return folder / f"partial-{'-'.join(map(str, layers))}.safetensors"


def _load_cached(folder: Path, layer: int, config: StatsConfig) -> KeyStats | None:
    path = _layer_file(folder, layer)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != str(CACHE_FORMAT):
            return None  # written by another version of this file: recompute
        second = load_tensors(path)["second_moment"].double()
    except (SafetensorError, MemlocError, OSError, KeyError) as exc:
        # A cache is only a copy of work that can be redone: a damaged one is recomputed.
        warnings.warn(
            f"the cached statistics {path} are damaged ({_first_line(exc)}); recomputing",
            MemlocWarning,
            stacklevel=2,
        )
        return None
    # The shrinkage depends on max_condition, which is not part of the key: redo it
    # from the stored eigenvalues rather than from a new eigendecomposition.
    eig = json.loads(meta["eigenvalues"])
    spec = shrink(eig["min"], eig["max"], eig["mean"], config.max_condition)
    return KeyStats(layer, second, int(meta["count"]), int(meta["texts"]), spec, meta["key"])


def _save_cached(folder: Path, stats: KeyStats) -> None:
    spec = stats.spectrum
    meta = {
        "format": str(CACHE_FORMAT),
        "count": str(stats.count),
        "texts": str(stats.texts),
        "key": stats.key,
        "eigenvalues": json.dumps(
            {"min": spec.min_eigenvalue, "max": spec.max_eigenvalue, "mean": spec.mean_eigenvalue}
        ),
    }
    save_tensors(_layer_file(folder, stats.layer), {"second_moment": stats.second_moment}, metadata=meta)


# --- corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Corpus:
    texts: list[str] | None  # None until needed for a generated corpus
    hash: str
    size: int


def _resolve_corpus(lm: LM, config: StatsConfig, weights: str) -> _Corpus:
    # The tokens the tokenizer adds before each text change every key, so they are part
    # of the corpus's name (none for GPT-2-style tokenizers, which keeps their old keys).
    prefix = added_prefix(lm.tokenizer)
    tokens = f":prefix={list(prefix)}" if prefix else ""
    if config.corpus != GENERATED:
        texts = read_corpus(config.corpus, limit=config.samples)
        named = texts_hash(texts)
        if tokens:
            named = hashlib.sha256((named + tokens).encode()).hexdigest()
        return _Corpus(texts, named, len(texts))
    # Generated texts are fixed by the weights, the start token and the sampling options,
    # so a hash of those names them without generating anything (a cache hit runs no model).
    start = document_start_id(lm.tokenizer)
    described = f"{config.generation().describe()}:n={config.samples}:weights={weights}:start={start}{tokens}"
    return _Corpus(None, hashlib.sha256(described.encode()).hexdigest(), config.samples)


def _generated_texts(lm: LM, config: StatsConfig, path: Path, progress: Progress | None) -> list[str]:
    """The generated texts, kept in the cache so that other layers and dtypes reuse them."""
    if path.is_file():
        try:
            texts = [record["text"] for record in read_log(path)]
        except (MemlocError, TypeError, KeyError) as exc:
            warnings.warn(
                f"the cached corpus {path} is damaged ({_first_line(exc)}); regenerating",
                MemlocWarning,
                stacklevel=2,
            )
            texts = []
        if len(texts) == config.samples and all(isinstance(t, str) for t in texts):
            return texts
    texts = generate_texts(lm, config.samples, config.generation(), progress=progress)
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def _load_partial(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        return load_tensors(path)
    except MemlocError as exc:
        warnings.warn(
            f"the partial statistics {path} are damaged ({_first_line(exc)}); starting over",
            MemlocWarning,
            stacklevel=2,
        )
        return None


def _first_line(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


# --- streaming ------------------------------------------------------------------------


def _tokenize(lm: LM, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    cut = min(max_tokens, limit) if limit else max_tokens
    encoded = lm.tokenizer(list(texts), truncation=True, max_length=cut)["input_ids"]
    return [list(ids) for ids in encoded]


def _batches(token_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    # Sort by length (stable) so batches carry little padding; fixed for a given corpus.
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    order = [i for i in order if token_ids[i]]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _padded(token_ids: list[list[int]], rows: list[int], pad: int, device: torch.device):
    width = max(len(token_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        ids[r, : len(token_ids[i])] = torch.tensor(token_ids[i])
        mask[r, : len(token_ids[i])] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def accumulate_keys(
    lm: LM, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int], sums: dict[int, torch.Tensor]
) -> int:
    """Add Σ k kᵀ over the unmasked tokens of one padded batch to ``sums``; returns the token count.

    The forward pass stops after the deepest layer in ``layers``; nothing after it
    (later blocks, the unembedding) is computed.
    """
    sites = [Site(layer, "mlp.post") for layer in layers]
    with trace(lm.model, lm.adapter, sites, stop=True) as acts:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    for site in sites:
        total = sums[site.layer]
        act = acts[site]
        keys = act[mask.to(act.device).bool()].to(total.device, total.dtype)
        total.addmm_(keys.T, keys)
    return int(mask.sum())


def _stream(
    lm: LM,
    texts: list[str],
    layers: list[int],
    config: StatsConfig,
    folder: Path,
    progress: Progress | None,
) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ per layer and the token count, resuming from the partial file if there is one."""
    token_ids = _tokenize(lm, texts, config.max_tokens)
    batches = _batches(token_ids, config.batch_size)
    width = lm.adapter.d_mlp
    dtype = ACCUMULATION_DTYPES[config.dtype]
    partial = _partial_file(folder, layers)
    size = width * width * dtype.itemsize
    # Each layer's sum lives with its layer; one that does not fit there is summed on the CPU.
    # (Allocated one by one, so that each check sees the memory the earlier sums took.)
    sums: dict[int, torch.Tensor] = {}
    for layer in layers:
        place = room_or_cpu(lm.layer_device(layer), size)
        sums[layer] = torch.zeros(width, width, dtype=dtype, device=place)
    done_batches, tokens = 0, 0
    saved = _load_partial(partial)
    if saved is not None and int(saved["batch_size"]) == config.batch_size:
        done_batches, tokens = int(saved["batches_done"]), int(saved["tokens"])
        for layer in layers:
            sums[layer].copy_(saved[f"sum.{layer}"])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    total = sum(len(rows) for rows in batches)  # texts with no tokens are skipped
    texts_done = sum(len(b) for b in batches[:done_batches])
    for number in range(done_batches, len(batches)):
        rows = batches[number]
        ids, mask = _padded(token_ids, rows, pad, lm.device)
        tokens += accumulate_keys(lm, ids, mask, layers, sums)
        texts_done += len(rows)
        if (number + 1) % config.checkpoint_every == 0 and number + 1 < len(batches):
            counters = {"batches_done": number + 1, "texts_done": texts_done, "tokens": tokens}
            counters["batch_size"] = config.batch_size
            state = {f"sum.{layer}": acc for layer, acc in sums.items()}
            save_tensors(partial, state | {k: torch.tensor(v) for k, v in counters.items()})
        if progress:
            progress(texts_done, total, f"keys of layers {', '.join(map(str, layers))}")
    return sums, tokens


def key_statistics_by_layer(
    lm: LM,
    layers: Sequence[int],
    config: StatsConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[int, KeyStats]:
    """C = E[k kᵀ] at `Site(layer, "mlp.post")` for each layer, from the cache or one pass.

    ``cache_dir`` defaults to ``cache_root()/stats``. Layers already cached are loaded;
    the others are computed together in one resumable pass over the corpus.
    ``progress(texts_done, total, description)`` is called after every batch.

        stats = key_statistics_by_layer(lm, [5, 6], StatsConfig(samples=1000))
        c = stats[6].matrix()  # (F, F) float64, shrunk when ill-conditioned
    """
    layers = sorted({lm.adapter.check_layer(layer) for layer in layers})
    if not layers:
        raise MemlocError("no layers given; name at least one layer for the key statistics")
    weights = weights_hash(lm.model)
    corpus = _resolve_corpus(lm, config, weights)
    folder = cache_folder(cache_dir, weights, corpus.hash, config, corpus.size)
    key = f"{weights[:16]}/{folder.name}"
    found = {layer: _load_cached(folder, layer, config) for layer in layers}
    missing = [layer for layer, stats in found.items() if stats is None]
    if missing:
        texts = corpus.texts
        if texts is None:
            texts = _generated_texts(
                lm, config, folder.parent / f"generated-{corpus.hash[:16]}.jsonl", progress
            )
        sums, tokens = _stream(lm, texts, missing, config, folder, progress)
        if tokens == 0:
            raise DataError(f"the corpus {config.corpus} has no tokens to take statistics over")
        for layer in missing:
            second = sums.pop(layer).double().div_(tokens)  # in place: no second (F, F) on the device
            if not bool(torch.isfinite(second).all()):  # eigvalsh would end in a LinAlgError traceback
                raise MemlocError(
                    f"the key statistics of layer {layer} hold NaN or inf: the model's activations at that "
                    "layer are not finite on the corpus; check the model's weights (or load it in float32)"
                )
            spec = spectrum(second, config.max_condition)  # on the sums' device: large F is slow on a CPU
            stats = KeyStats(layer, second.cpu(), tokens, len(texts), spec, f"{key}/layer_{layer}")
            _save_cached(folder, stats)
            found[layer] = stats
        _partial_file(folder, missing).unlink(missing_ok=True)
    return {layer: stats for layer, stats in found.items() if stats is not None}


def key_statistics(
    lm: LM,
    layer: int,
    config: StatsConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> KeyStats:
    """C = E[k kᵀ] for one layer; see `key_statistics_by_layer`."""
    return key_statistics_by_layer(lm, [layer], config, cache_dir=cache_dir, progress=progress)[layer]

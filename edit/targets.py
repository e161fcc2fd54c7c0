"""The target-vector optimisation shared by ROME and MEMIT: find δ that makes the model say target_new.

ROME (Meng et al. 2022, eq. 4) and MEMIT (Meng et al. 2023, eq. 16) both optimise a
vector δ added to one activation (ROME: the MLP output of layer l; MEMIT: the residual
stream after layer L) at the subject's last token of every rewrite prompt, where a
rewrite prompt is a context template around the fact's prompt followed by target_new
without its last token. The loss is

    mean NLL(target_new)                       (mean over prompts of the mean per token)
    + kl_weight · KL(P_δ ‖ P_0)                ("{subject} is a", at the subject's last token)
    + weight_decay · ||δ|| / ||v0||²

minimised with Adam; after each step ||δ|| is clamped to clamp · ||v0||, and the loop stops
once the NLL part drops below ``early_stop``. v0 is the clean activation at the site,
averaged over the rewrite prompts. The KL direction and position follow the reference
ROME code: the divergence of the edited distribution from the clean one, measured where δ
is added in the essence prompt, so the subject's other attributes are preserved.

Speed. Only positions at or after a row's subject token depend on δ, and only layers above
the site. So the clean batch is run once (no gradients) and then every step runs just the
blocks above the site, on just the tokens from the subject's last token on, with the
earlier tokens' keys and values taken from the clean pass; logits are formed only where a
loss needs them (final norm and unembedding of those rows). The result is the same as a
full forward pass with the activation patched (a test checks this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import capture_calls, trace
from memloc.core.lm.facts import Fact, require_edit_targets
from memloc.core.lm.model import LM, cache_keyword, cache_of, encode, layer_kv, run_block
from memloc.core.sites import Site
from memloc.core.validation import at_least, fail, positive
from transformers.cache_utils import DynamicCache

TARGET_KINDS = ("mlp.out", "resid.post")

# score(δ) -> (log P of each target token, prompt-major (N·m,); log-probabilities at the KL position (V,))
Scorer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TargetConfig:
    """Hyper-parameters of the δ optimisation (defaults: ROME's; MEMIT uses clamp 0.75)."""

    steps: int = 20
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 4.0
    early_stop: float = 0.05
    kl_prompt: str = "{} is a"

    def __post_init__(self) -> None:
        at_least(self, 1, "steps")
        positive(self, "lr", "clamp")
        at_least(self, 0, "kl_weight", "weight_decay", "early_stop")
        if self.kl_prompt.count("{}") != 1:
            raise fail(self, "kl_prompt", f"must hold one {{}} for the subject, got {self.kl_prompt!r}")


@dataclass(frozen=True)
class TargetResult:
    """v* = v0 + δ, and how the optimisation went."""

    site: Site
    target: torch.Tensor  # (D,) v0 + δ
    delta: torch.Tensor  # (D,)
    v0: torch.Tensor  # (D,) clean activation, mean over the rewrite prompts
    losses: tuple[dict[str, float], ...]  # per evaluated step: total, nll, kl, decay
    steps: int  # Adam updates applied
    p_new_before: float  # mean over rewrite prompts of exp(−mean NLL of target_new)
    p_new_after: float
    clean: Mapping[Site, torch.Tensor] = field(default_factory=dict)  # (N, width) at the subject's last token


@dataclass(frozen=True)
class RewriteBatch:
    """The rewrite prompts (rows 0..N−1) and the KL prompt (row N), right-padded."""

    ids: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,)
    subject_last: torch.Tensor  # (B,) where δ is added
    target_rows: torch.Tensor  # (N·m,) prompt-major
    target_pos: torch.Tensor  # (N·m,) position whose logits predict the token
    target_ids: torch.Tensor  # (N·m,)
    n_rewrite: int
    n_target: int  # m, tokens of target_new

    @property
    def attention_mask(self) -> torch.Tensor:
        return (torch.arange(self.ids.shape[1], device=self.ids.device) < self.lengths[:, None]).long()

    @property
    def kl_row(self) -> int:
        return self.n_rewrite


def rewrite_batch(lm: LM, fact: Fact, templates: Iterable[str], kl_prompt: str) -> RewriteBatch:
    """Token rows: template(prompt with subject) + target_new[:-1], then the KL prompt."""
    tok = lm.tokenizer
    rows, lasts = [], []
    target: tuple[int, ...] = ()
    for template in templates:
        enc = encode(tok, template.replace("{}", fact.text), fact.subject, fact.target_new)
        target = enc.target
        rows.append(list(enc.ids) + list(target[:-1]))
        lasts.append(enc.last_subject)
    n = len(rows)
    if n == 0:
        raise MemlocError("no context templates given; pass at least ('{}',)")
    kl = encode(tok, kl_prompt.replace("{}", fact.subject), fact.subject)
    rows.append(list(kl.ids))
    lasts.append(kl.last_subject)
    lengths = [len(r) for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(rows), max(lengths)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    m = len(target)
    prompt_lengths = [lengths[i] - (m - 1) for i in range(n)]
    target_rows = torch.arange(n).repeat_interleave(m)
    target_pos = torch.tensor([p - 1 + j for p in prompt_lengths for j in range(m)])
    device = lm.device
    return RewriteBatch(
        ids=ids.to(device),
        lengths=torch.tensor(lengths, device=device),
        subject_last=torch.tensor(lasts, device=device),
        target_rows=target_rows.to(device),
        target_pos=target_pos.to(device),
        target_ids=torch.tensor(target * n, device=device),
        n_rewrite=n,
        n_target=m,
    )


def check_target_inputs(lm: LM, fact: Fact, site: Site) -> None:
    """One-line errors for what an edit cannot work with."""
    require_edit_targets([fact])
    lm.adapter.check_layer(site.layer)
    if site.kind not in TARGET_KINDS:
        raise MemlocError(f"the target site must be one of {', '.join(TARGET_KINDS)}, got {site}")


# --- the optimisation loop, shared with any other way of scoring δ ---------------------------------


def optimize_delta(
    scorer: Scorer,
    v0: torch.Tensor,
    n_target: int,
    config: TargetConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]], int, float, float]:
    """Adam on δ; returns (δ, losses per evaluated step, updates applied, p_new before, after)."""
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr)
    v0_norm = v0.norm()
    max_norm = config.clamp * v0_norm
    logp0: torch.Tensor | None = None
    losses: list[dict[str, float]] = []
    p_before = math.nan
    steps = 0
    for _ in range(config.steps):
        token_logp, kl_logp = scorer(delta)
        if logp0 is None:
            logp0 = kl_logp.detach()
            p_before = _p_new(token_logp.detach(), n_target)
        nll = -token_logp.mean()
        kl = torch.sum(kl_logp.exp() * (kl_logp - logp0))
        decay = delta.norm() / v0_norm**2
        loss = nll + config.kl_weight * kl + config.weight_decay * decay
        losses.append({"total": loss.item(), "nll": nll.item(), "kl": kl.item(), "decay": decay.item()})
        if not math.isfinite(losses[-1]["total"]):
            raise MemlocError(f"the target optimisation produced a non-finite loss at step {len(losses)}")
        if losses[-1]["nll"] < config.early_stop:
            break
        (grad,) = torch.autograd.grad(loss, [delta])
        delta.grad = grad
        opt.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > max_norm:
                delta.mul_(max_norm / norm)
        steps += 1
        if progress is not None:
            progress(steps)
    with torch.no_grad():
        token_logp, _ = scorer(delta)
    return delta.detach(), losses, steps, p_before, _p_new(token_logp, n_target)


def _p_new(token_logp: torch.Tensor, n_target: int) -> float:
    return token_logp.view(-1, n_target).mean(1).exp().mean().item()


# --- the fast scorer ----------------------------------------------------------------------------------


class SuffixScorer:
    """Scores δ by running only the blocks above ``site`` on the tokens from each subject's last token on.

    Row i of the suffix holds tokens ``subject_last[i] ..`` of row i; the tokens before it
    enter as keys/values from the clean pass (masked per row), at their true positions.
    """

    def __init__(self, lm: LM, batch: RewriteBatch, site: Site, trace_sites: Iterable[Site] = ()) -> None:
        model, adapter = lm.model, lm.adapter
        self.lm, self.batch, self.site = lm, batch, site
        self.first = site.layer + 1
        n_layers = adapter.n_layers
        self.cache_kw = cache_keyword(model)
        resid = Site(site.layer, "resid.post")
        sites = {resid, site, *trace_sites}
        rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
        with torch.no_grad(), trace(model, adapter, sites) as seen:
            out = model(input_ids=batch.ids, attention_mask=batch.attention_mask, use_cache=True)
        clean_kv = cache_of(out)
        # Clean activations at the subject's last token of each rewrite prompt.
        n = batch.n_rewrite
        self.clean = {s: seen[s][rows[:n], batch.subject_last[:n]] for s in sites}

        starts = batch.subject_last
        self.prefix = int(starts.max())
        width = int((batch.lengths - starts).max())
        k = torch.arange(width, device=starts.device)
        pos = starts[:, None] + k  # (B, S) true positions of the suffix tokens
        valid = k[None] < (batch.lengths - starts)[:, None]
        safe = torch.where(valid, pos, torch.zeros_like(pos))
        self.base = seen[resid][rows[:, None], safe]  # (B, S, D) clean input of block l+1
        suffix_ids = torch.where(valid, batch.ids[rows[:, None], safe], batch.ids[:, -1:].expand_as(safe))
        before = torch.arange(self.prefix, device=starts.device)[None] < starts[:, None]
        mask = torch.cat([before, valid], dim=1).long()
        self.prefix_kv = {
            j: tuple(t[:, :, : self.prefix] for t in layer_kv(clean_kv, j)) for j in range(n_layers)
        }

        # A probe pass over the suffix records how the model calls each block above the site
        # (masks, rotary embeddings, positions), so the steps can call them directly.
        probe_sites = [Site(j, "resid.pre") for j in range(self.first, n_layers)]
        with torch.no_grad(), capture_calls(model, adapter, probe_sites) as calls:
            model(
                input_ids=suffix_ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{self.cache_kw: self._cache(range(n_layers))},
            )
        self.calls = [calls[s] for s in probe_sites]

        # Where logits are needed, as indices into the flattened (B·S) suffix.
        self.target_index = batch.target_rows * width + (batch.target_pos - starts[batch.target_rows])
        self.kl_index = batch.kl_row * width
        self.width = width

    def _cache(self, layers: Iterable[int]) -> DynamicCache:
        cache = DynamicCache()
        if self.prefix > 0:
            for j in layers:
                cache.update(*self.prefix_kv[j], j)
        return cache

    @property
    def v0(self) -> torch.Tensor:
        return self.clean[self.site].mean(0)

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, adapter = self.lm.model, self.lm.adapter
        h = torch.cat([(self.base[:, 0] + delta)[:, None], self.base[:, 1:]], dim=1)
        cache = self._cache(range(self.first, adapter.n_layers))
        for block, call in zip(adapter.blocks(model)[self.first :], self.calls, strict=True):
            h = run_block(block, call, h, cache)
        flat = h.reshape(-1, h.shape[-1])
        picked = flat[torch.cat([self.target_index, self.target_index.new_tensor([self.kl_index])])]
        logits = model.get_output_embeddings()(adapter.final_norm(model)(picked))
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_logp = logp[:-1].gather(1, self.batch.target_ids[:, None])[:, 0]
        return token_logp, logp[-1]


def optimize_target(
    lm: LM,
    fact: Fact,
    site: Site,
    config: TargetConfig,
    templates: Iterable[str],
    *,
    trace_sites: Iterable[Site] = (),
    progress: Callable[[int], None] | None = None,
) -> TargetResult:
    """v* for one fact at ``site`` (Site(l, "mlp.out") for ROME, Site(L, "resid.post") for MEMIT).

    ``trace_sites`` are extra sites whose clean activations at the subject's last token of
    every rewrite prompt come back in ``TargetResult.clean`` (ROME reads its keys there).
    """
    check_target_inputs(lm, fact, site)
    batch = rewrite_batch(lm, fact, templates, config.kl_prompt)
    scorer = SuffixScorer(lm, batch, site, trace_sites)
    v0 = scorer.v0
    delta, losses, steps, p_before, p_after = optimize_delta(scorer, v0, batch.n_target, config, progress)
    return TargetResult(
        site=site,
        target=v0 + delta,
        delta=delta,
        v0=v0,
        losses=tuple(losses),
        steps=steps,
        p_new_before=p_before,
        p_new_after=p_after,
        clean=dict(scorer.clean),
    )

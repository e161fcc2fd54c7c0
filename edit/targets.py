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
once the NLL part drops below ``early_stop``. One loop (`optimize_rows`) optimises the δ of
many facts at once, one row each, with per-row clamps and early stops
(`optimize_targets_batched`: MEMIT, and ROME's independent edits); one fact is its
one-row case (`optimize_target`). v0 is the clean activation at the site,
averaged over the rewrite prompts. The KL direction and position follow the reference
ROME code: the divergence of the edited distribution from the clean one, measured where δ
is added in the essence prompt, so the subject's other attributes are preserved.

Speed. Only positions at or after a row's subject token depend on δ, and only layers above
the site. So the clean batch is run once (no gradients) and then every step runs just the
blocks above the site, on just the tokens from the subject's last token on, with the
earlier tokens' keys and values taken from the clean pass; logits are formed only where a
loss needs them (final norm and unembedding of those rows). The cache and the block calls
come from core/lm/prefix_runner.py. The result is the same as a
full forward pass with the activation patched (a test checks this).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from memloc.core.errors import MemlocError
from memloc.core.finite import require_finite
from memloc.core.hooks import trace
from memloc.core.lm.facts import Fact, require_edit_targets
from memloc.core.lm.model import LM, encode
from memloc.core.lm.prefix_runner import BlockRunner, PrefixCache, cache_inputs
from memloc.core.progress import Progress, within
from memloc.core.sites import Site
from memloc.core.validation import at_least, fail, positive

TARGET_KINDS = ("mlp.out", "resid.post")

# score(δ) -> (log P of each target token, prompt-major; log-probabilities at the KL position(s)).
# δ (D,) gives KL log-probabilities (V,); δ (k, D), one row per fact, gives (k, V).
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
        enc = encode(tok, template.replace("{}", fact.prompt), fact.subject, fact.target_new)
        target = enc.target
        rows.append(list(enc.ids) + list(target[:-1]))
        lasts.append(enc.last_subject)
    n = len(rows)
    if n == 0:
        raise MemlocError("no context templates given; pass at least ('{}',)")
    kl = encode(tok, kl_prompt, fact.subject)
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


# --- the optimisation loop: δ for many rows at once; ROME is the one-row case -------------------------


@dataclass(frozen=True)
class RowsOutcome:
    """What `optimize_rows` found for each row (one row = one fact's δ)."""

    delta: torch.Tensor  # (k, D)
    losses: tuple[tuple[dict[str, float], ...], ...]  # per row, per step it was evaluated at
    steps: tuple[int, ...]  # Adam updates applied to each row
    first_token_logp: torch.Tensor  # the scorer's token log-probabilities at δ = 0


@runtime_checkable
class NarrowingScorer(Protocol):
    """A `Scorer` that can drop rows (facts): `SuffixScorer`."""

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def owner(self) -> torch.Tensor: ...

    def narrow(self, facts: torch.Tensor) -> NarrowingScorer: ...


def optimize_rows(
    scorer: Scorer | NarrowingScorer,
    v0: torch.Tensor,
    owner: torch.Tensor | None,
    config: TargetConfig,
    progress: Progress | None = None,
    *,
    site: Site | None = None,
) -> RowsOutcome:
    """Adam on δ (k, D), one row per fact, each row with its own loss, clamp and early stop.

    ``scorer(δ)`` returns the log-probability of every target token (any order) and the
    KL log-probabilities (k, V); ``owner[i]`` is the row of token i (None: all are row 0's,
    for one row). The rows' losses are
    independent and Adam acts element-wise, so optimising their sum gives each row the δ
    it would get alone (up to float rounding). A row whose NLL drops below ``early_stop``
    is frozen: torch's Adam still moves a parameter with a zero gradient through its
    momentum, so a frozen row is put back after every step (it never resumes, so its
    stale Adam state is never read). A `NarrowingScorer` also drops frozen rows from the
    scoring once a quarter of the rows left are frozen, carrying the others' Adam state
    over, so a batch does not pay for finished facts until its slowest one stops.
    ``progress(steps, config.steps, description)`` follows the steps.

    Half precision: δ and Adam's moments are kept in at least float32 whatever the
    model's dtype (a bf16 δ rounds small Adam steps away; the scorer rounds δ to the
    model's dtype where it enters). The loss is checked after every forward pass and δ
    after every Adam step; a NaN or inf is a `NonFiniteTargetError` naming the step and
    ``site`` (the edited layer), before anything is written.

    Usage::

        out = optimize_rows(scorer, v0s, owner, TargetConfig(clamp=0.75))
        z = v0s + out.delta
    """
    k = v0.shape[0]
    state = _ScoredRows.start(scorer, owner, v0, config)
    final = torch.zeros_like(state.delta)
    steps = torch.zeros(k, dtype=torch.long, device=v0.device)
    losses: list[list[dict[str, float]]] = [[] for _ in range(k)]
    first = None
    for step in range(config.steps):
        token_logp, loss, nll = state.loss(config, losses)
        if first is None:
            first = token_logp.detach()
        if not torch.isfinite(loss).all():
            raise NonFiniteTargetError(_non_finite("a non-finite loss", loss, step, site))
        state.active = state.active & (nll.detach() >= config.early_stop)
        if not state.active.any():
            break
        _adam_step(state.opt, state.delta, loss, state.active, state.max_norm)
        if not bool(torch.isfinite(state.delta).all()):
            raise NonFiniteTargetError(
                _non_finite("a non-finite δ after its Adam update", state.delta, step, site)
            )
        steps[state.rows] += state.active.long()
        if progress is not None:
            progress(step + 1, config.steps, "target steps")
        if step + 1 < config.steps and state.worth_narrowing():
            final[state.rows] = state.delta.detach()
            state = state.narrowed(config.lr)
    final[state.rows] = state.delta.detach()
    assert first is not None  # config.steps ≥ 1, so the loop ran at least once
    return RowsOutcome(final, tuple(tuple(rows) for rows in losses), tuple(steps.tolist()), first)


@dataclass
class _ScoredRows:
    """`optimize_rows`' state for the rows still scored: their δ, Adam, norms and which still move."""

    scorer: Scorer | NarrowingScorer
    owner: torch.Tensor | None
    rows: torch.Tensor  # the original row of each row still scored
    delta: torch.Tensor
    opt: torch.optim.Adam
    v0_norm: torch.Tensor
    max_norm: torch.Tensor
    active: torch.Tensor
    logp0: torch.Tensor | None = None  # the KL reference, read at δ = 0

    @classmethod
    def start(
        cls,
        scorer: Scorer | NarrowingScorer,
        owner: torch.Tensor | None,
        v0: torch.Tensor,
        config: TargetConfig,
    ) -> _ScoredRows:
        v0 = v0.to(torch.promote_types(v0.dtype, torch.float32))
        delta = torch.zeros_like(v0, requires_grad=True)
        v0_norm = v0.norm(dim=1)
        k = v0.shape[0]
        active = torch.ones(k, dtype=torch.bool, device=v0.device)
        rows = torch.arange(k, device=v0.device)
        opt = torch.optim.Adam([delta], lr=config.lr)
        return cls(scorer, owner, rows, delta, opt, v0_norm, config.clamp * v0_norm, active)

    def loss(
        self, config: TargetConfig, history: list[list[dict[str, float]]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token log-probabilities, per-row loss, per-row NLL); the active rows' terms go to ``history``."""
        token_logp, kl_logp = self.scorer(self.delta)
        if self.logp0 is None:
            self.logp0 = kl_logp.detach()
        nll = _mean_nll(token_logp, self.owner, len(self.rows))
        kl = torch.sum(kl_logp.exp() * (kl_logp - self.logp0), dim=1)
        decay = self.delta.norm(dim=1) / self.v0_norm**2
        loss = nll + config.kl_weight * kl + config.weight_decay * decay
        now = torch.stack([loss, nll, kl, decay], dim=1).tolist()
        for row in torch.nonzero(self.active).squeeze(1).tolist():
            terms = dict(zip(("total", "nll", "kl", "decay"), now[row], strict=True))
            history[int(self.rows[row])].append(terms)
        return token_logp, loss, nll

    def worth_narrowing(self) -> bool:
        """Drop frozen rows once they are a quarter of those scored, if the scorer can."""
        frozen = int((~self.active).sum())
        return isinstance(self.scorer, NarrowingScorer) and frozen > 0 and 4 * frozen >= len(self.rows)

    def narrowed(self, lr: float) -> _ScoredRows:
        """The active rows alone, their Adam state carried over."""
        assert isinstance(self.scorer, NarrowingScorer) and self.logp0 is not None
        keep = torch.nonzero(self.active).squeeze(1)
        scorer = self.scorer.narrow(keep)
        delta, opt = _carry_adam(self.opt, self.delta, keep, lr)
        return _ScoredRows(
            scorer,
            scorer.owner,
            self.rows[keep],
            delta,
            opt,
            self.v0_norm[keep],
            self.max_norm[keep],
            self.active[keep],
            self.logp0[keep],
        )


def _carry_adam(
    opt: torch.optim.Adam, delta: torch.Tensor, keep: torch.Tensor, lr: float
) -> tuple[torch.Tensor, torch.optim.Adam]:
    """A new δ of the rows ``keep`` with a fresh Adam that continues exactly where theirs was."""
    kept = delta.detach()[keep].clone().requires_grad_(True)
    carried = torch.optim.Adam([kept], lr=lr)
    old = opt.state[delta]
    # Adam is element-wise, so the kept rows' moments and the shared step count are all it needs.
    carried.state[kept] = {
        "step": old["step"].clone(),
        "exp_avg": old["exp_avg"][keep].clone(),
        "exp_avg_sq": old["exp_avg_sq"][keep].clone(),
    }
    return kept, carried


class NonFiniteTargetError(MemlocError):
    """The δ optimisation met NaN or inf; the model was not changed."""


def _non_finite(what: str, values: torch.Tensor, step: int, site: Site | None) -> str:
    """One line naming the step, the edited layer and the rows (facts) that went non-finite."""
    bad = ~torch.isfinite(values if values.dim() > 1 else values[:, None]).all(dim=1)
    rows = torch.nonzero(bad).squeeze(1).tolist()
    at = f" at layer {site.layer} ({site})" if site is not None else ""
    which = f" in row(s) {rows[:5]}" if len(bad) > 1 else ""
    return (
        f"the target optimisation{at} produced {what} at step {step + 1}{which}; nothing was edited: "
        "in float16/bfloat16 the activations above the layer may overflow (load the model in float32) "
        "or lower lr"
    )


def _mean_nll(token_logp: torch.Tensor, owner: torch.Tensor | None, k: int) -> torch.Tensor:
    """(k,) mean NLL of each row's target tokens."""
    if owner is None:
        return -token_logp.mean()[None]
    owner = owner.to(token_logp.device)
    total = torch.zeros(k, device=token_logp.device, dtype=token_logp.dtype).index_add(0, owner, token_logp)
    return -total / torch.bincount(owner, minlength=k)


def _adam_step(
    opt: torch.optim.Adam,
    delta: torch.Tensor,
    loss: torch.Tensor,
    active: torch.Tensor,
    max_norm: torch.Tensor,
) -> None:
    """One Adam update of the active rows of δ on the sum of their losses, then each row's norm clamp."""
    (grad,) = torch.autograd.grad(loss[active].sum(), [delta])
    delta.grad = grad
    frozen = None if bool(active.all()) else ~active
    kept = None if frozen is None else delta.detach()[frozen].clone()
    opt.step()
    with torch.no_grad():
        if frozen is not None and kept is not None:
            delta[frozen] = kept
        norm = delta.norm(dim=1)
        over = active & (norm > max_norm)
        delta[over] *= (max_norm[over] / norm[over])[:, None]


def optimize_delta(
    scorer: Scorer,
    v0: torch.Tensor,
    n_target: int,
    config: TargetConfig,
    progress: Progress | None = None,
    *,
    site: Site | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]], int, float, float]:
    """Adam on one δ (D,), the one-row case of `optimize_rows`.

    ``scorer(δ)`` returns the target tokens' log-probabilities, prompt-major (N·m,), and
    the KL log-probabilities (V,). Returns (δ, losses per evaluated step, updates applied,
    p_new before, p_new after).
    """

    def one_row(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        token_logp, kl_logp = scorer(delta[0])
        return token_logp, kl_logp[None]

    out = optimize_rows(one_row, v0[None], None, config, progress, site=site)
    delta = out.delta[0]
    with torch.no_grad():
        token_logp, _ = scorer(delta)
    p_before, p_after = _p_new(out.first_token_logp, n_target), _p_new(token_logp, n_target)
    return delta, list(out.losses[0]), out.steps[0], p_before, p_after


def _p_new(token_logp: torch.Tensor, n_target: int) -> float:
    return token_logp.view(-1, n_target).mean(1).exp().mean().item()


# --- the fast scorer ----------------------------------------------------------------------------------


class SuffixScorer:
    """Scores δ by running only the blocks above ``site`` on the tokens from each subject's last token on.

    Row i of the suffix holds tokens ``subject_last[i] ..`` of row i; the tokens before it
    enter as keys/values from the clean pass (masked per row), at their true positions,
    through `core.lm.prefix_runner`. One batch may hold ``n_facts`` facts (MEMIT): each
    fact's rewrite rows in turn, then one KL row per fact (`facts_batch` builds it). δ is
    (D,) for one fact, with KL log-probabilities (V,); or (facts, D), with (facts, V).
    `narrow` keeps some of the facts, so finished facts stop costing steps.
    """

    def __init__(
        self, lm: LM, batch: RewriteBatch, site: Site, trace_sites: Iterable[Site] = (), n_facts: int = 1
    ) -> None:
        model, adapter = lm.model, lm.adapter
        resid = Site(site.layer, "resid.post")
        sites = {resid, site, *trace_sites}
        rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
        # The base model stops at the final norm: (rows, tokens, vocab) logits here would grow
        # with the batch and no loss reads them; the steps form logits only where one does.
        with torch.no_grad(), trace(model, adapter, sites) as seen:
            kv, out = PrefixCache.run(
                model.base_model, input_ids=batch.ids, attention_mask=batch.attention_mask
            )
        # Padding positions are left out: a fully masked row may be NaN by design in some kernels.
        real = out.last_hidden_state[batch.attention_mask.bool()]
        inputs = {"input_ids": batch.ids, "attention_mask": batch.attention_mask}
        require_finite(model, adapter, real, "the rewrite prompts' clean run", **inputs)
        # Clean activations at the subject's last token of each rewrite prompt.
        n = batch.n_rewrite
        # A device map may put each block on its own device: index each activation where it lives.
        self.clean = {s: seen[s][_on(rows[:n], seen[s]), _on(batch.subject_last[:n], seen[s])] for s in sites}

        starts = batch.subject_last
        prefix = int(starts.max())
        width = int((batch.lengths - starts).max())
        k = torch.arange(width, device=starts.device)
        pos = starts[:, None] + k  # (B, S) true positions of the suffix tokens
        valid = k[None] < (batch.lengths - starts)[:, None]
        safe = torch.where(valid, pos, torch.zeros_like(pos))
        resid_seen = seen[resid]
        base = resid_seen[_on(rows[:, None], resid_seen), _on(safe, resid_seen)]  # (B, S, D) into l+1
        suffix_ids = torch.where(valid, batch.ids[rows[:, None], safe], batch.ids[:, -1:].expand_as(safe))
        before = torch.arange(prefix, device=starts.device)[None] < starts[:, None]
        mask = torch.cat([before, valid], dim=1).long()
        facts = torch.arange(n_facts, device=starts.device)
        fact_of_row = torch.cat([facts.repeat_interleave(n // n_facts), facts])
        offsets = batch.target_pos - starts[batch.target_rows]  # where each target token's logits are
        self._setup(lm, site, kv, base, suffix_ids, mask, pos, fact_of_row, batch.target_rows, offsets)
        self.target_ids, self.n_facts = batch.target_ids, n_facts

    def _setup(
        self,
        lm: LM,
        site: Site,
        kv: PrefixCache,
        base: torch.Tensor,
        suffix_ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        fact_of_row: torch.Tensor,
        target_rows: torch.Tensor,
        offsets: torch.Tensor,
    ) -> None:
        """The suffix rows' state, and the block runner probed on exactly these rows."""
        self.lm, self.site, self.kv, self.base = lm, site, kv, base
        self.suffix_ids, self.mask, self.pos = suffix_ids, mask, pos
        self.fact_of_row, self.target_rows, self.offsets = fact_of_row, target_rows, offsets
        self.prefix, self.width = mask.shape[1] - suffix_ids.shape[1], suffix_ids.shape[1]
        # The probe pass over the suffix records how the model calls each block above the site
        # (masks, rotary embeddings, positions), so the steps can call them directly.
        self.runner = BlockRunner(
            lm,
            range(site.layer + 1, lm.adapter.n_layers),
            input_ids=suffix_ids,
            attention_mask=mask,
            position_ids=pos,
            **cache_inputs(lm.model, kv.fresh(length=self.prefix)),
        )
        n_rewrite = len(fact_of_row) - int(fact_of_row.max()) - 1
        # Where logits are needed, as indices into the flattened (B·S) suffix: target tokens, then KL rows.
        self.target_index = target_rows * self.width + offsets
        kl_rows = torch.arange(n_rewrite, len(fact_of_row), device=fact_of_row.device)
        self.picked = torch.cat([self.target_index, kl_rows * self.width])

    @property
    def owner(self) -> torch.Tensor:
        """(tokens,): the fact each scored target token belongs to."""
        return self.fact_of_row[self.target_rows]

    def narrow(self, facts: torch.Tensor) -> SuffixScorer:
        """The scorer of just ``facts`` (indices, ascending), in that order; ``clean`` is not kept.

        The clean pass is reused; only the probe pass over the kept rows runs again.
        """
        keep = torch.isin(self.fact_of_row, facts)
        rows = torch.nonzero(keep).squeeze(1)
        renumber = torch.full_like(self.fact_of_row, -1)
        renumber[facts] = torch.arange(len(facts), device=facts.device)
        new_row = torch.cumsum(keep.long(), 0) - 1
        tokens = keep[self.target_rows]
        narrowed = object.__new__(SuffixScorer)
        kv = PrefixCache(tuple((k[rows], v[rows]) for k, v in self.kv.kv), self.kv.config)
        narrowed._setup(
            self.lm,
            self.site,
            kv,
            self.base[rows],
            self.suffix_ids[rows],
            self.mask[rows],
            self.pos[rows],
            renumber[self.fact_of_row[rows]],
            new_row[self.target_rows[tokens]],
            self.offsets[tokens],
        )
        narrowed.target_ids, narrowed.n_facts, narrowed.clean = self.target_ids[tokens], len(facts), {}
        return narrowed

    @property
    def v0(self) -> torch.Tensor:
        """(D,): the clean activation, mean over the rewrite prompts (one fact)."""
        return self.clean[self.site].mean(0)

    def v0s(self) -> torch.Tensor:
        """(facts, D): each fact's clean activation, mean over its rewrite prompts."""
        return self.clean[self.site].view(self.n_facts, -1, self.clean[self.site].shape[-1]).mean(1)

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = delta.dim() == 1
        shift = delta if one else delta[self.fact_of_row]
        # δ is float32 or wider (`optimize_rows`); the sum is rounded once, to the model's dtype.
        first = (self.base[:, 0].to(shift.dtype) + shift).to(self.base.dtype)
        h = torch.cat([first[:, None], self.base[:, 1:]], dim=1)
        h = self.runner.run(h, self.kv.fresh(self.runner.layers, length=self.prefix))
        logits = self.runner.logits(h.reshape(-1, h.shape[-1])[_on(self.picked, h)])
        # The unembedding may sit on another device than δ; the loss is formed on δ's.
        logp = torch.log_softmax(logits.float(), dim=-1).to(delta.device)
        n_tokens = len(self.target_index)
        token_logp = logp[:n_tokens].gather(1, _on(self.target_ids[:, None], logp))[:, 0]
        return token_logp, logp[n_tokens] if one else logp[n_tokens:]


def _on(index: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``index`` on ``tensor``'s device, for indexing it."""
    return index.to(tensor.device)


# --- many facts at once -----------------------------------------------------------------------------


def facts_batch(
    lm: LM, facts: Sequence[Fact], templates: Sequence[str], kl_prompt: str
) -> tuple[RewriteBatch, list[int]]:
    """One right-padded batch: every fact's rewrite rows (fact-major), then one KL row per fact.

    Also returns the number of target tokens of each fact.
    """
    singles = [rewrite_batch(lm, fact, templates, kl_prompt) for fact in facts]
    n = singles[0].n_rewrite
    width = max(b.ids.shape[1] for b in singles)

    def rows(b: RewriteBatch, which: slice) -> torch.Tensor:
        # The filler is masked out (``lengths``); any token id will do.
        ids = b.ids[which]
        return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=int(b.ids[0, 0]))

    rewrite, kl = slice(0, n), slice(n, n + 1)
    parts = [(b, rewrite) for b in singles] + [(b, kl) for b in singles]
    shift = [i * n for i in range(len(singles))]
    batch = RewriteBatch(
        ids=torch.cat([rows(b, which) for b, which in parts]).to(lm.device),
        lengths=torch.cat([b.lengths[which] for b, which in parts]),
        subject_last=torch.cat([b.subject_last[which] for b, which in parts]),
        target_rows=torch.cat([b.target_rows + k for b, k in zip(singles, shift, strict=True)]),
        target_pos=torch.cat([b.target_pos for b in singles]),
        target_ids=torch.cat([b.target_ids for b in singles]),
        n_rewrite=n * len(singles),
        # One fact keeps its count; several may differ (see the returned counts).
        n_target=singles[0].n_target if len(singles) == 1 else 0,
    )
    return batch, [b.n_target for b in singles]


def optimize_targets_batched(
    lm: LM,
    facts: Sequence[Fact],
    site: Site,
    config: TargetConfig,
    templates: Sequence[str],
    *,
    facts_per_batch: int = 16,
    trace_sites: Iterable[Site] = (),
    progress: Progress | None = None,
) -> list[TargetResult]:
    """v* of each fact at ``site``, optimised ``facts_per_batch`` facts at a time, one row each.

    Each fact gets the `TargetResult` it would get alone (`optimize_target`) up to float
    rounding: `optimize_rows` keeps the rows' losses, clamps and early stops apart, and
    the `SuffixScorer` masks every fact's rows to its own tokens. ``trace_sites`` as in
    `optimize_target`. ``progress(facts done, facts, "targets")`` follows the facts; with
    one fact it follows the steps instead.

        results = optimize_targets_batched(lm, facts, Site(6, "mlp.out"), TargetConfig(), ("{}",))
        v_stars = torch.stack([r.target for r in results])
    """
    if facts_per_batch < 1:
        raise MemlocError(f"facts_per_batch must be at least 1, got {facts_per_batch}")
    for fact in facts:
        check_target_inputs(lm, fact, site)
    # Facts of like lengths share a batch, so few padded tokens are computed.
    order = sorted(range(len(facts)), key=lambda i: _row_shape(lm, facts[i]))
    results: dict[int, TargetResult] = {}
    for start in range(0, len(facts), facts_per_batch):
        chunk = order[start : start + facts_per_batch]
        # One fact: its steps; several: the steps of each chunk under the facts done so far.
        steps = progress if len(facts) == 1 else within(progress, start, len(facts), "targets")
        found = _optimize_chunk(
            lm, [facts[i] for i in chunk], site, config, templates, tuple(trace_sites), steps
        )
        results.update(zip(chunk, found, strict=True))
        if progress is not None and len(facts) > 1:
            progress(start + len(chunk), len(facts), "targets")
    return [results[i] for i in range(len(facts))]


def _row_shape(lm: LM, fact: Fact) -> tuple[int, int]:
    """(suffix tokens, prefix tokens) of the fact's bare rewrite prompt: what padding a batch to it costs."""
    enc = encode(lm.tokenizer, fact.prompt, fact.subject, fact.target_new)
    return len(enc.ids) + len(enc.target) - 1 - enc.last_subject, enc.last_subject


def _optimize_chunk(
    lm: LM,
    facts: Sequence[Fact],
    site: Site,
    config: TargetConfig,
    templates: Sequence[str],
    trace_sites: tuple[Site, ...],
    progress: Progress | None,
) -> list[TargetResult]:
    """One batch of `optimize_targets_batched`: every fact a row of one `optimize_rows` loop."""
    batch, n_tokens = facts_batch(lm, facts, templates, config.kl_prompt)
    scorer = SuffixScorer(lm, batch, site, trace_sites, n_facts=len(facts))
    n = len(templates)
    counts = [m * n for m in n_tokens]  # scored tokens per fact, prompt-major within a fact
    # One fact needs no owner: the plain mean is exactly the one-fact loss.
    owner = scorer.owner if len(facts) > 1 else None
    v0s = scorer.v0s()
    out = optimize_rows(scorer, v0s, owner, config, progress, site=site)
    with torch.no_grad():
        after, _ = scorer(out.delta)
    results, offset = [], 0
    for i, m in enumerate(n_tokens):
        tokens = slice(offset, offset + counts[i])
        offset += counts[i]
        results.append(
            TargetResult(
                site=site,
                target=v0s[i] + out.delta[i],
                delta=out.delta[i],
                v0=v0s[i],
                losses=out.losses[i],
                steps=out.steps[i],
                p_new_before=_p_new(out.first_token_logp[tokens], m),
                p_new_after=_p_new(after[tokens], m),
                clean={s: scorer.clean[s][i * n : (i + 1) * n] for s in scorer.clean},
            )
        )
    return results


def optimize_target(
    lm: LM,
    fact: Fact,
    site: Site,
    config: TargetConfig,
    templates: Iterable[str],
    *,
    trace_sites: Iterable[Site] = (),
    progress: Progress | None = None,
) -> TargetResult:
    """v* for one fact at ``site`` (Site(l, "mlp.out") for ROME, Site(L, "resid.post") for MEMIT).

    ``trace_sites`` are extra sites whose clean activations at the subject's last token of
    every rewrite prompt come back in ``TargetResult.clean`` (ROME reads its keys there).
    The one-fact case of `optimize_targets_batched`.
    """
    (result,) = optimize_targets_batched(
        lm, [fact], site, config, list(templates), trace_sites=trace_sites, progress=progress
    )
    return result

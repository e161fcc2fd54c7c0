"""AlphaEdit (Fang et al. 2025): the null-space projector, the solve, and edits on the fixture LM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from memloc.core.checkpoints import load_tensors, save_tensors
from memloc.core.errors import ConfigError
from memloc.core.hooks import trace
from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode
from memloc.core.sites import Site
from memloc.edit.alphaedit import (
    AlphaEditConfig,
    AlphaEditError,
    EditedKeys,
    alphaedit_layer_update,
    compute_alphaedit,
)
from memloc.edit.delta import apply, weights_hash
from memloc.edit.memit import MemitConfig, compute_memit, subject_keys
from memloc.edit.null_space import (
    NullSpaceConfig,
    NullSpaceError,
    compute_projector,
    null_space_projector,
    project_delta,
    projector_file,
)
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.stats import KeyStats, spectrum
from memloc.edit.targets import TargetConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"
# Keep exactly the directions no preserved key uses (their eigenvalues are rounding).
EXACT = NullSpaceConfig(threshold=1e-9)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def low_rank_keys(f: int = 16, rank: int = 6, n: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(f, rank, generator=gen, dtype=torch.float64)
    return basis @ torch.randn(rank, n, generator=gen, dtype=torch.float64)


def moment(keys: torch.Tensor) -> torch.Tensor:
    return keys @ keys.T / keys.shape[1]


def relative_leak(update: torch.Tensor, preserved: torch.Tensor) -> float:
    """‖ΔW K₀‖ / (‖ΔW‖ ‖K₀‖)."""
    return ((update @ preserved).norm() / (update.norm() * preserved.norm())).item()


# --- the projector ---------------------------------------------------------------------


def test_projector_is_symmetric_idempotent_and_annihilates_the_preserved_keys():
    k0 = low_rank_keys()
    projector = compute_projector(moment(k0), EXACT)
    p = projector.matrix
    assert p.dtype == torch.float64 and p.shape == (16, 16)
    torch.testing.assert_close(p, p.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-10)
    assert (p @ k0).norm() <= 1e-10 * k0.norm()
    assert projector.kept == 10 and projector.kept_fraction == pytest.approx(10 / 16)
    assert projector.record()["kept_fraction"] == pytest.approx(10 / 16)
    # A direction outside the keys' span passes through unchanged.
    outside = torch.linalg.svd(k0, full_matrices=True).U[:, -1:]
    torch.testing.assert_close(projector.project(outside), outside, rtol=0, atol=1e-10)


def test_relative_and_absolute_cutoffs():
    # Eigenvalues 100, 10, 1, 0.1 along the axes.
    c = torch.diag(torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=torch.float64))
    relative = compute_projector(c, NullSpaceConfig(threshold=0.05))  # cutoff 5: keeps 1 and 0.1
    assert relative.kept == 2 and relative.cutoff == pytest.approx(5.0)
    assert relative.leak == pytest.approx(1.0)
    absolute = compute_projector(c, NullSpaceConfig(threshold=0.5, scale="absolute"))
    assert absolute.kept == 1 and absolute.cutoff == 0.5
    # A relative cutoff does not move when the keys are scaled; an absolute one does.
    assert compute_projector(1000 * c, NullSpaceConfig(threshold=0.05)).kept == 2
    with pytest.raises(NullSpaceError, match="no null space"):
        compute_projector(1000 * c, NullSpaceConfig(threshold=0.5, scale="absolute"))


def test_no_null_space_is_one_clear_error():
    c = torch.eye(4, dtype=torch.float64)
    with pytest.raises(NullSpaceError, match="no null space") as err:
        compute_projector(c, NullSpaceConfig(threshold=0.5, scale="absolute"))
    assert "\n" not in str(err.value)
    with pytest.raises(NullSpaceError, match="NaN"):
        compute_projector(torch.full((4, 4), float("nan")), EXACT)


def test_float32_projector_is_stored_in_float32():
    projector = compute_projector(moment(low_rank_keys()), NullSpaceConfig(threshold=1e-9, dtype="float32"))
    assert projector.matrix.dtype == torch.float32
    p = projector.matrix.double()
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-5)


def test_projector_is_cached_beside_the_statistics(tmp_path):
    c = moment(low_rank_keys())
    stats = KeyStats(3, c, count=40, texts=4, spectrum=spectrum(c, 1e6), key="abcd/corpus-n4/layer_3")
    first = null_space_projector(stats, EXACT, cache_dir=tmp_path)
    path = projector_file(stats, EXACT, tmp_path)
    assert path.is_file() and path.parent == tmp_path / "abcd" / "corpus-n4"
    again = null_space_projector(stats, EXACT, cache_dir=tmp_path)
    assert torch.equal(again.matrix, first.matrix) and again.kept == first.kept == 10
    assert again.basis is not None and first.basis is not None and torch.equal(again.basis, first.basis)
    assert again.layer == 3 and again.key == stats.key
    other = NullSpaceConfig(threshold=0.5)
    assert projector_file(stats, other, tmp_path) != path
    path.write_bytes(b"not a safetensors file")  # a damaged cache is rebuilt
    assert torch.equal(null_space_projector(stats, EXACT, cache_dir=tmp_path).matrix, first.matrix)


def test_a_projector_cached_without_its_basis_is_rebuilt_with_it(tmp_path):
    c = moment(low_rank_keys())
    stats = KeyStats(3, c, count=40, texts=4, spectrum=spectrum(c, 1e6), key="abcd/corpus-n4/layer_3")
    first = null_space_projector(stats, EXACT, cache_dir=tmp_path)
    path = projector_file(stats, EXACT, tmp_path)
    meta = {"format": 1, "count": 40, **first.record()}  # what the first cache format held
    save_tensors(path, {"matrix": first.matrix}, metadata={"projector": json.dumps(meta)})
    again = null_space_projector(stats, EXACT, cache_dir=tmp_path)
    assert again.basis is not None and again.basis.shape == (16, 10)
    assert "basis" in load_tensors(path)


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (NullSpaceConfig, {"threshold": 0.0}),
        (NullSpaceConfig, {"threshold": -1.0}),
        (NullSpaceConfig, {"threshold": float("nan")}),
        (NullSpaceConfig, {"scale": "log"}),
        (NullSpaceConfig, {"dtype": "float16"}),
        (AlphaEditConfig, {"identity_weight": 0.0}),
        (AlphaEditConfig, {"identity_weight": float("inf")}),
        (AlphaEditConfig, {"layers": ()}),
        (AlphaEditConfig, {"batch_size": 0}),
    ],
)
def test_configs_refuse_bad_values(cls, bad):
    with pytest.raises(ConfigError) as err:
        cls(**bad)
    assert err.value.field == next(iter(bad))


# --- the solve ------------------------------------------------------------------------


@pytest.mark.parametrize("coordinates", ["full", "kept"])
def test_solve_is_the_papers_update_and_leaves_the_preserved_keys_alone(coordinates):
    k0 = low_rank_keys()
    projector = compute_projector(moment(k0), EXACT)
    p, basis = projector.matrix, projector.basis if coordinates == "kept" else None
    assert projector.basis is not None and projector.basis.shape == (16, projector.kept)
    gen = torch.Generator().manual_seed(1)
    k1 = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    r = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    kp = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    left, right = alphaedit_layer_update(k1, r, p, kp @ kp.T, identity_weight=0.5, basis=basis)
    update = left @ right.T
    # Δ = R K₁ᵀ P (K_pK_pᵀP + K₁K₁ᵀP + αI)⁻¹, applied as Δ P.
    system = kp @ kp.T @ p + k1 @ k1.T @ p + 0.5 * torch.eye(16, dtype=torch.float64)
    paper = torch.linalg.solve(system.T, (r @ k1.T @ p).T).T @ p
    torch.testing.assert_close(update, paper, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(update @ p, update, rtol=0, atol=1e-10)
    assert relative_leak(update, k0) <= 1e-4
    assert update.norm() > 0.1 * r.norm() / k1.norm()  # it writes something


def test_previous_keys_pull_the_update_off_them():
    p = compute_projector(moment(low_rank_keys(rank=2)), EXACT).matrix
    gen = torch.Generator().manual_seed(2)
    k1, r = (
        torch.randn(16, 2, generator=gen, dtype=torch.float64),
        torch.randn(8, 2, generator=gen, dtype=torch.float64),
    )
    kp = 5 * torch.randn(16, 3, generator=gen, dtype=torch.float64)
    alone = alphaedit_layer_update(k1, r, p)
    kept = alphaedit_layer_update(k1, r, p, kp @ kp.T)
    disturbance = [((left @ right.T) @ (p @ kp)).norm().item() for left, right in (alone, kept)]
    assert disturbance[1] < 0.2 * disturbance[0], disturbance


def test_a_singular_system_is_one_clear_error():
    p = torch.eye(4, dtype=torch.float64)
    k = torch.full((4, 1), float("nan"), dtype=torch.float64)
    with pytest.raises(AlphaEditError, match="not positive definite"):
        alphaedit_layer_update(k, torch.ones(2, 1, dtype=torch.float64), p, layer=2)


# --- the fixture LM --------------------------------------------------------------------

# As in tests/test_memit.py: the fixture LM's facts flip from layer 0, with ROME's clamp.
CONFIG = AlphaEditConfig(layers=(0,), target=TargetConfig(clamp=4.0), identity_weight=0.1, batch_size=16)


@pytest.fixture(scope="module")
def fixture_lm():
    if not (FIXTURE / "fixture-lm").exists():
        pytest.skip("fixtures/fixture-lm is not built")
    lm = load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")
    lm.model.requires_grad_(False)
    return lm


@pytest.fixture(scope="module")
def fixture_facts():
    return load_facts(str(FIXTURE / "fixture-facts.json"))


@pytest.fixture(scope="module")
def preserved(fixture_lm, fixture_facts):
    """K₀ (F, N) per layer: every token of prompts of facts that are never edited here."""
    lm = fixture_lm
    texts = [prompt for fact in fixture_facts[100::9][:14] for prompt in fact.prompts()]
    sites = [Site(layer, "mlp.post") for layer in (0, 1)]
    rows: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for text in texts:
        with trace(lm.model, lm.adapter, sites) as seen, torch.no_grad():
            lm.model(input_ids=torch.tensor([lm.tokenizer(text)["input_ids"]]))
        for site in sites:
            rows[site.layer].append(seen[site][0].double())
    return {layer: torch.cat(acts).T for layer, acts in rows.items()}


@pytest.fixture(scope="module")
def projectors(preserved):
    return {layer: compute_projector(moment(keys), EXACT) for layer, keys in preserved.items()}


def top1(lm, fact) -> str:
    enc = encode(lm.tokenizer, fact.text, fact.subject, fact.target_new)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.ids])).logits[0, -1]
    return "new" if int(logits.argmax()) == enc.target[0] else "other"


def update_of(delta, layer: int) -> torch.Tensor:
    return sum(part.dense() for part in delta.layers if part.layer == layer)


def test_alphaedit_writes_a_fact_and_leaves_preserved_keys_and_weights_alone(
    fixture_lm, fixture_facts, projectors, preserved
):
    lm, fact = fixture_lm, fixture_facts[0]
    assert 0 < projectors[0].kept_fraction < 1
    assert top1(lm, fact) != "new"
    before = weights_hash(lm.model)
    delta, keys = compute_alphaedit(lm, [fact], projectors, CONFIG)
    assert weights_hash(lm.model) == before
    assert delta.method == "alphaedit" and delta.layer_ids() == [0] and delta.layers[0].rank == 1
    assert delta.info["layers"][0]["null_space"]["kept"] == projectors[0].kept
    assert relative_leak(update_of(delta, 0), preserved[0]) <= 1e-4
    with apply(lm.model, lm.adapter, delta):
        assert top1(lm, fact) == "new"
    assert weights_hash(lm.model) == before  # undo is bit for bit
    assert keys.edits == 1 and set(keys.grams) == {0}
    k = subject_keys(lm, [fact], 0, ("{}",), 4)
    torch.testing.assert_close(keys.grams[0], k @ k.T)


def test_sequential_batches_keep_the_first_batchs_keys(fixture_lm, fixture_facts, projectors):
    lm = fixture_lm
    first, second = fixture_facts[0:6:3], fixture_facts[30:36:3]
    delta1, keys1 = compute_alphaedit(lm, first, projectors, CONFIG)
    gram1 = keys1.grams[0]
    with apply(lm.model, lm.adapter, delta1):
        kept, keys2 = compute_alphaedit(lm, second, projectors, CONFIG, previous_keys=keys1)
        forgot, _ = compute_alphaedit(lm, second, projectors, CONFIG)

    def disturbance(delta) -> float:  # ‖ΔW₂ K₁‖ from K₁K₁ᵀ
        update = update_of(delta, 0)
        return torch.trace(update @ gram1 @ update.T).sqrt().item()

    assert disturbance(kept) < 0.25 * disturbance(forgot), (disturbance(kept), disturbance(forgot))
    assert update_of(kept, 0).norm() > 0.2 * update_of(forgot, 0).norm()  # it still writes the batch
    assert keys2.edits == 4 and keys1.edits == 2  # keys1 itself is not changed
    assert kept.info["previous_keys"] == {"edits": 2, "layers": [0]}


def test_independent_runs_give_identical_deltas(fixture_lm, fixture_facts, projectors):
    lm, facts = fixture_lm, fixture_facts[3:4]
    one, keys = compute_alphaedit(lm, facts, projectors, CONFIG)
    compute_alphaedit(lm, fixture_facts[6:7], projectors, CONFIG, previous_keys=keys)  # another run's batch
    two, _ = compute_alphaedit(lm, facts, projectors, CONFIG)
    assert torch.equal(one.layers[0].left, two.layers[0].left)
    assert torch.equal(one.layers[0].right, two.layers[0].right)


def test_missing_projector_and_foreign_keys_are_one_line(fixture_lm, fixture_facts, projectors):
    lm = fixture_lm
    with pytest.raises(AlphaEditError, match=r"no null-space projector for edit layer\(s\) \[2\]"):
        compute_alphaedit(lm, fixture_facts[:1], projectors, AlphaEditConfig(layers=(0, 2)))
    foreign = EditedKeys({0: torch.eye(3, dtype=torch.float64)}, edits=1)
    with pytest.raises(AlphaEditError, match="another model"):
        compute_alphaedit(lm, fixture_facts[:1], projectors, CONFIG, previous_keys=foreign)


def test_null_space_rome_and_memit_leave_preserved_keys_alone(
    fixture_lm, fixture_facts, projectors, preserved
):
    lm, fact = fixture_lm, fixture_facts[0]
    c = moment(preserved[0]) + 1e-3 * torch.eye(lm.adapter.d_mlp, dtype=torch.float64)
    rome = compute_rome(lm, fact, c, RomeConfig(layer=0), ("{}",))
    projected = project_delta(rome, projectors)
    leaks = [relative_leak(update_of(d, 0), preserved[0]) for d in (rome, projected)]
    assert leaks[1] <= 1e-4 and leaks[1] < 1e-2 * leaks[0], leaks  # plain ROME does touch them
    assert projected.config["null_space"] is True
    record = projected.info["null_space"]["0"]
    assert record["kept"] == projectors[0].kept
    assert record["projected_update_norm"] == pytest.approx(update_of(projected, 0).norm().item())
    stats = {
        layer: moment(keys) + 1e-3 * torch.eye(lm.adapter.d_mlp, dtype=torch.float64)
        for layer, keys in preserved.items()
    }
    config = MemitConfig(layers=(0, 1), mom2_weight=1.0, target=TargetConfig(clamp=4.0), batch_size=16)
    memit = compute_memit(lm, [fact], stats, config, projectors=projectors)
    for layer in (0, 1):
        assert relative_leak(update_of(memit, layer), preserved[layer]) <= 1e-4
    assert memit.info["layers"][1]["null_space"]["kept"] == projectors[1].kept


# --- the editor and the CLI ------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_editor_carries_keys_only_in_a_sequential_run(fixture_lm, fixture_facts, own_cache):
    from memloc.edit.editors import EditPlan, prepare_editor
    from memloc.edit.stats import StatsConfig

    facts = fixture_facts[:2]
    plan = EditPlan("alphaedit", layers=(0,), stats=StatsConfig(samples=8), alphaedit=CONFIG, sequential=True)
    editor, choice = prepare_editor(fixture_lm, facts, plan)
    assert set(choice.projectors) == {0} and 0 < choice.projectors[0].kept_fraction < 1
    assert list(own_cache.glob("stats/*/*/null-layer_0-relative-0.01-float64.safetensors"))
    first = editor(facts[:1])
    second = editor(facts[1:])
    assert first.info["previous_keys"]["edits"] == 0 and second.info["previous_keys"]["edits"] == 1
    # A new editor (another run) starts with no keys, and one that is not sequential keeps none.
    fresh, _ = prepare_editor(fixture_lm, facts, plan)
    assert torch.equal(fresh(facts[:1]).layers[0].right, first.layers[0].right)
    single, _ = prepare_editor(fixture_lm, facts, dataclasses.replace(plan, sequential=False))
    single(facts[:1])
    assert single(facts[1:]).info["previous_keys"]["edits"] == 0


def test_cli_apply_alphaedit_writes_a_ledger(fixture_lm, own_cache, tmp_path, capsys):
    from test_cli import run_cli

    out = tmp_path / "edited"
    args = ("--model", FIXTURE / "fixture-lm", "--device", "cpu", "--facts", FIXTURE / "fixture-facts.json")
    code, printed, _ = run_cli(
        capsys, "edit", "apply", "--method", "alphaedit", *args, "--limit", "2", "--layers", "0",
        "--samples", "8", "--max-update-ratio", "100", "--out", out, "--format", "json",
    )  # fmt: skip
    assert code in (0, None)
    assert json.loads(printed)["method"] == "alphaedit"
    ledger = json.loads((out / "ledger.json").read_text())
    edit = ledger["edits"][0]
    assert edit["method"] == "alphaedit" and edit["layers"] == [0] and len(edit["facts"]) == 2
    assert edit["info"]["previous_keys"] == {"edits": 0, "layers": []}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--method", "kn", "--null-space"), "kn has none to project"),
        (("--method", "alphaedit", "--null-space"), "always null-space constrained"),
        (("--method", "alphaedit", "--null-space-threshold", "0"), "--null-space-threshold must be positive"),
    ],
)
def test_cli_refuses_bad_null_space_flags_in_one_line(tmp_path, capsys, extra, needle):
    from test_cli import assert_one_line_error, run_cli

    args = ("--model", FIXTURE / "fixture-lm", "--facts", FIXTURE / "fixture-facts.json")
    code, _, err = run_cli(capsys, "edit", "apply", *extra, *args, "--out", tmp_path / "o")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()

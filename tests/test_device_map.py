"""--device-map: models dispatched with accelerate, and memloc's hooks and edits on them (issue #16, item 6).

The CPU stands in for the devices: a map splits a tiny model's blocks over map
entries, accelerate attaches its AlignDevicesHooks (asserted: ``_hf_hook``), and
memloc's traces and edits on the dispatched model must equal those on the plain one.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.cli.app import main
from memloc.core.errors import DataError, MemlocError
from memloc.core.hooks import patch, trace
from memloc.core.lm.device_map import check_device_map, is_offloaded, parse_device_map
from memloc.core.lm.loading import load_language_model, quiet_transformers
from memloc.core.lm.model import LM
from memloc.core.sites import Site
from memloc.edit.delta import apply, weights_hash
from memloc.edit.memit import MemitConfig, compute_memit
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.stats import StatsConfig, key_statistics_by_layer
from memloc.edit.targets import TargetConfig
from memloc.locate.lm.tracing import TraceConfig, trace_fact
from tiny_lms import WORDS, tiny_lm

FACT_PROMPT = "the capital of Zorbia Quelon is"
QUICK = TargetConfig(steps=4)
TEMPLATES = ("{}", "red and blue . {}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny llama (3 blocks) saved as a model folder, and the plain model."""
    lm = tiny_lm("llama", seed=5)
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    with quiet_transformers():
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
    return lm, folder


def split_map(last: str) -> dict[str, str]:
    """Blocks 0-1 and the rest on the CPU, block 2 on ``last``."""
    names = [
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.norm",
        "model.rotary_emb",
        "lm_head",
    ]
    return {**dict.fromkeys(names, "cpu"), "model.layers.2": last}


def dispatched_copy(lm: LM) -> LM:
    """The model dispatched by accelerate over entries that are all the CPU, hooks forced on."""
    from accelerate import dispatch_model

    model = dispatch_model(copy.deepcopy(lm.model), split_map("cpu"), main_device="cpu", force_hooks=True)
    return LM(model, lm.tokenizer, lm.adapter, source="dispatched")


def facts():
    from memloc.core.lm.facts import Fact

    return [
        Fact("a", "the capital of {} is", "Zorbia Quelon", "Paris", "Rome"),
        Fact("b", "the river of {} is", "Marvat Tisk", "Pelor", "Dunmar"),
    ]


def traced(lm: LM, sites: list[Site]) -> dict[Site | str, torch.Tensor]:
    ids = torch.tensor([lm.tokenizer(FACT_PROMPT)["input_ids"]], device=lm.input_device)
    with torch.no_grad(), trace(lm.model, lm.adapter, sites) as seen:
        logits = lm.model(input_ids=ids).logits
    return {**{s: seen[s].clone() for s in sites}, "logits": logits}


def second_moments(lm: LM, layers) -> dict[int, torch.Tensor]:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(8)]
    ids = torch.tensor([lm.tokenizer(t)["input_ids"][:10] for t in texts])
    sites = [Site(layer, "mlp.post") for layer in layers]
    with torch.no_grad(), trace(lm.model, lm.adapter, sites) as seen:
        lm.model(input_ids=ids)
    out = {}
    for site in sites:
        keys = seen[site].reshape(-1, seen[site].shape[-1]).double()
        c = keys.T @ keys / len(keys)
        out[site.layer] = c + 1e-2 * c.trace() / len(c) * torch.eye(len(c), dtype=torch.float64)
    return out


# --- a dispatched model with hooks on every entry: traces and edits as on the plain model ------------


def test_hooks_trace_and_edits_equal_the_plain_model(saved):
    plain, _ = saved
    lm = dispatched_copy(plain)
    assert hasattr(lm.model.model.layers[1], "_hf_hook") and hasattr(lm.model, "_hf_hook")
    sites = [Site(0, "resid.post"), Site(1, "mlp.post"), Site(2, "mlp.out")]
    ours, theirs = traced(lm, sites), traced(plain, sites)
    for site in ours:
        torch.testing.assert_close(ours[site], theirs[site], rtol=0, atol=0)
    assert weights_hash(lm.model) == weights_hash(plain.model)
    ids = torch.tensor([plain.tokenizer(FACT_PROMPT)["input_ids"]])
    halved = {Site(1, "mlp.post"): lambda act: act * 0.5, Site(2, "resid.pre"): lambda act: act + 0.1}
    patched = []
    for x in (lm, plain):
        with torch.no_grad(), patch(x.model, x.adapter, halved):
            patched.append(x.model(input_ids=ids).logits)
    torch.testing.assert_close(patched[0], patched[1], rtol=0, atol=0)
    assert not torch.equal(patched[1], theirs["logits"])  # the patch took effect

    fact = facts()[0]
    grids = [trace_fact(x, fact, TraceConfig(samples=2, seed=3)).grids for x in (lm, plain)]
    for kind in ("hidden", "mlp", "attn"):  # causal tracing: noise and restore patches through the hooks
        np.testing.assert_array_equal(grids[0][kind], grids[1][kind])

    stats = second_moments(plain, [1, 2])
    rome = [
        compute_rome(x, fact, stats[1], RomeConfig(layer=1, target=QUICK), TEMPLATES) for x in (lm, plain)
    ]
    memit_config = MemitConfig(layers=(1, 2), target=QUICK, batch_size=2)
    memit = [compute_memit(x, facts(), stats, memit_config, TEMPLATES) for x in (lm, plain)]
    before = weights_hash(lm.model)
    for ours_delta, plain_delta in (rome, memit):
        for a, b in zip(ours_delta.layers, plain_delta.layers, strict=True):
            torch.testing.assert_close(a.dense(), b.dense(), rtol=1e-9, atol=1e-12)
        with apply(lm.model, lm.adapter, ours_delta), apply(plain.model, plain.adapter, plain_delta):
            edited = traced(lm, [Site(2, "mlp.out")])["logits"]
            torch.testing.assert_close(edited, traced(plain, [])["logits"])
            assert weights_hash(lm.model) != before  # the write reached the dispatched weights
        assert weights_hash(lm.model) == before == weights_hash(plain.model)  # undone bit for bit


# --- loading with --device-map: a disk-offloaded block ---------------------------------------------------


def test_loader_dispatches_a_json_map_with_an_offloaded_block(saved, tmp_path, monkeypatch):
    _, folder = saved
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    plain = load_language_model(str(folder), device="cpu", document_start=None)  # same attention kernel
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(split_map("disk")))
    lm = load_language_model(str(folder), device_map=str(mapping), document_start=None)
    blocks = lm.model.model.layers
    assert hasattr(blocks[0], "_hf_hook") and hasattr(blocks[2], "_hf_hook")
    assert is_offloaded(blocks[2].mlp.down_proj) and not is_offloaded(blocks[1].mlp.down_proj)
    assert lm.layer_device(2) == lm.input_device == torch.device("cpu")
    sites = [Site(1, "mlp.post"), Site(2, "mlp.post"), Site(2, "resid.post")]
    ours, theirs = traced(lm, sites), traced(plain, sites)
    for site in ours:
        torch.testing.assert_close(ours[site], theirs[site], rtol=0, atol=0)
    assert weights_hash(lm.model) == weights_hash(plain.model)  # offloaded weights read from the store

    # Statistics stream through the offloaded block; edits below it work, on it are refused.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(" ".join(random.Random(i).choices(WORDS, k=9)) for i in range(6)))
    config = StatsConfig(corpus=str(corpus), batch_size=3)
    found = key_statistics_by_layer(lm, [1, 2], config, cache_dir=tmp_path / "a")
    expected = key_statistics_by_layer(plain, [1, 2], config, cache_dir=tmp_path / "b")
    for layer in (1, 2):
        torch.testing.assert_close(found[layer].second_moment, expected[layer].second_moment, rtol=0, atol=0)
    fact = facts()[0]
    delta = compute_rome(lm, fact, found[1], RomeConfig(layer=1, target=QUICK), TEMPLATES)
    reference = compute_rome(plain, fact, expected[1], RomeConfig(layer=1, target=QUICK), TEMPLATES)
    torch.testing.assert_close(delta.layers[0].dense(), reference.layers[0].dense(), rtol=0, atol=0)
    before = weights_hash(lm.model)
    apply(lm.model, lm.adapter, delta).restore()
    assert weights_hash(lm.model) == before
    with pytest.raises(MemlocError, match=r"layer 2 \(model\.layers\.2\).*offloads") as refused:
        compute_rome(lm, fact, found[2], RomeConfig(layer=2, target=QUICK), TEMPLATES)
    assert "\n" not in str(refused.value)
    with pytest.raises(MemlocError, match="layer 2"):
        compute_memit(lm, [fact], found, MemitConfig(layers=(1, 2), target=QUICK), TEMPLATES)
    with pytest.raises(MemlocError, match="layer 2"):
        apply(lm.model, lm.adapter, compute_rome(plain, fact, expected[2], RomeConfig(layer=2, target=QUICK)))


def test_auto_on_a_cpu_only_machine_loads_the_whole_model(saved, tmp_path, monkeypatch):
    _, folder = saved
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lm = load_language_model(str(folder), device_map="auto", document_start=None)
    plain = load_language_model(str(folder), device="cpu", document_start=None)
    assert lm.input_device == lm.layer_device(2) == torch.device("cpu")
    assert weights_hash(lm.model) == weights_hash(plain.model)


# --- validation -----------------------------------------------------------------------------------------


def test_strategies_inline_json_and_files_parse(tmp_path):
    assert parse_device_map(" Balanced ") == "balanced" and parse_device_map("auto") == "auto"
    assert parse_device_map('{"model.layers": "CPU", "lm_head": "disk"}') == {
        "model.layers": "cpu",
        "lm_head": "disk",
    }
    path = tmp_path / "m.json"
    path.write_text('{"": "cpu"}')
    assert parse_device_map(str(path)) == {"": "cpu"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("everywhere", "neither auto, balanced"),
        ("{nope", "not valid JSON"),
        ("[]", "neither"),
        ("{}", "non-empty JSON object"),
        ('{"lm_head": "tpu"}', "unknown device 'tpu'"),
        ('{"lm_head": 1.5}', "is not a GPU index"),
        ('{"lm_head": "cuda:7"}', "GPU 7 does not exist"),
        ('{"lm_head": 9}', "GPU 9 does not exist"),
    ],
)
def test_bad_maps_are_one_line_data_errors(spec, message):
    with pytest.raises(DataError, match=message) as error:
        parse_device_map(spec)
    assert "\n" not in str(error.value)


def test_map_names_must_be_modules_covering_every_parameter(saved):
    plain, _ = saved
    with pytest.raises(DataError, match=r"does not have, first 'model\.blocks\.0'"):
        check_device_map({"model.blocks.0": "cpu", "": "cpu"}, plain.model)
    without_head = {k: v for k, v in split_map("cpu").items() if k != "lm_head"}
    with pytest.raises(DataError, match=r"no device for 1 parameter.*'lm_head\.weight'"):
        check_device_map(without_head, plain.model)
    assert check_device_map(split_map("cpu"), plain.model) == split_map("cpu")


def test_missing_accelerate_is_one_line_naming_the_extra(saved, monkeypatch):
    import importlib.util

    _, folder = saved
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "accelerate" else real(n, *a))
    with pytest.raises(MemlocError, match=r"needs accelerate: pip install 'memloc\[lm\]'"):
        load_language_model(str(folder), device_map='{"": "cpu"}')


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def one_line_error(code, err) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None) and len(lines) == 1, err
    return lines[0]


def test_cli_device_map_loads_and_refuses_with_device(saved, tmp_path, capsys):
    _, folder = saved
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(" ".join(random.Random(i).choices(WORDS, k=7)) for i in range(4)))
    base = ("edit", "stats", "--model", folder, "--layers", "1", "--corpus", corpus, "--format", "json")
    inline = json.dumps(split_map("disk"))
    code, out, err = run_cli(capsys, *base, "--device-map", inline, "--cache-dir", tmp_path / "a")
    assert code == 0, err
    code, plain_out, _ = run_cli(capsys, *base, "--device", "cpu", "--cache-dir", tmp_path / "b")
    assert json.loads(out)["layers"][0]["trace"] == pytest.approx(json.loads(plain_out)["layers"][0]["trace"])

    code, _, err = run_cli(capsys, *base, "--device", "cpu", "--device-map", "auto")
    assert "give only one" in one_line_error(code, err)
    code, _, err = run_cli(capsys, *base, "--device-map", '{"model.nope": "cpu"}')
    assert "does not have, first 'model.nope'" in one_line_error(code, err)
    code, _, err = run_cli(capsys, *base, "--device-map", '{"": "tpu"}')
    assert "unknown device 'tpu'" in one_line_error(code, err)


def test_a_gpu_without_room_sends_the_buffer_to_the_cpu(monkeypatch):
    from memloc.core import devices

    gpu, need = torch.device("cuda", 0), 11008 * 11008 * 8  # Llama-7B's C in float64
    monkeypatch.setattr(devices, "free_bytes", lambda device: need)  # no room left for the headroom
    assert devices.room_or_cpu(gpu, need) == torch.device("cpu")
    monkeypatch.setattr(devices, "free_bytes", lambda device: need + (2 << 30))
    assert devices.room_or_cpu(gpu, need) == gpu
    monkeypatch.undo()
    assert (
        devices.free_bytes(torch.device("cpu")) is None
        and devices.room_or_cpu(torch.device("cpu"), need).type == "cpu"
    )


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GPT2_MAP = {
    **dict.fromkeys(["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1"], "cpu"),
    **dict.fromkeys(["transformer.h.2", "transformer.h.3"], "disk"),
    **dict.fromkeys(["transformer.ln_f", "lm_head"], "cpu"),
}


def test_cli_edit_apply_on_a_dispatched_gpt2_writes_the_plain_edit(tmp_path, capsys, monkeypatch):
    """GPT-2 stores its down-projection as Conv1D (F, D); the edited folder matches a --device cpu run."""
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    base = ("edit", "apply", "--method", "rome", "--model", FIXTURES / "fixture-lm", "--samples", 12)
    base += ("--facts", FIXTURES / "fixture-facts.json", "--limit", 1, "--format", "json")
    code, _, err = run_cli(
        capsys, *base, "--layers", 1, "--device-map", json.dumps(GPT2_MAP), "--out", tmp_path / "a"
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, *base, "--layers", 1, "--device", "cpu", "--out", tmp_path / "b")
    assert code == 0, err
    edited = [load_language_model(str(tmp_path / run), device="cpu") for run in ("a", "b")]
    assert weights_hash(edited[0].model) == weights_hash(edited[1].model)
    code, _, err = run_cli(
        capsys, *base, "--layers", 3, "--device-map", json.dumps(GPT2_MAP), "--out", tmp_path / "c"
    )
    assert "layer 3 (transformer.h.3), whose weights the device map offloads" in one_line_error(code, err)
    assert not (tmp_path / "c").exists()

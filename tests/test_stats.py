"""Key statistics: streamed = one batch, resumable, cached, shrunk; corpora; the CLI."""

import json
import random
from pathlib import Path

import pytest
import torch
from memloc.cli.app import main
from memloc.core.errors import DataError
from memloc.core.hooks import trace
from memloc.core.lm.loading import load_language_model
from memloc.core.sites import Site
from memloc.edit.corpus import GenerationConfig, generate_texts, read_corpus, texts_hash
from memloc.edit.stats import StatsConfig, key_statistics, key_statistics_by_layer, spectrum
from tiny_lms import WORDS, tiny_lm

FIXTURE_LM = Path(__file__).resolve().parent.parent / "fixtures" / "fixture-lm"
needs_fixture = pytest.mark.skipif(not (FIXTURE_LM / "config.json").is_file(), reason="no fixture LM")


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("\n\n".join(texts) + "\n")
    return path


def reference_second_moment(lm, texts: list[str], layer: int) -> tuple[torch.Tensor, int]:
    """C from every text's keys gathered at once: one unpadded full forward per text."""
    keys = []
    site = Site(layer, "mlp.post")
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        with trace(lm.model, lm.adapter, [site]) as seen, torch.no_grad():
            lm.model(input_ids=ids)
        keys.append(seen[site][0].double())
    k = torch.cat(keys)
    return k.T @ k / k.shape[0], k.shape[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_streamed_equals_one_batch(tmp_path, arch):
    lm = tiny_lm(arch)
    lm.model.double()  # float64 activations: batching may then differ only by float64 rounding
    texts = random_texts(11)
    corpus = write_txt(tmp_path / "corpus.txt", texts)
    config = StatsConfig(corpus=str(corpus), samples=100, batch_size=3)
    found = key_statistics_by_layer(lm, [2, 0], config, cache_dir=tmp_path / "cache")
    assert sorted(found) == [0, 2]
    for layer, stats in found.items():
        expected, tokens = reference_second_moment(lm, texts, layer)
        assert stats.count == tokens and stats.texts == len(texts)
        assert stats.second_moment.dtype == torch.float64
        assert stats.second_moment.shape == (lm.adapter.d_mlp, lm.adapter.d_mlp)
        # transformers 5 computes RoPE tables in float32 whatever the model's dtype, and
        # float32 cos/sin round differently by tensor length, so rotary models agree to
        # float32 rounding only; a wrong or missing token would be off by far more.
        rtol, atol = (1e-6, 1e-12) if arch == "llama" else (1e-10, 1e-14)
        torch.testing.assert_close(stats.second_moment, expected, rtol=rtol, atol=atol)
    assert not torch.allclose(found[0].second_moment, found[2].second_moment)


def test_resume_after_interruption_is_identical(tmp_path):
    lm = tiny_lm("llama")
    corpus = write_txt(tmp_path / "corpus.txt", random_texts(14, seed=1))
    config = StatsConfig(corpus=str(corpus), batch_size=2, checkpoint_every=2)
    whole = key_statistics_by_layer(lm, [0, 1], config, cache_dir=tmp_path / "a")

    def interrupt(done, total, _text):
        if done >= 10:  # after 5 batches of 2; the last checkpoint was after 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        key_statistics_by_layer(lm, [0, 1], config, cache_dir=tmp_path / "b", progress=interrupt)
    assert list((tmp_path / "b").rglob("partial-0-1.safetensors"))
    assert not list((tmp_path / "b").rglob("layer_*.safetensors"))
    seen = []
    resumed = key_statistics_by_layer(
        lm, [0, 1], config, cache_dir=tmp_path / "b", progress=lambda d, t, _: seen.append(d)
    )
    assert seen[0] == 10  # resumed from the checkpoint after 4 batches: the 5th is redone
    for layer in (0, 1):
        assert torch.equal(resumed[layer].second_moment, whole[layer].second_moment)
        assert resumed[layer].count == whole[layer].count
    assert not list((tmp_path / "b").rglob("partial-*"))


def test_cache_hit_does_not_run_the_model(tmp_path, monkeypatch):
    lm = tiny_lm("gpt2")
    config = StatsConfig(samples=6, generated_length=8, batch_size=4)
    first = key_statistics(lm, 1, config, cache_dir=tmp_path)

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(lm.model, "forward", no_forward)
    again = key_statistics(lm, 1, config, cache_dir=tmp_path)
    assert torch.equal(again.second_moment, first.second_moment)
    assert again.count == first.count and again.key == first.key
    assert again.to_dict() == first.to_dict()
    with pytest.raises(AssertionError, match="cache hit"):  # another layer is not cached
        key_statistics(lm, 2, config, cache_dir=tmp_path)
    other = StatsConfig(samples=6, generated_length=8, batch_size=4, dtype="float32")
    with pytest.raises(AssertionError, match="cache hit"):  # nor another dtype
        key_statistics(lm, 1, other, cache_dir=tmp_path)


def test_shrinkage_brings_the_condition_under_the_limit(tmp_path):
    lm = tiny_lm("llama")  # 48 keys per layer from 3 texts of few tokens: C is singular
    corpus = write_txt(tmp_path / "c.txt", ["the city of Paris", "a river", "Rome is red"])
    stats = key_statistics(lm, 1, StatsConfig(corpus=str(corpus), max_condition=1e4), cache_dir=tmp_path)
    assert stats.condition > 1e4 and 0 < stats.shrinkage < 1
    eig = torch.linalg.eigvalsh(stats.matrix())
    assert eig[-1] / eig[0] <= 1e4
    assert eig[-1] / eig[0] == pytest.approx(stats.spectrum.shrunk_condition, rel=1e-6)
    assert stats.matrix().trace() == pytest.approx(stats.second_moment.trace().item(), rel=1e-12)
    json.dumps(stats.to_dict(), allow_nan=True)

    well = spectrum(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)), 10.0)
    assert well.condition == pytest.approx(4.0) and well.shrinkage == 0
    ill = spectrum(torch.diag(torch.tensor([1e-9, 1.0, 2.0], dtype=torch.float64)), 10.0)
    assert ill.shrinkage > 0 and ill.shrunk_condition <= 10.0


def test_corpus_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first line\ncontinued\n\n\nsecond\n\n")
    assert read_corpus(txt) == ["first line continued", "second"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "third"}\n\n{"text": "fourth", "id": 4}\n')
    assert read_corpus(jsonl) == ["third", "fourth"]
    (tmp_path / "ignored.md").write_text("not a corpus file")
    assert read_corpus(tmp_path) == ["first line continued", "second", "third", "fourth"]
    assert read_corpus(tmp_path, limit=3) == ["first line continued", "second", "third"]
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])
    bad = tmp_path / "bad" / "c.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"txt": "no text field"}\n')
    with pytest.raises(DataError, match=r'c\.jsonl:1 has no string field "text"'):
        read_corpus(bad)
    (tmp_path / "empty.txt").write_text("\n\n")
    for path, needle in [
        (tmp_path / "missing.txt", "does not exist"),
        (tmp_path / "empty.txt", "holds no text"),
        (tmp_path / "ignored.md", "must be a .txt or .jsonl"),
    ]:
        with pytest.raises(DataError, match=needle):
            read_corpus(path)


def test_generated_corpus_is_seeded():
    lm = tiny_lm("qwen2")
    config = GenerationConfig(length=10, batch_size=2, seed=3)
    texts = generate_texts(lm, 5, config)
    assert len(texts) == 5 and len(set(texts)) > 1
    assert generate_texts(lm, 5, GenerationConfig(length=10, batch_size=5, seed=3)) == texts
    assert generate_texts(lm, 5, GenerationConfig(length=10, batch_size=2, seed=4)) != texts


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def one_line_error(code, err) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None) and len(lines) == 1, err
    assert lines[0].startswith("memloc: error: ")
    return lines[0]


@needs_fixture
def test_cli_stats_json_and_errors(tmp_path, capsys):
    corpus = write_txt(tmp_path / "c.txt", ["Gafou is a country .", "The capital of Gafou is Velmora ."] * 3)
    base = ("edit", "stats", "--model", FIXTURE_LM, "--device", "cpu", "--cache-dir", tmp_path / "cache")
    code, out, _ = run_cli(capsys, *base, "--layers", "1,3", "--corpus", corpus, "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert [row["layer"] for row in report["layers"]] == [1, 3]
    assert all(row["texts"] == 6 and row["tokens"] > 6 and row["width"] == 512 for row in report["layers"])
    lm = load_language_model(str(FIXTURE_LM), device="cpu")
    direct = key_statistics(lm, 3, StatsConfig(corpus=str(corpus)), cache_dir=tmp_path / "fresh")
    assert direct.to_dict() == report["layers"][1]

    code, _, err = run_cli(capsys, *base, "--layers", "9", "--corpus", corpus)
    assert "layer 9 is out of range" in one_line_error(code, err)
    code, _, err = run_cli(capsys, *base, "--layers", "1", "--corpus", tmp_path / "nope.txt")
    assert "nope.txt does not exist" in one_line_error(code, err)
    code, _, err = run_cli(capsys, *base, "--layers", "x", "--corpus", corpus)
    assert "'x' is not a layer number" in one_line_error(code, err)
    code, _, err = run_cli(capsys, *base, "--layers", "1", "--corpus", corpus, "--doc-start", "<|nope|>")
    assert "'<|nope|>' is not a token of this tokenizer" in one_line_error(code, err)
    code, out, _ = run_cli(
        capsys, *base, "--layers", "3", "--corpus", corpus, "--doc-start", "<|endoftext|>", "--format", "json"
    )
    assert code == 0 and json.loads(out)["layers"][0]["tokens"] == report["layers"][1]["tokens"] + 6

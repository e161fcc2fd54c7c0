"""Image folders, Hugging Face datasets folders and preprocessing as data sources (no downloads)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from memloc.core.classifier.data import load_dataset
from memloc.core.classifier.preprocess import Preprocess
from memloc.core.classifier.preprocess_flags import parse_normalize, parse_resize, preprocess_from_flags
from memloc.core.errors import DataError
from PIL import Image
from sklearn.datasets import load_digits

CLASSES = ("zero", "one", "two")  # sorted: one, two, zero


def digit_bytes(per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real digits 0-2 as 8-bit (N, 8, 8) pixels, ``per_class`` of each, and their labels."""
    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[offset : offset + per_class] for c in range(3)])
    return np.round(digits.images[rows] / 16 * 255).astype(np.uint8), digits.target[rows]


def write_split(root, split, pixels, digits, names=None):
    """One PNG per image under root/split/CLASS/, named by its row (or ``names``)."""
    for i, (image, digit) in enumerate(zip(pixels, digits, strict=True)):
        path = root / split / CLASS_OF[digit] / (names[i] if names else f"{i:04d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


CLASS_OF = dict(enumerate(CLASSES))


def expected(pixels, digits):
    """What the folder must load to: sorted by class name, then file name; bytes / 255."""
    index = {name: i for i, name in enumerate(sorted(CLASSES))}
    labels = np.array([index[CLASS_OF[d]] for d in digits])
    order = np.lexsort((np.arange(len(labels)), labels))  # by class, then by row (= file name)
    return pixels[order].astype(np.float32)[:, None] / 255.0, labels[order]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "digits"
    train, test = digit_bytes(12), digit_bytes(4, offset=20)
    write_split(root, "train", *train)
    write_split(root, "test", *test)
    return root, train, test


def test_image_folder_loads_the_exact_pixels_in_documented_order(folder):
    root, train, test = folder
    data = load_dataset(str(root))
    x_train, y_train = expected(*train)
    x_test, y_test = expected(*test)
    assert np.array_equal(data.x_train, x_train) and np.array_equal(data.y_train, y_train)
    assert np.array_equal(data.x_test, x_test) and np.array_equal(data.y_test, y_test)
    assert data.num_classes == 3 and data.input_shape == (1, 8, 8)


def test_file_names_sort_as_strings_and_val_serves_as_test(tmp_path):
    pixels, digits = digit_bytes(2)
    root = tmp_path / "d"
    names = ["2.png", "10.png"] * 3  # per class: row 0 is 2.png, row 1 is 10.png
    write_split(root, "train", pixels, digits, names)
    write_split(root, "val", pixels, digits, names)
    data = load_dataset(str(root))
    # "10.png" < "2.png": within each class the second image comes first.
    first = np.flatnonzero(digits == 1)  # class "one", index 0 after sorting
    assert np.array_equal(data.x_train[0, 0], pixels[first[1]] / np.float32(255))
    assert np.array_equal(data.x_train[1, 0], pixels[first[0]] / np.float32(255))
    assert len(data.y_test) == 6


def test_batches_and_the_kept_pixels_do_not_change_the_arrays(folder, monkeypatch):
    from memloc.core.classifier import image_files

    root, _, _ = folder
    prep = Preprocess(size=(10, 10), channels=3)
    whole = load_dataset(str(root), preprocess=prep)
    monkeypatch.setattr(image_files, "KEEP_BYTES", 8 * 8 * 5)  # five images kept, the rest decoded later
    monkeypatch.setattr(image_files, "DECODE_BATCH", 7)
    seen: list[tuple[int, int]] = []
    batched = load_dataset(
        str(root), preprocess=prep, progress=lambda done, total, _: seen.append((done, total))
    )
    assert np.array_equal(whole.x_train, batched.x_train) and np.array_equal(whole.x_test, batched.x_test)
    assert seen[0] == (7, 48) and seen[-1] == (48, 48) and len(seen) == 7


def test_resize_while_reading_equals_preprocess_resize(folder):
    root, _, _ = folder
    native = load_dataset(str(root))
    prep = Preprocess(size=(12, 10), mean=(0.5,), std=(0.25,))
    resized = load_dataset(str(root), preprocess=prep)
    assert resized.x_train.shape == (36, 1, 12, 10)
    assert np.allclose(resized.x_train, prep.apply(native.x_train), atol=1e-6)


def test_mixed_sizes_need_a_resize(folder):
    root, train, _ = folder
    odd = root / "train" / "one" / "0100.png"
    big = np.arange(100, dtype=np.uint8).reshape(10, 10)
    Image.fromarray(big).save(odd)
    with pytest.raises(DataError, match=r"8x8 .*10x10 .*0100\.png") as caught:
        load_dataset(str(root))
    assert caught.value.field == "resize"
    data = load_dataset(str(root), preprocess=Preprocess(size=(8, 8)))
    # Class "one" sorts first; its files 0012-0023 come before 0100.png, which is row 12.
    assert data.x_train.shape == (37, 1, 8, 8) and data.y_train[12] == 0 and data.y_train[13] == 1
    shrunk = torch.nn.functional.interpolate(
        torch.from_numpy(big / np.float32(255))[None, None], size=(8, 8), mode="bilinear", antialias=True
    )
    assert np.allclose(data.x_train[12], shrunk[0].numpy(), atol=1e-6)
    x_train, _ = expected(*train)
    assert np.array_equal(data.x_train[:12], x_train[:12])  # images at the size already stay exact
    assert np.array_equal(data.x_train[13:], x_train[12:])


def test_channels_follow_the_majority_or_the_declared_count(tmp_path):
    root = tmp_path / "rgb"
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(colour[2 * c]).save(root / split / name / "1.png")
            Image.fromarray(colour[2 * c + 1]).save(root / split / name / "2.png")
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(gray).save(root / "train" / "a" / "3.png")
    data = load_dataset(str(root))  # four RGB images to one gray: RGB
    assert data.x_train.shape == (5, 3, 5, 6)
    assert np.array_equal(data.x_train[2], np.repeat(gray[None] / np.float32(255), 3, axis=0))
    assert np.array_equal(data.x_train[0], colour[0].transpose(2, 0, 1) / np.float32(255))
    mono = load_dataset(str(root), preprocess=Preprocess(channels=1))
    assert mono.x_train.shape == (5, 1, 5, 6)
    assert np.allclose(mono.x_train[0, 0], (colour[0] / np.float32(255)).mean(-1), atol=1e-6)


def test_bad_folders_are_one_line_naming_the_path(folder):
    root, _, _ = folder
    notes: list[str] = []
    (root / "test" / "two").rename(root / "spare")  # a train class without test images: a note
    (root / "train" / "one" / "notes.txt").write_text("not an image")
    data = load_dataset(str(root), notify=notes.append)
    assert set(data.y_test.tolist()) == {0, 2} and len(data.y_test) == 8  # "two" is class 1
    assert any("no images of class 'two'" in n for n in notes)
    assert any("skipped 1" in n and "notes.txt" in n for n in notes)

    fake = root / "train" / "zero" / "fake.png"
    fake.write_text("just text")
    with pytest.raises(DataError) as caught:
        load_dataset(str(root))
    assert str(caught.value) == f"{fake} is not an image Pillow can read"
    fake.unlink()
    (root / "test" / "three").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "test" / "three" / "x.png")
    with pytest.raises(DataError, match=r"test/three is a class that .*train lacks"):
        load_dataset(str(root))
    (root / "test" / "three" / "x.png").unlink()
    (root / "test" / "three").rmdir()
    for image in (root / "train" / "one").glob("*.png"):
        image.unlink()
    with pytest.raises(DataError, match=r"train/one holds no \.png"):
        load_dataset(str(root))


def test_a_folder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train" / "flat.png")
    with pytest.raises(DataError, match="train holds no class folders"):
        load_dataset(str(tmp_path))


def test_cli_train_on_an_image_folder_and_its_errors(folder, tmp_path, capsys):
    from memloc.core.classifier.runs import RunFolder
    from test_cli import assert_one_line_error, run_cli

    root, _, _ = folder
    train = ("train", "--data", root, "--arch", "mlp", "--epochs", "1", "--noise", "0.1")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *train, "--out", out, "--resize", "12x10", "--normalize", "0.5/0.5")
    assert code == 0, err
    stored = json.loads((out / "config.json").read_text())["train"]["preprocess"]
    assert stored == {"size": [12, 10], "mean": [0.5], "std": [0.5], "channels": None}
    data = RunFolder.open(out).dataset()
    assert data.x_train.shape == (36, 1, 12, 10) and data.x_train.min() < 0
    code, _, err = run_cli(capsys, *train, "--out", out, "--resize", "12x10", "--normalize", "0.5/0.5")
    assert code == 0, err  # the same run resumes (nothing left to do)

    from memloc.core.training.train import TrainConfig

    assert "preprocess" not in TrainConfig(str(root), "mlp").to_dict()  # as stored before preprocessing

    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "train" / "one" / "big.png")
    for flags, needles in (
        ((), ("images differ in size", "8x8", "9x9", "big.png", "--resize")),
        (("--resize", "0"), ("--resize must be a positive size",)),
        (("--normalize", "0.5,0.5/1"), ("--normalize", "2 means but 1 stds")),
        (("--channels", "2"), ("--channels must be 1 or 3",)),
    ):
        code, _, err = run_cli(capsys, *train, "--out", tmp_path / "bad", *flags)
        assert_one_line_error(code, err, *needles)
        assert not (tmp_path / "bad").exists()


# --- preprocessor_config.json and flags ---------------------------------------------

VIT = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
CONVNEXT = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "ConvNextImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def model_folder(tmp_path, processor, channels=3):
    folder = tmp_path / f"model{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "num_channels": channels}))
    return folder


def processor_values(pixels, processor):
    """What a Hugging Face processor's rescale and normalize steps make of 8-bit pixels (N, C, H, W)."""
    x = pixels.astype(np.float64)
    if processor.get("do_rescale", True):
        x = x * processor.get("rescale_factor", 1 / 255)
    if processor.get("do_normalize", True):
        mean = np.array(processor["image_mean"]).reshape(1, -1, 1, 1)
        x = (x - mean) / np.array(processor["image_std"]).reshape(1, -1, 1, 1)
    return x


def test_vit_style_file(tmp_path):
    prep = Preprocess.from_model_folder(model_folder(tmp_path, VIT))
    assert prep.size == (224, 224) and prep.channels == 3
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224))
    out = prep.apply((pixels / 255).astype(np.float32))
    assert np.allclose(out, processor_values(pixels, VIT), atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {"do_rescale": False},
        {"rescale_factor": 1 / 127.5},
        {"do_normalize": False, "rescale_factor": 2 / 255},
    ],
)
def test_any_rescale_becomes_an_exact_normalization(tmp_path, changes):
    processor = {**VIT, **changes, "size": {"height": 4, "width": 4}}
    prep = Preprocess.from_model_folder(model_folder(tmp_path, processor))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4))
    out = prep.apply((pixels / 255).astype(np.float32))
    assert np.allclose(out, processor_values(pixels, processor), rtol=1e-5, atol=1e-4)


def test_convnext_style_file_refuses_its_crop_unless_resized(tmp_path):
    folder = model_folder(tmp_path, CONVNEXT)
    with pytest.raises(DataError, match=r"center crop \(crop_pct 0.875 of shortest_edge 224\)") as caught:
        Preprocess.from_model_folder(folder)
    assert caught.value.field == "resize" and "\n" not in str(caught.value)
    prep = preprocess_from_flags(model_folder=folder, resize="32")
    assert prep == Preprocess((32, 32), tuple(CONVNEXT["image_mean"]), tuple(CONVNEXT["image_std"]), 3)
    large = model_folder(tmp_path, {**CONVNEXT, "size": {"shortest_edge": 384}})
    assert Preprocess.from_model_folder(large).size == (384, 384)  # ConvNeXt warps from 384 on


def test_flags_override_the_file(tmp_path):
    folder = model_folder(tmp_path, VIT)
    prep = preprocess_from_flags(model_folder=folder, resize="32x48", normalize="none", channels=1)
    assert prep == Preprocess(size=(32, 48), channels=1)
    prep = preprocess_from_flags(model_folder=folder, normalize="imagenet")
    assert prep is not None and prep.size == (224, 224) and prep.std == (0.229, 0.224, 0.225)
    assert preprocess_from_flags() is None and preprocess_from_flags(normalize="none") is None
    with pytest.raises(DataError, match="3 channel values but the images will have 1"):
        preprocess_from_flags(model_folder=folder, channels=1)


def test_refused_processor_steps(tmp_path):
    deit = {**VIT, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
    deit["size"] = {"height": 256, "width": 256}
    for processor, needle in (
        (deit, "center crop to"),
        ({**VIT, "size": {"longest_edge": 224}}, "size memloc cannot follow"),
        ({**VIT, "do_pad": True}, "do_pad"),
    ):
        with pytest.raises(DataError, match=needle):
            Preprocess.from_model_folder(model_folder(tmp_path, processor))
    assert Preprocess.from_model_folder(model_folder(tmp_path, {**VIT, "rescale_offset": False})).size
    bit = {**VIT, "size": {"shortest_edge": 448}, "do_center_crop": True, "crop_size": 448}
    assert Preprocess.from_model_folder(model_folder(tmp_path, bit)).size == (448, 448)  # the crop keeps it


def test_flag_parsing():
    assert parse_resize("32") == (32, 32) and parse_resize("32x48") == (32, 48)
    assert parse_normalize("0.5,0.4/0.2,0.1") == ((0.5, 0.4), (0.2, 0.1))
    for bad in ("0", "abc", "32x", "3x0", "-3"):
        with pytest.raises(DataError, match="resize must be") as caught:
            parse_resize(bad)
        assert caught.value.field == "resize"
    for bad, needle in (("0.5", "MEAN/STD"), ("a/b", "MEAN/STD"), ("0.5/0", "positive"), ("nan/1", "MEAN")):
        with pytest.raises(DataError, match=needle):
            parse_normalize(bad)


# --- Hugging Face datasets folders ----------------------------------------------------


def test_datasets_folder_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    splits = {}
    for split, (pixels, digits) in (("train", digit_bytes(5)), ("test", digit_bytes(2, offset=9))):
        rows = {"img": [Image.fromarray(p) for p in pixels], "label": digits.tolist()}
        splits[split] = (datasets.Dataset.from_dict(rows, features=features), pixels, digits)
    datasets.DatasetDict({k: v[0] for k, v in splits.items()}).save_to_disk(str(tmp_path / "ds"))
    data = load_dataset(str(tmp_path / "ds"))
    for x, y, (_, pixels, digits) in (
        (data.x_train, data.y_train, splits["train"]),
        (data.x_test, data.y_test, splits["test"]),
    ):
        assert np.array_equal(x, pixels[:, None] / np.float32(255)) and np.array_equal(y, digits)

    unlabeled = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in splits["train"][1]]})
    unlabeled = unlabeled.cast_column("img", datasets.Image())
    datasets.DatasetDict({"train": unlabeled, "test": unlabeled}).save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(DataError, match=r"one Image column and one ClassLabel column, but has img \(Image\)"):
        load_dataset(str(tmp_path / "nolabel"))


def test_datasets_folder_without_the_extra(tmp_path, monkeypatch):
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without it imports
    with pytest.raises(DataError, match=r"needs pip install 'memloc\[data\]'"):
        load_dataset(str(tmp_path))

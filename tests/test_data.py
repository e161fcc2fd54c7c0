import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memloc.core.classifier.data import (
    FASHION_MNIST_DIR,
    DataError,
    inject_noise,
    load_dataset,
    stratified_subset,
)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 6, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 4)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (8, 6, 5)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(8) % 4)
    return tmp_path


def test_digits():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.num_classes == 10 and data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0


def test_idx_folder(idx_folder):
    data = load_dataset(str(idx_folder))
    assert data.x_train.shape == (40, 1, 6, 5) and data.num_classes == 4
    assert data.x_train.dtype == np.float32 and data.x_train.max() <= 1.0


def test_truncated_idx_is_refused(idx_folder):
    path = idx_folder / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-2]))
    with pytest.raises(DataError, match="truncated"):
        load_dataset(str(idx_folder))


def test_fashion_mnist_env_folder(idx_folder, monkeypatch):
    monkeypatch.setenv("MEMLOC_FASHION_MNIST", str(idx_folder))
    assert load_dataset("fashion-mnist").x_train.shape == (40, 1, 6, 5)
    monkeypatch.setenv("MEMLOC_FASHION_MNIST", str(idx_folder / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_subset():
    data = load_dataset("fashion-mnist", limit=1000, seed=3)
    assert data.x_train.shape == (1000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(data.y_train).tolist() == [100] * 10


def test_npz_folder_split_over_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x_train=rng.random((20, 3, 4, 4)), y_train=np.arange(20) % 2)
    np.savez(tmp_path / "test.npz", x_test=rng.random((6, 3, 4, 4)), y_test=np.arange(6) % 2)
    data = load_dataset(str(tmp_path))
    assert data.input_shape == (3, 4, 4) and data.num_classes == 2
    np.savez(tmp_path / "bad.npz", x_test=rng.random((6, 3, 4, 4)))
    with pytest.raises(DataError, match="more than one"):
        load_dataset(str(tmp_path))


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 2)))
    with pytest.raises(DataError, match="lacks arrays y_train, x_test, y_test"):
        load_dataset(str(tmp_path / "d.npz"))


def test_unknown_and_missing(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="neither"):
        load_dataset(str(tmp_path))


def test_limit_is_stratified_and_seeded():
    y = np.repeat(np.arange(5), [100, 200, 300, 200, 200])
    a, b, c = stratified_subset(y, 100, 0), stratified_subset(y, 100, 0), stratified_subset(y, 100, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a]).tolist() == [10, 20, 30, 20, 20]
    assert np.array_equal(stratified_subset(y, 5000, 0), np.arange(1000))


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 600), st.floats(0.0, 0.99), st.integers(2, 12), st.integers(0, 2**31))
def test_noise_flips_exactly_round_pn_to_other_classes(n, p, classes, seed):
    labels = np.random.default_rng(seed).integers(0, classes, n)
    noisy = inject_noise(labels, p, classes, seed)
    assert noisy.mask.sum() == int(np.floor(p * n + 0.5))
    assert np.array_equal(noisy.given != labels, noisy.mask)
    assert np.array_equal(noisy.original, labels)
    assert noisy.given.min() >= 0 and noisy.given.max() < classes
    again = inject_noise(labels, p, classes, seed)
    assert np.array_equal(again.given, noisy.given)


def test_new_labels_are_uniform_over_the_other_classes():
    # The reference code never flips y to (y - 1) mod C; here every offset 1..C-1 is equally likely.
    labels = np.zeros(90_000, dtype=np.int64)
    noisy = inject_noise(labels, 0.5, 10, 0)
    counts = np.bincount(noisy.given[noisy.mask], minlength=10)
    assert counts[0] == 0
    expected = noisy.mask.sum() / 9
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # 99.95% quantile of chi-square with 8 degrees of freedom


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_noise_outside_unit_interval(p):
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        inject_noise(np.zeros(10, dtype=np.int64), p, 3, 0)

"""Data: bundled digits and MNIST IDX files (tests write their own tiny IDX files)."""

import os

import numpy as np
import pytest

from lowprec.data import MNIST_FILES, load_digits, load_mnist, read_idx, write_idx


def test_digits_split_is_seeded_and_standardised_with_train_statistics():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert len(a.y_train) + len(a.y_test) == 1797 and a.n_features == 64 and a.n_classes == 10
    mean, std = a.x_train.mean(axis=0), a.x_train.std(axis=0)
    varying = std > 0
    np.testing.assert_allclose(mean, 0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1, rtol=1e-4)
    assert abs(float(a.x_test.mean())) > 1e-4  # the test set is scaled with train statistics, not its own


def test_digits_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


def _write_mnist(d, n_train=6, n_test=4, gz=False, rows=3, cols=2):
    rng = np.random.default_rng(0)
    data = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, arr in data.items():
        write_idx(os.path.join(d, MNIST_FILES[key] + (".gz" if gz else "")), arr)
    return data


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_mnist_reads_idx_files(tmp_path, gz):
    data = _write_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    np.testing.assert_array_equal(ds.y_train, data["train_labels"])
    np.testing.assert_array_equal(ds.y_test, data["test_labels"])
    x = data["train_images"].reshape(6, -1) / 255.0
    std = x.std(axis=0)
    std[std == 0] = 1
    np.testing.assert_allclose(ds.x_train, (x - x.mean(axis=0)) / std, rtol=1e-5, atol=1e-6)
    assert ds.x_test.shape == (4, 6)


def test_idx_header_bytes_by_hand(tmp_path):
    p = tmp_path / "x"
    write_idx(p, np.array([[1, 2, 3]], dtype=np.uint8))
    assert p.read_bytes() == bytes([0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3])
    np.testing.assert_array_equal(read_idx(p), [[1, 2, 3]])


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST directory not found"):
        load_mnist(tmp_path / "nope")
    _write_mnist(tmp_path)
    os.remove(tmp_path / MNIST_FILES["test_labels"])
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_truncated_file(tmp_path):
    _write_mnist(tmp_path)
    p = tmp_path / MNIST_FILES["train_images"]
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated IDX data"):
        load_mnist(tmp_path)
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="truncated IDX header"):
        load_mnist(tmp_path)


def test_truncated_gzip(tmp_path):
    _write_mnist(tmp_path, gz=True)
    p = tmp_path / (MNIST_FILES["train_labels"] + ".gz")
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist(tmp_path)


def test_mislabelled_files(tmp_path):
    data = _write_mnist(tmp_path)
    # an images file saved under the labels name
    write_idx(tmp_path / MNIST_FILES["train_labels"], data["train_images"])
    with pytest.raises(ValueError, match="expected labels.*images file"):
        load_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES["train_labels"], data["train_labels"][:5])
    with pytest.raises(ValueError, match="6 images but .* 5 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES["train_labels"], np.full(6, 12, np.uint8))
    with pytest.raises(ValueError, match="labels must be in 0..9, found 12"):
        load_mnist(tmp_path)
    (tmp_path / MNIST_FILES["train_labels"]).write_bytes(b"GIF89a...")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(tmp_path)


def test_nan_in_data_is_refused():
    from lowprec.data import standardise

    x = np.ones((4, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x_train contains 1 NaN/Inf value\(s\) \(first in row 2\)"):
        standardise(x, np.ones((2, 3)))

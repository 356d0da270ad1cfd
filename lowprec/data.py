"""Data sets for training: scikit-learn's bundled digits and MNIST from local IDX files.

Nothing is downloaded: ``load_digits`` reads the 8x8 digits that ship inside
scikit-learn, and ``load_mnist`` reads the four standard IDX files that a
user already has.

Both return a :class:`Dataset` of float32 features standardised with the
*training* statistics (per feature: ``(x - mean) / std``, a feature with
zero spread keeps std 1) and int64 labels.

Examples
--------
>>> ds = load_digits(seed=0)
>>> ds.x_train.shape, ds.x_test.shape, ds.n_classes
((1438, 64), (359, 64), 10)
>>> bool(abs(ds.x_train.mean()) < 1e-5)
True
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "write_idx", "MNIST_FILES"]


@dataclass
class Dataset:
    """Train and test arrays (features float32 (N, D), labels int64 (N,))."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = ""

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def _check_finite(name: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/Inf value(s) (first in row {row}); "
                         "clean the data before training")


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple:
    """Standardise both arrays with the mean and std of ``x_train`` (per feature), as float32."""
    _check_finite("x_train", x_train)
    _check_finite("x_test", x_test)
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return (((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32))


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8x8 digit images (bundled, offline), split and standardised.

    Parameters
    ----------
    seed : int
        Seed of the shuffle that makes the split (the same seed gives the same split).
    test_fraction : float in (0, 1)
        Share of the samples held out for testing (rounded to a whole count).

    Returns
    -------
    Dataset
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    xtr, xte = standardise(x[train], x[test])
    return Dataset(xtr, y[train], xte, y[test], name="digits")


# ---------------------------------------------------------------------------------------------
# MNIST IDX files (LeCun et al.): big-endian header: 0x00 0x00 <type code> <ndim>, ndim uint32 sizes

#: The four files load_mnist looks for (each may also end in ``.gz``).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in ``.gz``).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Bad magic number, unknown type code, or fewer data bytes than the header announces.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot read (truncated or corrupt file: {exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have < need:
        raise ValueError(f"{path}: truncated IDX data: header announces shape {shape} ({need} bytes), "
                         f"file holds {have}")
    out = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)
    return out.astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8/int8/int16/int32/float32/float64) as an IDX file (gzip if ``.gz``)."""
    array = np.asarray(array)
    be = array.dtype.newbyteorder(">")
    code = next((k for k, v in _IDX_TYPES.items() if np.dtype(v) == be), None)
    if code is None:
        raise TypeError(f"write_idx cannot store dtype {array.dtype}")
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=be).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"MNIST file {stem} (or {stem}.gz) not found in {directory}; expected the four "
                            f"files {', '.join(MNIST_FILES.values())}")


def load_mnist(path) -> Dataset:
    """MNIST (or a drop-in like Fashion-MNIST) from the four standard IDX files in a directory.

    Images become float32 vectors of 784 pixels standardised with the training
    statistics; labels int64.

    Parameters
    ----------
    path : str or PathLike
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each gzipped or not).

    Raises
    ------
    FileNotFoundError
        The directory or one of the files is missing.
    ValueError
        A truncated file, an images file where labels are expected (or the
        reverse), image and label counts that differ, labels outside 0..9.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MNIST directory not found: {path}")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        file = _find(path, stem)
        a = read_idx(file)
        if key.endswith("images") and a.ndim != 3:
            raise ValueError(f"{file}: expected images (a 3-D IDX array, magic 0x00000803), got a {a.ndim}-D "
                             f"array of shape {a.shape}: is this a labels file?")
        if key.endswith("labels") and a.ndim != 1:
            raise ValueError(f"{file}: expected labels (a 1-D IDX array, magic 0x00000801), got a {a.ndim}-D "
                             f"array of shape {a.shape}: is this an images file?")
        arrays[key] = (file, a)
    for split in ("train", "test"):
        (fi, im), (fl, lab) = arrays[split + "_images"], arrays[split + "_labels"]
        if im.shape[0] != lab.shape[0]:
            raise ValueError(f"{fi} holds {im.shape[0]} images but {fl} holds {lab.shape[0]} labels")
        if lab.size and int(lab.max()) > 9:
            raise ValueError(f"{fl}: labels must be in 0..9, found {int(lab.max())}")
    xtr = arrays["train_images"][1].reshape(arrays["train_images"][1].shape[0], -1).astype(np.float64) / 255.0
    xte = arrays["test_images"][1].reshape(arrays["test_images"][1].shape[0], -1).astype(np.float64) / 255.0
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train images have {xtr.shape[1]} pixels but test images {xte.shape[1]}")
    xtr, xte = standardise(xtr, xte)
    return Dataset(xtr, arrays["train_labels"][1].astype(np.int64), xte,
                   arrays["test_labels"][1].astype(np.int64), name="mnist")

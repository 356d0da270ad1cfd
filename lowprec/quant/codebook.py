"""Piecewise (codebook) quantization: intervals ``[a_i, b_i)`` mapped to levels.

A :class:`Codebook` holds ``K`` levels and the ``K - 1`` strictly increasing
thresholds between them. Interval ``i`` is ``[t_{i-1}, t_i)`` with
``t_{-1} = -inf`` and ``t_{K-1} = +inf``: a value equal to a threshold goes
to the *upper* interval, and values beyond the outermost thresholds go to
the end levels (saturation). :meth:`Codebook.encode` gives the interval
index, :meth:`Codebook.decode` its level.

Designs:

* :func:`uniform_codebook`: ``K`` evenly spaced levels on ``[lo, hi]`` with
  thresholds at the midpoints (a nearest-level quantizer);
* :func:`lloyd_max`: levels designed from data by the Lloyd-Max iteration
  (1-D k-means): thresholds at the midpoints of neighbouring levels, levels
  at the means of the data in their interval, repeated until the levels stop
  changing. Deterministic: it starts from fixed quantiles of the data and
  uses no random numbers, so the same data give the same codebook. Each
  iteration does not increase the mean squared error (Lloyd's property); the
  result is a local optimum.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["Codebook", "uniform_codebook", "lloyd_max"]


def _finite_1d(v, name) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1) if arr.ndim <= 1 else None
    if arr is None:
        raise ValueError(f"{name} must be 1-D, got shape {np.shape(v)}")
    return arr


class Codebook:
    """Levels and the thresholds between them (see the module docstring).

    Parameters
    ----------
    thresholds : array_like, shape (K-1,)
        Strictly increasing finite decision thresholds.
    levels : array_like, shape (K,)
        Strictly increasing finite reconstruction levels, K >= 2.

    Raises
    ------
    ValueError
        Wrong lengths, non-finite or non-increasing values.

    Examples
    --------
    >>> cb = Codebook([0.0, 1.0], [-0.5, 0.5, 2.0])
    >>> cb.encode(np.array([-3.0, 0.0, 0.99, 1.0, 7.0]))
    array([0, 1, 1, 2, 2], dtype=uint8)
    >>> cb.quantize(np.array([-3.0, 0.5, 7.0]))
    array([-0.5,  0.5,  2. ])
    """

    def __init__(self, thresholds, levels):
        t = _finite_1d(thresholds, "thresholds")
        lv = _finite_1d(levels, "levels")
        if lv.size < 2:
            raise ValueError(f"a codebook needs at least 2 levels, got {lv.size}")
        if t.size != lv.size - 1:
            raise ValueError(f"{lv.size} levels need {lv.size - 1} thresholds, got {t.size}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(lv))):
            raise ValueError("thresholds and levels must be finite")
        if np.any(t[1:] <= t[:-1]):  # compare, not subtract: a difference can overflow
            raise ValueError(f"thresholds must be strictly increasing, got {t.tolist()}")
        if np.any(lv[1:] <= lv[:-1]):
            raise ValueError(f"levels must be strictly increasing, got {lv.tolist()}")
        self.thresholds = t
        self.levels = lv

    @classmethod
    def from_intervals(cls, intervals: Sequence, levels) -> "Codebook":
        """Build from contiguous intervals ``[(a_0, b_0), ..., (a_{K-1}, b_{K-1})]``, ``b_i == a_{i+1}``.

        The outer ends ``a_0`` and ``b_{K-1}`` may be +-inf; values outside
        them saturate to the end levels.

        Examples
        --------
        >>> Codebook.from_intervals([(-np.inf, 0.0), (0.0, np.inf)], [-1.0, 1.0]).thresholds
        array([0.])
        """
        iv = np.asarray(intervals, dtype=np.float64)
        if iv.ndim != 2 or iv.shape[1] != 2:
            raise ValueError(f"intervals must be a sequence of (a, b) pairs, got shape {iv.shape}")
        if np.any(iv[:, 0] >= iv[:, 1]):
            raise ValueError("each interval [a, b) needs a < b")
        if np.any(iv[1:, 0] != iv[:-1, 1]):
            i = int(np.argmax(iv[1:, 0] != iv[:-1, 1]))
            raise ValueError(f"intervals must be contiguous: interval {i} ends at {iv[i, 1]} but interval "
                             f"{i + 1} starts at {iv[i + 1, 0]}")
        return cls(iv[1:, 0], levels)

    @property
    def n_levels(self) -> int:
        return int(self.levels.size)

    def intervals(self) -> np.ndarray:
        """The ``(K, 2)`` array of ``[a_i, b_i)`` (outer ends +-inf)."""
        edges = np.r_[-np.inf, self.thresholds, np.inf]
        return np.stack([edges[:-1], edges[1:]], axis=1)

    def encode(self, x) -> np.ndarray:
        """The interval index of each value (smallest unsigned dtype); NaN raises ValueError."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"x must be a real array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if np.isnan(arr).any():
            raise ValueError(f"x contains {int(np.isnan(arr).sum())} NaN value(s); a codebook index cannot be NaN")
        idx = np.searchsorted(self.thresholds, arr, side="right")
        dt = np.uint8 if self.n_levels <= 256 else (np.uint16 if self.n_levels <= 65536 else np.uint32)
        out = idx.astype(dt)
        return out[()] if arr.ndim == 0 else out

    def decode(self, idx) -> np.ndarray:
        """The level of each index (float64)."""
        i = np.asarray(idx)
        if i.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {i.dtype}")
        if i.size and (i.min() < 0 or i.max() >= self.n_levels):
            raise ValueError(f"indices must be in 0..{self.n_levels - 1}, got values in {i.min()}..{i.max()}")
        return self.levels[i]

    def quantize(self, x) -> np.ndarray:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    __call__ = quantize

    def mse(self, x) -> float:
        """Mean squared quantization error on ``x``."""
        arr = np.asarray(x, dtype=np.float64)
        return float(np.mean((self.quantize(arr) - arr) ** 2))

    def __repr__(self) -> str:
        return f"Codebook(thresholds={self.thresholds.tolist()}, levels={self.levels.tolist()})"


def _check_k(n_levels) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)):
        raise TypeError(f"n_levels must be an int, got {type(n_levels).__name__}")
    if not 2 <= int(n_levels) <= 65536:
        raise ValueError(f"n_levels must be in 2..65536, got {n_levels}")
    return int(n_levels)


def uniform_codebook(lo: float, hi: float, n_levels: int) -> Codebook:
    """``n_levels`` evenly spaced levels from ``lo`` to ``hi``, thresholds at the midpoints.

    Any finite ``lo < hi`` works, up to float64's limits (``-1.7e308, 1.7e308``).

    Examples
    --------
    >>> uniform_codebook(-1.0, 1.0, 5)
    Codebook(thresholds=[-0.75, -0.25, 0.25, 0.75], levels=[-1.0, -0.5, 0.0, 0.5, 1.0])
    """
    k = _check_k(n_levels)
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")
    # A range wider than float64's largest value (hi - lo overflows) is built at a quarter of the
    # scale (where step * (k - 1) cannot round past the largest value) and scaled back: multiplying
    # numbers this large by 4 or 1/4 is exact, so the levels round as with (hi - lo).
    with np.errstate(over="ignore"):
        c = 1.0 if np.isfinite(hi - lo) else 0.25
    lo_c, hi_c = lo * c, hi * c
    step = (hi_c - lo_c) / (k - 1)
    levels = lo_c + step * np.arange(k)
    levels[-1] = hi_c
    return Codebook((levels[:-1] + step / 2) / c, levels / c)


def _check_data(data) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"data must be a real array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("calibration data is empty; need at least one value")
    if np.isnan(arr).any():
        raise ValueError(f"calibration data contains {int(np.isnan(arr).sum())} NaN value(s)")
    if np.isinf(arr).any():
        raise ValueError(f"calibration data contains {int(np.isinf(arr).sum())} infinite value(s)")
    return arr


def lloyd_max(data, n_levels: int, *, max_iter: int = 200) -> Codebook:
    """Design a codebook from data by the Lloyd-Max (1-D k-means) iteration.

    Parameters
    ----------
    data : array_like
        Non-empty finite training values (any shape; flattened).
    n_levels : int
        Number of levels K (2..65536). If the data have fewer than K distinct
        values, the codebook has one level per distinct value (zero error).
    max_iter : int
        Iteration cap; the loop stops earlier when the levels do not change.

    Returns
    -------
    Codebook
        Levels are the means of the data in their intervals; thresholds the
        midpoints between neighbouring levels.

    Examples
    --------
    >>> cb = lloyd_max(np.array([0.0, 0.1, 0.2, 10.0, 10.2]), 2)
    >>> cb.levels
    array([ 0.1, 10.1])
    """
    x = np.sort(_check_data(data))
    k = _check_k(n_levels)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    uniq = np.unique(x)
    if uniq.size <= k:
        if uniq.size == 1:  # one distinct value: two levels around it, the lower one exact
            v = float(uniq[0])
            d = max(abs(v), 1.0)
            return Codebook([v + d / 2], [v, v + d])
        return Codebook((uniq[:-1] + uniq[1:]) / 2, uniq)
    levels = np.quantile(x, (np.arange(k) + 0.5) / k)
    if np.any(np.diff(levels) <= 0):  # heavy ties: start from evenly spaced distinct values
        levels = uniq[np.round(np.linspace(0, uniq.size - 1, k)).astype(np.int64)]
    for _ in range(int(max_iter)):
        t = (levels[:-1] + levels[1:]) / 2
        edges = np.r_[0, np.searchsorted(x, t, side="left"), x.size]  # [t_{i-1}, t_i) as in encode
        counts = np.diff(edges)
        full = counts > 0
        # empty cells have zero width, so the non-empty ones tile the sorted data: one reduceat
        sums = np.zeros(k)
        sums[full] = np.add.reduceat(x, edges[:-1][full])
        new = np.where(full, sums / np.maximum(counts, 1), levels)
        # the means of ordered cells are ordered; guard against rounding making neighbours equal
        if np.any(np.diff(new) <= 0) or np.array_equal(new, levels):
            break
        levels = new
    return Codebook((levels[:-1] + levels[1:]) / 2, levels)

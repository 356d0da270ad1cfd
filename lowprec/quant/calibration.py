"""Calibration: choose the range an affine quantizer covers from data.

Every method returns ``(lo, hi)`` per tensor, per channel (``axis``) or per
group (``group_size``), shaped like the parameters of
:func:`lowprec.quant.affine.quantize`; :func:`calibrate` turns them into an
:class:`~lowprec.quant.affine.AffineQuantizer`.

* :func:`minmax_range`: the smallest and largest value;
* :func:`percentile_range`: the given lower/upper percentiles (clips outliers);
* :func:`mse_range`: the range ``c * (lo, hi)``, ``c`` searched on a grid in
  ``(0, 1]``, that minimises the mean squared error of fake quantization;
* :class:`EMAObserver`: an exponential moving average of per-batch min/max,
  for activations seen batch by batch during training.

Calibration data must be non-empty, finite and NaN-free (ValueError otherwise).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .affine import AffineQuantizer, _norm_axis, check_bits, choose_qparams, qrange

__all__ = ["minmax_range", "percentile_range", "mse_range", "EMAObserver", "calibrate", "grouped_rows"]


def _check_data(x, name="x") -> np.ndarray:
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real array, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real (float or integer) array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"calibration data {name} is empty (shape {arr.shape}); need at least one value")
    if np.isnan(arr).any():
        raise ValueError(f"calibration data {name} contains {int(np.isnan(arr).sum())} NaN value(s)")
    if np.isinf(arr).any():
        raise ValueError(f"calibration data {name} contains {int(np.isinf(arr).sum())} infinite value(s)")
    return arr


def grouped_rows(x: np.ndarray, axis=None, group_size=None) -> Tuple[np.ndarray, tuple]:
    """Rows of values sharing one parameter, NaN-padded, and the parameter shape.

    Returns ``(rows, shape)``: ``rows[i]`` holds the values of parameter
    ``i`` (in C order of ``shape``); short groups are padded with NaN.

    Examples
    --------
    >>> rows, shape = grouped_rows(np.arange(6.0).reshape(2, 3), axis=0)
    >>> rows, shape
    (array([[0., 1., 2.],
           [3., 4., 5.]]), (2,))
    >>> grouped_rows(np.arange(5.0), group_size=2)
    (array([[ 0.,  1.],
           [ 2.,  3.],
           [ 4., nan]]), (3,))
    """
    x = np.asarray(x, dtype=np.float64)
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if x.ndim == 0:
            raise ValueError("per-group calibration needs an array with at least one dimension")
        ax = _norm_axis(-1 if axis is None else axis, x.ndim)
        k = int(group_size)
        xm = np.moveaxis(x, ax, -1)
        n = xm.shape[-1]
        ng = -(-n // k)
        pad = np.full(xm.shape[:-1] + (ng * k - n,), np.nan)
        y = np.concatenate([xm, pad], axis=-1).reshape(xm.shape[:-1] + (ng, k))
        # parameter shape: x.shape with axis -> ng; rows in that C order
        rows = np.moveaxis(y, -2, ax).reshape(-1, k)
        return rows, x.shape[:ax] + (ng,) + x.shape[ax + 1:]
    if axis is None:
        return x.reshape(1, -1), ()
    ax = _norm_axis(axis, x.ndim)
    return np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1), (x.shape[ax],)


def minmax_range(x, *, axis: Optional[int] = None, group_size: Optional[int] = None):
    """The smallest and largest value per tensor/channel/group.

    Examples
    --------
    >>> minmax_range([[1.0, -2.0], [3.0, 0.5]], axis=0)
    (array([-2. ,  0.5]), array([1., 3.]))
    """
    rows, shape = grouped_rows(_check_data(x), axis, group_size)
    return np.nanmin(rows, axis=1).reshape(shape), np.nanmax(rows, axis=1).reshape(shape)


def percentile_range(x, percentile: float = 99.99, *, axis: Optional[int] = None,
                     group_size: Optional[int] = None):
    """The ``100 - percentile`` and ``percentile`` percentiles (linear interpolation).

    Examples
    --------
    >>> x = np.r_[np.linspace(-1, 1, 99), 50.0]
    >>> lo, hi = percentile_range(x, 99.0)
    >>> round(float(lo), 3), round(float(hi), 3)
    (-0.98, 1.49)
    """
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.floating, np.integer)):
        raise TypeError(f"percentile must be a number, got {type(percentile).__name__}")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    rows, shape = grouped_rows(_check_data(x), axis, group_size)
    q = (100.0 - float(percentile), float(percentile))
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = np.nanpercentile(rows, q, axis=1)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if np.any(bad):
        # the interpolation's difference of neighbours overflowed (data near float64's limit):
        # interpolate at a quarter of the scale, where it cannot, and scale back (exact for such values)
        qlo, qhi = np.nanpercentile(rows[bad] * 0.25, q, axis=1)
        lo[bad], hi[bad] = qlo * 4.0, qhi * 4.0
    return lo.reshape(shape), hi.reshape(shape)


def mse_range(x, *, bits: int = 8, signed: bool = True, symmetric: bool = False, narrow_range: bool = False,
              axis: Optional[int] = None, group_size: Optional[int] = None, grid: int = 100):
    """The clipping range ``c * (min, max)`` with the least fake-quantization MSE.

    ``c`` runs over ``grid`` values ``1, 1 - 1/grid, ..., 1/grid``; each set of
    values (tensor, channel or group) picks its own ``c``. The search rounds
    to nearest-even on the float64 quotient (``np.rint``); ties of the
    squared error keep the widest range.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(size=2000), 40.0]         # one outlier
    >>> lo, hi = mse_range(x, bits=4, symmetric=True)
    >>> bool(hi < 40.0)
    True
    """
    qmin, qmax = qrange(bits, signed, narrow_range)
    check_bits(bits)
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    rows, shape = grouped_rows(_check_data(x), axis, group_size)
    lo0, hi0 = np.nanmin(rows, axis=1), np.nanmax(rows, axis=1)
    valid = ~np.isnan(rows)
    # Rows with values above 2**256 are searched at a power-of-two scale (exact) so that the
    # squared errors cannot overflow; the choice of c does not depend on that scale.
    k = np.frexp(np.maximum(-lo0, hi0))[1]
    k = np.where(k > 256, k, 0)
    with np.errstate(under="ignore"):
        data = np.ldexp(np.where(valid, rows, 0.0), -k[:, None])
        lo_k, hi_k = np.ldexp(lo0, -k), np.ldexp(hi0, -k)
    best_err = np.full(rows.shape[0], np.inf)
    best_c = np.ones(rows.shape[0])
    for i in range(int(grid)):
        c = 1.0 - i / grid
        s, z = choose_qparams(c * lo_k, c * hi_k, bits=bits, signed=signed, symmetric=symmetric,
                              narrow_range=narrow_range)
        s, z = s[:, None], z[:, None].astype(np.float64)
        q = np.clip(np.rint(data / s) + z, qmin, qmax)
        err = np.sum(np.where(valid, ((q - z) * s - data) ** 2, 0.0), axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_c = np.where(better, c, best_c)
    return (best_c * lo0).reshape(shape), (best_c * hi0).reshape(shape)


class EMAObserver:
    """Exponential moving average of per-batch minima and maxima (for activations).

    After the first batch (which sets the range), each ``update`` moves the
    range toward the batch's: ``lo += c * (batch_min - lo)``, likewise ``hi``,
    with ``c = averaging_constant``.

    Examples
    --------
    >>> obs = EMAObserver(averaging_constant=0.5)
    >>> obs.update(np.array([-1.0, 1.0])); obs.update(np.array([0.0, 3.0]))
    >>> obs.range()
    (array(-0.5), array(2.))
    >>> obs.quantizer(bits=8, signed=False).zero_point
    array(51)
    """

    def __init__(self, averaging_constant: float = 0.01, *, axis: Optional[int] = None,
                 group_size: Optional[int] = None):
        if isinstance(averaging_constant, bool) or not isinstance(averaging_constant, (int, float, np.floating)):
            raise TypeError(f"averaging_constant must be a number, got {type(averaging_constant).__name__}")
        if not 0.0 < float(averaging_constant) <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = float(averaging_constant)
        self.axis = axis
        self.group_size = group_size
        self.lo = None
        self.hi = None
        self.count = 0

    def update(self, x) -> None:
        """Fold one batch into the running range."""
        lo, hi = minmax_range(x, axis=self.axis, group_size=self.group_size)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            if lo.shape != self.lo.shape:
                raise ValueError(f"batch gives ranges of shape {lo.shape}, the observer holds {self.lo.shape}")
            c = self.averaging_constant
            self.lo = self.lo + c * (lo - self.lo)
            self.hi = self.hi + c * (hi - self.hi)
        self.count += 1

    def range(self):
        """The current ``(lo, hi)``; ValueError before the first update."""
        if self.lo is None:
            raise ValueError("EMAObserver has seen no data yet; call update(x) first")
        return np.asarray(self.lo), np.asarray(self.hi)

    def quantizer(self, *, bits: int = 8, signed: bool = True, symmetric: bool = False,
                  narrow_range: bool = False, **kwargs) -> AffineQuantizer:
        lo, hi = self.range()
        return AffineQuantizer.from_range(lo, hi, bits=bits, signed=signed, symmetric=symmetric,
                                          narrow_range=narrow_range, axis=self.axis,
                                          group_size=self.group_size, **kwargs)


_METHODS = ("minmax", "percentile", "mse")


def calibrate(x, method: str = "minmax", *, bits: int = 8, signed: bool = True, symmetric: bool = False,
              narrow_range: bool = False, axis: Optional[int] = None, group_size: Optional[int] = None,
              percentile: float = 99.99, grid: int = 100, rounding="nearest_even") -> AffineQuantizer:
    """An :class:`AffineQuantizer` calibrated on ``x`` by ``method``.

    Parameters
    ----------
    x : array_like
        Non-empty, finite calibration data.
    method : {"minmax", "percentile", "mse"}

    Raises
    ------
    ValueError
        Empty data, NaN or Inf in it, unknown method, bad width.

    Examples
    --------
    >>> q = calibrate(np.array([-1.0, 0.0, 2.0]), bits=8, signed=False)
    >>> float(q.scale) == 3 / 255, int(q.zero_point)
    (True, 85)
    """
    if method not in _METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(_METHODS)}")
    if method == "minmax":
        lo, hi = minmax_range(x, axis=axis, group_size=group_size)
    elif method == "percentile":
        lo, hi = percentile_range(x, percentile, axis=axis, group_size=group_size)
    else:
        lo, hi = mse_range(x, bits=bits, signed=signed, symmetric=symmetric, narrow_range=narrow_range,
                           axis=axis, group_size=group_size, grid=grid)
    return AffineQuantizer.from_range(lo, hi, bits=bits, signed=signed, symmetric=symmetric,
                                      narrow_range=narrow_range, axis=axis, group_size=group_size,
                                      rounding=rounding)

"""Hypothesis strategies and property checkers for quantizers, yours and lowprec's.

Strategies
----------
* :func:`formats`: lowprec number formats (presets, random float formats,
  fixed-point formats);
* :func:`values`: floats concentrated where quantizers go wrong for a given
  format: its values, the ties halfway between neighbours, one carrier ulp
  either side of both, subnormals, the overflow threshold (``max``, the
  overflow tie ``max + ulp(max)/2``, beyond), zeros; plus ordinary floats;
* :func:`values_near`: the same for any sorted level set (an affine grid, a codebook);
* :func:`arrays`: numpy arrays of such values.

Checkers
--------
Each takes your quantizer ``q`` (a function array -> array, elementwise)
and inputs ``x``, and raises ``AssertionError`` naming a counterexample:

* :func:`check_idempotent`: ``q(q(x)) == q(x)``;
* :func:`check_monotone`: ``x <= y`` implies ``q(x) <= q(y)``;
* :func:`check_bounded_error`: ``|q(x) - x| <= bound``;
* :func:`check_in_levels`: every output is one of the levels;
* :func:`check_neighbours`: every output is one of the two levels around ``x``
  (the end level beyond the range);
* :func:`check_unbiased`: stochastic rounding returns a neighbour and its
  mean over ``n`` draws is within a stated Hoeffding bound of ``x``.

``levels`` may be a sorted array or a lowprec format (its values up to 16
bits are enumerated; wider float formats use directed rounding to find the
neighbours).

Examples
--------
>>> import numpy as np
>>> from lowprec.testing import check_monotone, check_neighbours
>>> grid = np.arange(-4, 4) * 0.5
>>> q = lambda x: np.clip(np.round(x / 0.5), -4, 3) * 0.5
>>> x = np.linspace(-3, 3, 101)
>>> check_monotone(q, x); check_neighbours(q, x, grid)
>>> check_neighbours(lambda x: np.floor(x) - 0.5, np.array([0.25]), grid)
Traceback (most recent call last):
...
AssertionError: output not a neighbour: x=0.25 -> q(x)=-0.5; the neighbours are 0.0 and 0.5 ...
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .core import round_to
from .formats import PRESETS, FixedFormat, FloatFormat, all_values, get_format

__all__ = ["formats", "values", "values_near", "arrays", "level_set", "neighbours", "check_idempotent",
           "check_monotone", "check_bounded_error", "check_in_levels", "check_neighbours", "check_unbiased",
           "hoeffding_bound"]


# ----------------------------------------------------------------------------- strategies
def _float_format(draw_tuple):
    e, m, kind = draw_tuple
    if kind == "ieee":
        return FloatFormat(e, m)
    if kind == "all_ones":
        return FloatFormat(e, m, has_inf=False, nan="all_ones")
    return FloatFormat(e, m, has_inf=False, nan="none")


def formats(kind: str = "any", max_bits: int = 16, fits_in=np.float64) -> st.SearchStrategy:
    """Strategy for lowprec formats.

    Parameters
    ----------
    kind : {"any", "float", "fixed"}
    max_bits : int
        Largest total width drawn (presets wider than this are left out).
    fits_in : dtype
        Only formats whose values this carrier (float32/float64) holds exactly.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(formats(max_bits=8))
    ... def test(fmt):
    ...     assert fmt.bits <= 8
    >>> test()
    """
    if kind not in ("any", "float", "fixed"):
        raise ValueError(f"kind must be 'any', 'float' or 'fixed', got {kind!r}")
    presets = [f for f in PRESETS.values() if f.bits <= max_bits and f.fits_in(fits_in)
               and (kind == "any" or f.kind == kind)]
    opts = []
    if kind in ("any", "float"):
        flt = st.tuples(st.integers(2, 8), st.integers(0, 10), st.sampled_from(["ieee", "all_ones", "none"])) \
            .filter(lambda t: 1 + t[0] + t[1] <= max_bits and not (t[2] == "all_ones" and t[1] == 0)) \
            .map(_float_format).filter(lambda f: f.fits_in(fits_in))
        opts.append(flt)
    if kind in ("any", "fixed"):
        fix = st.builds(FixedFormat, st.integers(2, max(2, min(max_bits, 24))), st.integers(-4, 12),
                        st.booleans(), st.sampled_from(["saturate", "wrap"])).filter(lambda f: f.fits_in(fits_in))
        opts.append(fix)
    if presets:
        opts.append(st.sampled_from(presets))
    return st.one_of(*opts)


def _ulp_at(fmt, v: float) -> float:
    """The gap above the non-negative format value v (v < max)."""
    if isinstance(fmt, FixedFormat):
        return fmt.eps
    if v < fmt.tiny:
        return 2.0 ** (fmt.emin - fmt.man_bits) if fmt.has_subnormals else fmt.tiny
    return 2.0 ** (math.frexp(v)[1] - 1 - fmt.man_bits)


@st.composite
def _format_value(draw, fmt):
    """A non-negative finite value of fmt."""
    if isinstance(fmt, FixedFormat):
        k = draw(st.integers(fmt.kmin, fmt.kmax))
        return float(k) * fmt.eps
    m = draw(st.integers(0, (1 << fmt.man_bits) - 1)) if fmt.man_bits else 0
    e = draw(st.integers(fmt.emin - 1, fmt.emax))  # emin - 1 encodes "subnormal"
    if e == fmt.emin - 1:
        v = m * 2.0 ** (fmt.emin - fmt.man_bits) if fmt.has_subnormals else 0.0
    else:
        v = (1.0 + m * 2.0 ** -fmt.man_bits) * 2.0 ** e
    return min(v, fmt.max)


def _carrier_neighbours(v: float, dtype) -> list:
    c = dtype.type(v)
    return [float(np.nextafter(c, dtype.type(-np.inf))), float(c), float(np.nextafter(c, dtype.type(np.inf)))]


@st.composite
def _special(draw, fmt, dtype):
    v = draw(_format_value(fmt))
    which = draw(st.sampled_from(["level", "tie", "overflow", "subnormal", "zero"]))
    if which == "tie":
        base = v if v < fmt.max else max(fmt.max - _ulp_at(fmt, fmt.max / 2), 0.0)
        v = base + _ulp_at(fmt, base) / 2
    elif which == "overflow":
        top = fmt.max
        gap = fmt.eps if isinstance(fmt, FixedFormat) else 2.0 ** (fmt.emax - fmt.man_bits)
        v = draw(st.sampled_from([top, top + gap / 2, top + gap, 2 * top + gap]))
    elif which == "subnormal":
        v = draw(st.integers(0, 4)) * fmt.smallest_subnormal / 2
    elif which == "zero":
        v = 0.0
    near = draw(st.sampled_from(_carrier_neighbours(v, dtype)))
    sign = draw(st.sampled_from([1.0, -1.0]))
    return sign * near


def values(fmt, dtype=np.float64, *, allow_nan: bool = False, allow_infinity: bool = False) -> st.SearchStrategy:
    """Strategy for floats (of ``dtype``) concentrated at a format's hard cases.

    Most draws are a format value, a tie between neighbours, an overflow
    threshold, a subnormal or zero, each possibly moved one carrier ulp
    either way and negated; the rest are ordinary floats.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(values("fp8_e4m3fn"))
    ... def test(x):
    ...     assert abs(x) < 1e10
    >>> test()
    """
    fmt = get_format(fmt)
    dtype = np.dtype(dtype)
    width = 32 if dtype == np.float32 else 64
    plain = st.floats(width=width, allow_nan=allow_nan, allow_infinity=allow_infinity,
                      min_value=None if allow_infinity else -4.0 * fmt.max,
                      max_value=None if allow_infinity else 4.0 * fmt.max)
    return st.one_of(_special(fmt, dtype), _special(fmt, dtype), _special(fmt, dtype), plain)


def values_near(levels, dtype=np.float64) -> st.SearchStrategy:
    """Strategy for floats at and around a sorted level set: levels, midpoints, one ulp off, beyond the ends.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(values_near([0.0, 0.5, 1.0]))
    ... def test(x):
    ...     assert -2.0 <= x <= 3.0
    >>> test()
    """
    lv = np.unique(np.asarray(levels, dtype=np.float64))
    if lv.size < 1 or not np.all(np.isfinite(lv)):
        raise ValueError("levels must be a non-empty finite array")
    dtype = np.dtype(dtype)
    mids = (lv[:-1] + lv[1:]) / 2 if lv.size > 1 else lv
    span = float(lv[-1] - lv[0]) or 1.0
    outside = [float(lv[0] - span / 2), float(lv[-1] + span / 2), float(lv[0]) - 1e-3 * span,
               float(lv[-1]) + 1e-3 * span]
    base = st.one_of(st.sampled_from(lv.tolist()), st.sampled_from(mids.tolist()), st.sampled_from(outside))
    wiggle = base.flatmap(lambda v: st.sampled_from(_carrier_neighbours(v, dtype)))
    width = 32 if dtype == np.float32 else 64
    plain = st.floats(min_value=float(lv[0]) - span, max_value=float(lv[-1]) + span, width=width)
    return st.one_of(wiggle, wiggle, plain)


def arrays(fmt_or_levels, shape=st.integers(0, 40), dtype=np.float64) -> st.SearchStrategy:
    """Strategy for numpy arrays whose elements come from :func:`values` (a format) or :func:`values_near` (levels).

    ``shape`` is an int, a tuple or a strategy for either (default 1-D, length 0..40).
    """
    if isinstance(fmt_or_levels, (str, FloatFormat, FixedFormat)):
        elements = values(fmt_or_levels, dtype)
    else:
        elements = values_near(fmt_or_levels, dtype)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


# ----------------------------------------------------------------------------- level sets
def level_set(levels) -> Optional[np.ndarray]:
    """Sorted unique finite levels of an array, or of a format of at most 16 bits (None if wider)."""
    if isinstance(levels, (str, FloatFormat, FixedFormat)):
        fmt = get_format(levels)
        if fmt.bits > 16:
            return None
        v = all_values(fmt)
        return np.unique(v[np.isfinite(v)])
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or not np.all(np.isfinite(lv)):
        raise ValueError("levels must be a non-empty array of finite values")
    return np.unique(lv)


def neighbours(levels, x) -> tuple:
    """``(d, u)``: the largest level <= x and the smallest level >= x (the end level beyond the range)."""
    xf = np.asarray(x, dtype=np.float64)
    lv = level_set(levels)
    if lv is None:  # a wide float format: directed rounding, saturating at +-max
        fmt = get_format(levels)
        d = round_to(xf, fmt, "down", saturate=True)
        u = round_to(xf, fmt, "up", saturate=True)
        return np.asarray(np.maximum(np.minimum(d, u), -fmt.max)), np.asarray(np.minimum(np.maximum(d, u), fmt.max))
    i = np.searchsorted(lv, xf, side="right")
    d = lv[np.clip(i - 1, 0, lv.size - 1)]
    j = np.searchsorted(lv, xf, side="left")
    u = lv[np.clip(j, 0, lv.size - 1)]
    return d, u


# ----------------------------------------------------------------------------- checkers
def _apply(q, x) -> tuple:
    xf = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(q(np.asarray(x).reshape(-1) if np.ndim(x) else np.asarray(x).reshape(1)), dtype=np.float64)
    y = y.reshape(-1)
    if y.shape != xf.shape:
        raise AssertionError(f"quantizer changed the shape: {xf.shape} -> {y.shape}")
    return xf, y


def _same(a, b):
    return (a == b) | (np.isnan(a) & np.isnan(b))


def check_idempotent(q: Callable, x) -> None:
    """Assert ``q(q(x)) == q(x)`` (NaN equals NaN).

    Examples
    --------
    >>> check_idempotent(lambda x: x + 1, [0.0])
    Traceback (most recent call last):
    ...
    AssertionError: not idempotent: x=0.0 -> q(x)=1.0 -> q(q(x))=2.0
    """
    xf, y = _apply(q, x)
    yy = np.asarray(q(y.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64)),
                    dtype=np.float64).reshape(-1)
    bad = ~_same(y, yy)
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(f"not idempotent: x={float(xf[i])!r} -> q(x)={float(y[i])!r} -> q(q(x))={float(yy[i])!r}")


def check_monotone(q: Callable, x) -> None:
    """Assert ``x <= y`` implies ``q(x) <= q(y)`` over all pairs of the (non-NaN) inputs."""
    xf = np.asarray(x, dtype=np.float64).reshape(-1)
    xs = np.sort(xf[~np.isnan(xf)]).astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64)
    if xs.size < 2:
        return
    _, y = _apply(q, xs)
    bad = np.diff(y) < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(f"not monotone: x={float(xs[i])!r} <= {float(xs[i + 1])!r} but "
                             f"q gives {float(y[i])!r} > {y[i + 1]!r}")


def check_bounded_error(q: Callable, x, bound, where=None) -> None:
    """Assert ``|q(x) - x| <= bound`` where ``where`` (a mask or a function of x; default: finite x).

    ``bound`` is a number, an array like ``x`` or a function of ``x``.

    Examples
    --------
    >>> check_bounded_error(np.round, [0.5, 1.4], 0.5)
    >>> check_bounded_error(np.floor, [0.9], 0.5)
    Traceback (most recent call last):
    ...
    AssertionError: error too large: x=0.9 -> q(x)=0.0, |error|=0.9 > bound 0.5
    """
    xf, y = _apply(q, x)
    b = bound(xf) if callable(bound) else bound
    b = np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1) if np.ndim(b) else np.asarray(b, float),
                        xf.shape)
    mask = np.isfinite(xf) if where is None else np.broadcast_to(
        np.asarray(where(xf) if callable(where) else where, dtype=bool).reshape(-1), xf.shape)
    err = np.abs(y - xf)
    bad = mask & ~(err <= b)
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(f"error too large: x={float(xf[i])!r} -> q(x)={float(y[i])!r}, "
                             f"|error|={float(err[i])!r} > bound {float(b[i])!r}")


def check_in_levels(q: Callable, x, levels) -> None:
    """Assert every output of ``q`` (for non-NaN input) is exactly one of ``levels``."""
    xf, y = _apply(q, x)
    ok = np.isnan(xf)
    lv = level_set(levels)
    if lv is None:
        fmt = get_format(levels)
        inf_ok = np.isinf(y) & fmt.has_inf
        fin = np.where(np.isfinite(y), y, 0.0)
        ok = ok | inf_ok | (np.isfinite(y) & (round_to(fin, fmt, "toward_zero") == fin))
    else:
        ok = ok | np.isin(y, lv)
    if not ok.all():
        i = int(np.argmin(ok))
        raise AssertionError(f"output not in the level set: x={float(xf[i])!r} -> q(x)={float(y[i])!r}")


def check_neighbours(q: Callable, x, levels) -> None:
    """Assert each output is ``d`` or ``u``, the levels around ``x`` (the end level beyond the range)."""
    xf, y = _apply(q, x)
    fin = np.isfinite(xf)
    d, u = neighbours(levels, np.where(fin, xf, 0.0))
    ok = ~fin | (y == d) | (y == u)
    if not ok.all():
        i = int(np.argmin(ok))
        raise AssertionError(f"output not a neighbour: x={float(xf[i])!r} -> q(x)={float(y[i])!r}; the neighbours are "
                             f"{float(d[i])!r} and {float(u[i])!r} (levels {_short(levels)})")


def _short(levels) -> str:
    if isinstance(levels, (str, FloatFormat, FixedFormat)):
        return get_format(levels).name
    lv = np.asarray(levels).reshape(-1)
    return str(lv.tolist()) if lv.size <= 8 else f"{lv[:4].tolist()}...{lv[-2:].tolist()} ({lv.size})"


def hoeffding_bound(n: int, m: int = 1, delta: float = 1e-9) -> float:
    """``t`` with ``P(any of m means of n draws in [d, u] is off by >= t (u - d)) <= delta``.

    Hoeffding: ``P(|mean - E| >= t (u-d)) <= 2 exp(-2 n t**2)``; a union bound
    over ``m`` inputs gives ``t = sqrt(ln(2 m / delta) / (2 n))``.

    Examples
    --------
    >>> round(hoeffding_bound(10_000, 1, 1e-9), 4)
    0.0327
    """
    return math.sqrt(math.log(2.0 * m / delta) / (2.0 * n))


def check_unbiased(q: Callable, x, levels, *, n: int = 4000, delta: float = 1e-9,
                   resolution: float = 2.0 ** -20) -> None:
    """Assert stochastic rounding returns neighbours and is unbiased within a statistical bound.

    ``q`` is applied once to ``x`` repeated ``n`` times (``np.repeat``); it
    must draw independently per element (lowprec's counter-based streams
    do). For each finite ``x`` inside the level range, with neighbours
    ``d <= x <= u``: every draw must be ``d`` or ``u``, and the mean must lie
    within ``(u - d) * (hoeffding_bound(n, m, delta) + resolution)`` of ``x``.
    ``resolution`` allows the probability quantisation of r random bits
    (``2**-r``; the default covers r >= 20). An unbiased quantizer fails
    with probability at most ``delta``.

    Examples
    --------
    >>> import lowprec
    >>> q = lambda v: lowprec.round_to(v, "int8", "stochastic", seed=3)
    >>> check_unbiased(q, np.array([0.25, -3.7, 5.0]), "int8", n=2000)
    >>> check_unbiased(lambda v: np.floor(v + 0.4), np.array([0.25]), "int8", n=2000)
    Traceback (most recent call last):
    ...
    AssertionError: biased: x=0.25, mean of 2000 draws 0.0, |mean - x| = 0.25 > bound ...
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    xf = np.asarray(x, dtype=np.float64).reshape(-1)
    xin = np.asarray(x).reshape(-1)
    rep = np.repeat(xin, n)
    y = np.asarray(q(rep), dtype=np.float64).reshape(xf.size, n)
    d, u = neighbours(levels, np.where(np.isfinite(xf), xf, 0.0))
    lv = level_set(levels)
    lo_end = lv[0] if lv is not None else -get_format(levels).max
    hi_end = lv[-1] if lv is not None else get_format(levels).max
    inside = np.isfinite(xf) & (xf >= lo_end) & (xf <= hi_end)
    ok = (y == d[:, None]) | (y == u[:, None])
    bad = inside[:, None] & ~ok
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise AssertionError(f"stochastic output not a neighbour: x={float(xf[i])!r} -> {float(y[i, j])!r}; "
                             f"the neighbours are "
                             f"{float(d[i])!r} and {float(u[i])!r}")
    m = max(int(inside.sum()), 1)
    t = hoeffding_bound(n, m, delta) + resolution
    mean = y.mean(axis=1)
    dev = np.abs(mean - xf)
    bound = (u - d) * t
    bad = inside & (dev > bound)
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(f"biased: x={float(xf[i])!r}, mean of {n} draws {float(mean[i])!r}, "
                             f"|mean - x| = {float(dev[i])!r} > bound "
                             f"{float(bound[i])!r} (= gap {float(u[i] - d[i])!r} x (Hoeffding {t - resolution:.4g} at "
                             f"delta={delta:g} over {m} inputs + resolution {resolution:g}))")

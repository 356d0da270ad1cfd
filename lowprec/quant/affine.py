"""Affine (linear) integer quantization: ``q = clamp(round(x / scale) + zero_point)``.

Back to real values: ``x' = (q - zero_point) * scale``.

Granularity
-----------
* per tensor: ``scale`` and ``zero_point`` are scalars;
* per channel: ``axis=a``; ``scale`` is 1-D with one entry per index of ``x``
  along axis ``a`` (any axis, negative allowed);
* per group: ``group_size=k`` (with ``axis``, default the last axis): runs of
  ``k`` consecutive values along ``axis`` share one scale; ``scale`` has the
  shape of ``x`` with that axis replaced by ``ceil(n / k)`` (the last group
  may be shorter).

Rounding and the exact quotient
-------------------------------
The integer is the *exact* real quotient ``x / scale`` rounded once by any
lowprec mode (:class:`lowprec.Rounding`, stochastic included, through
:func:`lowprec.round_to`). The float64 quotient ``fl(x / scale)`` alone
would not always do: it is itself rounded, and when it lands exactly on a
decision point (a half-integer for the nearest modes, an integer for the
directed, odd and stochastic modes) while the exact quotient does not, the
integer can come out wrong. ``quantize`` therefore computes the sign of the
exact remainder ``x - fl(x/scale) * scale`` with an error-free product
(Dekker's TwoProduct) and, in that case only, moves the quotient one float64
ulp toward the exact value before rounding. Since decision points are 0.5
apart and the quotient (clamped to 2**40) has an ulp of at most 2**-12, the
moved value lies strictly on the same side of every decision point as the
exact quotient, so every deterministic mode gives exactly the integer of the
exact quotient, and stochastic rounding rounds up with probability
``floor(2**r * frac) / 2**r`` of the float64 quotient, which differs from
that of the exact quotient by at most ``2**-r`` (r = ``random_bits``).

``reciprocal=True`` instead multiplies by ``fl(1 / scale)`` (what most
hardware and many frameworks do). The product ``x * fl(1/scale)`` is again
rounded exactly once, but it is the product with a *rounded* reciprocal, so
it can differ from the quotient by one step: with ``scale = 0.1`` and
``x = 0.45`` (both float64), the exact quotient is slightly *below* 4.5 and
rounds to 4 in every nearest mode, while the exact product ``x * fl(1/0.1)``
is slightly *above* 4.5 and rounds to 5. (Both ``fl(x / s)`` and
``fl(x * fl(1/s))`` are exactly 4.5 here: rounding the float64 quotient
naively with ties away from zero would give 5 too.) See :func:`quantize`'s
example.

Dequantization computes ``(q - zero_point) * scale`` in float64 (exact when
the scale has at most 36 significant bits, e.g. any float32 scale) and rounds
once to the requested dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..core import round_to
from ..formats import FixedFormat
from ..rounding import Rounding, get_rounding

__all__ = ["qrange", "quantize", "dequantize", "fake_quantize", "choose_qparams", "AffineQuantizer",
           "expand_param", "check_bits"]

# Quotients are clamped to +-2**40 before rounding; any value there clamps to the ends anyway.
_QLIM = 2.0 ** 40
# The wide integer format the quotient is rounded into (then shifted by the zero point and clamped).
_WIDE = FixedFormat(32, 0, name="int32")


def check_bits(bits) -> int:
    """Validate a quantizer width (2..16) and return it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in 2..16, got {type(bits).__name__}")
    if not 2 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    return int(bits)


def _check_bool(name, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def qrange(bits: int = 8, signed: bool = True, narrow_range: bool = False) -> Tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-wide quantizer.

    ``narrow_range`` drops the most negative code of a signed range (so that
    it is symmetric, ``[-(2**(b-1)-1), 2**(b-1)-1]``) or code 0 of an unsigned one.

    Examples
    --------
    >>> qrange(8), qrange(8, signed=False), qrange(4, narrow_range=True)
    ((-128, 127), (0, 255), (-7, 7))
    """
    bits = check_bits(bits)
    signed = _check_bool("signed", signed)
    narrow_range = _check_bool("narrow_range", narrow_range)
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return (lo + 1 if narrow_range else lo), hi


def _int_dtype(qmin: int, qmax: int):
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)  # pragma: no cover - widths are at most 16


def _as_float64(x, name="x"):
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real array or number, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real (float or integer) array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _norm_axis(axis, ndim, name="axis"):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(axis).__name__}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimension(s)")
    return int(axis) % ndim


def expand_param(p, shape, axis=None, group_size=None, name="scale") -> np.ndarray:
    """Broadcast a per-tensor / per-channel / per-group parameter to ``shape``.

    Examples
    --------
    >>> expand_param([1.0, 2.0], (2, 3), axis=0)
    array([[1., 1., 1.],
           [2., 2., 2.]])
    >>> expand_param([[1.0, 2.0]], (1, 5), group_size=3)
    array([[1., 1., 1., 2., 2.]])
    """
    p = np.asarray(p)
    shape = tuple(shape)
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if len(shape) == 0:
            raise ValueError("per-group quantization needs an array with at least one dimension")
        ax = _norm_axis(-1 if axis is None else axis, len(shape))
        n = shape[ax]
        ng = -(-n // int(group_size))
        want = shape[:ax] + (ng,) + shape[ax + 1:]
        if p.shape != want:
            raise ValueError(f"{name} for groups of {group_size} along axis {ax} of shape {shape} must have "
                             f"shape {want}, got {p.shape}")
        return np.repeat(p, int(group_size), axis=ax).take(np.arange(n), axis=ax)
    if axis is None:
        if p.ndim != 0 and p.size != 1:
            raise ValueError(f"per-tensor {name} must be a scalar, got shape {p.shape}; "
                             "pass axis= for per-channel or group_size= for per-group")
        return np.broadcast_to(p.reshape(()), shape)
    ax = _norm_axis(axis, len(shape))
    if p.ndim != 1 or p.shape[0] != shape[ax]:
        raise ValueError(f"per-channel {name} along axis {ax} must be 1-D of length {shape[ax]}, got shape {p.shape}")
    view = [1] * len(shape)
    view[ax] = shape[ax]
    return np.broadcast_to(p.reshape(view), shape)


def _check_scale(scale) -> np.ndarray:
    s = _as_float64(scale, "scale")
    if s.size and not (np.all(np.isfinite(s)) and np.all(s > 0)):
        bad = s[~(np.isfinite(s) & (s > 0))].reshape(-1)[0]
        raise ValueError(f"scale must be finite and > 0, got {bad}")
    return s


def _check_zero_point(zero_point, qmin, qmax) -> np.ndarray:
    z = np.asarray(zero_point)
    if z.dtype.kind == "f":
        if not np.all(np.isfinite(z)) or not np.all(z == np.round(z)):
            raise ValueError(f"zero_point must hold integers, got {zero_point!r}")
    elif z.dtype.kind not in "biu":
        raise TypeError(f"zero_point must be an integer or integer array, got dtype {z.dtype}")
    if z.size and (z.min() < qmin or z.max() > qmax):
        bad = z.reshape(-1)[np.argmax((z.reshape(-1) < qmin) | (z.reshape(-1) > qmax))]
        raise ValueError(f"zero_point must be in {qmin}..{qmax} for this range, got {bad}")
    return z.astype(np.int64)


# ---------------------------------------------------------------- exact quotient
_SPLIT = 134217729.0  # 2**27 + 1 (Veltkamp/Dekker splitting constant for float64)


def _two_prod(a, b):
    """(p, e) with p = fl(a*b) and p + e = a*b exactly (Dekker; |a|, |b| moderate)."""
    p = a * b
    ca = _SPLIT * a
    ah = ca - (ca - a)
    al = a - ah
    cb = _SPLIT * b
    bh = cb - (cb - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _nudge_to_exact(q, x, s, reciprocal):
    """Move q one ulp toward the exact x/s (or x*s) where q is a multiple of 1/2 and inexact."""
    # a quotient that underflowed to zero is inexact: move it to the tiniest value of x's sign
    under = (q == 0) & (x != 0) & np.isfinite(x)
    if np.any(under):
        q = np.where(under, np.copysign(5e-324, x), q)
    cand = np.isfinite(q) & (np.abs(q) >= 0.5) & (np.abs(q) <= _QLIM) & (np.floor(2 * q) == 2 * q)
    if not np.any(cand):
        return q
    qc, xc, sc = q[cand], x[cand], s[cand]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if not reciprocal:
            e = np.frexp(sc)[1]
            s1 = np.ldexp(sc, -e)  # in [0.5, 1): keeps every partial product of the split normal
            x1 = np.ldexp(xc, -e)  # exact: |x1| ~ |q| s1 is moderate where q is a candidate
            p, err = _two_prod(qc, s1)
            rem = (x1 - p) - err  # x1 - p is exact (Sterbenz); the sign of fl(a - b) is exact
            direction = np.sign(rem)
        else:  # q = fl(x * s), s the rounded reciprocal; x*s - q = err exactly
            e = np.frexp(xc)[1]
            p, err = _two_prod(np.ldexp(xc, -e), np.ldexp(sc, e))
            direction = np.sign(err)
    out = np.array(q, copy=True)
    out[cand] = np.where(direction > 0, np.nextafter(qc, np.inf),
                         np.where(direction < 0, np.nextafter(qc, -np.inf), qc))
    return out


def quantize(x, scale, zero_point=0, *, bits: int = 8, signed: bool = True, narrow_range: bool = False,
             axis: Optional[int] = None, group_size: Optional[int] = None, rounding="nearest_even",
             seed=None, stream: int = 0, offset: int = 0, random_bits: int = 32,
             reciprocal: bool = False) -> np.ndarray:
    """Quantize ``x`` to integers ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    x : array_like
        Real values (float32, float64 or integers); NaN is rejected, +-Inf saturates.
    scale : float or array_like
        Step size(s), finite and > 0: a scalar (per tensor), 1-D along
        ``axis`` (per channel) or per group (see the module docstring).
    zero_point : int or array_like of int
        The integer that represents real 0, inside ``qrange(bits, signed, narrow_range)``;
        same granularity as ``scale`` (a scalar zero point is broadcast).
    bits : int
        Width, 2..16.
    signed : bool
        Two's complement range (default) or unsigned.
    narrow_range : bool
        Drop the most negative code (see :func:`qrange`).
    axis, group_size : int, optional
        Granularity, see the module docstring.
    rounding : str or Rounding
        Any lowprec mode, ``"stochastic"`` included.
    seed, stream, offset, random_bits
        Random source of stochastic rounding, as in :func:`lowprec.round_to`.
    reciprocal : bool
        Multiply by ``fl(1/scale)`` instead of dividing (see the module docstring).

    Returns
    -------
    ndarray
        The codes, in the smallest numpy integer dtype that holds ``[qmin, qmax]``.

    Raises
    ------
    TypeError
        Non-numeric ``x``, ``scale`` or ``zero_point``; bad argument types.
    ValueError
        Zero, negative or non-finite scale; zero point out of range; ``bits``
        outside 2..16; NaN in ``x``; parameter shapes not matching the granularity.

    Examples
    --------
    >>> import numpy as np
    >>> quantize(np.array([-1.0, 0.26, 0.25, 100.0]), 0.5, bits=4)
    array([-2,  1,  0,  7], dtype=int8)
    >>> x, s = 0.45, 0.1          # x / s is just below 4.5; x * fl(1/s) just above
    >>> int(quantize(x, s)), int(quantize(x, s, reciprocal=True))
    (4, 5)
    >>> int(quantize(0.3 * 2.5, 0.3))   # fl(x/s) is the tie 2.5, the exact quotient is above it
    3
    """
    qmin, qmax = qrange(bits, signed, narrow_range)
    mode = get_rounding(rounding)
    reciprocal = _check_bool("reciprocal", reciprocal)
    is_scalar = np.ndim(x) == 0
    xf = _as_float64(x)
    if xf.size and np.isnan(xf).any():
        raise ValueError(f"x contains {int(np.isnan(xf).sum())} NaN value(s); an integer code cannot represent NaN")
    s = expand_param(_check_scale(scale), xf.shape, axis, group_size, "scale")
    z = np.asarray(zero_point)
    z = _check_zero_point(z, qmin, qmax)
    z = expand_param(z, xf.shape, axis, group_size, "zero_point") if z.ndim else np.broadcast_to(z, xf.shape)
    with np.errstate(over="ignore", under="ignore"):
        if reciprocal:
            q = xf * (1.0 / s)
        else:
            q = xf / s
    q = _nudge_to_exact(np.atleast_1d(q), np.atleast_1d(xf), np.atleast_1d(1.0 / s if reciprocal else s),
                        reciprocal).reshape(xf.shape)
    q = np.clip(q, -_QLIM, _QLIM)
    r = round_to(q, _WIDE, mode, seed=seed, stream=stream, offset=offset, random_bits=random_bits)
    out = np.clip(np.asarray(r) + z, qmin, qmax).astype(_int_dtype(qmin, qmax))
    return out[()] if is_scalar else out


def dequantize(q, scale, zero_point=0, *, axis: Optional[int] = None, group_size: Optional[int] = None,
               dtype=np.float64) -> np.ndarray:
    """Real values ``(q - zero_point) * scale`` of integer codes.

    Computed in float64 and rounded once to ``dtype`` (float64 or float32).

    Examples
    --------
    >>> dequantize(np.array([-2, 1, 7], dtype=np.int8), 0.5)
    array([-1. ,  0.5,  3.5])
    """
    qa = np.asarray(q)
    if qa.dtype.kind not in "iu":
        raise TypeError(f"q must be an integer array of codes, got dtype {qa.dtype}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    s = expand_param(_check_scale(scale), qa.shape, axis, group_size, "scale")
    z = np.asarray(zero_point)
    if z.dtype.kind not in "biuf":
        raise TypeError(f"zero_point must be an integer or integer array, got dtype {z.dtype}")
    z = expand_param(z, qa.shape, axis, group_size, "zero_point") if z.ndim else z
    out = ((qa.astype(np.float64) - z) * s).astype(dtype)
    return out[()] if qa.ndim == 0 else out


def fake_quantize(x, scale, zero_point=0, **kwargs) -> np.ndarray:
    """``dequantize(quantize(x, ...))`` in the dtype of ``x`` (float64 for Python input).

    Keyword arguments are those of :func:`quantize` (``axis`` and
    ``group_size`` are passed to both steps).

    Examples
    --------
    >>> fake_quantize(np.array([0.3, 9.0], dtype=np.float32), 0.25, bits=4)
    array([0.25, 1.75], dtype=float32)
    """
    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    q = quantize(x, scale, zero_point, **kwargs)
    return dequantize(q, scale, zero_point, axis=kwargs.get("axis"), group_size=kwargs.get("group_size"),
                      dtype=dtype)


def choose_qparams(xmin, xmax, *, bits: int = 8, signed: bool = True, symmetric: bool = False,
                   narrow_range: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and zero point that map the range ``[xmin, xmax]`` onto the integer range.

    Asymmetric: the range is widened to include 0, ``scale = (xmax - xmin) /
    (qmax - qmin)`` and ``zero_point = qmin - round(xmin / scale)`` (clamped),
    so that real 0 is exactly representable. Symmetric: ``scale =
    max(|xmin|, |xmax|) / (2**(bits-1) - 1)`` and the zero point is 0 (signed)
    or ``2**(bits-1)`` (unsigned). A zero-width range gets scale 1. Every
    finite range gives a finite scale, including one wider than float64's
    largest value (the scale is then ``2 ((xmax/2 - xmin/2) / n)``, the
    same roundings as ``(xmax - xmin) / n`` with an unbounded exponent).

    Works elementwise: arrays of ranges (per channel/group) give arrays of parameters.

    Examples
    --------
    >>> choose_qparams(-1.0, 3.0, bits=8, signed=False)
    (array(0.01568627), array(64))
    >>> choose_qparams(-1.0, 3.0, bits=8, symmetric=True)
    (array(0.02362205), array(0))
    """
    qmin, qmax = qrange(bits, signed, narrow_range)
    symmetric = _check_bool("symmetric", symmetric)
    lo, hi = _as_float64(xmin, "xmin"), _as_float64(xmax, "xmax")
    if np.isnan(lo).any() or np.isnan(hi).any() or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"xmin and xmax must be finite, got {xmin!r} and {xmax!r}")
    if np.any(lo > hi):
        raise ValueError(f"xmin must be <= xmax, got {xmin!r} > {xmax!r}")
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        half = (1 << (check_bits(bits) - 1)) - 1
        amax = np.maximum(-lo, hi)
        scale = np.where(amax > 0, amax / half, 1.0)
        zp = np.asarray(np.zeros_like(scale, dtype=np.int64) + (0 if signed else (1 << (bits - 1))))
        return scale, zp
    with np.errstate(over="ignore"):
        width = hi - lo
    # a finite range wider than float64's largest value: (hi/2 - lo/2) / n * 2, where halving and doubling
    # are exact, rounds as (hi - lo) / n would with an unbounded exponent
    scale = np.where(np.isfinite(width), width / (qmax - qmin), (hi * 0.5 - lo * 0.5) / (qmax - qmin) * 2.0)
    scale = np.where(hi > lo, scale, 1.0)
    scale = np.where(scale > 0, scale, np.finfo(np.float64).tiny)
    zp = np.asarray(np.clip(qmin - np.round(lo / scale), qmin, qmax).astype(np.int64))
    return scale, zp


@dataclass(frozen=True)
class AffineQuantizer:
    """A fixed affine quantizer: parameters plus its width, range and granularity.

    Examples
    --------
    >>> q = AffineQuantizer(scale=0.1, zero_point=0, bits=4)
    >>> q.fake_quantize(np.array([0.04, 0.06, 5.0]))
    array([0. , 0.1, 0.7])
    >>> q.levels()[:3]
    array([-0.8, -0.7, -0.6])
    """

    scale: object
    zero_point: object = 0
    bits: int = 8
    signed: bool = True
    narrow_range: bool = False
    axis: Optional[int] = None
    group_size: Optional[int] = None
    rounding: object = Rounding.NEAREST_EVEN

    def __post_init__(self):
        qmin, qmax = qrange(self.bits, self.signed, self.narrow_range)
        object.__setattr__(self, "scale", _check_scale(self.scale))
        object.__setattr__(self, "zero_point", _check_zero_point(self.zero_point, qmin, qmax))
        object.__setattr__(self, "rounding", get_rounding(self.rounding))

    @classmethod
    def from_range(cls, xmin, xmax, *, bits=8, signed=True, symmetric=False, narrow_range=False,
                   **kwargs) -> "AffineQuantizer":
        """Build from a calibrated range (see :func:`choose_qparams`)."""
        s, z = choose_qparams(xmin, xmax, bits=bits, signed=signed, symmetric=symmetric,
                              narrow_range=narrow_range)
        return cls(s, z, bits=bits, signed=signed, narrow_range=narrow_range, **kwargs)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow_range)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow_range)[1]

    def _kw(self):
        return dict(bits=self.bits, signed=self.signed, narrow_range=self.narrow_range, axis=self.axis,
                    group_size=self.group_size, rounding=self.rounding)

    def quantize(self, x, **kwargs) -> np.ndarray:
        return quantize(x, self.scale, self.zero_point, **{**self._kw(), **kwargs})

    def dequantize(self, q, dtype=np.float64) -> np.ndarray:
        return dequantize(q, self.scale, self.zero_point, axis=self.axis, group_size=self.group_size,
                          dtype=dtype)

    def fake_quantize(self, x, **kwargs) -> np.ndarray:
        return fake_quantize(x, self.scale, self.zero_point, **{**self._kw(), **kwargs})

    __call__ = fake_quantize

    def levels(self) -> np.ndarray:
        """The sorted representable values (per-tensor quantizers only)."""
        if self.scale.ndim:
            raise ValueError("levels() needs a per-tensor quantizer (scalar scale)")
        return (np.arange(self.qmin, self.qmax + 1, dtype=np.float64) - float(self.zero_point)) * float(self.scale)

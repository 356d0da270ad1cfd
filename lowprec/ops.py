"""Elementwise arithmetic in a format: add, sub, mul, div, sqrt, fma, each rounded once.

``add(x, y, fmt, rounding)`` is the exact real ``x + y`` rounded once to
``fmt`` (NUMERICS.md section 3): operands are taken exactly as given (float32
or float64 values, which need not be values of ``fmt``), and the result is
never rounded twice. The kernels (``kernels/accum.py``) find a faithful
float64 approximation of the exact result and the sign of its remainder with
error-free transformations (TwoSum, Dekker's TwoProduct, the exact remainder
of a rounded quotient or square root), round it to odd at 53 bits and then
round once to ``fmt``. That is exact for every mode when ``fmt`` has at most
51 bits of precision (Boldo and Melquiond 2008), and for stochastic rounding
with ``r`` random bits when ``precision + r <= 52``.

Stochastic rounding draws counter ``offset + i`` for the ``i``-th output
element (C order over the broadcast shape), as :func:`lowprec.round_to` does.

Range: exactness needs the float64 intermediates not to overflow or
underflow: operands below 2**996 in magnitude and products/quotients above
2**-969. Every operand that is a value of a format up to fp32 satisfies this.

Examples
--------
>>> import lowprec.ops as ops
>>> float(ops.fma(1 + 2.0**-10, 1 - 2.0**-10, -1.0, "fp16"))  # the exact -2**-20, no double rounding
-9.5367431640625e-07
>>> float(ops.add(1.0, 2.0**-11 + 2.0**-30, "fp16"))  # above the tie: up
1.0009765625
"""

from __future__ import annotations

import numpy as np

from .core import as_float_input
from .formats import FixedFormat, get_format
from .kernels import accum as _accum
from .kernels import dispatch
from .rng import resolve_seed
from .rounding import Rounding, get_rounding

__all__ = ["add", "sub", "mul", "div", "sqrt", "fma", "max_random_bits"]


def max_random_bits(fmt) -> int:
    """The most random bits r for which stochastic rounding of an op result is exact: 52 - precision."""
    fmt = get_format(fmt)
    prec = fmt.bits if isinstance(fmt, FixedFormat) else fmt.precision
    return 52 - prec


def _random_bits(fmt, random_bits) -> int:
    top = max_random_bits(fmt)
    if random_bits is None:
        return min(32, top)
    if isinstance(random_bits, bool) or not isinstance(random_bits, (int, np.integer)):
        raise TypeError(f"random_bits must be an int or None, got {type(random_bits).__name__}")
    if not 1 <= int(random_bits) <= top:
        raise ValueError(f"random_bits must be in 1..{top} for {fmt.name} (precision + r <= 52 keeps "
                         f"stochastic rounding of an exact result exact), got {random_bits}")
    return int(random_bits)


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: the loop then has one compiled signature, whether an operand was converted (a new,
    writable array) or passed through (a broadcast view, read-only)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _apply(op: int, operands: tuple, fmt, rounding, seed, stream, offset, random_bits, backend):
    fmt = get_format(fmt)
    mode = get_rounding(rounding)
    names = ("x", "y", "z")
    if isinstance(fmt, FixedFormat) or fmt.man_bits <= 50:
        pass
    else:
        raise ValueError(f"fmt {fmt.name} has {fmt.precision} bits of precision; at most 51 are supported "
                         "(exact single rounding goes through float64 with round-to-odd)")
    rbits = _random_bits(fmt, random_bits)
    arrs, dtypes, scalars = [], [], []
    for name, v in zip(names, operands):
        arr, dt, is_scalar = as_float_input(v, name)
        arrs.append(arr)
        dtypes.append(dt)
        scalars.append(is_scalar)
    out_dtype = np.result_type(*dtypes)
    if not fmt.fits_in(out_dtype):
        raise ValueError(f"fmt {fmt.name} has values that {out_dtype.name} cannot hold exactly; pass float64 input")
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrs))
    except ValueError:
        shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrs))
        raise ValueError(f"operand shapes do not broadcast: {shapes}") from None
    flat = [_read_only(np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float64).reshape(-1)) for a in arrs]
    while len(flat) < 3:
        flat.append(flat[0])
    n = int(np.prod(shape, dtype=np.int64))
    dispatch.resolve_backend(backend)  # (a bad name raises here, before the random stream moves)
    if mode is Rounding.STOCHASTIC:
        k0, k1, off = resolve_seed(seed, n, stream, offset)
    else:
        k0 = k1 = off = 0
    out = np.empty(n, dtype=np.float64)
    args = (*flat, out, np.int64(op), fmt._kernel_params(), np.int64(int(mode)), np.uint32(k0), np.uint32(k1),
            np.int64(off), np.int64(rbits))
    if n:
        dispatch.ops_array(backend, *args)
    out = out.reshape(shape).astype(out_dtype)
    return out[()] if all(scalars) else out


_DOC = """{summary}

    Parameters
    ----------
    {params} : array_like
        float32/float64 arrays or Python numbers (taken exactly), broadcast together.
    fmt : FloatFormat, FixedFormat or str
        The format of the result (at most 51 bits of precision).
    rounding : Rounding or str
        Any mode, ``stochastic`` included (default ``nearest_even``).
    seed, stream, offset
        Random source for stochastic rounding, as :func:`lowprec.round_to`.
    random_bits : int, optional
        r for stochastic rounding; default ``min(32, 52 - precision)``
        (28 for fp32), the most that stays exact.
    backend : {{"auto", "cpu", "cuda"}}

    Returns
    -------
    ndarray or numpy scalar
        dtype ``numpy.result_type`` of the operands (float64 for Python
        numbers); every element a value of ``fmt`` (or Inf/NaN as it says).

    Raises
    ------
    TypeError
        Non-float operands (complex, strings, float16).
    ValueError
        Shapes that do not broadcast, an unknown format or mode, a format
        the result dtype cannot hold, ``random_bits`` above ``52 - precision``.
    """


def add(x, y, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
        random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_ADD, (x, y), fmt, rounding, seed, stream, offset, random_bits, backend)


def sub(x, y, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
        random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_SUB, (x, y), fmt, rounding, seed, stream, offset, random_bits, backend)


def mul(x, y, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
        random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_MUL, (x, y), fmt, rounding, seed, stream, offset, random_bits, backend)


def div(x, y, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
        random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_DIV, (x, y), fmt, rounding, seed, stream, offset, random_bits, backend)


def sqrt(x, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
         random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_SQRT, (x,), fmt, rounding, seed, stream, offset, random_bits, backend)


def fma(x, y, z, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
        random_bits=None, backend: str = "auto"):
    return _apply(_accum.OP_FMA, (x, y, z), fmt, rounding, seed, stream, offset, random_bits, backend)


add.__doc__ = _DOC.format(summary="``x + y``, exact, rounded once to ``fmt``.", params="x, y")
sub.__doc__ = _DOC.format(summary="``x - y``, exact, rounded once to ``fmt``.", params="x, y")
mul.__doc__ = _DOC.format(summary="``x * y``, exact, rounded once to ``fmt``.", params="x, y")
div.__doc__ = _DOC.format(summary="``x / y``, exact, rounded once to ``fmt`` (IEEE for zero divisors).",
                          params="x, y")
sqrt.__doc__ = _DOC.format(summary="The square root of ``x``, exact, rounded once to ``fmt`` (NaN below 0).",
                           params="x")
fma.__doc__ = _DOC.format(summary="``x * y + z`` with a single rounding to ``fmt``.", params="x, y, z")

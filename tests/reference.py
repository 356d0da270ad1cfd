"""An independent, slow, exact reference for NUMERICS.md section 2, in Python Fractions.

Written from the contract, not from the kernels: no bit manipulation, only
exact rational arithmetic on the value and the format's parameters. Tests
compare lowprec's kernels with it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np

from lowprec.formats import FixedFormat, FloatFormat

#: The independent implementation of each preset float format (numpy or ml_dtypes).
ML_DTYPES = {
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "fp8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "fp6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1fn": ml_dtypes.float4_e2m1fn,
}

INF = float("inf")
NAN = float("nan")


def _floor_log2(x: Fraction) -> int:
    """Exact floor(log2(x)) for x > 0."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    if Fraction(2) ** (e + 1) <= x:
        e += 1
    return e


def neighbours(x: Fraction, fmt: FloatFormat):
    """(lo, hi, q, parity_lo) for |x| > 0 on the format's grid with unbounded exponent.

    lo <= |x| < hi = lo + q are consecutive grid points (hi may exceed max);
    parity_lo is the last bit of lo's encoding."""
    ax = abs(x)
    e = _floor_log2(ax)
    eq = max(e, fmt.emin)
    q = Fraction(2) ** (eq - fmt.man_bits)
    n = math.floor(ax / q)  # integer significand at quantum q
    lo = n * q
    if lo == 0:
        parity = 0
    elif e >= fmt.emin:
        # normal: encoding = ((e + bias) << m) | (n - 2**m), n in [2**m, 2**(m+1))
        parity = ((((e + fmt.bias) << fmt.man_bits) | (n - (1 << fmt.man_bits))) & 1)
    else:
        parity = n & 1  # subnormal encoding is n itself
    return lo, lo + q, q, parity


def round_fraction(x, fmt, mode: str, u: Fraction | None = None, rbits: int | None = None):
    """The contract's result of rounding the exact value ``x`` (float or Fraction).

    ``u`` in [0, 1) is the uniform draw for stochastic rounding (round up iff
    u < (|x| - lo)/q; with ``rbits`` the distance is first truncated to rbits
    bits, as NUMERICS.md says stochastic rounding with r random bits does). Returns a float (exact: the result is a format value,
    or +-inf, or nan).
    """
    if isinstance(fmt, FixedFormat):
        return _round_fixed(x, fmt, mode, u, rbits)
    if isinstance(x, float):
        if math.isnan(x):
            return NAN
        if math.isinf(x):
            if fmt.has_inf:
                return x
            return math.copysign(fmt.max, x) if fmt.saturate else NAN
    xf = Fraction(x)
    neg = xf < 0 or (isinstance(x, float) and math.copysign(1.0, x) < 0)
    sign = -1 if neg else 1
    if xf == 0:
        return 0.0 if (not fmt.has_negative_zero or not neg) else -0.0
    lo, hi, q, parity = neighbours(xf, fmt)
    ax = abs(xf)
    if ax == lo:
        r = lo
    else:
        frac = (ax - lo) / q
        if mode == "nearest_even":
            up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and parity == 1)
        elif mode == "nearest_away":
            up = frac >= Fraction(1, 2)
        elif mode == "toward_zero":
            up = False
        elif mode == "up":
            up = not neg
        elif mode == "down":
            up = neg
        elif mode == "odd":
            up = parity == 0
        elif mode == "stochastic":
            up = u < _quantise(frac, rbits)
        else:
            raise ValueError(mode)
        r = hi if up else lo
    mx = fmt.max_exact
    if r > mx:
        clamp = (fmt.saturate or mode in ("toward_zero", "odd") or (mode == "up" and neg)
                 or (mode == "down" and not neg))
        if clamp:
            r = mx
        elif fmt.has_inf:
            return sign * INF
        else:
            return NAN
    if not fmt.has_subnormals and 0 < r < Fraction(2) ** fmt.emin:
        r = Fraction(0)
    if r == 0:
        return 0.0 if (not fmt.has_negative_zero or not neg) else -0.0
    return float(sign * r)


def _quantise(frac: Fraction, rbits):
    if rbits is None:
        return frac
    return Fraction(math.floor(frac * 2 ** rbits), 2 ** rbits)


def _round_fixed(x, fmt: FixedFormat, mode: str, u, rbits=None):
    if isinstance(x, float) and math.isnan(x):
        return NAN
    if isinstance(x, float) and math.isinf(x):
        k = fmt.kmax if x > 0 else fmt.kmin
        return float(Fraction(k) * Fraction(2) ** -fmt.frac_bits)
    xf = Fraction(x)
    q = Fraction(2) ** -fmt.frac_bits
    t = xf / q
    lo = math.floor(t)
    frac = t - lo
    if frac == 0:
        k = lo
    else:
        if mode == "nearest_even":
            up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and lo % 2 == 1)
        elif mode == "nearest_away":
            up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and xf > 0)
        elif mode == "toward_zero":
            up = xf < 0
        elif mode == "up":
            up = True
        elif mode == "down":
            up = False
        elif mode == "odd":
            up = lo % 2 == 0  # the odd one of lo, lo+1
        elif mode == "stochastic":
            # P(away from zero) = distance fraction in magnitude
            mag_frac = frac if xf > 0 else 1 - frac
            away = u < _quantise(mag_frac, rbits)
            up = away if xf > 0 else not away
        else:
            raise ValueError(mode)
        k = lo + 1 if up else lo
    if fmt.overflow == "wrap":
        k = k % (1 << fmt.bits)
        if fmt.signed and k > fmt.kmax:
            k -= 1 << fmt.bits
    else:
        k = min(max(k, fmt.kmin), fmt.kmax)
    return float(Fraction(k) * q)


# The random-bits hash exactly as docs/rounding.md specifies it, written independently of the kernels.
_M32 = 0xFFFFFFFF


def mix32_ref(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash32_ref(k0: int, k1: int, counter: int) -> int:
    h = mix32_ref((counter & _M32) ^ k0)
    return mix32_ref(h ^ k1 ^ mix32_ref(counter >> 32))


def random_bits_ref(k0: int, k1: int, counter: int, r: int) -> int:
    """The r random bits (1..64) of ``counter`` under the key (k0, k1)."""
    h = hash32_ref(k0, k1, counter)
    if r <= 32:
        return h >> (32 - r)
    return ((h << 32) | hash32_ref(k0 ^ 0x9E3779B9, k1, counter)) >> (64 - r)


def random_bits_array(k0: int, k1: int, offset: int, n: int, r: int) -> np.ndarray:
    """random_bits_ref of the counters offset .. offset + n - 1, as uint64."""
    return np.array([random_bits_ref(int(k0), int(k1), offset + i, r) for i in range(n)], dtype=np.uint64)

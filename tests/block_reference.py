"""An independent, slow, exact reference for block-scaled formats (NUMERICS.md section 6), in Fractions.

Written from the contract and the lowprec.block docstring, not from kernels/block_cpu.py: the scale
exponent from exact logarithms of Fractions, each element rounded by tests/reference.py's
``round_fraction`` (itself written from NUMERICS.md section 2). Scale formats (E8M0, UE4M3) by enumeration.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from lowprec.formats import FP8_E4M3FN, FP32, FixedFormat
from reference import random_bits_ref, round_fraction

NAN = float("nan")
INF = float("inf")


def floor_log2(v: Fraction) -> int:
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    return e


def ceil_log2(v: Fraction) -> int:
    e = floor_log2(v)
    return e if Fraction(2) ** e == v else e + 1


def round_e8m0(x: float, mode: str = "nearest_even", saturate: bool = False) -> float:
    """E8M0 (2**-127 .. 2**127, no zero, no sign, NaN) by enumeration of its 255 values."""
    if math.isnan(x) or x < 0 or (x == 0) or (math.isinf(x) and not saturate):
        return NAN
    if math.isinf(x):
        return 2.0 ** 127
    v = Fraction(x)
    if v <= Fraction(2) ** -127:
        return 2.0 ** -127
    k = floor_log2(v)
    if k >= 127:  # at or beyond the largest value
        if v == Fraction(2) ** 127:
            return 2.0 ** 127
        up_value = None  # the next value, 2**128, does not exist: code 255 is NaN
        lo = 127
    else:
        up_value = k + 1
        lo = k
    lo_v, hi_v = Fraction(2) ** lo, Fraction(2) ** (lo + 1)
    if v == lo_v:
        return float(lo_v)
    mid = (lo_v + hi_v) / 2
    if mode == "nearest_even":
        up = v > mid or (v == mid and (lo + 127) % 2 == 1)
    elif mode == "nearest_away":
        up = v >= mid
    elif mode in ("up",):
        up = True
    elif mode in ("down", "toward_zero"):
        up = False
    else:
        raise ValueError(mode)
    if not up:
        return float(lo_v)
    if up_value is None:
        return 2.0 ** 127 if saturate else NAN
    return float(hi_v)


def round_ue4m3(x: float, mode: str = "nearest_even", saturate: bool = False) -> float:
    """UE4M3: negative -> NaN, -0 -> +0, otherwise e4m3fn's rounding of a non-negative value."""
    if math.isnan(x) or (x < 0):
        return NAN
    if x == 0:
        return 0.0
    return round_fraction(x, FP8_E4M3FN.replace(saturate=saturate), mode)


def _elem_max(fmt) -> Fraction:
    if isinstance(fmt, FixedFormat):
        return Fraction(fmt.kmax) * Fraction(2) ** -fmt.frac_bits
    return fmt.max_exact


def _elem_mbits(fmt) -> int:
    return fmt.bits - 2 if isinstance(fmt, FixedFormat) else fmt.man_bits


def pow2_scale_exponent(amax: float, rule: str, elem, dtype=np.float32) -> int:
    """E8M0 exponent of a block with the finite magnitude maximum ``amax`` (NUMERICS.md section 6)."""
    emax = floor_log2(_elem_max(elem))
    a = Fraction(amax)
    if a == 0:
        return -127
    if rule == "floor":
        e = floor_log2(a) - emax
    elif rule == "ceil":
        e = ceil_log2(a) - emax
    elif rule == "even":
        m = _elem_mbits(elem)
        k = floor_log2(a)
        quantum = Fraction(2) ** (k - m)
        n = a / quantum  # in [2**m, 2**(m+1))
        rounded = math.floor(n + Fraction(1, 2)) * quantum  # nearest, ties away
        e = floor_log2(rounded) - emax
    elif rule == "rceil":
        ratio = Fraction(amax / float(_elem_max(elem))) if dtype == np.float64 else a / _elem_max(elem)
        r = round_fraction(ratio, FP32, "nearest_even")
        if r == 0:
            e = -127
        elif math.isinf(r):
            e = 127
        else:
            e = ceil_log2(Fraction(r))
    else:
        raise ValueError(rule)
    return min(max(e, -127), 127)


def _elem_round(v, elem, mode, u, symmetric=False):
    if isinstance(elem, FixedFormat):
        q = round_fraction(v, elem, mode, u=u, rbits=32 if u is not None else None)
        # a symmetric integer element (MXINT8) has no -2**(bits-1): what rounds there saturates at -max
        return max(q, -float(_elem_max(elem))) if symmetric else q
    return round_fraction(v, elem.replace(saturate=True), mode, u=u, rbits=32 if u is not None else None)


def quantize_block(values, elem, rule, *, scale_fmt=None, s_t=1.0, mode="nearest_even", us=None,
                   dtype=np.float32, symmetric=False):
    """(block values as floats, E8M0 exponent or scale value) of one block of floats.

    ``symmetric``: a signed integer element without its most negative code (MXINT8).
    ``us``: the stochastic draws (Fractions in [0, 1)) of the block's elements. A NaN anywhere gives all NaN;
    an Inf (the "nan" policy) too."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) or math.isinf(v) for v in vals):
        return [NAN] * len(vals), None
    amax = max(abs(v) for v in vals)
    out = []
    if rule != "amax":
        e = pow2_scale_exponent(amax, rule, elem, dtype)
        X = Fraction(2) ** e
        for i, v in enumerate(vals):
            if v == 0:  # Fraction(-0.0) has no sign: a float element keeps -0, a fixed one has none
                out.append(0.0 if isinstance(elem, FixedFormat) else v)
                continue
            q = _elem_round(Fraction(v) / X, elem, mode, None if us is None else us[i], symmetric)
            out.append(float(Fraction(q) * X) if q != 0 else q)  # keeps a float element's -0
        scale = e
    else:
        ratio = amax / (float(_elem_max(elem)) * s_t)
        if scale_fmt == FP32:
            Sb = round_fraction(ratio, FP32, "nearest_even")
        else:
            Sb = round_ue4m3(ratio, "nearest_even", saturate=True)
        S = Fraction(Sb) * Fraction(s_t)
        for i, v in enumerate(vals):
            if S == 0:
                out.append(0.0 * v)
                continue
            q = _elem_round(v / float(S), elem, mode, None if us is None else us[i], symmetric)
            val = Fraction(q) * S
            out.append(float(val) if val != 0 else q)
        scale = Sb
    if dtype == np.float32:
        with np.errstate(over="ignore"):
            out = [float(np.float32(o)) for o in out]
    return out, scale


def draws(k0: int, k1: int, offset: int, n: int) -> list:
    """The stochastic draws u_i = bits / 2**32 of counters offset .. offset+n-1."""
    return [Fraction(random_bits_ref(k0, k1, offset + i, 32), 1 << 32) for i in range(n)]

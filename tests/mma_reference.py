"""A pure-Python reference for matrix units (NUMERICS.md section 5), in exact integer arithmetic.

Written from the specification (NUMERICS.md section 5 and the matrix-unit issue), not from the
kernels: every value is a ``fractions.Fraction`` or an integer count of grid units, and the only
floating-point operations are the IEEE special cases (NaN/Inf), which Python floats compute exactly
as IEEE says. Slow (about 10^4 terms per second); tests use it on small inputs.

The unit's parameters are read as plain attributes (``a_format``, ``b_format``, ``step_k``,
``frac_bits``, ``e_zero``, ``out_format``, ``out_rounding``, ``c_format``, ``truncate_inputs``,
``promote_every``; for block-scaled units also ``block_format`` and ``group``), so a test may pass a
:class:`lowprec.matrix_units.MatrixUnit` or any object with those attributes. Block-scaled steps
(:func:`block_step`) follow the block-scaled part of the matrix-unit issue and MMA-Sim's ST-FDPA and
GST-FDPA as docs/matrix_units.md states them.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np

NAN = float("nan")
INF = float("inf")


# -- values -------------------------------------------------------------------
def signbit(x: float) -> bool:
    return math.copysign(1.0, x) < 0


def exponent_of(x: Fraction, emin: int) -> int:
    """E(x) = max(floor(log2|x|), emin) for x != 0 (a subnormal sits at its format's emin)."""
    x = abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    return max(e, emin)


def floor_log2(x: Fraction) -> int:
    x = abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    return e


def round_fraction(v: Fraction, man_bits: int, emin: int, emax: int, mode: str) -> Fraction:
    """v rounded to a binary format with subnormals (man_bits, emin), mode 'rz' or 'rne'; an overflow
    returns None (the caller decides what it gives)."""
    if v == 0:
        return Fraction(0)
    q = max(floor_log2(v), emin) - man_bits
    scaled = v / Fraction(2) ** q
    n = scaled.numerator // scaled.denominator  # floor
    if mode == "rz":
        if n < 0 and n != scaled:
            n += 1  # toward zero
    else:
        rem = scaled - n
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
            n += 1
    r = n * Fraction(2) ** q
    largest = (2 - Fraction(1, 2 ** man_bits)) * Fraction(2) ** emax
    if abs(r) > largest:
        return None
    return r


def to_float(v: Fraction, negative_zero: bool) -> float:
    if v == 0:
        return -0.0 if negative_zero else 0.0
    return float(v)  # exact: every value here fits in float64


# -- inputs -------------------------------------------------------------------
def tf32_truncate(x: float) -> float:
    """The float32 value of x (float64 rounded nearest-even to float32) with its 13 low bits cleared."""
    bits = struct.unpack("<I", struct.pack("<f", np.float32(x)))[0]
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFE000))[0]


def round_input(x: float, fmt) -> float:
    """x rounded nearest-even to fmt, with numpy / ml_dtypes (independent of lowprec's kernels)."""
    import ml_dtypes

    dtype = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
             "fp8_e5m2": ml_dtypes.float8_e5m2, "fp32": np.float32}.get(fmt.name)
    if dtype is None:
        raise ValueError(f"no independent rounding for {fmt.name}")
    return float(np.asarray(x, dtype=np.float64).astype(dtype).astype(np.float64))


# -- one fused step -------------------------------------------------------------
def fused_step(a, b, c: float, unit) -> float:
    """One fused dot-add step: ``c + sum(a_l * b_l)`` of values already in the operand formats."""
    # Inf/NaN: the IEEE result of the exact sum (Python floats: inf*0 = nan, inf - inf = nan)
    values = [float(x) for x in a] + [float(x) for x in b] + [c]
    if not all(math.isfinite(x) for x in values):
        s = c
        for x, y in zip(a, b):
            s = s + float(x) * float(y)  # finite parts never overflow a float64 here
        return NAN if s != s else s
    # terms: (value, exponent, sign bit)
    terms = []
    for x, y in zip(a, b):
        p = Fraction(x) * Fraction(y)
        neg = signbit(x) != signbit(y)
        e = unit.e_zero if p == 0 else (exponent_of(Fraction(x), unit.a_format.emin)
                                        + exponent_of(Fraction(y), unit.b_format.emin))
        terms.append((p, e, neg))
    cv = Fraction(c)
    terms.append((cv, unit.e_zero if cv == 0 else exponent_of(cv, unit.c_format.emin), signbit(c)))
    return sum_terms(terms, unit)


def aligned_terms(terms, unit):
    """``(e_max, [truncated value in units of the grid 2**(e_max - frac_bits), for each term])`` of terms
    ``(exact value, alignment exponent, negative-zero sign)``."""
    e_max = max(e for _, e, _ in terms)
    grid = Fraction(2) ** (e_max - unit.frac_bits)
    units = []
    for v, _, _ in terms:
        q = v / grid
        n = q.numerator // q.denominator
        if n < 0 and n != q:
            n += 1  # truncation toward zero
        units.append(n)
    return e_max, units


def sum_terms(terms, unit) -> float:
    """Terms ``(exact value, alignment exponent, negative-zero sign)`` aligned to the largest exponent,
    truncated to ``frac_bits`` fractional bits, summed exactly, rounded once to the output format."""
    out, mode = unit.out_format, ("rz" if unit.out_rounding.name == "TOWARD_ZERO" else "rne")
    e_max, units = aligned_terms(terms, unit)
    grid = Fraction(2) ** (e_max - unit.frac_bits)
    total = sum(units)
    all_negative_zero = all(n == 0 and neg for n, (_, _, neg) in zip(units, terms))
    s = total * grid
    r = round_fraction(s, out.man_bits, out.emin, out.emax, mode)
    if r is None:  # overflow: Inf for both roundings (the hardware's RZ conversion overflows to Inf too)
        return -INF if s < 0 else INF
    neg_zero = (s < 0) if s != 0 else all_negative_zero
    return to_float(r, neg_zero)


def fp32_add(x: float, y: float) -> float:
    """IEEE fp32 addition (nearest-even) of two fp32 values, from their exact sum."""
    if not (math.isfinite(x) and math.isfinite(y)):
        s = x + y
        return NAN if s != s else s
    s = Fraction(x) + Fraction(y)
    r = round_fraction(s, 23, -126, 127, "rne")
    if r is None:
        return -INF if s < 0 else INF
    if s == 0:
        return -0.0 if (signbit(x) and signbit(y)) else 0.0
    return to_float(r, s < 0)


# -- a dot product and a matmul -------------------------------------------------------
def prepare_operand(x: float, fmt, truncate: bool) -> float:
    return tf32_truncate(x) if truncate else round_input(x, fmt)


def mma_dot(a, b, c: float, unit) -> float:
    """``c + a . b`` as the unit's chain of fused steps computes it (inputs are rounded or truncated to
    the operand formats first, ``c`` rounded to ``c_format``)."""
    k = unit.step_k
    a = [prepare_operand(float(x), unit.a_format, unit.truncate_inputs) for x in a]
    b = [prepare_operand(float(x), unit.b_format, unit.truncate_inputs) for x in b]
    c = round_input(float(c), unit.c_format)
    K = len(a)
    pad = (-K) % k
    a = a + [0.0] * pad
    b = b + [0.0] * pad
    if unit.promote_every is None:
        d = c
        for g in range(0, len(a), k):
            d = fused_step(a[g:g + k], b[g:g + k], d, unit)
        return d
    total = c
    for g0 in range(0, len(a), unit.promote_every):
        d = 0.0
        for g in range(g0, min(g0 + unit.promote_every, len(a)), k):
            d = fused_step(a[g:g + k], b[g:g + k], d, unit)
        total = fp32_add(total, d)
    return total


def mma_matmul(A, B, C, unit) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    M, K = A.shape
    N = B.shape[1]
    C = np.zeros((M, N)) if C is None else np.broadcast_to(np.asarray(C, dtype=np.float64), (M, N))
    out = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            out[i, j] = mma_dot(A[i, :], B[:, j], C[i, j], unit)
    return out


# -- block-scaled steps (Blackwell mxf8f6f4, mxf4, mxf4nvf4) --------------------------------------------
def scale_exponent(s: float, fmt) -> int:
    """E(s) of a block scale: log2 s for E8M0, max(floor(log2 s), -6) for UE4M3 (fmt.emin)."""
    return exponent_of(Fraction(s), fmt.emin)


def block_step(qa, sa, qb, sb, c: float, unit) -> float:
    """One block-scaled fused step: elements ``qa``/``qb`` (values of the element formats) with the scale of
    each element's block ``sa``/``sb`` (values of the scale format, NaN allowed), the addend ``c``.

    From the issue and MMA-Sim's ST-FDPA / GST-FDPA: a NaN scale makes the step NaN; otherwise, NaN/Inf
    among the elements or c: the IEEE result of the exact sum of the scaled products and c. Finite: with
    ``unit.group == 0`` every product ``qa * qb * sa * sb`` is a term with exponent ``E(qa) + E(qb) +
    E(sa) + E(sb)`` (e_zero when it is zero); with ``group = G`` each run of G products is summed exactly
    and its sum times the scales is a term with exponent ``E(sa) + E(sb)`` (e_zero when every product of
    the group is zero; a sum that cancels keeps the scales' exponent; the group's sign of zero is IEEE's).
    The addend as in :func:`fused_step`; then :func:`sum_terms`."""
    if any(x != x for x in list(sa) + list(sb)):
        return NAN
    values = [float(x) for x in qa] + [float(x) for x in qb] + [c]
    if not all(math.isfinite(x) for x in values):
        acc = c
        for x, y, u, v in zip(qa, qb, sa, sb):
            acc = acc + float(x) * float(y) * float(u) * float(v)
        return NAN if acc != acc else acc
    return sum_terms(block_terms(qa, sa, qb, sb, c, unit), unit)


def block_terms(qa, sa, qb, sb, c: float, unit) -> list:
    """The terms ``(exact value, alignment exponent, negative-zero sign)`` of one finite block-scaled step (see
    :func:`block_step`): the products (``group == 0``) or the group sums in K order, then the addend."""
    sfmt = unit.block_format.scale
    terms = []
    G = unit.group
    if G == 0:
        for x, y, u, v in zip(qa, qb, sa, sb):
            p = Fraction(x) * Fraction(y) * Fraction(u) * Fraction(v)
            e = unit.e_zero if p == 0 else (exponent_of(Fraction(x), unit.a_format.emin)
                                            + exponent_of(Fraction(y), unit.b_format.emin)
                                            + scale_exponent(u, sfmt) + scale_exponent(v, sfmt))
            terms.append((p, e, signbit(x) != signbit(y)))
    else:
        for g in range(0, len(qa), G):
            prods = [Fraction(x) * Fraction(y) for x, y in zip(qa[g:g + G], qb[g:g + G])]
            u, v = sa[g], sb[g]
            assert all(w == u for w in sa[g:g + G]) and all(w == v for w in sb[g:g + G]), "a group has one scale"
            value = sum(prods, Fraction(0)) * Fraction(u) * Fraction(v)
            zero = all(p == 0 for p in prods) or u * v == 0
            e = unit.e_zero if zero else scale_exponent(u, sfmt) + scale_exponent(v, sfmt)
            all_neg = all(signbit(x) != signbit(y) for x, y in zip(qa[g:g + G], qb[g:g + G]))
            terms.append((value, e, value < 0 if value != 0 else zero and all_neg))
    cv = Fraction(c)
    terms.append((cv, unit.e_zero if cv == 0 else exponent_of(cv, unit.c_format.emin), signbit(c)))
    return terms


def block_mma_dot(qa, sa, qb, sb, c: float, unit) -> float:
    """``c + sum(qa * sa * qb * sb)`` as the block-scaled unit's chain computes it: steps of ``step_k``
    (K padded with +0 elements), promotion as :func:`mma_dot`. ``sa``/``sb``: one scale per element."""
    k = unit.step_k
    qa, sa, qb, sb = list(qa), list(sa), list(qb), list(sb)
    pad = (-len(qa)) % k
    qa, qb = qa + [0.0] * pad, qb + [0.0] * pad
    sa, sb = sa + [1.0] * pad, sb + [1.0] * pad
    steps = range(0, len(qa), k)
    if unit.promote_every is None:
        d = c
        for g in steps:
            d = block_step(qa[g:g + k], sa[g:g + k], qb[g:g + k], sb[g:g + k], d, unit)
        return d
    total = c
    for g0 in range(0, len(qa), unit.promote_every):
        d = 0.0
        for g in range(g0, min(g0 + unit.promote_every, len(qa)), k):
            d = block_step(qa[g:g + k], sa[g:g + k], qb[g:g + k], sb[g:g + k], d, unit)
        total = fp32_add(total, d)
    return total


def block_mma_matmul(QA, SA, QB, SB, C, unit) -> np.ndarray:
    """Elements QA (M, K), QB (K, N); block scales SA (M, ceil(K / block)), SB (ceil(K / block), N)."""
    QA, QB = np.asarray(QA, dtype=np.float64), np.asarray(QB, dtype=np.float64)
    M, K = QA.shape
    N = QB.shape[1]
    blk = unit.block_format.block[0]
    C = np.zeros((M, N)) if C is None else np.broadcast_to(np.asarray(C, dtype=np.float64), (M, N))
    out = np.empty((M, N))
    Kb = -(-K // blk) * blk  # the last block's padding (+0 elements) keeps that block's scale
    for i in range(M):
        for j in range(N):
            sa = [float(SA[i, l // blk]) for l in range(Kb)]
            sb = [float(SB[l // blk, j]) for l in range(Kb)]
            qa = list(QA[i, :]) + [0.0] * (Kb - K)
            qb = list(QB[:, j]) + [0.0] * (Kb - K)
            out[i, j] = block_mma_dot(qa, sa, qb, sb, float(C[i, j]), unit)
    return out

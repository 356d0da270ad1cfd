"""The arithmetic rules of the accumulation kernels, each implementation once, with its proof beside it.

A *rule* is a mathematical function of exact values: TwoSum, TwoProduct, the exact sum rounded to odd
at 53 bits, a value rounded to nearest-even onto an IEEE format's grid, the exact sum of two values
rounded once (nearest-even or stochastically with 32 random bits), the random bits of a counter. An
*implementation* is one way a kernel computes a rule (float64 or float32 scalars that vectorise, or
LLVM IR on whole vectors), valid under stated preconditions. The kernels (accum.py, narrow.py,
linalg_narrow.py) import the implementations from here.

:data:`REGISTRY` maps each rule to its implementations, each with its precondition;
tests/test_rules.py runs every registered implementation against an exact ``fractions.Fraction``
reference (and the scalar definition ``lowprec.round_to`` where it applies) on edge data. A new
implementation is tested by registering it.

Scalar implementations are ``njit(inline="always")``: the kernels call them per element of
vectorised loops. Vector implementations are numba intrinsics on the types of vectors.py.
"""

import math
from typing import Callable, NamedTuple, Optional

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import scalar, vectors
from .vectors import D8, F16, Q8, W16, f32x16, f64x8, qsplat, splat

_rule = njit(nogil=True, inline="always", error_model="numpy")

_EXPMASK = np.int64(0x7FF0000000000000)
_SIGN = np.int64(-0x8000000000000000)
_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_INFBITS = np.int64(0x7FF0000000000000)
_FLT_MAX = float(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------
# error-free transformations and rounding to odd
# ----------------------------------------------------------------------------
@_rule
def two_sum(x, y):
    """Knuth's TwoSum: (s, e) with s = fl(x + y) and x + y == s + e exactly (finite s).

    In the operands' precision: float64, or float32 for float32 operands."""
    s = x + y
    bb = s - x
    return s, (x - (s - bb)) + (y - bb)


@_rule
def two_prod(a, b):
    """Dekker's TwoProduct (Veltkamp splitting, no FMA needed): a * b == p + e exactly.

    Exact when no intermediate overflows or underflows (|a|, |b| < 2**996 and
    the product's exponent >= -969), which holds for every value of a format
    of at most fp32's range."""
    p = a * b
    c = 134217729.0 * a  # 2**27 + 1
    ah = c - (c - a)
    al = a - ah
    c = 134217729.0 * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@_rule
def to_odd(x0, r):
    """Round-to-odd (53 bits) of the exact value x0 + r, given that x0 is one of the two
    float64 neighbours of it (a faithful rounding) and r has the sign of the remainder."""
    if r == 0.0:
        return x0
    if x0 == 0.0:
        return 5e-324 if r > 0.0 else -5e-324
    u = scalar.f64_as_i64(x0)
    if (u & 1) == 0:  # force the last bit odd toward the exact value
        if (r > 0.0) == (x0 > 0.0):
            u += 1
        else:
            u -= 1
    return scalar.i64_as_f64(u)


@_rule
def sum_to_odd_bits(s, t):
    """Bits of the exact s + t rounded to odd at 53 bits (TwoSum; finite s + t, else s + t's bits).

    Branch-free (selects only), for vector loops: with (f, e) = TwoSum(s, t), f's last bit is forced
    odd toward e when e != 0 and f's last bit is even; +1 on the bits moves away from zero, so the step
    is +1 when e has f's sign and -1 when not."""
    f, e = two_sum(s, t)
    ub = scalar.f64_as_i64(f)
    eb = scalar.f64_as_i64(e)
    inexact = (e < 0.0) | (e > 0.0)  # false for the NaN error of an infinite sum
    adj = ((eb ^ ub) >> 63) | 1  # +1: the exact sum is farther from zero than f, -1: nearer
    return ub + adj if inexact & ((ub & 1) == 0) else ub


# ----------------------------------------------------------------------------
# nearest-even onto a narrow IEEE format's grid, by the float64 magic constant
# ----------------------------------------------------------------------------
def nearest_even_params(m: int, emin: int, emax: int) -> tuple:
    """(cadd, minc, up, down) of :func:`nearest_even` for an IEEE format (m, emin, emax)."""
    cadd = np.int64(((52 - m) << 52) | (1 << 51))
    minc = 1.5 * 2.0 ** (emin + 52 - m)
    up, down = 2.0 ** (1023 - emax), 2.0 ** (emax - 1023)
    return cadd, minc, up, down


@_rule
def nearest_even(f, cadd, minc, up, down):
    """f rounded to nearest-even on the accumulator's grid (f exact, harmless or rounded to odd).

    The magic-constant addition (f + C) - C with C = 1.5 * 2**(e + 52 - m) (e = f's exponent, at least
    emin), whose ulp is the target quantum, so the float64 addition itself rounds f once to the
    accumulator's grid with ties to even (subnormals included); multiplying by 2**(1023 - emax) and back
    turns every result above the format's max into Inf (the next value up, 2**(emax+1), overflows
    float64) and leaves the others exact; the sign is or-ed back for -0. Parameters:
    :func:`nearest_even_params`; for IEEE formats with m <= 20, 0 <= emax <= 1000, emin - m >= -1000."""
    ub = scalar.f64_as_i64(f)
    c = scalar.i64_as_f64((ub & _EXPMASK) + cadd)  # 1.5 * 2**(e + 52 - m); garbage (negative) for Inf
    c = c if c > minc else minc
    r = (f + c) - c
    r = (r * up) * down  # above max -> Inf
    return scalar.i64_as_f64(scalar.f64_as_i64(r) | (ub & _SIGN))


@_rule
def sum_nearest_even(s, t, cadd, minc, up, down):
    """The exact s + t rounded once to nearest-even on the accumulator's grid: rounded to odd at 53 bits
    (:func:`sum_to_odd_bits`), then :func:`nearest_even`. Rounding to odd at 53 bits and then to a
    format of precision p <= 51 equals rounding the exact value once (Boldo and Melquiond, IEEE TC 2008)."""
    return nearest_even(scalar.i64_as_f64(sum_to_odd_bits(s, t)), cadd, minc, up, down)


def _direct_ir(builder, a, b, s, cadd, minc, up, down):
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(D8, [D8] * 3), "llvm.fma.v8f64")
    f = builder.call(fma, [a, b, s])
    ub = builder.bitcast(f, Q8)
    expmask = ir.Constant(Q8, [0x7FF0000000000000] * 8)
    sign = ir.Constant(Q8, [-0x8000000000000000] * 8)
    c = builder.bitcast(builder.add(builder.and_(ub, expmask), qsplat(builder, cadd)), D8)
    mc = splat(builder, D8, minc)
    c = builder.select(builder.fcmp_ordered(">", c, mc), c, mc)
    r = builder.fsub(builder.fadd(f, c), c)
    r = builder.fmul(builder.fmul(r, splat(builder, D8, up)), splat(builder, D8, down))
    return builder.bitcast(builder.or_(builder.bitcast(r, Q8), builder.and_(ub, sign)), D8)


@intrinsic
def nearest_even_fma_f64x8(typingctx, a, b, s, cadd, minc, up, down):
    """:func:`nearest_even` (fma(a, b, s), cadd, minc, up, down) on 8 lanes (the "direct" step: see
    narrow.py for when fl(s + a*b) rounds like the exact sum)."""
    if not (a == f64x8 and b == f64x8 and s == f64x8 and cadd == types.int64
            and minc == types.float64 and up == types.float64 and down == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return _direct_ir(builder, *args)

    return f64x8(f64x8, f64x8, f64x8, types.int64, types.float64, types.float64, types.float64), codegen


def _noovf_ir(builder, a, b, s, emn, C):
    """(nearest_even_fma_noovf_f64x8's result, its e)."""
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(D8, [D8] * 3), "llvm.fma.v8f64")
    f = builder.call(fma, [a, b, s])
    ub = builder.bitcast(f, Q8)
    e = builder.bitcast(builder.and_(ub, ir.Constant(Q8, [0x7FF0000000000000] * 8)), D8)
    me = splat(builder, D8, emn)
    e = builder.select(builder.fcmp_ordered(">", e, me), e, me)
    cv = splat(builder, D8, C)
    y = builder.call(fma, [e, cv, f])
    r = builder.call(fma, [builder.fneg(e), cv, y])
    sign = ir.Constant(Q8, [-0x8000000000000000] * 8)
    return builder.bitcast(builder.or_(builder.bitcast(r, Q8), builder.and_(ub, sign)), D8), e


@intrinsic
def nearest_even_fma_noovf_f64x8(typingctx, a, b, s, emn, C):
    """nearest_even_fma_f64x8 without the overflow multiplies, the magic constant added and subtracted by FMAs.

    With f = fma(a, b, s) and e = max(2**E(f), 2**emin) (E(f): f's exponent; ``emn`` = 2**emin; a zero f
    gives e = 2**emin), c = e * C (C = 1.5 * 2**(52-m)) is :func:`nearest_even`'s magic constant
    max(bits((f & EXPMASK) + cadd), minc) exactly, and a representable power of two times 1.5 (finite f
    below 2**(emax+1) and emax + 53 - m <= 1023: linalg_narrow.direct_no_overflow), so fma(e, C, f) =
    fl(f + c) and fma(-e, C, y) = fl(y - c): the same two roundings as (f + c) - c, with no separate
    product. An infinite f would give NaN: only where direct_no_overflow holds (then every f is finite)."""
    if not (a == f64x8 and b == f64x8 and s == f64x8 and emn == types.float64 and C == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return _noovf_ir(builder, *args)[0]

    return f64x8(f64x8, f64x8, f64x8, types.float64, types.float64), codegen


@intrinsic
def nearest_even_fma_tracked_f64x8(typingctx, a, b, s, mx, emn, C):
    """(nearest_even_fma_noovf_f64x8(a, b, s, emn, C), max(mx, e)): also the running maximum of its
    e = max(2**E(f), 2**emin), which tells whether some f reached 2**emax (where an overflow could have
    been missed)."""
    if not (a == f64x8 and b == f64x8 and s == f64x8 and mx == f64x8 and emn == types.float64
            and C == types.float64):
        return None
    ret = types.UniTuple(f64x8, 2)

    def codegen(context, builder, signature, args):
        a_, b_, s_, mx_, emn_, C_ = args
        r, e = _noovf_ir(builder, a_, b_, s_, emn_, C_)
        m = builder.select(builder.fcmp_ordered(">", e, mx_), e, mx_)
        return context.make_tuple(builder, ret, [r, m])

    return ret(f64x8, f64x8, f64x8, f64x8, types.float64, types.float64), codegen


@intrinsic
def sum_nearest_even_f32x16(typingctx, a, b, s, half, d, dmask):
    """The "twosum32" step on 16 float32 lanes (a*b exact in float32): TwoSum of s and t = a*b, the sum's bits
    u rounded to odd at 24 bits by the error, then (u + half + bit d of u) & dmask (half = 2**(d-1) - 1).

    TwoSum with the exact product folded into FMAs: f = fma(a, b, s) = fl(s + t) and fl(t - bb) =
    fma(a, b, -bb). The round to odd and the nearest-even rounding on the bit pattern are merged:
    r = (ub + half + L) & dmask with L = bit d of ub where e = 0 (or NaN: f infinite), else 1 if e has
    f's sign and 0 if not. Equal to (u + half + bit d of u) & dmask, u the round-to-odd
    bits, for d >= 2 (m <= 21): with low = ub mod 2**d and T = 2**(d-1), if ub is odd u = ub and low != T
    (T is even), so bit 0 of the added value cannot change the carry; if ub is even and e has f's sign,
    u = ub + 1 and the two sums differ in their carry into bit d only for low = T - 1, odd; if ub is even
    and e has the other sign, u = ub - 1 and they differ only for low = T + 1, odd, or (low = 0) both
    give ub & dmask (T - 2 + bit >= 0)."""
    if not (a == f32x16 and b == f32x16 and s == f32x16 and half == types.int32 and d == types.int32
            and dmask == types.int32):
        return None

    def codegen(context, builder, signature, args):
        a_, b_, s_, half_, d_, dmask_ = args
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F16, [F16] * 3), "llvm.fma.v16f32")
        f = builder.call(fma, [a_, b_, s_])
        bb = builder.fsub(f, s_)
        e = builder.fadd(builder.fsub(s_, builder.fsub(f, bb)), builder.call(fma, [a_, b_, builder.fneg(bb)]))
        ub = builder.bitcast(f, W16)
        eb = builder.bitcast(e, W16)
        exact = builder.fcmp_unordered("==", e, ir.Constant(F16, [0.0] * 16))  # true for a NaN e
        one = ir.Constant(W16, [1] * 16)
        same = builder.lshr(builder.xor(builder.xor(eb, ub), ir.Constant(W16, [-1] * 16)),
                            ir.Constant(W16, [31] * 16))
        lsb = builder.and_(builder.lshr(ub, splat(builder, W16, d_)), one)
        L = builder.select(exact, lsb, same)
        r = builder.add(builder.add(ub, splat(builder, W16, half_)), L)
        return builder.bitcast(builder.and_(r, splat(builder, W16, dmask_)), F16)

    return f32x16(f32x16, f32x16, f32x16, types.int32, types.int32, types.int32), codegen


def sum_nearest_even_f32x16_params(m: int) -> tuple:
    """(half, d, dmask) of :func:`sum_nearest_even_f32x16` for a format with m mantissa bits (int32)."""
    d = 23 - m
    return np.int32((1 << (d - 1)) - 1), np.int32(d), np.int32(-1 << d)


# ----------------------------------------------------------------------------
# stochastic rounding with 32 random bits
# ----------------------------------------------------------------------------
@_rule
def random_bits_hi_lo(key0, key1, hi, lo):
    """scalar.random_bits(key0, key1, hi + lo, 32) for hi a multiple of 2**32 and 0 <= lo < 2**32.

    Written as the counter (hi | lo mod 2**32), so that a loop whose counters share their high word
    shows LLVM that half of the hash is loop-invariant (same counter values, same bits)."""
    return scalar.random_bits(key0, key1, hi | np.int64(np.uint32(lo)), 32)


def stochastic_params(m: int, emin: int, emax: int) -> tuple:
    """(emz, scale, unscale, maxs, dsh, dmask) of :func:`round_stochastic_bits` for an IEEE format."""
    S = -1022 - emin
    D = 52 - m
    maxs = np.float64((2.0 - 2.0 ** -m) * 2.0 ** (emax + S)).view(np.int64)
    return (np.int64(emin + 1023), 2.0 ** S, 2.0 ** -S, maxs, np.int64(D - 32), np.int64(-1 << D))


@_rule
def round_stochastic_bits(u, rnd, emz, scale, unscale, maxs, dsh, dmask):
    """Carrier bits u (float64, finite or Inf) rounded stochastically with 32 random bits ``rnd``.

    The rule of scalar.round_float_carrier (CW=64, an IEEE format with subnormals): round up iff rnd is
    below the 32 bits under the kept ones. Written for vectors: the value is scaled by 2**S, S = -1022 -
    emin, which maps the format's subnormal range onto float64's and its normal range onto float64's
    normal range, so that the format's quantum is 2**D units of the last place everywhere (D = 52 - m
    >= 32). The z = emin - e bits that would fall below 2**-1074 are cleared first (they lie under the
    32 bits that decide: the scaling is then exact); the decision is the carry of adding (2**32 - 1 -
    rnd) just under the kept bits, which are then cut; a result above max*2**S becomes Inf."""
    sign = u & _SIGN
    a = u & _ABS
    E = max(a >> 52, np.int64(1))
    z = max(emz - E, np.int64(0))
    keep = (np.int64(-1) << min(z, np.int64(63))) if z < 53 else np.int64(0)
    p = scalar.f64_as_i64(scalar.i64_as_f64(a & keep) * scale)
    p = (p + (np.int64(np.uint32(rnd) ^ np.uint32(0xFFFFFFFF)) << dsh)) & dmask
    p = _INFBITS if p > maxs else p
    return scalar.i64_as_f64(scalar.f64_as_i64(scalar.i64_as_f64(p) * unscale) | sign)


@_rule
def sum_stochastic(s, t, rnd, emz, scale, unscale, maxs, dsh, dmask):
    """The exact s + t rounded stochastically with the 32 random bits ``rnd``: rounded to odd at 53 bits
    (:func:`sum_to_odd_bits`), then :func:`round_stochastic_bits`. Exact for p + 32 <= 52: the first 52
    bits of the round-to-odd value equal those of the exact sum, so the 32 bits below the kept ones that
    decide are unchanged."""
    return round_stochastic_bits(sum_to_odd_bits(s, t), rnd, emz, scale, unscale, maxs, dsh, dmask)


def _f32_intrinsic(name, ret, build):
    def impl(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return build(context, builder, signature, args[0])

        return ret(x), codegen

    impl.__name__ = name
    return intrinsic(impl)


#: float32 helpers that stay in 32-bit lanes (numba's own casts go through 64-bit integers).
_floor32 = _f32_intrinsic("_floor32", types.float32, lambda c, b, s, v: b.call(
    b.module.declare_intrinsic("llvm.floor", [ir.FloatType()]), [v]))
_f32_to_u32 = _f32_intrinsic("_f32_to_u32", types.uint32, lambda c, b, s, v: b.fptoui(v, ir.IntType(32)))
_f32_to_i32 = _f32_intrinsic("_f32_to_i32", types.int32, lambda c, b, s, v: b.fptosi(v, ir.IntType(32)))

_I32 = np.int32
_TWO32 = np.float32(4294967296.0)


@_rule
def sum_stochastic32(s, t, rnd, eqlo, cinv, m, fmax):
    """s + t (float32 accumulator value and exact float32 product) rounded stochastically to the
    accumulator's grid with the 32 random bits ``rnd``, in float32 lanes ("sr32", see linalg_cpu.narrow_kind).

    The rule of scalar.round_float_carrier: with q the quantum at x = s + t and g = q / 2**32, the result
    is kept*q or (kept+1)*q, the second iff rnd < W, where kept*2**32 + W = floor(|x| / g). TwoSum gives
    x = f + e exactly; e' = e * sign(f). The binade of |x| is that of |f|, one lower when |f| is a power
    of two and e' < 0: its exponent is read from f's bit pattern minus one (pfa), and q = 2**(Eq - m)
    with Eq = max(E(|x|), eqlo) (eqlo: the format's emin, raised to the data's smallest possible
    exponent). Then |f| / q = kq + frac exactly (kq = floor), wf = frac * 2**32 is an integer (f has no
    bits below g: checked by :func:`sum_stochastic32_floor`), ce = floor(e' / g) (|e'| <= ulp(f) / 2, so
    |ce| < 2**(m+9)), and floor(|x| / g) = kq * 2**32 + wf + ce: W = wf + ce modulo 2**32, with a borrow
    from kq when wf + ce < 0. Every product by a power of two is exact (sum_stochastic32_floor bounds the
    exponents). A result above the format's max is Inf; an infinite accumulator stays as it is.
    Arguments: eqlo = elo + 127 (elo from sum_stochastic32_floor), cinv = m + 254, m, fmax = the format's
    max (float32); int32 but fmax."""
    f, e = two_sum(s, t)
    fb = scalar.f32_as_i32(f)
    sgn = _I32(fb & _I32(-0x80000000))
    pf = _I32(fb & _I32(0x7FFFFFFF))
    ep = scalar.i32_as_f32(_I32(scalar.f32_as_i32(e) ^ sgn))  # e * sign(f): never -0 for a zero e
    neg = ep < np.float32(0.0)
    pfa = _I32(pf - _I32(1)) if neg else pf  # |x| truncated to float32: its exponent is E(|x|)
    eqb = max(_I32(scalar._shr(pfa, _I32(23))), eqlo)
    invq = scalar.i32_as_f32(scalar._shl(_I32(cinv - eqb), _I32(23)))  # 2**(m - Eq)
    yq = scalar.i32_as_f32(pf) * invq
    kq = _floor32(yq)
    wf = _f32_to_u32((yq - kq) * _TWO32)
    ce = _f32_to_i32(_floor32(ep * (invq * _TWO32)))  # < 0 iff neg (e' / g does not vanish)
    w = np.uint32(wf + np.uint32(ce))
    # a borrow from kq iff wf + ce < 0, which is iff wf == 0 and ce < 0: a non-zero wf is a multiple of
    # max(1, ulp(f) / g) and |ce| <= max(1, ulp(f) / (2g))
    kept = kq + np.float32(1.0) if w > np.uint32(rnd) else kq
    kept = kept - np.float32(1.0) if neg & (wf == np.uint32(0)) else kept
    r = kept * scalar.i32_as_f32(scalar._shl(_I32(eqb - m), _I32(23)))  # kept * q
    r = np.float32(np.inf) if r > fmax else r
    rb = _I32(scalar.f32_as_i32(r) | sgn)
    return scalar.i32_as_f32(rb if pf < _I32(0x7F800000) else fb)


def sum_stochastic32_floor(g: int, top: float, m: int, emin: int, emax: int) -> Optional[int]:
    """The exponent floor ``elo`` of :func:`sum_stochastic32` when it gives the rule's result for every sum
    s + t of float32 values (float32 holds s, t and, for a product t = a*b, the product exactly) that is
    a multiple of 2**g with |s + t| < top (and every accumulator value a multiple of 2**g below top), else
    None.

    Conditions: no float32 sum of an accumulator value and a product overflows (top below float32's
    max), and every power of two that sum_stochastic32 forms is a normal float32 and every product by
    one keeps what it must, over the exponents its quantum can take: from elo = max(emin, g) to ehi,
    2**ehi > top. Every accumulator value, sum and TwoSum error is a multiple of 2**g (an SR result of a
    multiple of 2**g is one too) and a non-zero |x| >= 2**g. Also f must have no bits below the window
    (g >= emin - m - 32) and e' / g must not vanish (g + 32 + m - ehi >= -149), so that floor(e' / g)
    is right."""
    if m > 22 or emin - m < -149 or emax > 127:
        return None
    if top > _FLT_MAX * (1.0 - 2.0 ** -30):
        return None
    elo = max(emin, g)
    ehi = max(math.frexp(top)[1], elo)
    ok = (elo - m >= -126 and m - ehi >= -126 and 32 + m - elo <= 127 and 32 + m - ehi >= -126
          and g + 32 + m - ehi >= -149 and g >= emin - m - 32)
    return elo if ok else None


# ----------------------------------------------------------------------------
# the registry: rule -> implementations, for tests/test_rules.py
# ----------------------------------------------------------------------------
#: What each rule computes, on the arguments every registered ``call`` takes (``fmt``: an IEEE
#: lowprec FloatFormat with subnormals and Inf; the references are in tests/test_rules.py).
RULES = {
    "two_sum": "(x, y, precision) -> (s, e): s = x + y rounded to nearest-even in precision ('float64' or "
               "'float32'), s + e = x + y",
    "two_prod": "(a, b) -> (p, e): p = a * b rounded to nearest-even (float64), p + e = a * b",
    "odd_sum": "(x, y) -> x + y rounded to odd at 53 bits (float64); an exact zero as IEEE's x + y",
    "nearest_even": "(x, fmt) -> x rounded to nearest-even onto fmt, Inf beyond its overflow threshold",
    "nearest_even_saturate": "(x, fmt) -> x rounded to nearest-even onto fmt (any lowprec FloatFormat), +-max beyond "
                             "it: the saturating rounding of the block formats' elements and scales",
    "round_nearest_even": "(x, fmt) -> lowprec.round_to(x, fmt) at nearest-even, for any lowprec FloatFormat: the "
                          "format's overflow (Inf, NaN or +-max), NaN, flush to zero and signed zeros",
    "round_stochastic": "(x, fmt, R) -> lowprec.round_to(x, fmt, 'stochastic') given its 32 random bits R, for any "
                        "lowprec FloatFormat: away from zero iff R < the 32 bits below the kept ones, then the "
                        "format's overflow, NaN, flush to zero and signed zeros",
    "round_fixed_nearest_even": "(x, fmt) -> lowprec.round_to(x, fmt) at nearest-even, for a saturating "
                                "FixedFormat: the integer k nearest x * 2**frac_bits (ties to even) clamped to the "
                                "format's range, times 2**-frac_bits; Inf to the nearest end, NaN to NaN, 0 positive",
    "sum_nearest_even": "(s, t, fmt) -> the exact s + t rounded once to nearest-even onto fmt",
    "sum_stochastic": "(s, t, fmt, key0, key1, counter) -> the exact s + t rounded stochastically onto fmt "
                      "with the 32 random bits R = scalar.random_bits(key0, key1, counter, 32): away from zero "
                      "iff R < the 32 bits below the kept ones",
    "random_bits": "(key0, key1, counter) -> the 32 random bits of counter under key (key0, key1)",
}


class Implementation(NamedTuple):
    """One registered implementation of a rule."""

    name: str  # the function a kernel uses, as it is written there
    call: Callable  # the rule's arguments (RULES) -> the rule's result, through the implementation
    pre: Optional[Callable] = None  # the rule's arguments -> True where the implementation claims the rule


def _fields(fmt):
    return fmt.man_bits, fmt.emin, fmt.emax


def _f64(x):
    return float(np.float64(x))


def _sig_bits(x: float) -> int:
    """Significant bits of a finite float64 (0 for 0)."""
    if x == 0.0:
        return 0
    m, _ = math.frexp(abs(x))
    n = int(m * 2.0 ** 53)
    return 53 - ((n & -n).bit_length() - 1)


def _low_exp(x: float) -> int:
    """The exponent of the lowest set bit of a non-zero finite float64."""
    m, e = math.frexp(abs(x))
    n = int(m * 2.0 ** 53)
    return e - 53 + (n & -n).bit_length() - 1


def _is_f32(x: float) -> bool:
    with np.errstate(over="ignore"):
        return math.isnan(x) or float(np.float32(x)) == x


def _threshold(fmt) -> float:
    """The overflow threshold of nearest rounding: the smallest |x| that rounds to Inf."""
    m, _, emax = _fields(fmt)
    return 2.0 ** emax * (2.0 - 2.0 ** -(m + 1))


def _accum():
    from . import accum  # accum imports this module

    return accum


_RN = np.int64(scalar.NEAREST_EVEN)
_SR = np.int64(scalar.STOCHASTIC)


@njit(nogil=True)
def _run_nearest_even_fma_f64x8(a, b, s, cadd, minc, up, down, out):
    vectors.d8_store(out, 0, 0, nearest_even_fma_f64x8(vectors.d8_load(a, 0, 0, 0), vectors.d8_load(b, 0, 0, 0),
                                                       vectors.d8_load(s, 0, 0, 0), cadd, minc, up, down))


@njit(nogil=True)
def _run_nearest_even_fma_noovf_f64x8(a, b, s, emn, C, out):
    vectors.d8_store(out, 0, 0, nearest_even_fma_noovf_f64x8(vectors.d8_load(a, 0, 0, 0), vectors.d8_load(b, 0, 0, 0),
                                                             vectors.d8_load(s, 0, 0, 0), emn, C))


@njit(nogil=True)
def _run_nearest_even_fma_tracked_f64x8(a, b, s, emn, C, out):
    r, _ = nearest_even_fma_tracked_f64x8(vectors.d8_load(a, 0, 0, 0), vectors.d8_load(b, 0, 0, 0),
                                          vectors.d8_load(s, 0, 0, 0), vectors.d8_zero(), emn, C)
    vectors.d8_store(out, 0, 0, r)


@njit(nogil=True)
def _run_sum_nearest_even_f32x16(a, b, s, half, d, dmask, out):
    vectors.f16_store(out, 0, 0, sum_nearest_even_f32x16(vectors.f16_load(a, 0, 0, 0), vectors.f16_load(b, 0, 0, 0),
                                                         vectors.f16_load(s, 0, 0, 0), half, d, dmask))


def _splat_args(n, dtype, *xs):
    return [np.full((1, 1, n), x, dtype=dtype) for x in xs]


def _direct(s, t, fmt):
    a, b, sv = _splat_args(8, np.float64, t, 1.0, s)
    out = np.empty((1, 8))
    _run_nearest_even_fma_f64x8(a, b, sv, *nearest_even_params(*_fields(fmt)), out)
    return float(out[0, 0])


def _direct_noovf(s, t, fmt, tracked=False):
    m, emin, _ = _fields(fmt)
    a, b, sv = _splat_args(8, np.float64, t, 1.0, s)
    out = np.empty((1, 8))
    run = _run_nearest_even_fma_tracked_f64x8 if tracked else _run_nearest_even_fma_noovf_f64x8
    run(a, b, sv, 2.0 ** emin, 1.5 * 2.0 ** (52 - m), out)
    return float(out[0, 0])


def _twosum32(s, t, fmt):
    a, b, sv = _splat_args(16, np.float32, t, 1.0, s)
    out = np.empty((1, 16))
    _run_sum_nearest_even_f32x16(a, b, sv, *sum_nearest_even_f32x16_params(fmt.man_bits), out)
    return float(out[0, 0])


def _direct_pre(s, t, fmt):
    """The "direct" step's conditions (narrow.py): s a value of the format, t finite with
    m + 1 + bits(t) <= 50 (t stands for a product of inputs with pa + pb <= bits), emax - (emin - m) <= 50."""
    m, emin, emax = _fields(fmt)
    return (math.isfinite(t) and not math.isnan(s) and m + 1 + _sig_bits(t) <= 50
            and emax - (emin - m) <= 50)


def _noovf_pre(s, t, fmt):
    """"direct" and no overflow: every value finite and |s + t| below the overflow threshold."""
    m, emin, emax = _fields(fmt)
    return (_direct_pre(s, t, fmt) and math.isfinite(s) and emax + 53 - m <= 1023
            and abs(s) + abs(t) < _threshold(fmt))


def _twosum32_pre(s, t, fmt):
    """"twosum32": float32's exponent range (emin = -126, emax = 127), m <= 21, s and t float32 values."""
    m, emin, emax = _fields(fmt)
    return emin == -126 and emax == 127 and m <= 21 and _is_f32(s) and _is_f32(t) and not math.isnan(t)


def _sr32_elo(s, t, fmt):
    """sum_stochastic32_floor for one step: g the lowest set bit of s and t, top = |s| (at most max) + |t|."""
    m, emin, emax = _fields(fmt)
    if not (_is_f32(s) and _is_f32(t) and math.isfinite(t) and not math.isnan(s)):
        return None
    fmax = (2.0 - 2.0 ** -m) * 2.0 ** emax
    nz = [x for x in (s, t) if x != 0.0 and math.isfinite(x)]
    g = min(_low_exp(x) for x in nz) if nz else emin
    return sum_stochastic32_floor(g, min(abs(s), fmax) + abs(t), m, emin, emax)


def _sr32(s, t, fmt, k0, k1, c):
    m, _, emax = _fields(fmt)
    rnd = scalar.random_bits(np.uint32(k0), np.uint32(k1), np.int64(c), 32)
    r = sum_stochastic32(np.float32(s), np.float32(t), np.uint32(rnd), np.int32(_sr32_elo(s, t, fmt) + 127),
                         np.int32(m + 254), np.int32(m), np.float32((2.0 - 2.0 ** -m) * 2.0 ** emax))
    return float(r)


def _sr64(s, t, fmt, k0, k1, c):
    hi = (int(c) >> 32) << 32
    rnd = random_bits_hi_lo(np.uint32(k0), np.uint32(k1), np.int64(hi), np.int64(int(c) - hi))
    return _f64(sum_stochastic(np.float64(s), np.float64(t), rnd, *stochastic_params(*_fields(fmt))))


def _round_sum_sr(s, t, fmt, k0, k1, c):
    A = _accum()
    rnd = A.draw(_SR, np.uint32(k0), np.uint32(k1), np.int64(c), np.int64(32))
    return _f64(A.round_sum(np.float64(s), np.float64(t), fmt._kernel_params(), _SR, rnd, np.int64(32)))


def _grid_f32(x, fmt):
    """scalar.round_grid_f32 (the block row loops' element and UE4M3-scale step) of the float32 ``x``."""
    params = scalar.grid_f32_params(fmt.man_bits, fmt.emin, fmt.emax, float(fmt.max))
    return float(scalar.round_grid_f32(np.float32(x), *params))


def _grid_f64(x, fmt):
    """scalar.round_grid_f64 (the block row loops' element step on float64 values) of x."""
    params = scalar.grid_f64_params(fmt.man_bits, fmt.emin, fmt.emax, float(fmt.max))
    return _f64(scalar.round_grid_f64(np.float64(x), *params))


@njit(nogil=True)
def _run_nearest_even_f32(u, p):
    lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f32_consts(
        p[1], p[2], p[3], p[4], p[5], p[7])
    return scalar.round_nearest_even_f32(u, p[5], p[6], p[7], lsb, half1, dmask, minnorm, c, maxbits, overbits,
                                         infbits, nanbits)


def _nearest_even_f32(x, fmt):
    """scalar.round_nearest_even_f32 (cpu.py's specialised nearest-even round loops of float32 data) of x."""
    u = np.float32(x).view(np.int32)
    return float(np.int32(_run_nearest_even_f32(u, np.array(fmt._kernel_params(), np.int64))).view(np.float32))


@njit(nogil=True)
def _run_nearest_even_f64(u, p):
    lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f64_consts(
        p[1], p[2], p[3], p[4], p[5], p[7])
    return scalar.round_nearest_even_f64(u, p[5], p[6], p[7], lsb, half1, dmask, minnorm, c, maxbits, overbits,
                                         infbits, nanbits)


def _nearest_even_f64(x, fmt):
    """scalar.round_nearest_even_f64 (cpu.py's specialised nearest-even round loops of float64 data) of x."""
    u = np.float64(x).view(np.int64)
    return _f64(np.int64(_run_nearest_even_f64(u, np.array(fmt._kernel_params(), np.int64))).view(np.float64))


@njit(nogil=True)
def _run_stochastic_f32(u, rnd, p, wide):
    lsb, dmask, minnorm, q, up, dbase, maxbits, overbits, infbits, nanbits = scalar.stochastic_f32_consts(
        p[1], p[2], p[3], p[4], p[5], p[7])
    return scalar.round_stochastic_f32(u, rnd, p[5], p[6], p[7], wide, lsb, dmask, minnorm, q, up, dbase, maxbits,
                                       overbits, infbits, nanbits)


def _stochastic_f32(x, fmt, R, wide):
    """scalar.round_stochastic_f32 (cpu.py's specialised stochastic round loops of float32 data) of x with bits R."""
    u = np.float32(x).view(np.int32)
    got = _run_stochastic_f32(u, np.uint64(R), np.array(fmt._kernel_params(), np.int64), wide)
    return float(np.int32(got).view(np.float32))


def _round_carrier_sr(x, fmt, R):
    """scalar.round_float_carrier (the definition) in mode STOCHASTIC with the bits R, on x's float64 bits."""
    p = fmt._kernel_params()
    u = np.float64(x).view(np.int64)
    return _f64(np.int64(scalar.round_float_carrier(u, 64, 52, 1023, *p[1:8], _SR, np.uint64(R), 32)).view(np.float64))


@njit(nogil=True)
def _run_fixed_nearest_f32(u, p):
    s, inv, lo, hi, kmin, kmax, c, nanbits = scalar.fixed_nearest_f32_consts(p[1], p[2], p[3])
    return scalar.round_fixed_nearest_f32(u, s, inv, lo, hi, kmin, kmax, c, nanbits)


@njit(nogil=True)
def _run_fixed_nearest_f64(u, p):
    s, inv, lo, hi, kmin, kmax, c, nanbits = scalar.fixed_nearest_f64_consts(p[1], p[2], p[3])
    return scalar.round_fixed_nearest_f64(u, s, inv, lo, hi, kmin, kmax, c, nanbits)


def _fixed_nearest(x, fmt, cw):
    """scalar.round_fixed_nearest_f32 (``cw`` 32) or _f64 (cpu.py's specialised nearest-even round loops of
    fixed-point formats) of x."""
    p = np.array(fmt._kernel_params(), np.int64)
    if cw == 32:
        return float(np.int32(_run_fixed_nearest_f32(np.float32(x).view(np.int32), p)).view(np.float32))
    return _f64(np.int64(_run_fixed_nearest_f64(np.float64(x).view(np.int64), p)).view(np.float64))


def _round_fixed_carrier(x, fmt):
    """scalar.round_fixed_carrier (the definition) in mode NEAREST_EVEN on x's float64 bits."""
    p = fmt._kernel_params()
    u = np.float64(x).view(np.int64)
    return _f64(np.int64(scalar.round_fixed_carrier(u, 64, 52, 1023, *p[1:5], _RN, np.uint64(0), 32))
                .view(np.float64))


def _nearest_even_f32_pre(x, fmt):
    """round_nearest_even_f32's conditions: scalar.nearest_even_f32_applies, x a float32 value (Inf, NaN too)."""
    return _is_f32(x) and scalar.nearest_even_f32_applies(fmt._kernel_params())


def _grid_f64_pre(x, fmt):
    """round_grid_f64's conditions: round_grid_f32's, for any finite float64 x."""
    return (fmt.signed and fmt.has_subnormals and fmt.has_negative_zero and fmt.has_zero and math.isfinite(x)
            and scalar.grid_f64_params(fmt.man_bits, fmt.emin, fmt.emax, float(fmt.max)) is not None)


def _grid_f32_pre(x, fmt):
    """round_grid_f32's conditions: a signed format with -0 and subnormals whose grid_f32_params exist; x a finite
    float32 value."""
    return (fmt.signed and fmt.has_subnormals and fmt.has_negative_zero and fmt.has_zero and math.isfinite(x)
            and _is_f32(x) and scalar.grid_f32_params(fmt.man_bits, fmt.emin, fmt.emax, float(fmt.max)) is not None)


REGISTRY = {
    "two_sum": [
        Implementation("rules.two_sum (float64)",
                       lambda x, y, prec: tuple(map(_f64, two_sum(np.float64(x), np.float64(y)))),
                       lambda x, y, prec: prec == "float64" and math.isfinite(x + y)),
        Implementation("rules.two_sum (float32: sum_stochastic32)",
                       lambda x, y, prec: tuple(map(float, two_sum(np.float32(x), np.float32(y)))),
                       lambda x, y, prec: (prec == "float32" and _is_f32(x) and _is_f32(y)
                                           and math.isfinite(x + y) and abs(x + y) < _FLT_MAX)),
    ],
    "two_prod": [
        Implementation("rules.two_prod", lambda a, b: tuple(map(_f64, two_prod(np.float64(a), np.float64(b)))),
                       lambda a, b: (math.isfinite(a) and math.isfinite(b) and abs(a) < 2.0 ** 996
                                     and abs(b) < 2.0 ** 996 and (a == 0.0 or b == 0.0
                                                                  or math.frexp(a)[1] + math.frexp(b)[1] - 2 >= -969))),
    ],
    "odd_sum": [
        Implementation("rules.to_odd(*rules.two_sum(x, y)) (accum.round_sum)",
                       lambda x, y: _f64(to_odd(*two_sum(np.float64(x), np.float64(y)))),
                       lambda x, y: math.isfinite(x + y)),
        Implementation("rules.sum_to_odd_bits (narrow.py)",
                       lambda x, y: _f64(np.int64(sum_to_odd_bits(np.float64(x), np.float64(y))).view(np.float64)),
                       lambda x, y: math.isfinite(x + y)),
    ],
    "nearest_even": [
        Implementation("accum.round64 (nearest-even)",
                       lambda x, fmt: _f64(_accum().round64(np.float64(x), fmt._kernel_params(), _RN, np.uint64(0),
                                                            np.int64(32)))),
        Implementation("rules.nearest_even",
                       lambda x, fmt: _f64(nearest_even(np.float64(x), *nearest_even_params(*_fields(fmt))))),
    ],
    "nearest_even_saturate": [
        Implementation("scalar.round_grid_f32 (block_cpu row loops)", _grid_f32, _grid_f32_pre),
        Implementation("scalar.round_grid_f64 (block_cpu row loops)", _grid_f64, _grid_f64_pre),
    ],
    "round_nearest_even": [
        Implementation("scalar.round_nearest_even_f32 (cpu.py specialised round loops)", _nearest_even_f32,
                       _nearest_even_f32_pre),
        Implementation("scalar.round_nearest_even_f64 (cpu.py specialised round loops)", _nearest_even_f64,
                       lambda x, fmt: scalar.nearest_even_f64_applies(fmt._kernel_params())),
    ],
    "round_stochastic": [
        Implementation("scalar.round_float_carrier (the definition, float64 carrier)", _round_carrier_sr,
                       lambda x, fmt, R: fmt.fits_in(np.float64)),
        Implementation("scalar.round_stochastic_f32 (narrow; cpu.py specialised round loops)",
                       lambda x, fmt, R: _stochastic_f32(x, fmt, R, 0),
                       lambda x, fmt, R: _is_f32(x) and scalar.stochastic_f32_applies(fmt._kernel_params()) == 0),
        Implementation("scalar.round_stochastic_f32 (wide; cpu.py specialised round loops)",
                       lambda x, fmt, R: _stochastic_f32(x, fmt, R, 1),
                       lambda x, fmt, R: _is_f32(x) and scalar.stochastic_f32_applies(fmt._kernel_params()) == 1),
    ],
    "round_fixed_nearest_even": [
        Implementation("scalar.round_fixed_carrier (the definition, float64 carrier)", _round_fixed_carrier),
        Implementation("scalar.round_fixed_nearest_f32 (cpu.py specialised round loops)",
                       lambda x, fmt: _fixed_nearest(x, fmt, 32),
                       lambda x, fmt: _is_f32(x) and scalar.fixed_nearest_applies(fmt._kernel_params(), 32)),
        Implementation("scalar.round_fixed_nearest_f64 (cpu.py specialised round loops)",
                       lambda x, fmt: _fixed_nearest(x, fmt, 64),
                       lambda x, fmt: scalar.fixed_nearest_applies(fmt._kernel_params(), 64)),
    ],
    "sum_nearest_even": [
        Implementation("accum.round_sum (nearest-even)",
                       lambda s, t, fmt: _f64(_accum().round_sum(np.float64(s), np.float64(t), fmt._kernel_params(),
                                                                 _RN, np.uint64(0), np.int64(32)))),
        Implementation("rules.sum_nearest_even (narrow twosum, unfused)",
                       lambda s, t, fmt: _f64(sum_nearest_even(np.float64(s), np.float64(t),
                                                               *nearest_even_params(*_fields(fmt))))),
        Implementation("rules.nearest_even(s + t) (narrow unfused, exact sums)",
                       lambda s, t, fmt: _f64(nearest_even(np.float64(s) + np.float64(t),
                                                           *nearest_even_params(*_fields(fmt)))),
                       lambda s, t, fmt: (math.isfinite(s) and math.isfinite(t)
                                          and fmt.emax - (fmt.emin - fmt.man_bits) <= 51
                                          and _format_values(fmt, s, t))),
        Implementation("rules.nearest_even_fma_f64x8 (linalg_narrow direct)", _direct, _direct_pre),
        Implementation("rules.nearest_even_fma_noovf_f64x8 (linalg_narrow direct_noovf)", _direct_noovf, _noovf_pre),
        Implementation("rules.nearest_even_fma_tracked_f64x8 (linalg_narrow direct_checked)",
                       lambda s, t, fmt: _direct_noovf(s, t, fmt, tracked=True), _noovf_pre),
        Implementation("rules.sum_nearest_even_f32x16 (linalg_narrow twosum32)", _twosum32, _twosum32_pre),
    ],
    "sum_stochastic": [
        Implementation("accum.round_sum (stochastic, 32 bits; accum.draw)", _round_sum_sr,
                       lambda s, t, fmt, *key: fmt.man_bits + 1 + 32 <= 52),
        Implementation("rules.sum_stochastic (narrow sr; rules.random_bits_hi_lo)", _sr64,
                       lambda s, t, fmt, *key: (fmt.man_bits <= 20 and math.isfinite(t) and not math.isnan(s))),
        Implementation("rules.sum_stochastic32 (narrow sr32)", _sr32,
                       lambda s, t, fmt, *key: _sr32_elo(s, t, fmt) is not None),
    ],
    "random_bits": [
        Implementation("scalar.random_bits",
                       lambda k0, k1, c: int(scalar.random_bits(np.uint32(k0), np.uint32(k1), np.int64(c), 32))),
        Implementation("rules.random_bits_hi_lo",
                       lambda k0, k1, c: int(random_bits_hi_lo(np.uint32(k0), np.uint32(k1), np.int64((c >> 32) << 32),
                                                               np.int64(c - ((c >> 32) << 32))))),
    ],
}


def _format_values(fmt, *xs) -> bool:
    """True when every x is a finite value of the IEEE format: two such values sum exactly in float64
    when emax - (emin - m) <= 51 (their sum is a multiple of 2**(emin - m) below 2**(emax + 2))."""
    m, emin, emax = _fields(fmt)
    return all(x == 0.0 or (math.isfinite(x) and _low_exp(x) >= emin - m and _sig_bits(x) <= m + 1
                            and abs(x) < 2.0 ** (emax + 1)) for x in xs)

"""Register-tiled nearest-even narrow-accumulator matmul kernels ("direct" and "twosum32").

The "direct" and "twosum32" steps of the comment above ``linalg_cpu.NARROW_R`` (the step kinds, their
preconditions and why each step is one correct rounding), with the bits of the per-element kernels they
replaced there (checked against the general kernel and a Fraction reference in tests/test_linalg_narrow.py), same packed operands (``linalg_cpu._pack``: ``Ap`` (ceil(M/R), K, R), ``Bp`` (ceil(N/NB), K,
NB), R = 4, NB a multiple of 32; float64 for "direct", float32 for "twosum32") and the same padded output
(ceil(M/R)*R, ceil(N/NB)*NB) float64. Every output still takes its terms in the order k = 0, ..., K-1
with one rounding per step, so the bits do not depend on the tiling or the thread count.

What differs: the kernels they replaced kept a 4 x 64 tile in an ``np.zeros`` array (a load and a
store per term) and leave the vectorising to LLVM; here a tile of 4 rows x 32 columns of accumulators is
held in explicit LLVM vectors (sixteen ``<8 x double>`` for "direct", eight ``<16 x float>`` for
"twosum32", AVX-512 registers), each panel of NB columns being done as NB/32 such tiles, and each step is
written as LLVM IR on whole vectors, with fewer instructions where that gives the same bits:

- "direct" (``_direct_step``): ``f = fma(a, b, s)``, then linalg_cpu._rne on f: the magic constant
  ``c = max(bits((f & EXPMASK) + cadd), minc)``, ``r = (f + c) - c``, ``r = (r * up) * down`` (above max
  -> Inf), the sign of f or-ed back. The same IEEE operations in the same order, lane by lane.
- "direct_noovf" (``_direct_step_noovf``): the same roundings with two FMAs for ``(f + c) - c`` and no
  overflow multiplies (6 vector instructions a step instead of 9), only where :func:`direct_no_overflow`
  proves from the operands' largest magnitudes that no sum reaches the overflow threshold.
- "direct_checked" (what :func:`run` uses for "direct" without that proof): the tile is computed with
  the no-overflow step while tracking the largest e = max(2**E(f), 2**emin) of its steps (7 instructions a
  step); a tile where some f reached 2**emax is computed again with ``_direct_step``. Correct: if every f of
  a tile is below 2**emax, every rounded value r <= 2**emax <= max is finite and below the overflow
  threshold, so ``_direct_step``'s multiplies were the identity on every step, and the magic constant
  1.5 * 2**(E + 52 - m) <= 1.5 * 2**(emax + 51 - m) was finite (emax + 53 - m <= 1023, checked by run);
  a tile whose f got larger (or infinite: an e of Inf compares above 2**emax) is recomputed from scratch
  and its first pass is overwritten.
- "twosum32" (``_twosum32_step``): TwoSum, round to odd at 24 bits, then nearest-even on the bit pattern
  (``(u + 2**(d-1) - 1 + bit d of u) & -2**d``, d = 23 - m), with the exact product folded into two FMAs
  and the round-to-odd merged into the final nearest-even rounding (proof in its docstring).

Measured at 1024^3 on one thread of this machine (Zen 4, AVX-512), fp16 inputs from standard normal
data: "direct" 0.21 s (linalg_cpu) -> 0.155 s checked, 0.136 s no-overflow; bf16 "twosum32" 0.227 ->
0.181 s. Generated for AVX2 only (NUMBA_CPU_FEATURES without avx512, 512^3), the tiles spill but the
kernels stay 1.2-1.5x faster than linalg_cpu's. 4 x 64 tiles for "twosum32" were 2% faster, 4 x 16
tiles for "direct" 10-20% slower.

Numba's cache rules (see linalg_fp32.py): the cached entry points are built in ``_build`` which closes
over the digest string only, each variant its own named ``def``, calling module-level
``@njit(inline="always")`` functions.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from . import SOURCE_DIGEST

TILE_R = 4  # rows of a tile (= linalg_cpu.NARROW_R, the row panel height of Ap)
TILE_W = 32  # columns of a tile; Bp's panel width must be a multiple of it

# ----------------------------------------------------------------------------
# vector types: <8 x double> and <16 x float>
# ----------------------------------------------------------------------------
_D8 = ir.VectorType(ir.DoubleType(), 8)
_Q8 = ir.VectorType(ir.IntType(64), 8)
_F16 = ir.VectorType(ir.FloatType(), 16)
_W16 = ir.VectorType(ir.IntType(32), 16)
_D16 = ir.VectorType(ir.DoubleType(), 16)
_I32 = ir.IntType(32)


class F64x8(types.Type):
    """LLVM ``<8 x double>`` as a numba value (one AVX-512 register)."""

    def __init__(self):
        super().__init__(name="f64x8")


class F32x16(types.Type):
    """LLVM ``<16 x float>`` as a numba value (one AVX-512 register)."""

    def __init__(self):
        super().__init__(name="f32x16")


f64x8 = F64x8()
f32x16 = F32x16()


@register_model(F64x8)
class _F64x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _D8)


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F16)


def _splat(builder, vty, x):
    n = vty.count
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _ptr(context, builder, aryty, arr, idx):
    ary = context.make_array(aryty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)


@intrinsic
def d8_zero(typingctx):
    """(+0, ..., +0) as <8 x double>."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_D8, [0.0] * 8)

    return f64x8(), codegen


@intrinsic
def f16_zero(typingctx):
    """(+0, ..., +0) as <16 x float>."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_F16, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def d8_splat(typingctx, x):
    """(x, ..., x) for a float64 x."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, _D8, args[0])

    return f64x8(types.float64), codegen


@intrinsic
def f16_splat(typingctx, x):
    """(x, ..., x) for a float32 x."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, _F16, args[0])

    return f32x16(types.float32), codegen


def _is3(arr, dtype):
    return isinstance(arr, types.Array) and arr.ndim == 3 and arr.dtype == dtype


@intrinsic
def d8_load(typingctx, arr, p, k, j):
    """arr[p, k, j:j+8] of a 3-D float64 array whose last axis is contiguous (not checked)."""
    if not _is3(arr, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], list(args[1:]))
        return builder.load(builder.bitcast(ptr, _D8.as_pointer()), align=8)

    return f64x8(arr, types.intp, types.intp, types.intp), codegen


@intrinsic
def f16_load(typingctx, arr, p, k, j):
    """arr[p, k, j:j+16] of a 3-D float32 array whose last axis is contiguous (not checked)."""
    if not _is3(arr, types.float32):
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], list(args[1:]))
        return builder.load(builder.bitcast(ptr, _F16.as_pointer()), align=4)

    return f32x16(arr, types.intp, types.intp, types.intp), codegen


def _is_out(arr):
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float64


@intrinsic
def d8_store(typingctx, out, i, j, v):
    """out[i, j:j+8] = v for a 2-D float64 array whose last axis is contiguous (not checked)."""
    if not _is_out(out) or v != f64x8:
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], [args[1], args[2]])
        builder.store(args[3], builder.bitcast(ptr, _D8.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(out, types.intp, types.intp, f64x8), codegen


@intrinsic
def f16_store(typingctx, out, i, j, v):
    """out[i, j:j+16] = v converted (exactly) to float64, out 2-D float64 with a contiguous last axis."""
    if not _is_out(out) or v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], [args[1], args[2]])
        builder.store(builder.fpext(args[3], _D16), builder.bitcast(ptr, _D16.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(out, types.intp, types.intp, f32x16), codegen


def _qsplat(builder, x):
    return _splat(builder, _Q8, x)


def _direct_ir(builder, a, b, s, cadd, minc, up, down):
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_D8, [_D8] * 3), "llvm.fma.v8f64")
    f = builder.call(fma, [a, b, s])
    ub = builder.bitcast(f, _Q8)
    expmask = ir.Constant(_Q8, [0x7FF0000000000000] * 8)
    sign = ir.Constant(_Q8, [-0x8000000000000000] * 8)
    c = builder.bitcast(builder.add(builder.and_(ub, expmask), _qsplat(builder, cadd)), _D8)
    mc = _splat(builder, _D8, minc)
    c = builder.select(builder.fcmp_ordered(">", c, mc), c, mc)
    r = builder.fsub(builder.fadd(f, c), c)
    r = builder.fmul(builder.fmul(r, _splat(builder, _D8, up)), _splat(builder, _D8, down))
    return builder.bitcast(builder.or_(builder.bitcast(r, _Q8), builder.and_(ub, sign)), _D8)


@intrinsic
def _direct_step(typingctx, a, b, s, cadd, minc, up, down):
    """linalg_cpu._rne(fma64(a, b, s), cadd, minc, up, down) on 8 lanes."""
    if not (a == f64x8 and b == f64x8 and s == f64x8 and cadd == types.int64
            and minc == types.float64 and up == types.float64 and down == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return _direct_ir(builder, *args)

    return f64x8(f64x8, f64x8, f64x8, types.int64, types.float64, types.float64, types.float64), codegen


def _noovf_ir(builder, a, b, s, emn, C):
    """(_direct_step_noovf's result, its e)."""
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_D8, [_D8] * 3), "llvm.fma.v8f64")
    f = builder.call(fma, [a, b, s])
    ub = builder.bitcast(f, _Q8)
    e = builder.bitcast(builder.and_(ub, ir.Constant(_Q8, [0x7FF0000000000000] * 8)), _D8)
    me = _splat(builder, _D8, emn)
    e = builder.select(builder.fcmp_ordered(">", e, me), e, me)
    cv = _splat(builder, _D8, C)
    y = builder.call(fma, [e, cv, f])
    r = builder.call(fma, [builder.fneg(e), cv, y])
    sign = ir.Constant(_Q8, [-0x8000000000000000] * 8)
    return builder.bitcast(builder.or_(builder.bitcast(r, _Q8), builder.and_(ub, sign)), _D8), e


@intrinsic
def _direct_step_noovf(typingctx, a, b, s, emn, C):
    """_direct_step without the overflow multiplies, the magic constant added and subtracted by FMAs.

    With f = fma(a, b, s) and e = max(2**E(f), 2**emin) (E(f): f's exponent; ``emn`` = 2**emin; a zero f
    gives e = 2**emin), c = e * C (C = 1.5 * 2**(52-m)) is linalg_cpu._rne's magic constant
    max(bits((f & EXPMASK) + cadd), minc) exactly, and a representable power of two times 1.5 (finite f
    below 2**(emax+1) and emax + 53 - m <= 1023: direct_no_overflow), so fma(e, C, f) = fl(f + c) and
    fma(-e, C, y) = fl(y - c): the same two roundings as (f + c) - c, with no separate product. An
    infinite f would give NaN: only where direct_no_overflow holds (then every f is finite)."""
    if not (a == f64x8 and b == f64x8 and s == f64x8 and emn == types.float64 and C == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return _noovf_ir(builder, *args)[0]

    return f64x8(f64x8, f64x8, f64x8, types.float64, types.float64), codegen


@intrinsic
def _direct_step_tracked(typingctx, a, b, s, mx, emn, C):
    """(_direct_step_noovf(a, b, s, emn, C), max(mx, e)): also the running maximum of its e = max(2**E(f),
    2**emin), which tells whether some f reached 2**emax (where an overflow could have been missed)."""
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
def d8_any_ge(typingctx, v, x):
    """True when some lane of v is >= x (ordered)."""
    if not (v == f64x8 and x == types.float64):
        return None

    def codegen(context, builder, signature, args):
        ge = builder.fcmp_ordered(">=", args[0], _splat(builder, _D8, args[1]))
        bits = builder.bitcast(ge, ir.IntType(8))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(8), 0))

    return types.boolean(f64x8, types.float64), codegen


@intrinsic
def _twosum32_step(typingctx, a, b, s, half, d, dmask):
    """The "twosum32" step on 16 float32 lanes (a*b exact in float32): TwoSum of s and t = a*b, the sum's bits
    u rounded to odd at 24 bits by the error, then (u + half + bit d of u) & dmask (half = 2**(d-1) - 1).

    TwoSum with the exact product folded into FMAs: f = fma(a, b, s) = fl(s + t) and fl(t - bb) =
    fma(a, b, -bb). The round to odd and the nearest-even rounding on the bit pattern are merged:
    r = (ub + half + L) & dmask with L = bit d of ub where e = 0 (or NaN: f infinite), else 1 if e has
    f's sign and 0 if not. Equal to linalg_cpu's (u + half + bit d of u) & dmask, u the round-to-odd
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
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F16, [_F16] * 3), "llvm.fma.v16f32")
        f = builder.call(fma, [a_, b_, s_])
        bb = builder.fsub(f, s_)
        e = builder.fadd(builder.fsub(s_, builder.fsub(f, bb)), builder.call(fma, [a_, b_, builder.fneg(bb)]))
        ub = builder.bitcast(f, _W16)
        eb = builder.bitcast(e, _W16)
        exact = builder.fcmp_unordered("==", e, ir.Constant(_F16, [0.0] * 16))  # true for a NaN e
        one = ir.Constant(_W16, [1] * 16)
        same = builder.lshr(builder.xor(builder.xor(eb, ub), ir.Constant(_W16, [-1] * 16)),
                            ir.Constant(_W16, [31] * 16))
        lsb = builder.and_(builder.lshr(ub, _splat(builder, _W16, d_)), one)
        L = builder.select(exact, lsb, same)
        r = builder.add(builder.add(ub, _splat(builder, _W16, half_)), L)
        return builder.bitcast(builder.and_(r, _splat(builder, _W16, dmask_)), _F16)

    return f32x16(f32x16, f32x16, f32x16, types.int32, types.int32, types.int32), codegen


# ----------------------------------------------------------------------------
# tiles and kernels (module-level, inlined into the cached entry points)
# ----------------------------------------------------------------------------


@njit(inline="always")
def _dstep(a, b, s, cadd, minc, up, down, ovf):
    """One "direct" step; ovf False: the no-overflow step, with (up, down) = (2**emin, 1.5 * 2**(52-m))."""
    if ovf:
        return _direct_step(a, b, s, cadd, minc, up, down)
    return _direct_step_noovf(a, b, s, up, down)


@njit(inline="always")
def _d8_store_tile(out, i, j, c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33):
    """out[i:i+4, j:j+32] = the 4 x 32 tile of a "direct" kernel (rows of four 8-lane vectors)."""
    d8_store(out, i, j, c00)
    d8_store(out, i, j + 8, c01)
    d8_store(out, i, j + 16, c02)
    d8_store(out, i, j + 24, c03)
    d8_store(out, i + 1, j, c10)
    d8_store(out, i + 1, j + 8, c11)
    d8_store(out, i + 1, j + 16, c12)
    d8_store(out, i + 1, j + 24, c13)
    d8_store(out, i + 2, j, c20)
    d8_store(out, i + 2, j + 8, c21)
    d8_store(out, i + 2, j + 16, c22)
    d8_store(out, i + 2, j + 24, c23)
    d8_store(out, i + 3, j, c30)
    d8_store(out, i + 3, j + 8, c31)
    d8_store(out, i + 3, j + 16, c32)
    d8_store(out, i + 3, j + 24, c33)


@njit(inline="always")
def _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down, ovf):
    """out[4 ib : 4 ib + 4, NB jb + j0 : NB jb + j0 + 32] from row panel ib and column panel jb."""
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = d8_zero()
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = d8_zero()
    for k in range(K):
        b0 = d8_load(Bp, jb, k, j0)
        b1 = d8_load(Bp, jb, k, j0 + 8)
        b2 = d8_load(Bp, jb, k, j0 + 16)
        b3 = d8_load(Bp, jb, k, j0 + 24)
        a = d8_splat(Ap[ib, k, 0])
        c00 = _dstep(a, b0, c00, cadd, minc, up, down, ovf)
        c01 = _dstep(a, b1, c01, cadd, minc, up, down, ovf)
        c02 = _dstep(a, b2, c02, cadd, minc, up, down, ovf)
        c03 = _dstep(a, b3, c03, cadd, minc, up, down, ovf)
        a = d8_splat(Ap[ib, k, 1])
        c10 = _dstep(a, b0, c10, cadd, minc, up, down, ovf)
        c11 = _dstep(a, b1, c11, cadd, minc, up, down, ovf)
        c12 = _dstep(a, b2, c12, cadd, minc, up, down, ovf)
        c13 = _dstep(a, b3, c13, cadd, minc, up, down, ovf)
        a = d8_splat(Ap[ib, k, 2])
        c20 = _dstep(a, b0, c20, cadd, minc, up, down, ovf)
        c21 = _dstep(a, b1, c21, cadd, minc, up, down, ovf)
        c22 = _dstep(a, b2, c22, cadd, minc, up, down, ovf)
        c23 = _dstep(a, b3, c23, cadd, minc, up, down, ovf)
        a = d8_splat(Ap[ib, k, 3])
        c30 = _dstep(a, b0, c30, cadd, minc, up, down, ovf)
        c31 = _dstep(a, b1, c31, cadd, minc, up, down, ovf)
        c32 = _dstep(a, b2, c32, cadd, minc, up, down, ovf)
        c33 = _dstep(a, b3, c33, cadd, minc, up, down, ovf)
    _d8_store_tile(out, ib * TILE_R, jb * Bp.shape[2] + j0, c00, c01, c02, c03, c10, c11, c12, c13,
                   c20, c21, c22, c23, c30, c31, c32, c33)


@njit(inline="always")
def _direct_tile_tracked(Ap, Bp, out, ib, jb, j0, K, emn, C, lim):
    """_direct_tile with the no-overflow step; returns True when some sum reached ``lim`` = 2**emax (the
    tile must then be done again with the overflow step)."""
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = d8_zero()
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = d8_zero()
    mx = d8_zero()
    for k in range(K):
        b0 = d8_load(Bp, jb, k, j0)
        b1 = d8_load(Bp, jb, k, j0 + 8)
        b2 = d8_load(Bp, jb, k, j0 + 16)
        b3 = d8_load(Bp, jb, k, j0 + 24)
        a = d8_splat(Ap[ib, k, 0])
        c00, mx = _direct_step_tracked(a, b0, c00, mx, emn, C)
        c01, mx = _direct_step_tracked(a, b1, c01, mx, emn, C)
        c02, mx = _direct_step_tracked(a, b2, c02, mx, emn, C)
        c03, mx = _direct_step_tracked(a, b3, c03, mx, emn, C)
        a = d8_splat(Ap[ib, k, 1])
        c10, mx = _direct_step_tracked(a, b0, c10, mx, emn, C)
        c11, mx = _direct_step_tracked(a, b1, c11, mx, emn, C)
        c12, mx = _direct_step_tracked(a, b2, c12, mx, emn, C)
        c13, mx = _direct_step_tracked(a, b3, c13, mx, emn, C)
        a = d8_splat(Ap[ib, k, 2])
        c20, mx = _direct_step_tracked(a, b0, c20, mx, emn, C)
        c21, mx = _direct_step_tracked(a, b1, c21, mx, emn, C)
        c22, mx = _direct_step_tracked(a, b2, c22, mx, emn, C)
        c23, mx = _direct_step_tracked(a, b3, c23, mx, emn, C)
        a = d8_splat(Ap[ib, k, 3])
        c30, mx = _direct_step_tracked(a, b0, c30, mx, emn, C)
        c31, mx = _direct_step_tracked(a, b1, c31, mx, emn, C)
        c32, mx = _direct_step_tracked(a, b2, c32, mx, emn, C)
        c33, mx = _direct_step_tracked(a, b3, c33, mx, emn, C)
    _d8_store_tile(out, ib * TILE_R, jb * Bp.shape[2] + j0, c00, c01, c02, c03, c10, c11, c12, c13,
                   c20, c21, c22, c23, c30, c31, c32, c33)
    return d8_any_ge(mx, lim)


@njit(inline="always")
def _twosum32_tile(Ap, Bp, out, ib, jb, j0, K, half, d, dmask):
    """out[4 ib : 4 ib + 4, NB jb + j0 : NB jb + j0 + 32] from row panel ib and column panel jb (float32)."""
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = f16_zero()
    for k in range(K):
        b0 = f16_load(Bp, jb, k, j0)
        b1 = f16_load(Bp, jb, k, j0 + 16)
        a = f16_splat(Ap[ib, k, 0])
        c00 = _twosum32_step(a, b0, c00, half, d, dmask)
        c01 = _twosum32_step(a, b1, c01, half, d, dmask)
        a = f16_splat(Ap[ib, k, 1])
        c10 = _twosum32_step(a, b0, c10, half, d, dmask)
        c11 = _twosum32_step(a, b1, c11, half, d, dmask)
        a = f16_splat(Ap[ib, k, 2])
        c20 = _twosum32_step(a, b0, c20, half, d, dmask)
        c21 = _twosum32_step(a, b1, c21, half, d, dmask)
        a = f16_splat(Ap[ib, k, 3])
        c30 = _twosum32_step(a, b0, c30, half, d, dmask)
        c31 = _twosum32_step(a, b1, c31, half, d, dmask)
    i = ib * TILE_R
    j = jb * Bp.shape[2] + j0
    f16_store(out, i, j, c00)
    f16_store(out, i, j + 16, c01)
    f16_store(out, i + 1, j, c10)
    f16_store(out, i + 1, j + 16, c11)
    f16_store(out, i + 2, j, c20)
    f16_store(out, i + 2, j + 16, c21)
    f16_store(out, i + 3, j, c30)
    f16_store(out, i + 3, j + 16, c31)


@njit(inline="always")
def _direct_body(Ap, Bp, out, K, cadd, minc, up, down, emn, C, lim, ovf):
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    ncol = Bp.shape[0] * nsub
    # row panels fastest: consecutive tiles of a thread reuse one K x 32 slice of Bp (from L2)
    for t in prange(nrow * ncol):
        q = t // nrow
        ib = t - q * nrow
        jb = q // nsub
        j0 = (q - jb * nsub) * TILE_W
        if ovf == 2:  # the no-overflow step, checked: a tile where a sum reached 2**emax is done again
            if _direct_tile_tracked(Ap, Bp, out, ib, jb, j0, K, emn, C, lim):
                _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down, True)
        else:
            _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down, ovf)


@njit(inline="always")
def _twosum32_body(Ap, Bp, out, K, half, d, dmask):
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    ncol = Bp.shape[0] * nsub
    for t in prange(nrow * ncol):
        q = t // nrow
        ib = t - q * nrow
        jb = q // nsub
        _twosum32_tile(Ap, Bp, out, ib, jb, (q - jb * nsub) * TILE_W, K, half, d, dmask)


def _build(digest):
    # each entry closes over the digest only (a string: the same cache key in every process; see
    # kernels/__init__.py) and has its own name, so each has its own cache file

    @njit(nogil=True, parallel=True, cache=True)
    def narrow_direct(Ap, Bp, out, K, cadd, minc, up, down):
        digest  # noqa: B018
        _direct_body(Ap, Bp, out, K, cadd, minc, up, down, 0.0, 0.0, 0.0, True)

    @njit(nogil=True, parallel=True, cache=True)
    def narrow_direct_noovf(Ap, Bp, out, K, emn, C):
        digest  # noqa: B018
        _direct_body(Ap, Bp, out, K, np.int64(0), 0.0, emn, C, 0.0, 0.0, 0.0, False)

    @njit(nogil=True, parallel=True, cache=True)
    def narrow_direct_checked(Ap, Bp, out, K, cadd, minc, up, down, emn, C, lim):
        digest  # noqa: B018
        _direct_body(Ap, Bp, out, K, cadd, minc, up, down, emn, C, lim, 2)

    @njit(nogil=True, parallel=True, cache=True)
    def narrow_twosum32(Ap, Bp, out, K, half, d, dmask):
        digest  # noqa: B018
        _twosum32_body(Ap, Bp, out, K, half, d, dmask)

    return {"direct": narrow_direct, "direct_noovf": narrow_direct_noovf, "direct_checked": narrow_direct_checked,
            "twosum32": narrow_twosum32}


#: the cached kernels: "direct" (Ap, Bp, out, K, cadd, minc, up, down) (linalg_cpu.narrow_params),
#: "direct_noovf" (Ap, Bp, out, K, 2**emin, 1.5 * 2**(52-m)), "direct_checked" (Ap, Bp, out, K, cadd, minc, up,
#: down, 2**emin, 1.5 * 2**(52-m), 2**emax), "twosum32" (Ap, Bp, out, K, 2**(d-1) - 1, d, -2**d) (int32, d = 23 - m)
kernels = _build(SOURCE_DIGEST)


def run(kind: str, Ap, Bp, out, K: int, m: int, emin: int, emax: int, no_overflow: bool = False) -> None:
    """out[:4 ceil(M/4), :NB ceil(N/NB)] = the narrow-accumulator product of the packed operands.

    ``kind``: "direct" (float64 panels) or "twosum32" (float32 panels), picked by linalg_cpu.narrow_kind;
    Ap (ceil(M/4), K, 4) and Bp (ceil(N/NB), K, NB) as linalg_cpu._pack makes them (NB a multiple of 32),
    ``out`` float64 of at least (4 Ap.shape[0], NB Bp.shape[0]), rows contiguous; (m, emin, emax) the
    accumulator's fields. ``no_overflow``: the caller has checked :func:`direct_no_overflow` ("direct"
    then runs the step without its overflow multiplies; ignored for "twosum32", whose rounding carries
    into Inf at no cost)."""
    if Ap.shape[2] != TILE_R or Bp.shape[2] % TILE_W or out.shape[0] < TILE_R * Ap.shape[0] or \
            out.shape[1] < Bp.shape[2] * Bp.shape[0] or out.strides[1] != 8:
        raise ValueError(f"run: panels {Ap.shape}, {Bp.shape} and out {out.shape} do not fit the kernels' tiles "
                         f"(row panels of {TILE_R}, column panels a multiple of {TILE_W}, out rows contiguous)")
    if kind == "direct":
        if no_overflow:
            kernels["direct_noovf"](Ap, Bp, out, np.int64(K), 2.0 ** emin, 1.5 * 2.0 ** (52 - m))
        else:
            cadd = np.int64(((52 - m) << 52) | (1 << 51))  # linalg_cpu.narrow_params
            params = (cadd, 1.5 * 2.0 ** (emin + 52 - m), 2.0 ** (1023 - emax), 2.0 ** (emax - 1023))
            if emax + 53 - m <= 1023:
                kernels["direct_checked"](Ap, Bp, out, np.int64(K), *params, 2.0 ** emin, 1.5 * 2.0 ** (52 - m),
                                          2.0 ** emax)
            else:
                kernels["direct"](Ap, Bp, out, np.int64(K), *params)
    elif kind == "twosum32":
        d = 23 - m
        kernels["twosum32"](Ap, Bp, out, np.int64(K), np.int32((1 << (d - 1)) - 1), np.int32(d), np.int32(-1 << d))
    else:
        raise ValueError(f"run: kind must be 'direct' or 'twosum32', got {kind!r}")


def direct_no_overflow(sa, sb, K: int, m: int, emin: int, emax: int) -> bool:
    """True when no step of a nearest-even accumulation of K exact products a*b into the IEEE format
    (m, emin, emax) reaches the overflow threshold, so that "direct_noovf" gives "direct"'s bits.

    ``sa``, ``sb``: the operands' ``linalg_cpu._stats`` (only ``hi``, the largest |value|, is read; the
    caller has checked that every value is finite and that "direct" applies).

    Proof. Let H = max|a| * max|b| >= |t_k| for every product, u = 2**-(m+1), d = 2**(emin-m-1) and
    T = 2**emax * (2 - 2**-(m+1)) the overflow threshold (nearest rounding gives Inf from T up, a
    finite value of at most max below it). Below T, |RNE(y)| <= |y| (1 + u) + d (relative error u for a
    normal result, absolute d for a subnormal one). With s_0 = 0 and s_k = RNE(s_{k-1} + t_k), by
    induction, while no sum reached T, |s_k| <= (S_k + k d)(1 + u)**k with S_k = |t_1| + ... + |t_k|:
    (|s_{k-1}| + |t_k|)(1 + u) + d <= (S_{k-1} + (k-1) d + |t_k|)(1 + u)**k + d (1 + u)**k. So every sum
    |s_{k-1} + t_k| <= (S_k + K d)(1 + u)**K <= K (H + d)(1 + u)**K =: B, and B < T means that no sum
    reaches T: every f of the "direct" step (the exact sum or one that rounds like it) rounds to a
    finite r with |r| <= max < 2**(emax+1), where (r * 2**(1023-emax)) * 2**(emax-1023) = r exactly (no
    float64 overflow; r is a multiple of 2**(emin-m) >= 2**-1000: no underflow). Every f is finite
    (|f| <= T) and below 2**(emax+1), so _direct_step_noovf's c = 1.5 * 2**(E(f) + 52 - m) is finite when
    emax + 53 - m <= 1023, also required. B is evaluated in float64 with a relative margin of 2**-20,
    far above its rounding errors (a few units of 2**-53 for K < 2**30).
    """
    if emax + 53 - m > 1023 or K >= 1 << 30:
        return False
    if K <= 0:
        return True
    H = float(sa.hi) * float(sb.hi)
    if not math.isfinite(H):
        return False
    d = 2.0 ** (emin - m - 1)
    log_growth = K * math.log1p(2.0 ** -(m + 1))
    if log_growth > 700.0:
        return False
    bound = K * (H + d) * math.exp(log_growth) * (1.0 + 2.0 ** -20)
    return bound < 2.0 ** emax * (2.0 - 2.0 ** -(m + 1))

"""CPU loops (``@njit(parallel=True)``) for sum, dot and matmul around kernels/accum.py.

Inputs arrive as 2-D float64 row blocks: ``a`` is (B_a * M, K), ``bt`` is
(B_b * N, K) (b transposed so that each output reads two contiguous rows),
and ``ia``/``ib`` map each output batch to its row block of ``a``/``bt``
(batch broadcasting without copies). The loop is parallel over the output
rows; every output element runs the same scalar accumulation with its own
counters, so the result does not depend on the thread count.

Below it, fast kernels for fp16/bf16-like accumulators (nearest-even or
stochastic) that give the same bits with a tile of accumulators:
``_matmul_cpu`` (the entry lowprec.linalg calls) picks one where it applies.
The fp32-accumulator tile kernel lives in linalg_fp32.py.
"""

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import SOURCE_DIGEST, accum, linalg_narrow, scalar

_loop = njit(parallel=True, cache=True, nogil=True)


def _build(digest):
    # `digest` is referenced so that numba keys its cache on the kernel sources (see __init__).

    @_loop
    def _matmul_cpu_scalar(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk,
                    pchunk, compensated, pout, key0, key1, offset, rbits):
        digest  # noqa: B018
        B = ia.size
        for r in prange(B * M):
            bi = r // M
            i = r - bi * M
            stack = np.empty(accum.PAIRWISE_STACK)
            ra = ia[bi] * M + i
            for j in range(N):
                o = r * N + j
                out[o] = accum.accumulate(a, ra, bt, ib[bi] * N + j, K, o, has_prod, pprod, fused, pacc,
                                          mode, order, chunk, pchunk, compensated, pout, key0, key1,
                                          offset, rbits, stack)

    return _matmul_cpu_scalar


_matmul_cpu_scalar = _build(SOURCE_DIGEST)


def _build_ops(digest):
    @_loop
    def _ops_cpu(x, y, z, out, op, p, mode, key0, key1, offset, rbits):
        digest  # noqa: B018
        for i in prange(out.size):
            rnd = accum.draw(mode, key0, key1, offset + i, rbits)
            out[i] = accum.apply_op(op, x[i], y[i], z[i], p, mode, rnd, rbits)

    return _ops_cpu


_ops_cpu = _build_ops(SOURCE_DIGEST)


# ----------------------------------------------------------------------------
# fast paths: a float accumulator narrower than fp32 (fp16, bf16, ...), sequential k order
# ----------------------------------------------------------------------------
# The general kernel rounds one output element at a time. These kernels keep a tile of NARROW_R rows x
# NARROW_N columns of accumulators and update a whole row of the tile per k with a loop over its columns
# that has no branches (selects only), so LLVM's loop vectoriser runs it on 4 or 8 float64 lanes. Every
# output still adds its terms in the order k = 0, 1, ..., K-1 and every addition is the exact sum rounded
# once, as in accum.accumulate; tests/test_linalg_tile.py checks the bits against that kernel and against
# an exact Fraction reference. Preconditions (checked by narrow_kind below): fused (or "unfused", below),
# exact products, sequential order, no compensation, finite inputs, an output format that holds every
# accumulator value,
# nearest-even or stochastic with 32 random bits, and an IEEE accumulator format with subnormals, Inf,
# no saturation, 0 <= emax <= 1000, emin - m >= -1000 and m <= 20 mantissa bits (_float_fields).
#
# Step, for the accumulator value s and the exact float64 product t = a*b:
#   "direct" : f = fl64(s + t) (one FMA). Exact, or harmless: when the exact sum needs more than 53 bits,
#              either t is below a quarter of the accumulator's spacing around s (p + pa + pb <= 50, pa
#              and pb bounds on the inputs' significant bits: the result is s both ways) or |s + t| >
#              2**(51 + q_min) is beyond the overflow threshold (emax - q_min <= 50, q_min the exponent
#              of the accumulator's smallest quantum: both give Inf). Used when both bounds hold (fp16).
#   "twosum" : f = round-to-odd at 53 bits of the exact s + t (TwoSum, then the last bit forced odd toward
#              the error), exactly as accum.round_sum does; then rounded once (Boldo-Melquiond).
#   "twosum32": the same in float32 lanes (16 per AVX-512 vector) for accumulators with float32's exponent
#              range (bf16), when float32 holds every input value and every product exactly
#              (_float32_exact): round-to-odd at 24 bits >= p + 2, then nearest-even on the float32 bit
#              pattern, which covers the format's subnormals (float32's own) and carries into Inf above
#              max. A float32 sum that overflows is beyond bf16's overflow threshold too: Inf either way.
#   "unfused": fused=False (nearest-even): the exact float64 product (checked: pa + pb <= 53, no under- or
#              overflow) rounded to the accumulator by _rne, then the sum as in "twosum", or the plain
#              float64 sum when it is exact: two values of the format sum to a multiple of 2**(emin - m)
#              below 2**(emax + 2), which fits in 53 bits when emax - (emin - m) <= 51 (fp16: 39).
# Rounding f to nearest-even: the magic-constant addition (f + C) - C with C = 1.5 * 2**(e + 52 - m)
# (e = f's exponent, at least emin), whose ulp is the target quantum, so the float64 addition itself
# rounds f once to the accumulator's grid with ties to even (subnormals included); multiplying by
# 2**(1023 - emax) and back turns every result above the format's max into Inf (the next value up,
# 2**(emax+1), overflows float64) and leaves the others exact; the sign is or-ed back for -0.
# Stochastic ("sr", 32 random bits): the round-to-odd value is rounded by the rule of
# scalar.round_float_carrier (round up iff R < the 32 bits below the kept ones), written for vectors
# (_round_sr), with R = scalar.random_bits of the counter accum.counter_of gives.
# The "direct" and "twosum32" kernels are register-tiled, in linalg_narrow.py (same steps, fewer instructions).
# The dispatcher _matmul_cpu (what lowprec.linalg calls) picks a fast kernel where one applies
# (narrow_kind) and runs the general kernel _matmul_cpu_scalar otherwise; CUDA always runs the general
# per-element code, so CPU == CUDA holds through tests/test_linalg_tile.py's fast == general checks.
NARROW_R = 4
NARROW_N = 64
_EXPMASK = np.int64(0x7FF0000000000000)
_SIGN = np.int64(-0x8000000000000000)
_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_INFBITS = np.int64(0x7FF0000000000000)

_step = njit(nogil=True, inline="always", error_model="numpy")


@intrinsic
def fma64(typingctx, a, b, c):
    """llvm.fma.f64: a*b + c rounded once."""
    if not (a == types.float64 and b == types.float64 and c == types.float64):
        return None
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


def narrow_params(m: int, emin: int, emax: int) -> tuple:
    """(cadd, minc, up, down) of the nearest-even kernels for an IEEE accumulator (m, emin, emax)."""
    cadd = np.int64(((52 - m) << 52) | (1 << 51))
    minc = 1.5 * 2.0 ** (emin + 52 - m)
    up, down = 2.0 ** (1023 - emax), 2.0 ** (emax - 1023)
    return cadd, minc, up, down


def sr_params(m: int, emin: int, emax: int) -> tuple:
    """(emz, scale, unscale, maxs, dsh, dmask) of the stochastic kernel (see _round_sr)."""
    S = -1022 - emin
    D = 52 - m
    maxs = np.float64((2.0 - 2.0 ** -m) * 2.0 ** (emax + S)).view(np.int64)
    return (np.int64(emin + 1023), 2.0 ** S, 2.0 ** -S, maxs, np.int64(D - 32), np.int64(-1 << D))


@_step
def _rne(f, cadd, minc, up, down):
    """f rounded to nearest-even on the accumulator's grid (f exact, harmless or rounded to odd)."""
    ub = scalar.f64_as_i64(f)
    c = scalar.i64_as_f64((ub & _EXPMASK) + cadd)  # 1.5 * 2**(e + 52 - m); garbage (negative) for Inf
    c = c if c > minc else minc
    r = (f + c) - c
    r = (r * up) * down  # above max -> Inf
    return scalar.i64_as_f64(scalar.f64_as_i64(r) | (ub & _SIGN))


@_step
def _to_odd(s, t):
    """Bits of the exact s + t rounded to odd at 53 bits (TwoSum; finite s + t, else s + t's bits)."""
    f = s + t
    bb = f - s
    e = (s - (f - bb)) + (t - bb)
    ub = scalar.f64_as_i64(f)
    eb = scalar.f64_as_i64(e)
    inexact = (e < 0.0) | (e > 0.0)  # false for the NaN error of an infinite sum
    adj = ((eb ^ ub) >> 63) | 1  # +1: the exact sum is farther from zero than f, -1: nearer
    return ub + adj if inexact & ((ub & 1) == 0) else ub


@_step
def _round_sr(u, rnd, emz, scale, unscale, maxs, dsh, dmask):
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


@_step
def _sr32(s, t, rnd, eqlo, cinv, m, fmax):
    """s + t (float32 accumulator value and exact float32 product) rounded stochastically to the
    accumulator's grid with the 32 random bits ``rnd``, in float32 lanes ("sr32", see narrow_kind).

    The rule of scalar.round_float_carrier: with q the quantum at x = s + t and g = q / 2**32, the result
    is kept*q or (kept+1)*q, the second iff rnd < W, where kept*2**32 + W = floor(|x| / g). TwoSum gives
    x = f + e exactly; e' = e * sign(f). The binade of |x| is that of |f|, one lower when |f| is a power
    of two and e' < 0: its exponent is read from f's bit pattern minus one (pfa), and q = 2**(Eq - m)
    with Eq = max(E(|x|), eqlo) (eqlo: the format's emin, raised to the data's smallest possible
    exponent). Then |f| / q = kq + frac exactly (kq = floor), wf = frac * 2**32 is an integer (f has no
    bits below g: checked by narrow_kind), ce = floor(e' / g) (|e'| <= ulp(f) / 2, so |ce| < 2**(m+9)),
    and floor(|x| / g) = kq * 2**32 + wf + ce: W = wf + ce modulo 2**32, with a borrow from kq when
    wf + ce < 0. Every product by a power of two is exact (narrow_kind bounds the exponents). A result
    above the format's max is Inf; an infinite accumulator stays as it is."""
    f = s + t
    bb = f - s
    e = (s - (f - bb)) + (t - bb)
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


def _build_narrow(digest):
    # One kernel per step kind; format constants are runtime arguments (a new format does not recompile).

    @_loop
    def _narrow_twosum(Ap, Bp, out, K, cadd, minc, up, down):
        digest  # noqa: B018
        nrow = Ap.shape[0]
        ncb = Bp.shape[0]
        for t in prange(nrow * ncb):
            jb = t // nrow
            ib = t - jb * nrow
            acc = np.zeros((NARROW_R, NARROW_N))
            for k in range(K):
                for r in range(NARROW_R):
                    a = Ap[ib, k, r]
                    for j in range(NARROW_N):
                        u = _to_odd(acc[r, j], a * Bp[jb, k, j])
                        acc[r, j] = _rne(scalar.i64_as_f64(u), cadd, minc, up, down)
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = acc[r, j]

    @_loop
    def _narrow_unfused(Ap, Bp, out, K, cadd, minc, up, down, exact_sums):
        # unfused: the exact float64 product rounded to the accumulator first (accum.term), then the sum as
        # in "twosum", or as a plain float64 sum when the sum of two accumulator values is always exact
        # (exact_sums, see above); a NaN (Inf - Inf) leaves as the
        # canonical NaN, as the general kernel's does
        digest  # noqa: B018
        nrow = Ap.shape[0]
        ncb = Bp.shape[0]
        for t in prange(nrow * ncb):
            jb = t // nrow
            ib = t - jb * nrow
            acc = np.zeros((NARROW_R, NARROW_N))
            for k in range(K):
                for r in range(NARROW_R):
                    a = Ap[ib, k, r]
                    if exact_sums:
                        for j in range(NARROW_N):
                            tr = _rne(a * Bp[jb, k, j], cadd, minc, up, down)
                            acc[r, j] = _rne(acc[r, j] + tr, cadd, minc, up, down)
                    else:
                        for j in range(NARROW_N):
                            tr = _rne(a * Bp[jb, k, j], cadd, minc, up, down)
                            u = _to_odd(acc[r, j], tr)
                            acc[r, j] = _rne(scalar.i64_as_f64(u), cadd, minc, up, down)
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    v = acc[r, j]
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = v if v == v else np.nan

    @_loop
    def _narrow_sr(Ap, Bp, out, K, N, emz, scale, unscale, maxs, dsh, dmask, key0, key1, offset, obase):
        # counter of (output o, term k): offset + (o*K + k)*NSLOT + SLOT_ADD, o = obase + i*N + j
        digest  # noqa: B018
        nrow = Ap.shape[0]
        ncb = Bp.shape[0]
        step = np.int64(K) * accum.NSLOT  # counter distance between neighbouring columns
        for t in prange(nrow * ncb):
            jb = t // nrow
            ib = t - jb * nrow
            acc = np.zeros((NARROW_R, NARROW_N))
            o0 = obase + ib * NARROW_R * N + jb * NARROW_N
            first = accum.counter_of(offset, o0, K, 0, 0)
            last = accum.counter_of(offset, o0 + (NARROW_R - 1) * N + NARROW_N - 1, K, K - 1, accum.NSLOT - 1)
            if (first >> 32) == (last >> 32):
                # the whole tile's counters share their high 32 bits: written as (hi << 32) | lo32 so that
                # LLVM sees that half of the hash is loop-invariant (same counter values, same bits)
                hi = (first >> 32) << 32
                for k in range(K):
                    for r in range(NARROW_R):
                        a = Ap[ib, k, r]
                        lo = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD) - hi
                        for j in range(NARROW_N):
                            u = _to_odd(acc[r, j], a * Bp[jb, k, j])
                            rnd = scalar.random_bits(key0, key1, hi | np.int64(np.uint32(lo)), 32)
                            acc[r, j] = _round_sr(u, rnd, emz, scale, unscale, maxs, dsh, dmask)
                            lo += step
            else:
                for k in range(K):
                    for r in range(NARROW_R):
                        a = Ap[ib, k, r]
                        c = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD)
                        for j in range(NARROW_N):
                            u = _to_odd(acc[r, j], a * Bp[jb, k, j])
                            rnd = scalar.random_bits(key0, key1, c, 32)
                            acc[r, j] = _round_sr(u, rnd, emz, scale, unscale, maxs, dsh, dmask)
                            c += step
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = acc[r, j]

    @_loop
    def _narrow_sr32(Ap, Bp, out, K, N, eqlo, cinv, m, fmax, key0, key1, offset, obase):
        # "sr" in float32 lanes (_sr32); counters as in _narrow_sr
        digest  # noqa: B018
        nrow = Ap.shape[0]
        ncb = Bp.shape[0]
        step = np.int64(K) * accum.NSLOT
        for t in prange(nrow * ncb):
            jb = t // nrow
            ib = t - jb * nrow
            acc = np.zeros((NARROW_R, NARROW_N), dtype=np.float32)
            o0 = obase + ib * NARROW_R * N + jb * NARROW_N
            first = accum.counter_of(offset, o0, K, 0, 0)
            last = accum.counter_of(offset, o0 + (NARROW_R - 1) * N + NARROW_N - 1, K, K - 1, accum.NSLOT - 1)
            if (first >> 32) == (last >> 32):
                hi = (first >> 32) << 32
                for k in range(K):
                    for r in range(NARROW_R):
                        a = Ap[ib, k, r]
                        lo = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD) - hi
                        for j in range(NARROW_N):
                            rnd = scalar.random_bits(key0, key1, hi | np.int64(np.uint32(lo)), 32)
                            acc[r, j] = _sr32(acc[r, j], a * Bp[jb, k, j], rnd, eqlo, cinv, m, fmax)
                            lo += step
            else:
                for k in range(K):
                    for r in range(NARROW_R):
                        a = Ap[ib, k, r]
                        c = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD)
                        for j in range(NARROW_N):
                            rnd = scalar.random_bits(key0, key1, c, 32)
                            acc[r, j] = _sr32(acc[r, j], a * Bp[jb, k, j], rnd, eqlo, cinv, m, fmax)
                            c += step
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = acc[r, j]

    return {"twosum": _narrow_twosum, "sr": _narrow_sr,
            "sr32": _narrow_sr32, "unfused": _narrow_unfused}


_narrow_kernels = _build_narrow(SOURCE_DIGEST)


def _build_pack(digest):
    @_loop
    def _pack_rows(x, P):
        """P[p, k, r] = x[p*R + r, k] (zero past x's last row): x (n, K) rows into panels P (ceil(n/R), K, R)."""
        digest  # noqa: B018
        n, K = x.shape
        R = P.shape[2]
        for p in prange(P.shape[0]):
            for k0 in range(0, K, 16):  # blocks of k: the reads of R rows and the writes stay in cache
                k1 = min(k0 + 16, K)
                for r in range(R):
                    row = p * R + r
                    if row < n:
                        for k in range(k0, k1):
                            P[p, k, r] = x[row, k]
                    else:
                        for k in range(k0, k1):
                            P[p, k, r] = 0.0

    @_loop
    def _pack_cols(b, P):
        """P[p, k, c] = b[k, p*NB + c] (zero past b's last column): the columns of a C-contiguous b (K, n) into
        panels P (ceil(n/NB), K, NB), row pieces copied as they lie."""
        digest  # noqa: B018
        K, n = b.shape
        NB = P.shape[2]
        for p in prange(P.shape[0]):
            j0 = p * NB
            w = min(NB, n - j0)
            for k in range(K):
                for c in range(w):
                    P[p, k, c] = b[k, j0 + c]
                for c in range(w, NB):
                    P[p, k, c] = 0.0

    return _pack_rows, _pack_cols


_pack_rows, _pack_cols = _build_pack(SOURCE_DIGEST)


def _pack(a, bt, dtype=np.float64):
    """a (M, K) and bt (N, K) float64 rows into row panels (M/R, K, R) and column panels (N/NB, K, NB) of b = bt.T,
    zero-padded, in ``dtype``. A ``bt`` that is the transposed view of a C-contiguous b (what lowprec.linalg passes
    for a 2-D b) is packed from b's rows directly, without a transposed copy."""
    M, K = a.shape
    N = bt.shape[0]
    Ap = np.empty((-(-M // NARROW_R), K, NARROW_R), dtype=dtype)
    Bp = np.empty((-(-N // NARROW_N), K, NARROW_N), dtype=dtype)
    _pack_rows(np.ascontiguousarray(a), Ap)
    if not bt.flags.c_contiguous and bt.T.flags.c_contiguous:
        _pack_cols(bt.T, Bp)
    else:
        _pack_rows(np.ascontiguousarray(bt), Bp)
    return Ap, Bp


def _matmul_narrow(a, b, kind, m, emin, emax, key0=0, key1=0, offset=0, obase=0, elo=None):
    """C = A @ B for 2-D float64 A (M, K), B (K, N) with a narrow accumulator (m, emin, emax) (see above).

    ``kind``: "direct", "twosum", "twosum32" (nearest-even), "sr" or "sr32" (stochastic, 32 random bits); obase
    is the flat index of C[0, 0] in the whole output (it keys the random counters); ``elo``: for "sr32", the
    lowest exponent of its quantum computation (sr32_exponent_floor; None: from a and b); for "direct", whether
    linalg_narrow.direct_no_overflow holds (None: from a and b). "direct" and "twosum32" run the register-tiled
    kernels of linalg_narrow.py (same bits as this module's, tests/test_linalg_narrow.py). Returns float64 (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    Ap, Bp = _pack(a, b.T, np.float32 if kind in ("twosum32", "sr32") else np.float64)
    out = np.empty((Ap.shape[0] * NARROW_R, Bp.shape[0] * NARROW_N))
    cadd, minc, up, down = narrow_params(m, emin, emax)
    if kind == "sr32":
        if elo is None:
            elo = sr32_exponent_floor(a, b.T, m, emin, emax)
        if elo is None:
            raise ValueError("the sr32 kernel's preconditions do not hold for these operands")
        _narrow_kernels["sr32"](Ap, Bp, out, np.int64(K), np.int64(N), np.int32(elo + 127), np.int32(m + 254),
                                np.int32(m), np.float32((2.0 - 2.0 ** -m) * 2.0 ** emax), np.uint32(key0),
                                np.uint32(key1), np.int64(offset), np.int64(obase))
    elif kind == "twosum32":
        linalg_narrow.run(kind, Ap, Bp, out, K, m, emin, emax)
    elif kind == "direct":
        if elo is None:  # (the proof that no sum overflows: see linalg_narrow.direct_no_overflow)
            elo = linalg_narrow.direct_no_overflow(_stats(a), _stats(b.T), K, m, emin, emax)
        linalg_narrow.run(kind, Ap, Bp, out, K, m, emin, emax, no_overflow=bool(elo))
    elif kind == "sr":
        _narrow_kernels["sr"](Ap, Bp, out, np.int64(K), np.int64(N), *sr_params(m, emin, emax),
                              np.uint32(key0), np.uint32(key1), np.int64(offset), np.int64(obase))
    elif kind == "unfused":
        _narrow_kernels[kind](Ap, Bp, out, np.int64(K), cadd, minc, up, down, emax - (emin - m) <= 51)
    else:
        _narrow_kernels[kind](Ap, Bp, out, np.int64(K), cadd, minc, up, down)
    return out[:M, :N]


_FLT_MAX = float(np.finfo(np.float32).max)
_NARROW_MIN_WORK = 1 << 15  # multiply-adds below which the general kernel is as fast
_NARROW_MIN_N = NARROW_N // 4  # narrower outputs would mostly compute padding


def _float_fields(p):
    """(m, emin, emax) of a float format's kernel tuple that the fast kernels support, else None."""
    kind, m, emin, bias, tmax, nan_code, subn, sat, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE or subn != 1 or sat != 0:
        return None
    emax = (tmax >> m) - bias
    if m > 20 or not 0 <= emax <= 1000 or emin - m < -1000:
        return None
    return m, emin, emax


def _holds(p, m, emin, emax) -> bool:
    """True when format p (a kernel tuple) holds every value of the IEEE format (m, emin, emax), Inf included."""
    kind, pm, pemin, bias, tmax, nan_code, subn, _, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE:
        return False
    smallest = pemin - pm if subn == 1 else pemin
    return pm >= m and (tmax >> pm) - bias >= emax and smallest <= emin - m and (subn == 1 or pemin <= emin - m)


@intrinsic
def _cttz64(typingctx, x):
    """The number of trailing zero bits of a non-zero int64."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.int64(types.int64), codegen


@njit(cache=True, nogil=True)
def _stats_pass(x, digest):
    """One pass over float64 x: (all finite, OR of the mantissa fields, smallest non-zero |x| (inf if none),
    largest |x|, smallest exponent of a non-zero value's lowest set bit (2000 if none)); only the first is
    meaningful for the others when some value is not finite."""
    digest  # noqa: B018
    finite = True
    low_or = np.int64(0)
    lo, hi = np.inf, 0.0
    lowexp = np.int64(2000)
    for v in x.ravel():
        u = scalar.f64_as_i64(v)
        a = u & _ABS
        if a >= _INFBITS:
            finite = False
            continue
        low_or |= u & np.int64((1 << 52) - 1)
        if a != 0:
            av = scalar.i64_as_f64(a)
            lo = min(lo, av)
            hi = max(hi, av)
            e = a >> 52
            sig = (a & np.int64((1 << 52) - 1)) | (np.int64(1 << 52) if e > 0 else np.int64(0))
            lowexp = min(lowexp, max(e, np.int64(1)) - 1075 + _cttz64(sig))
    return finite, low_or, lo, hi, lowexp


class _Stats(NamedTuple):
    finite: bool
    bits: int  # an upper bound on the significant bits of every value
    lo: float  # smallest non-zero |x|, inf if none
    hi: float  # largest |x|
    lowexp: int  # exponent of the lowest set bit over the non-zero values


def _stats(x) -> _Stats:
    if x.dtype == np.float64 and not x.flags.c_contiguous and x.T.flags.c_contiguous:
        x = x.T  # the same values (the statistics do not depend on the order): no transposed copy
    finite, low, lo, hi, lowexp = _stats_pass(np.ascontiguousarray(x, dtype=np.float64), SOURCE_DIGEST)
    low = int(low)
    bits = 1 if low == 0 else 53 - ((low & -low).bit_length() - 1)
    return _Stats(bool(finite), bits, float(lo), float(hi), int(lowexp))


def _lowest_bit_exponent(x) -> int:
    """The exponent of the lowest set bit over the non-zero finite float64 values in x (at least one)."""
    return _stats(x).lowexp


def narrow_kind(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                rbits):
    """"direct", "twosum", "twosum32", "sr" or "sr32" when a fast narrow-accumulator kernel gives this
    accumulation's bits (see the comment above NARROW_R), else None."""
    return _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits)[0]


def _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits):
    """(narrow_kind, the sr32 kernel's exponent floor or None; for "direct": whether no sum can overflow)."""
    if (has_prod or order != accum.SEQUENTIAL or compensated
            or ia.size * M * N * K < _NARROW_MIN_WORK or N < _NARROW_MIN_N):
        return None, None
    acc = _float_fields(pacc)
    if acc is None:
        return None, None
    m, emin, emax = acc
    if mode == scalar.STOCHASTIC:
        if rbits != 32:
            return None, None
    elif mode != scalar.NEAREST_EVEN:
        return None, None
    if tuple(pout) != tuple(pacc) and not _holds(pout, m, emin, emax):
        return None, None  # the final rounding must change nothing
    sa, sb = _stats(a), _stats(bt)
    if not (sa.finite and sb.finite):
        return None, None  # NaN/Inf inputs: the general kernel
    if not fused:  # nearest-even only; the float64 product must be exact
        ok = (mode == scalar.NEAREST_EVEN and sa.bits + sb.bits <= 53 and sa.hi * sb.hi < 2.0 ** 1000
              and (sa.lo == np.inf or sb.lo == np.inf or sa.lowexp + sb.lowexp >= -1074))
        return ("unfused", None) if ok else (None, None)
    if mode == scalar.STOCHASTIC:
        elo = _sr32_floor(sa, sb, int(K), m, emin, emax)
        return ("sr", None) if elo is None else ("sr32", elo)
    if m + 1 + sa.bits + sb.bits <= 50 and emax - (emin - m) <= 50:
        return "direct", linalg_narrow.direct_no_overflow(sa, sb, int(K), m, emin, emax)
    if emin == -126 and emax == 127 and _f32_exact(sa, sb):
        return "twosum32", None  # bf16 and the like: float32 holds the values, the products and exact TwoSums
    return "twosum", None


def sr32_exponent_floor(a, bt, m, emin, emax):
    """The exponent floor ``elo`` of the "sr32" kernel (_sr32) for these finite operands (a (M, K), bt (N, K)),
    or None when it does not apply (see _sr32_floor)."""
    return _sr32_floor(_stats(a), _stats(bt), a.shape[1], m, emin, emax)


def _sr32_floor(sa, sb, K, m, emin, emax):
    """sr32_exponent_floor from the operands' _stats.

    sr32 applies when float32 holds every value and product exactly (_f32_exact), no float32 sum of an
    accumulator value and a product overflows, and every power of two that _sr32 forms is a normal float32
    and every product by one keeps what it must, over the exponents its quantum can take: from
    elo = max(emin, g) to ehi. Here 2**g = the lowest set bit of the product of a's and b's lowest set bits,
    which divides every product, so every accumulator value, sum and TwoSum error is a multiple of 2**g (an
    SR result of a multiple of 2**g is one too) and a non-zero |x| >= 2**g; and 2**ehi > every |s + t|,
    from the growth bound |s_k| <= K (max|t| + 2**(emin-m)) (1 + 2**-m)**K (each stochastic rounding adds at
    most one quantum), or the format's max where that is smaller. Also f must have no bits below the window
    (g >= emin - m - 32) and e' / g must not vanish (g + 32 + m - ehi >= -149), so that floor(e' / g) is right."""
    if m > 22 or emin - m < -149 or emax > 127 or not _f32_exact(sa, sb):
        return None
    hi_t = sa.hi * sb.hi
    fmax = (2.0 - 2.0 ** -m) * 2.0 ** emax
    growth = K * (hi_t + 2.0 ** (emin - m)) * math.exp(min(K * math.log1p(2.0 ** -m), 700.0))
    top = min(fmax, growth) + hi_t  # > every |s + t|
    if top > _FLT_MAX * (1.0 - 2.0 ** -30):
        return None
    if sa.lo == np.inf or sb.lo == np.inf:
        return emin  # no non-zero product: every sum is zero
    g = sa.lowexp + sb.lowexp  # lowbit(a*b) = lowbit(a) * lowbit(b)
    elo = max(emin, g)
    ehi = max(math.frexp(top)[1], elo)
    ok = (elo - m >= -126 and m - ehi >= -126 and 32 + m - elo <= 127 and 32 + m - ehi >= -126
          and g + 32 + m - ehi >= -149 and g >= emin - m - 32)
    return elo if ok else None


def _float32_exact(a, bt) -> bool:
    """True when every value of a and bt and every product a*b is exactly a float32 (finite values)."""
    return _f32_exact(_stats(a), _stats(bt))


def _f32_exact(sa, sb) -> bool:
    """_float32_exact from the operands' _stats."""
    if sa.bits + sb.bits > 24 or sa.hi * sb.hi > _FLT_MAX or max(sa.hi, sb.hi) > _FLT_MAX:
        return False
    if sa.lo == np.inf or sb.lo == np.inf:
        return True  # no non-zero value in one operand: every product is zero
    # every value is a multiple of its lowest set bit, every product of lowbit(a) * lowbit(b)
    return min(sa.lowexp, sb.lowexp) >= -149 and sa.lowexp + sb.lowexp >= -149


def _matmul_cpu(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                compensated, pout, key0, key1, offset, rbits):
    """The CPU matmul (arguments as _matmul_cpu_scalar): a fast narrow-accumulator kernel where one gives
    the same bits, else the general per-element kernel."""
    kind, elo = _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout,
                             rbits)
    if kind is None:
        _matmul_cpu_scalar(np.ascontiguousarray(a), np.ascontiguousarray(bt), ia, ib, out, M, N, K, has_prod,
                           pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout, key0, key1, offset,
                           rbits)
        return
    M, N, K = int(M), int(N), int(K)
    fields = _float_fields(pacc)
    res = out.reshape(-1, M, N)
    for bi in range(ia.size):
        ra, rb = int(ia[bi]) * M, int(ib[bi]) * N
        res[bi] = _matmul_narrow(a[ra:ra + M], bt[rb:rb + N].T, kind, *fields, key0, key1, offset, bi * M * N, elo)

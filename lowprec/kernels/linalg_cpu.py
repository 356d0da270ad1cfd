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

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import SOURCE_DIGEST, accum, scalar

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
# an exact Fraction reference. Preconditions (checked by narrow_kind below): fused, exact products,
# sequential order, no compensation, finite inputs, an output format that holds every accumulator value,
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
# Rounding f to nearest-even: the magic-constant addition (f + C) - C with C = 1.5 * 2**(e + 52 - m)
# (e = f's exponent, at least emin), whose ulp is the target quantum, so the float64 addition itself
# rounds f once to the accumulator's grid with ties to even (subnormals included); multiplying by
# 2**(1023 - emax) and back turns every result above the format's max into Inf (the next value up,
# 2**(emax+1), overflows float64) and leaves the others exact; the sign is or-ed back for -0.
# Stochastic ("sr", 32 random bits): the round-to-odd value is rounded by the rule of
# scalar.round_float_carrier (round up iff R < the 32 bits below the kept ones), written for vectors
# (_round_sr), with R = scalar.random_bits of the counter accum.counter_of gives.
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


@_step
def _twosum32_rne(s, t, half, dbit, dmask):
    """bf16-like accumulators in float32 lanes: TwoSum (exact: no float32 overflow, see narrow_kind),
    round to odd at 24 bits, then nearest-even to d = 23 - m bits with the float32 bit pattern
    ``(u + 2**(d-1) - 1 + lsb) & -2**d``, which is the rounding for normal and (format subnormals being
    float32 subnormals) subnormal values alike, and carries into the Inf pattern above max."""
    f = s + t
    bb = f - s
    e = (s - (f - bb)) + (t - bb)
    ub = scalar.f32_as_i32(f)
    eb = scalar.f32_as_i32(e)
    inexact = (e < np.float32(0.0)) | (e > np.float32(0.0))  # false for the NaN error of an infinite sum
    # int32 throughout (numba would widen to int64 and halve the vector width)
    adj = np.int32(np.int32(np.int32(eb ^ ub) >> np.int32(31)) | np.int32(1))
    u = np.int32(ub + adj) if inexact & (np.int32(ub & np.int32(1)) == np.int32(0)) else ub
    lsb = np.int32(np.int32(u & dbit) != np.int32(0))  # dbit = 2**d: the last kept bit
    return scalar.i32_as_f32(np.int32(np.int32(np.int32(u + half) + lsb) & dmask))


def _build_narrow(digest):
    # One kernel per step kind; format constants are runtime arguments (a new format does not recompile).

    @_loop
    def _narrow_direct(Ap, Bp, out, K, cadd, minc, up, down):
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
                        acc[r, j] = _rne(fma64(a, Bp[jb, k, j], acc[r, j]), cadd, minc, up, down)
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = acc[r, j]

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
    def _narrow_twosum32(Ap, Bp, out, K, half, dbit, dmask):
        digest  # noqa: B018
        nrow = Ap.shape[0]
        ncb = Bp.shape[0]
        for t in prange(nrow * ncb):
            jb = t // nrow
            ib = t - jb * nrow
            acc = np.zeros((NARROW_R, NARROW_N), dtype=np.float32)
            for k in range(K):
                for r in range(NARROW_R):
                    a = Ap[ib, k, r]
                    for j in range(NARROW_N):
                        acc[r, j] = _twosum32_rne(acc[r, j], a * Bp[jb, k, j], half, dbit, dmask)
            for r in range(NARROW_R):
                for j in range(NARROW_N):
                    out[ib * NARROW_R + r, jb * NARROW_N + j] = acc[r, j]

    return {"direct": _narrow_direct, "twosum": _narrow_twosum, "sr": _narrow_sr, "twosum32": _narrow_twosum32}


_narrow_kernels = _build_narrow(SOURCE_DIGEST)


def _pack(a, b, dtype=np.float64):
    """a (M, K) and b (K, N) float64 into row panels (M/R, K, R) and column panels (N/NB, K, NB), zero-padded."""
    M, K = a.shape
    N = b.shape[1]
    Mp = -(-M // NARROW_R) * NARROW_R
    npanel = -(-N // NARROW_N)
    apad = np.zeros((Mp, K), dtype=dtype)
    apad[:M] = a
    Ap = np.ascontiguousarray(apad.reshape(Mp // NARROW_R, NARROW_R, K).transpose(0, 2, 1))
    bpad = np.zeros((K, npanel * NARROW_N), dtype=dtype)
    bpad[:, :N] = b
    Bp = np.ascontiguousarray(bpad.reshape(K, npanel, NARROW_N).transpose(1, 0, 2))
    return Ap, Bp


def _matmul_narrow(a, b, kind, m, emin, emax, key0=0, key1=0, offset=0, obase=0):
    """C = A @ B for 2-D float64 A (M, K), B (K, N) with a narrow accumulator (m, emin, emax) (see above).

    ``kind``: "direct", "twosum", "twosum32" (nearest-even) or "sr" (stochastic, 32 random bits); obase is the flat
    index of C[0, 0] in the whole output (it keys the random counters). Returns float64 (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    Ap, Bp = _pack(a, b, np.float32 if kind == "twosum32" else np.float64)
    out = np.empty((Ap.shape[0] * NARROW_R, Bp.shape[0] * NARROW_N))
    cadd, minc, up, down = narrow_params(m, emin, emax)
    if kind == "twosum32":
        d = 23 - m
        _narrow_kernels[kind](Ap, Bp, out, np.int64(K), np.int32((1 << (d - 1)) - 1), np.int32(1 << d),
                              np.int32(-1 << d))
    elif kind == "sr":
        _narrow_kernels["sr"](Ap, Bp, out, np.int64(K), np.int64(N), *sr_params(m, emin, emax),
                              np.uint32(key0), np.uint32(key1), np.int64(offset), np.int64(obase))
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


def _significant_bits(x) -> int:
    """An upper bound on the significant bits of the float64 values in x (finite values)."""
    low = np.bitwise_or.reduce((x.view(np.int64) & ((1 << 52) - 1)).ravel())
    if low == 0:
        return 1
    return 53 - ((int(low) & -int(low)).bit_length() - 1)


def narrow_kind(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                rbits):
    """"direct", "twosum" or "sr" when a fast narrow-accumulator kernel gives this accumulation's bits
    (see the comment above NARROW_R), else None."""
    if (has_prod or not fused or order != accum.SEQUENTIAL or compensated
            or ia.size * M * N * K < _NARROW_MIN_WORK or N < _NARROW_MIN_N):
        return None
    acc = _float_fields(pacc)
    if acc is None:
        return None
    m, emin, emax = acc
    if mode == scalar.STOCHASTIC:
        if rbits != 32:
            return None
    elif mode != scalar.NEAREST_EVEN:
        return None
    if tuple(pout) != tuple(pacc) and not _holds(pout, m, emin, emax):
        return None  # the final rounding must change nothing
    if not (np.isfinite(a).all() and np.isfinite(bt).all()):
        return None  # NaN/Inf inputs: the general kernel
    if mode == scalar.STOCHASTIC:
        return "sr"
    pa, pb = _significant_bits(a), _significant_bits(bt)
    if m + 1 + pa + pb <= 50 and emax - (emin - m) <= 50:
        return "direct"
    if emin == -126 and emax == 127 and pa + pb <= 24 and _float32_exact(a, bt, pa, pb):
        return "twosum32"  # bf16 and the like: float32 holds the values, the products and exact TwoSums
    return "twosum"


def _float32_exact(a, bt, pa, pb) -> bool:
    """True when every value of a and bt and every product a*b is exactly a float32 (pa, pb: bits)."""
    lo, hi = [], []
    for x in (a, bt):
        m = np.abs(x)
        nz = m[m > 0]
        lo.append(float(nz.min()) if nz.size else np.inf)
        hi.append(float(m.max(initial=0.0)))
    tiny = 2.0 ** -149
    if hi[0] * hi[1] > _FLT_MAX or max(hi) > _FLT_MAX:
        return False
    if lo[0] * 2.0 ** (1 - pa) < tiny or lo[1] * 2.0 ** (1 - pb) < tiny:
        return False  # a value that float32 would round
    # the lowest set bit of a product is >= |a| 2**(1-pa) * |b| 2**(1-pb)
    return bool(lo[0] == np.inf or lo[1] == np.inf or lo[0] * 2.0 ** (1 - pa) * lo[1] * 2.0 ** (1 - pb) >= tiny)


def _matmul_cpu(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                compensated, pout, key0, key1, offset, rbits):
    """The CPU matmul (arguments as _matmul_cpu_scalar): a fast narrow-accumulator kernel where one gives
    the same bits, else the general per-element kernel."""
    kind = narrow_kind(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated,
                       pout, rbits)
    if kind is None:
        _matmul_cpu_scalar(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                           compensated, pout, key0, key1, offset, rbits)
        return
    M, N, K = int(M), int(N), int(K)
    res = out.reshape(-1, M, N)
    for bi in range(ia.size):
        ra, rb = int(ia[bi]) * M, int(ib[bi]) * N
        res[bi] = _matmul_narrow(a[ra:ra + M], bt[rb:rb + N].T, kind, *_float_fields(pacc), key0, key1, offset,
                                 bi * M * N)

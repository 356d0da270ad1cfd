"""Narrow-accumulator matmul kernels on 4 x 64 tiles: "twosum", "unfused", "sr" and "sr32".

A float accumulator narrower than fp32 (fp16, bf16, ...), sequential k order: each kernel keeps a
tile of NARROW_R rows x NARROW_N columns of accumulators per pair of panels (kernels/operands.py:
``Ap`` (ceil(M/4), K, 4), ``Bp`` (ceil(N/64), K, 64)) and writes the padded output (ceil(M/4)*4,
ceil(N/64)*64) float64. The steps, the preconditions under which each kernel gives the bits of the
general kernel (accum.accumulate) and why: docs/kernels.md. The register-tiled "direct" and
"twosum32" kernels are in linalg_narrow.py; which kernel runs is kernels/dispatch.py's choice.

The format constants are runtime arguments (a new format does not recompile). The prange loop of each
kernel calls a module-level tile function once per tile (compiled once, not inlined into the parallel
loop); the steps inside a tile (rules.py) are inlined, so that the loop over a tile's columns vectorises.
"""

import numpy as np
from numba import njit, prange

from . import accum, operands, scalar
from .jit import kernel
from .rules import nearest_even, random_bits_hi_lo, sum_nearest_even, sum_stochastic, sum_stochastic32

# ----------------------------------------------------------------------------
# fast paths: a float accumulator narrower than fp32 (fp16, bf16, ...), sequential k order
# ----------------------------------------------------------------------------
# The general kernel rounds one output element at a time. These kernels keep a tile of NARROW_R rows x
# NARROW_N columns of accumulators and update a whole row of the tile per k with a loop over its columns
# that has no branches (selects only), so LLVM's loop vectoriser runs it on 4 or 8 float64 lanes. Every
# output still adds its terms in the order k = 0, 1, ..., K-1 and every addition is the exact sum rounded
# once, as in accum.accumulate. The steps ("twosum", "unfused", "sr", "sr32"; "direct" and "twosum32" are
# register-tiled in linalg_narrow.py), their preconditions (kernels/dispatch.py's NARROW_KERNELS table)
# and the proofs that they give the general kernel's bits: docs/kernels.md, "The fast accumulation
# kernels". tests/test_linalg_tile.py checks the bits against the general kernel and a Fraction reference.
NARROW_R = operands.PANEL_R
NARROW_N = operands.PANEL_N

_step = njit(nogil=True, inline="always", error_model="numpy")
_tile = njit(nogil=True)  # one call per tile, from the kernels' prange loops


# ----------------------------------------------------------------------------
# tiles (called once per tile) and kernels
# ----------------------------------------------------------------------------
@_step
def _store(out, ib, jb, acc, canonical_nan):
    """out[4 ib : 4 ib + 4, 64 jb : 64 jb + 64] = acc (a NaN as the canonical NaN when ``canonical_nan``)."""
    for r in range(NARROW_R):
        for j in range(NARROW_N):
            v = acc[r, j]
            if canonical_nan:
                v = v if v == v else np.nan
            out[ib * NARROW_R + r, jb * NARROW_N + j] = v


@_tile
def _twosum_tile(Ap, Bp, out, ib, jb, K, cadd, minc, up, down):
    acc = np.zeros((NARROW_R, NARROW_N))
    for k in range(K):
        for r in range(NARROW_R):
            a = Ap[ib, k, r]
            for j in range(NARROW_N):
                acc[r, j] = sum_nearest_even(acc[r, j], a * Bp[jb, k, j], cadd, minc, up, down)
    _store(out, ib, jb, acc, False)


@_tile
def _unfused_tile(Ap, Bp, out, ib, jb, K, cadd, minc, up, down, exact_sums):
    # unfused: the exact float64 product rounded to the accumulator first (accum.term), then the sum as
    # in "twosum", or as a plain float64 sum when the sum of two accumulator values is always exact
    # (exact_sums, see above); a NaN (Inf - Inf) leaves as the
    # canonical NaN, as the general kernel's does
    acc = np.zeros((NARROW_R, NARROW_N))
    for k in range(K):
        for r in range(NARROW_R):
            a = Ap[ib, k, r]
            if exact_sums:
                for j in range(NARROW_N):
                    tr = nearest_even(a * Bp[jb, k, j], cadd, minc, up, down)
                    acc[r, j] = nearest_even(acc[r, j] + tr, cadd, minc, up, down)
            else:
                for j in range(NARROW_N):
                    tr = nearest_even(a * Bp[jb, k, j], cadd, minc, up, down)
                    acc[r, j] = sum_nearest_even(acc[r, j], tr, cadd, minc, up, down)
    _store(out, ib, jb, acc, True)


@_tile
def _sr_tile(Ap, Bp, out, ib, jb, K, N, emz, scale, unscale, maxs, dsh, dmask, key0, key1, offset, obase):
    # counter of (output o, term k): offset + (o*K + k)*NSLOT + SLOT_ADD, o = obase + i*N + j
    step = np.int64(K) * accum.NSLOT  # counter distance between neighbouring columns
    acc = np.zeros((NARROW_R, NARROW_N))
    o0 = obase + ib * NARROW_R * N + jb * NARROW_N
    first = accum.counter_of(offset, o0, K, 0, 0)
    last = accum.counter_of(offset, o0 + (NARROW_R - 1) * N + NARROW_N - 1, K, K - 1, accum.NSLOT - 1)
    if (first >> 32) == (last >> 32):
        # the whole tile's counters share their high 32 bits: counter = hi + lo with 0 <= lo < 2**32
        # (rules.random_bits_hi_lo: same counter values, same bits)
        hi = (first >> 32) << 32
        for k in range(K):
            for r in range(NARROW_R):
                a = Ap[ib, k, r]
                lo = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD) - hi
                for j in range(NARROW_N):
                    rnd = random_bits_hi_lo(key0, key1, hi, lo)
                    acc[r, j] = sum_stochastic(acc[r, j], a * Bp[jb, k, j], rnd, emz, scale, unscale, maxs, dsh,
                                               dmask)
                    lo += step
    else:
        for k in range(K):
            for r in range(NARROW_R):
                a = Ap[ib, k, r]
                c = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD)
                for j in range(NARROW_N):
                    rnd = scalar.random_bits(key0, key1, c, 32)
                    acc[r, j] = sum_stochastic(acc[r, j], a * Bp[jb, k, j], rnd, emz, scale, unscale, maxs, dsh,
                                               dmask)
                    c += step
    _store(out, ib, jb, acc, False)


@_tile
def _sr32_tile(Ap, Bp, out, ib, jb, K, N, eqlo, cinv, m, fmax, key0, key1, offset, obase):
    # "sr" in float32 lanes (rules.sum_stochastic32); counters as in _sr_tile
    step = np.int64(K) * accum.NSLOT
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
                    rnd = random_bits_hi_lo(key0, key1, hi, lo)
                    acc[r, j] = sum_stochastic32(acc[r, j], a * Bp[jb, k, j], rnd, eqlo, cinv, m, fmax)
                    lo += step
    else:
        for k in range(K):
            for r in range(NARROW_R):
                a = Ap[ib, k, r]
                c = accum.counter_of(offset, o0 + r * N, K, k, accum.SLOT_ADD)
                for j in range(NARROW_N):
                    rnd = scalar.random_bits(key0, key1, c, 32)
                    acc[r, j] = sum_stochastic32(acc[r, j], a * Bp[jb, k, j], rnd, eqlo, cinv, m, fmax)
                    c += step
    _store(out, ib, jb, acc, False)


@kernel(parallel=True)
def narrow_twosum(Ap, Bp, out, K, cadd, minc, up, down):
    nrow = Ap.shape[0]
    for t in prange(nrow * Bp.shape[0]):
        jb = t // nrow
        _twosum_tile(Ap, Bp, out, t - jb * nrow, jb, K, cadd, minc, up, down)


@kernel(parallel=True)
def narrow_unfused(Ap, Bp, out, K, cadd, minc, up, down, exact_sums):
    nrow = Ap.shape[0]
    for t in prange(nrow * Bp.shape[0]):
        jb = t // nrow
        _unfused_tile(Ap, Bp, out, t - jb * nrow, jb, K, cadd, minc, up, down, exact_sums)


@kernel(parallel=True)
def narrow_sr(Ap, Bp, out, K, N, emz, scale, unscale, maxs, dsh, dmask, key0, key1, offset, obase):
    nrow = Ap.shape[0]
    for t in prange(nrow * Bp.shape[0]):
        jb = t // nrow
        _sr_tile(Ap, Bp, out, t - jb * nrow, jb, K, N, emz, scale, unscale, maxs, dsh, dmask, key0, key1,
                 offset, obase)


@kernel(parallel=True)
def narrow_sr32(Ap, Bp, out, K, N, eqlo, cinv, m, fmax, key0, key1, offset, obase):
    nrow = Ap.shape[0]
    for t in prange(nrow * Bp.shape[0]):
        jb = t // nrow
        _sr32_tile(Ap, Bp, out, t - jb * nrow, jb, K, N, eqlo, cinv, m, fmax, key0, key1, offset, obase)


#: the kernels by step kind: "twosum" (Ap, Bp, out, K, *rules.nearest_even_params), "unfused" (the same and
#: exact_sums), "sr" (Ap, Bp, out, K, N, *rules.stochastic_params, key0, key1, offset, obase), "sr32" (Ap, Bp,
#: out, K, N, eqlo, cinv, m, fmax, key0, key1, offset, obase; see rules.sum_stochastic32 and
#: linalg_cpu.matmul_narrow)
KERNELS = {"twosum": narrow_twosum, "unfused": narrow_unfused, "sr": narrow_sr, "sr32": narrow_sr32}

"""Register-tiled nearest-even narrow-accumulator matmul kernels ("direct" and "twosum32").

The "direct" and "twosum32" steps of the comment at the top of narrow.py (the step kinds, their
preconditions and why each step is one correct rounding), with the bits of the per-element kernels they
replaced there (checked against the general kernel and a Fraction reference in tests/test_linalg_narrow.py), same packed operands (``operands.pack``: ``Ap`` (ceil(M/R), K, R), ``Bp`` (ceil(N/NB), K,
NB), R = 4, NB a multiple of 32; float64 for "direct", float32 for "twosum32") and the same padded output
(ceil(M/R)*R, ceil(N/NB)*NB) float64. Every output still takes its terms in the order k = 0, ..., K-1
with one rounding per step, so the bits do not depend on the tiling or the thread count.

What differs: the kernels they replaced kept a 4 x 64 tile in an ``np.zeros`` array (a load and a
store per term) and leave the vectorising to LLVM; here a tile of 4 rows x 32 columns of accumulators is
held in explicit LLVM vectors (sixteen ``<8 x double>`` for "direct", eight ``<16 x float>`` for
"twosum32", AVX-512 registers), each panel of NB columns being done as NB/32 such tiles, and each step is
written as LLVM IR on whole vectors (rules.py; the vector types and moves: vectors.py), with fewer
instructions where that gives the same bits:

- "direct" (``nearest_even_fma_f64x8``): ``f = fma(a, b, s)``, then rules.nearest_even on f: the magic constant
  ``c = max(bits((f & EXPMASK) + cadd), minc)``, ``r = (f + c) - c``, ``r = (r * up) * down`` (above max
  -> Inf), the sign of f or-ed back. The same IEEE operations in the same order, lane by lane.
- "direct_noovf" (``nearest_even_fma_noovf_f64x8``): the same roundings with two FMAs for ``(f + c) - c`` and no
  overflow multiplies (6 vector instructions a step instead of 9), only where :func:`direct_no_overflow`
  proves from the operands' largest magnitudes that no sum reaches the overflow threshold.
- "direct_checked" (what :func:`run` uses for "direct" without that proof): the tile is computed with
  the no-overflow step while tracking the largest e = max(2**E(f), 2**emin) of its steps (7 instructions a
  step); a tile where some f reached 2**emax is computed again with ``nearest_even_fma_f64x8``. Correct: if every f of
  a tile is below 2**emax, every rounded value r <= 2**emax <= max is finite and below the overflow
  threshold, so ``nearest_even_fma_f64x8``'s multiplies were the identity on every step, and the magic constant
  1.5 * 2**(E + 52 - m) <= 1.5 * 2**(emax + 51 - m) was finite (emax + 53 - m <= 1023, checked by run);
  a tile whose f got larger (or infinite: an e of Inf compares above 2**emax) is recomputed from scratch
  and its first pass is overwritten.
- "twosum32" (``sum_nearest_even_f32x16``): TwoSum, round to odd at 24 bits, then nearest-even on the bit pattern
  (``(u + 2**(d-1) - 1 + bit d of u) & -2**d``, d = 23 - m), with the exact product folded into two FMAs
  and the round-to-odd merged into the final nearest-even rounding (proof in its docstring).

Measured at 1024^3 on one thread of this machine (Zen 4, AVX-512), fp16 inputs from standard normal
data: "direct" 0.21 s (the 4 x 64 tile kernel) -> 0.155 s checked, 0.136 s no-overflow; bf16 "twosum32" 0.227 ->
0.181 s. Generated for AVX2 only (NUMBA_CPU_FEATURES without avx512, 512^3), the tiles spill but the
kernels stay 1.2-1.5x faster than the 4 x 64 tile kernels. 4 x 64 tiles for "twosum32" were 2% faster, 4 x 16
tiles for "direct" 10-20% slower.

The entry points are cached kernels (kernels/jit.py). The prange loop of each calls a module-level
tile function (``_direct_tile``, ``_direct_tile_noovf``, ``_direct_tile_tracked``, ``_twosum32_tile``)
once per tile: each is compiled once and called, not inlined into the parallel loop; the vector steps
inside a tile are intrinsics and ``njit(inline="always")`` functions.
"""

import math

import numpy as np
from numba import njit, prange

from .jit import kernel
from .rules import (nearest_even_fma_f64x8, nearest_even_fma_noovf_f64x8, nearest_even_fma_tracked_f64x8,
                    nearest_even_params, sum_nearest_even_f32x16, sum_nearest_even_f32x16_params)
from .vectors import d8_any_ge, d8_load, d8_splat, d8_store, d8_zero, f16_load, f16_splat, f16_store, f16_zero

TILE_R = 4  # rows of a tile (= operands.PANEL_R, the row panel height of Ap)
TILE_W = 32  # columns of a tile; Bp's panel width must be a multiple of it

# ----------------------------------------------------------------------------
# tiles (module-level functions, called once per tile from the kernels' prange loops) and kernels
# ----------------------------------------------------------------------------
_tile = njit(nogil=True)


@njit(inline="always")
def _dstep(a, b, s, cadd, minc, up, down, ovf):
    """One "direct" step; ovf False: the no-overflow step, with (up, down) = (2**emin, 1.5 * 2**(52-m))."""
    if ovf:
        return nearest_even_fma_f64x8(a, b, s, cadd, minc, up, down)
    return nearest_even_fma_noovf_f64x8(a, b, s, up, down)


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
def _direct_tile_body(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down, ovf):
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


@_tile
def _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down):
    """_direct_tile_body with the overflow step."""
    _direct_tile_body(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down, True)


@_tile
def _direct_tile_noovf(Ap, Bp, out, ib, jb, j0, K, emn, C):
    """_direct_tile_body with the no-overflow step."""
    _direct_tile_body(Ap, Bp, out, ib, jb, j0, K, np.int64(0), 0.0, emn, C, False)


@_tile
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
        c00, mx = nearest_even_fma_tracked_f64x8(a, b0, c00, mx, emn, C)
        c01, mx = nearest_even_fma_tracked_f64x8(a, b1, c01, mx, emn, C)
        c02, mx = nearest_even_fma_tracked_f64x8(a, b2, c02, mx, emn, C)
        c03, mx = nearest_even_fma_tracked_f64x8(a, b3, c03, mx, emn, C)
        a = d8_splat(Ap[ib, k, 1])
        c10, mx = nearest_even_fma_tracked_f64x8(a, b0, c10, mx, emn, C)
        c11, mx = nearest_even_fma_tracked_f64x8(a, b1, c11, mx, emn, C)
        c12, mx = nearest_even_fma_tracked_f64x8(a, b2, c12, mx, emn, C)
        c13, mx = nearest_even_fma_tracked_f64x8(a, b3, c13, mx, emn, C)
        a = d8_splat(Ap[ib, k, 2])
        c20, mx = nearest_even_fma_tracked_f64x8(a, b0, c20, mx, emn, C)
        c21, mx = nearest_even_fma_tracked_f64x8(a, b1, c21, mx, emn, C)
        c22, mx = nearest_even_fma_tracked_f64x8(a, b2, c22, mx, emn, C)
        c23, mx = nearest_even_fma_tracked_f64x8(a, b3, c23, mx, emn, C)
        a = d8_splat(Ap[ib, k, 3])
        c30, mx = nearest_even_fma_tracked_f64x8(a, b0, c30, mx, emn, C)
        c31, mx = nearest_even_fma_tracked_f64x8(a, b1, c31, mx, emn, C)
        c32, mx = nearest_even_fma_tracked_f64x8(a, b2, c32, mx, emn, C)
        c33, mx = nearest_even_fma_tracked_f64x8(a, b3, c33, mx, emn, C)
    _d8_store_tile(out, ib * TILE_R, jb * Bp.shape[2] + j0, c00, c01, c02, c03, c10, c11, c12, c13,
                   c20, c21, c22, c23, c30, c31, c32, c33)
    return d8_any_ge(mx, lim)


@_tile
def _twosum32_tile(Ap, Bp, out, ib, jb, j0, K, half, d, dmask):
    """out[4 ib : 4 ib + 4, NB jb + j0 : NB jb + j0 + 32] from row panel ib and column panel jb (float32)."""
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = f16_zero()
    for k in range(K):
        b0 = f16_load(Bp, jb, k, j0)
        b1 = f16_load(Bp, jb, k, j0 + 16)
        a = f16_splat(Ap[ib, k, 0])
        c00 = sum_nearest_even_f32x16(a, b0, c00, half, d, dmask)
        c01 = sum_nearest_even_f32x16(a, b1, c01, half, d, dmask)
        a = f16_splat(Ap[ib, k, 1])
        c10 = sum_nearest_even_f32x16(a, b0, c10, half, d, dmask)
        c11 = sum_nearest_even_f32x16(a, b1, c11, half, d, dmask)
        a = f16_splat(Ap[ib, k, 2])
        c20 = sum_nearest_even_f32x16(a, b0, c20, half, d, dmask)
        c21 = sum_nearest_even_f32x16(a, b1, c21, half, d, dmask)
        a = f16_splat(Ap[ib, k, 3])
        c30 = sum_nearest_even_f32x16(a, b0, c30, half, d, dmask)
        c31 = sum_nearest_even_f32x16(a, b1, c31, half, d, dmask)
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
def _tile_of(t, nrow, nsub):
    """(ib, jb, j0) of tile t: row panels fastest, so that consecutive tiles of a thread reuse one K x 32
    slice of Bp (from L2)."""
    q = t // nrow
    jb = q // nsub
    return t - q * nrow, jb, (q - jb * nsub) * TILE_W


@kernel(parallel=True)
def narrow_direct(Ap, Bp, out, K, cadd, minc, up, down):
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    for t in prange(nrow * Bp.shape[0] * nsub):
        ib, jb, j0 = _tile_of(t, nrow, nsub)
        _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down)


@kernel(parallel=True)
def narrow_direct_noovf(Ap, Bp, out, K, emn, C):
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    for t in prange(nrow * Bp.shape[0] * nsub):
        ib, jb, j0 = _tile_of(t, nrow, nsub)
        _direct_tile_noovf(Ap, Bp, out, ib, jb, j0, K, emn, C)


@kernel(parallel=True)
def narrow_direct_checked(Ap, Bp, out, K, cadd, minc, up, down, emn, C, lim):
    # the no-overflow step, checked: a tile where a sum reached 2**emax is done again with the overflow step
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    for t in prange(nrow * Bp.shape[0] * nsub):
        ib, jb, j0 = _tile_of(t, nrow, nsub)
        if _direct_tile_tracked(Ap, Bp, out, ib, jb, j0, K, emn, C, lim):
            _direct_tile(Ap, Bp, out, ib, jb, j0, K, cadd, minc, up, down)


@kernel(parallel=True)
def narrow_twosum32(Ap, Bp, out, K, half, d, dmask):
    nrow = Ap.shape[0]
    nsub = Bp.shape[2] // TILE_W
    for t in prange(nrow * Bp.shape[0] * nsub):
        ib, jb, j0 = _tile_of(t, nrow, nsub)
        _twosum32_tile(Ap, Bp, out, ib, jb, j0, K, half, d, dmask)


#: the cached kernels: "direct" (Ap, Bp, out, K, cadd, minc, up, down) (rules.nearest_even_params),
#: "direct_noovf" (Ap, Bp, out, K, 2**emin, 1.5 * 2**(52-m)), "direct_checked" (Ap, Bp, out, K, cadd, minc, up,
#: down, 2**emin, 1.5 * 2**(52-m), 2**emax), "twosum32" (Ap, Bp, out, K, 2**(d-1) - 1, d, -2**d) (int32, d = 23 - m)
kernels = {"direct": narrow_direct, "direct_noovf": narrow_direct_noovf, "direct_checked": narrow_direct_checked,
           "twosum32": narrow_twosum32}


def run(kind: str, Ap, Bp, out, K: int, m: int, emin: int, emax: int, no_overflow: bool = False) -> None:
    """out[:4 ceil(M/4), :NB ceil(N/NB)] = the narrow-accumulator product of the packed operands.

    ``kind``: "direct" (float64 panels) or "twosum32" (float32 panels), picked by linalg_cpu.narrow_kind;
    Ap (ceil(M/4), K, 4) and Bp (ceil(N/NB), K, NB) as operands.pack makes them (NB a multiple of 32),
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
            params = nearest_even_params(m, emin, emax)
            if emax + 53 - m <= 1023:
                kernels["direct_checked"](Ap, Bp, out, np.int64(K), *params, 2.0 ** emin, 1.5 * 2.0 ** (52 - m),
                                          2.0 ** emax)
            else:
                kernels["direct"](Ap, Bp, out, np.int64(K), *params)
    elif kind == "twosum32":
        kernels["twosum32"](Ap, Bp, out, np.int64(K), *sum_nearest_even_f32x16_params(m))
    else:
        raise ValueError(f"run: kind must be 'direct' or 'twosum32', got {kind!r}")


def direct_no_overflow(sa, sb, K: int, m: int, emin: int, emax: int) -> bool:
    """True when no step of a nearest-even accumulation of K exact products a*b into the IEEE format
    (m, emin, emax) reaches the overflow threshold, so that "direct_noovf" gives "direct"'s bits.

    ``sa``, ``sb``: the operands' ``operands.stats`` (only ``hi``, the largest |value|, is read; the
    caller has checked that every value is finite and that "direct" applies).

    Proof: docs/kernels.md, section "direct" (the growth bound K (H + d)(1 + u)**K below the overflow
    threshold, evaluated in float64 with a relative margin of 2**-20).
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

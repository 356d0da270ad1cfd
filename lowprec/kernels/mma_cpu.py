"""Matrix-unit (tensor-core) matmul on the CPU: chained fused steps with alignment and truncation.

Computes what ``lowprec.matrix_units`` describes (NUMERICS.md section 5), for every output element
independently, so the bits do not depend on the tiling or the thread count. The arithmetic of a step
(exponents, alignment and truncation, the one rounding, promotion) is kernels/mma.py's building blocks,
which the CUDA kernel (kernels/linalg_cuda.py) runs too; this module runs them on vector lanes.

Per output and per step of ``k`` products, ``e_max`` is the largest of the products' exponents
``EA[i, l] + EB[l, j]`` (exponents per operand, precomputed with ``mma.operand_exponent``; a zero
operand holds ``mma.ZERO_EXP`` so that its products never win), the addend's exponent and ``e_zero``
when some product of the step has a zero factor. The last is read from per-step zero flags of the rows
of A and the columns of B: "some l has ``a_l == 0`` or ``b_l == 0``" is "some ``a_l == 0``" or "some
``b_l == 0``". The proofs (exact products, exact scaling, exact sum) are in kernels/mma.py.

Layout: A (M, Kp), B (Kp, N) float64, EA/EB int32 exponents, ZA (M, G) / ZB (G, N) uint8 zero flags,
Kp = G * k; B and its exponents and zero flags are packed in contiguous panels of TILE_J columns (so the
inner loops index rows from 0 and LLVM emits plain vector loads, not gathers). A tile is TILE_I rows by one
panel; per step it reads a k x TILE_J slice of the panel for each of its rows. The inner loops run over
columns, so they are elementwise loops that LLVM vectorises (8 float64 lanes with AVX-512); the step's
products are taken four at a time per pass over the row (fewer loads and stores of the running values).
Block-scaled units: per-product scales (mxf8f6f4) run this same tile, with the operands' exponents computed
with each block's scale exponent added to the format's ``emin`` (``_scaled_exponents_kernel``); group-scaled
units (mxf4, mxf4nvf4) run ``_tile_groups``: per step and row, the ``k / G`` exact group sums over the panel's
columns (a plain multiply-add loop), their exponents (the scales', or e_zero for a group whose products are
all zero: checked product by product only where a sum is zero), then the truncated sum and the one rounding.
What a MAC costs on the development machine (a shared 2-core AVX2 AMD EPYC; CPU time, one thread, load 5-9,
so +-25%): 0.6-0.9 ns for bf16 steps of 8 (1024^3: 0.75-0.95 s), 0.4-0.7 ns for fp8 steps of 32. About half of
it is the truncated-terms pass (two multiplies, a truncation and an add per product, four float64 lanes), a
fifth the exponent pass, the rest each step's own work (the addend's exponent, the scale, the one rounding),
which steps of 8 pay four times as often as steps of 32. Measured slower, so not done: fusing the per-step
passes into the first and last product passes (more live values per loop); panels of 64 columns (a k x 64
slice of B stays in the first-level cache, but the fp8 tile took 10-30% more CPU time). Every array a kernel
gets is writable, C-contiguous float64 (:func:`_plain`): one compiled signature per kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import mma
from .jit import kernel

TILE_I = 4
TILE_J = 256


@njit(nogil=True)
def _tile(A, EA, ZA, B, EB, ZB, C, out, i0, i1, j0, j1, G, k, F, ez, cemin, om, oemin, oemax, rz, pg):
    """Rows i0..i1 of the panel B, EB, ZB (TILE_J columns, of which j1 - j0 are stored from column j0)."""
    ni = i1 - i0
    nj = B.shape[1]
    nout = j1 - j0
    overflow = 2.0 ** (oemax + 1)
    cval = np.empty((ni, nj))
    tot = np.empty((ni, nj))
    for r in range(ni):
        for j in range(nj):
            cj = C[i0 + r, j0 + j] if j < nout else 0.0
            if pg > 0:
                tot[r, j] = cj
                cval[r, j] = 0.0
            else:
                cval[r, j] = cj
    mx = np.empty(nj, dtype=np.int32)
    s = np.empty(nj)  # 2**(F - e_max)
    sinv = np.empty(nj)  # 2**(e_max - F)
    acc = np.empty(nj)
    zb = np.empty(nj, dtype=np.int32)
    ez32 = np.int32(ez)
    never = np.int32(-(1 << 30))
    for g in range(G):
        l0 = g * k
        for j in range(nj):
            zb[j] = ez32 if ZB[g, j] else never
        for r in range(ni):
            i = i0 + r
            # the step's largest exponent: the addend's, the zero terms', the products'
            for j in range(nj):
                mx[j] = max(np.int32(mma.addend_exponent(cval[r, j], cemin, ez)), zb[j])
            if ZA[i, g]:
                for j in range(nj):
                    mx[j] = max(mx[j], ez32)
            l4 = l0 + k - k % 4
            for l in range(l0, l4, 4):  # four terms per pass over the row: fewer loads and stores of mx
                e0, e1, e2, e3 = EA[i, l], EA[i, l + 1], EA[i, l + 2], EA[i, l + 3]
                for j in range(nj):
                    mx[j] = max(max(mx[j], max(e0 + EB[l, j], e1 + EB[l + 1, j])),
                                max(e2 + EB[l + 2, j], e3 + EB[l + 3, j]))
            for l in range(l4, l0 + k):
                ea = EA[i, l]
                for j in range(nj):
                    mx[j] = max(mx[j], ea + EB[l, j])
            for j in range(nj):
                m = mma.capped(mx[j])
                s[j] = mma.pow2(F - m)
                sinv[j] = mma.pow2(m - F)
            # the truncated terms, summed exactly
            for j in range(nj):
                acc[j] = mma.aligned(cval[r, j], s[j])
            for l in range(l0, l4, 4):  # (each truncated term is an integer below 2**42: any grouping is exact)
                a0, a1, a2, a3 = A[i, l], A[i, l + 1], A[i, l + 2], A[i, l + 3]
                for j in range(nj):
                    sj = s[j]
                    acc[j] += ((mma.aligned(a0 * B[l, j], sj) + mma.aligned(a1 * B[l + 1, j], sj))
                               + (mma.aligned(a2 * B[l + 2, j], sj) + mma.aligned(a3 * B[l + 3, j], sj)))
            for l in range(l4, l0 + k):
                al = A[i, l]
                for j in range(nj):
                    acc[j] += mma.aligned(al * B[l, j], s[j])
            # one rounding to the output format (Inf stays Inf: Inf * 2**q; NaN is made canonical)
            if rz:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc[j] * sinv[j], om, oemin, overflow, True)
            else:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc[j] * sinv[j], om, oemin, overflow, False)
        if pg > 0 and ((g + 1) % pg == 0 or g == G - 1):
            for r in range(ni):
                for j in range(nj):
                    tot[r, j] = mma.promote(tot[r, j], cval[r, j])
                    cval[r, j] = 0.0
    for r in range(ni):
        for j in range(nout):
            out[i0 + r, j0 + j] = tot[r, j] if pg > 0 else cval[r, j]


@kernel(parallel=True, spec=("mma", TILE_I, TILE_J))
def mma_kernel(A, EA, ZA, BP, EBP, ZBP, C, out, k, F, ez, cemin, om, oemin, oemax, rz, pg):
    M = A.shape[0]
    N = out.shape[1]
    G = A.shape[1] // k
    ni = (M + TILE_I - 1) // TILE_I
    nj = BP.shape[0]
    for t in prange(ni * nj):
        ti = t % ni
        tj = t // ni
        i0 = ti * TILE_I
        j0 = tj * TILE_J
        _tile(A, EA, ZA, BP[tj], EBP[tj], ZBP[tj], C, out, i0, min(i0 + TILE_I, M), j0, min(j0 + TILE_J, N), G, k,
              F, ez, cemin, om, oemin, oemax, rz, pg)


@njit(nogil=True)
def _tile_groups(A, GA, B, GB, C, out, i0, i1, j0, j1, NG, K, k, GS, F, ez, cemin, om, oemin, oemax, rz, pg):
    """A group-scaled unit's steps (mma.output_groups on vector lanes) for rows i0..i1 of the panel B, GB
    (group exponents): per step, the ``k / GS`` exact group sums, their exponents (the scales', or e_zero for a
    group whose products are all zero), the largest exponent, the truncated sum, the one rounding."""
    ni = i1 - i0
    nj = B.shape[1]
    nout = j1 - j0
    nq = k // GS
    overflow = 2.0 ** (oemax + 1)
    cval = np.empty((ni, nj))
    tot = np.empty((ni, nj))
    for r in range(ni):
        for j in range(nj):
            cj = C[i0 + r, j0 + j] if j < nout else 0.0
            if pg > 0:
                tot[r, j] = cj
                cval[r, j] = 0.0
            else:
                cval[r, j] = cj
    mx = np.empty(nj, dtype=np.int32)
    s = np.empty(nj)
    sinv = np.empty(nj)
    acc = np.empty(nj)
    T = np.empty((nq, nj))
    for g in range(NG):
        l0 = g * k
        for r in range(ni):
            i = i0 + r
            for j in range(nj):
                mx[j] = np.int32(mma.addend_exponent(cval[r, j], cemin, ez))
            for u in range(nq):
                q = l0 // GS + u
                start = -0.0 if q * GS + GS <= K else 0.0  # IEEE: -0 only if every product is -0
                for j in range(nj):
                    T[u, j] = start
                for l in range(q * GS, q * GS + GS):  # the group's exact sum
                    al = A[i, l]
                    for j in range(nj):
                        T[u, j] += al * B[l, j]
                ga = GA[i, q]
                for j in range(nj):
                    nz = T[u, j] != 0.0
                    if not nz:  # a zero sum: all products zero (e_zero), or a cancellation (the scales' exponent)
                        for l in range(q * GS, q * GS + GS):
                            if A[i, l] * B[l, j] != 0.0:
                                nz = True
                    mx[j] = max(mx[j], np.int32(mma.group_exponent(nz, ga + GB[q, j], ez)))
            for j in range(nj):
                m = mma.capped(mx[j])
                s[j] = mma.pow2(F - m)
                sinv[j] = mma.pow2(m - F)
            for j in range(nj):
                acc[j] = mma.aligned(cval[r, j], s[j])
            for u in range(nq):
                for j in range(nj):
                    acc[j] += mma.aligned(T[u, j], s[j])
            if rz:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc[j] * sinv[j], om, oemin, overflow, True)
            else:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc[j] * sinv[j], om, oemin, overflow, False)
        if pg > 0 and ((g + 1) % pg == 0 or g == NG - 1):
            for r in range(ni):
                for j in range(nj):
                    tot[r, j] = mma.promote(tot[r, j], cval[r, j])
                    cval[r, j] = 0.0
    for r in range(ni):
        for j in range(nout):
            out[i0 + r, j0 + j] = tot[r, j] if pg > 0 else cval[r, j]


@kernel(parallel=True, spec=("mma-groups", TILE_I, TILE_J))
def groups_kernel(A, GA, BP, GBP, C, out, K, k, GS, F, ez, cemin, om, oemin, oemax, rz, pg):
    M = A.shape[0]
    N = out.shape[1]
    NG = A.shape[1] // k
    ni = (M + TILE_I - 1) // TILE_I
    nj = BP.shape[0]
    for t in prange(ni * nj):
        ti = t % ni
        tj = t // ni
        i0 = ti * TILE_I
        j0 = tj * TILE_J
        _tile_groups(A, GA, BP[tj], GBP[tj], C, out, i0, min(i0 + TILE_I, M), j0, min(j0 + TILE_J, N), NG, K, k,
                     GS, F, ez, cemin, om, oemin, oemax, rz, pg)


@kernel(parallel=True, spec=("mma-scaled-exponents",))
def _scaled_exponents_kernel(x, emin, off, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = mma.operand_exponent(x[i, j], emin + off[i, j])


@kernel(parallel=True, spec=("mma-exponents",))
def _exponents_kernel(x, emin, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = mma.operand_exponent(x[i, j], emin)


def _exponents(x: np.ndarray, emin: int) -> np.ndarray:
    """E(x) = max(floor(log2|x|), emin) as int32 for float64 x holding values of a format whose subnormals
    are normal float64 numbers; mma.ZERO_EXP for zeros, 0 for Inf/NaN."""
    x = _plain(x)
    out = np.empty(x.shape, dtype=np.int32)
    _exponents_kernel(x, np.int64(emin), out)
    return out


def _plain(x) -> np.ndarray:
    """x as a writable, C-contiguous float64 array (a copy only when it is not one already): the kernels see one
    array type, so a read-only or strided operand does not compile another specialisation."""
    return np.require(x, dtype=np.float64, requirements=("C", "W", "A"))


def _panels(x: np.ndarray, width: int) -> np.ndarray:
    """(R, N) -> (ceil(N / width), R, width), zero-padded: each panel contiguous."""
    R, N = x.shape
    n = -(-N // width)
    p = np.zeros((R, n * width), dtype=x.dtype)
    p[:, :N] = x
    return np.ascontiguousarray(p.reshape(R, n, width).transpose(1, 0, 2))


def _expand(s: np.ndarray, block: int, axis: int, n: int) -> np.ndarray:
    """Per-block values repeated over their ``block`` elements along ``axis`` and cut (or zero-padded) to ``n``."""
    full = np.repeat(np.asarray(s, dtype=np.int32), block, axis=axis)
    if full.shape[axis] < n:
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, n - full.shape[axis])
        full = np.pad(full, pad)
    return np.ascontiguousarray(full[:, :n] if axis == 1 else full[:n, :])


def matmul_mma_cpu(a: np.ndarray, b: np.ndarray, c: np.ndarray, sa=None, sb=None, *, k: int, frac_bits: int,
                   e_zero: int, a_emin: int, b_emin: int, c_emin: int, out_man: int, out_emin: int, out_emax: int,
                   toward_zero: bool, promote_steps: int, block: int = 0, group: int = 0) -> np.ndarray:
    """``c + a @ b`` for float64 (M, K) ``a``, (K, N) ``b`` and (M, N) ``c`` whose values are already in
    their formats; returns float64 (M, N). ``promote_steps``: steps per promotion block (0: none).

    Block-scaled units (``block`` > 0): ``a``/``b`` hold the dequantized values (NaN for a block with a NaN
    scale), ``sa`` (M, ceil(K / block)) and ``sb`` (ceil(K / block), N) the int32 scale exponents. ``group`` > 0:
    products are summed exactly in groups of ``group`` along K, each aligned at its scales' exponent."""
    M, K = a.shape
    N = b.shape[1]
    if K == 0:  # no step: the addend as it is
        return np.array(c, dtype=np.float64).reshape(M, N)
    G = -(-K // k)
    Kp = G * k
    if Kp == K:  # (writable and contiguous: one compiled signature, whatever the caller's arrays are)
        A, B = _plain(a), _plain(b)
    else:
        A = np.zeros((M, Kp))
        A[:, :K] = a
        B = np.zeros((Kp, N))
        B[:K, :] = b
    C = _plain(c)
    out = np.empty((M, N))
    args = (np.int64(frac_bits), np.int64(e_zero), np.int64(c_emin), np.int64(out_man), np.int64(out_emin),
            np.int64(out_emax), bool(toward_zero), np.int64(promote_steps))
    if group > 0:
        # one exponent per group of `group` elements (a group lies in one scale block)
        GA = np.ascontiguousarray(_expand(sa, block, 1, Kp)[:, ::group])
        GB = _expand(sb, block, 0, Kp)[::group, :]
        if M and N:
            groups_kernel(A, GA, _panels(B, TILE_J), _panels(np.ascontiguousarray(GB), TILE_J),
                          C, out, np.int64(K), np.int64(k), np.int64(group), *args)
        return out
    if block > 0:
        EA = np.empty((M, Kp), dtype=np.int32)
        _scaled_exponents_kernel(A, np.int64(a_emin), _expand(sa, block, 1, Kp), EA)
        EB = np.empty((Kp, N), dtype=np.int32)
        _scaled_exponents_kernel(B, np.int64(b_emin),
                                 _expand(sb, block, 0, Kp), EB)
    else:
        EA, EB = _exponents(A, a_emin), _exponents(B, b_emin)
    ZA = np.ascontiguousarray((A == 0).reshape(M, G, k).any(axis=2), dtype=np.uint8)
    ZB = np.ascontiguousarray((B == 0).reshape(G, k, N).any(axis=1), dtype=np.uint8)
    BP, EBP, ZBP = _panels(B, TILE_J), _panels(EB, TILE_J), _panels(ZB, TILE_J)
    if M and N:
        mma_kernel(A, EA, ZA, BP, EBP, ZBP, C, out, np.int64(k), *args)
    return out

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

Layout (:func:`_pack_a`, :func:`_pack_b`, compiled, one pass each): A (M, Kp) float64 and EA (M, Kp) int16
exponents, ZA (M, G) int16 zero terms (e_zero for a step of the row holding a zero, else NEVER), Kp = G * k; B, its
exponents and zero terms in contiguous panels of W columns (:func:`panel_width`: up to TILE_J, fewer for a narrow
B), so that the inner loops index rows from 0 and LLVM emits plain vector loads, not gathers. int16 holds every
exponent sum, and the largest-exponent pass runs 16 lanes per AVX2 instruction (numba computes ``int32 + int32``
in int64, which took four 64-bit lanes and no vector maximum: that pass cost as much as the truncated terms).
A tile is TILE_I rows by one panel, two rows per pass over the panel (one load of B and EB serves both). The
inner loops run over columns, so they are elementwise loops that LLVM vectorises (4 float64 lanes with AVX2);
the step's products are taken four at a time per pass over the row (fewer loads and stores of the running
values). A product with fewer than NARROW columns and more rows than columns runs transposed (its lanes are then
the rows); one below SERIAL_BELOW multiply-adds runs on the calling thread. Block-scaled units: per-product scales
(mxf8f6f4) run this same tile, with the operands' exponents computed with each block's scale exponent added to the
format's ``emin``; group-scaled units (mxf4, mxf4nvf4) run ``_tile_groups``: per step and row, the ``k / G`` exact
group sums over the panel's columns (a plain multiply-add loop), their exponents (the scales', or e_zero for a group
whose products are all zero: checked product by product only where a sum is zero), then the truncated sum and the
one rounding.

What a MAC costs on the development machine (a shared 2-core AVX2 AMD EPYC; CPU time, one thread, load 2-3, so
+-15%): about 0.5-0.6 ns for bf16 steps of 8, 0.26-0.33 ns for fp8 steps of 32 (1024^3: 0.5-0.65 s and 0.3-0.35 s;
before the int16 exponents and the row pairs 0.75-0.95 s and 0.5-0.6 s). Most of it is the truncated-terms pass
(two multiplies, a truncation and an add per product, four float64 lanes) and each step's own work (the addend's
exponent, the scale, the one rounding), which steps of 8 pay four times as often as steps of 32. Measured and not
kept (no gain beyond the +-10% noise of the shared machine): the step fused into one loop per column for a
constant k = 8 (slower: LLVM vectorises it worse), eight products per pass of the truncated terms, the next step's
starting exponent computed in the rounding loop, tiles of 16-64 rows by 32-128 columns (slower). Every float array
a kernel gets is writable, C-contiguous float64 (:func:`_plain`): one compiled signature per kernel.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import mma
from .jit import kernel

TILE_I = 4
TILE_J = 256
#: the exponents' type: int16 holds every sum of two operand exponents (ZERO_EXP + ZERO_EXP = -8192 included),
#: and a pass of the largest exponent then runs 16 lanes per AVX2 instruction
EXP = np.int16
#: below any real exponent: the "zero term" entry of a step whose operands have no zero
NEVER = -(1 << 14)


@njit(nogil=True)
def _tile(A, EA, ZA, B, EB, ZB, C, out, i0, i1, j0, j1, G, k, F, ez, cemin, om, oemin, oemax, rz, pg):
    """Rows i0..i1 of the panel B, EB, ZB (W columns, of which j1 - j0 are stored from column j0), two rows per pass
    over the panel (each load of B and EB serves both; an odd last row is computed twice, the same bits)."""
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
    mx0 = np.empty(nj, dtype=EXP)
    mx1 = np.empty(nj, dtype=EXP)
    s0 = np.empty(nj)  # 2**(F - e_max)
    s1 = np.empty(nj)
    acc0 = np.empty(nj)
    acc1 = np.empty(nj)
    for g in range(G):
        l0 = g * k
        for r in range(0, ni, 2):
            i = i0 + r
            rq = r + 1 if r + 1 < ni else r
            q = i0 + rq
            # the step's largest exponent: the addend's, the zero terms' (e_zero when some product of the step has a
            # zero factor: ZA, ZB hold e_zero or NEVER), the products' (int16 casts keep the lanes 16 bits wide)
            za, zq = ZA[i, g], ZA[q, g]
            for j in range(nj):
                zbj = ZB[g, j]
                mx0[j] = max(EXP(mma.addend_exponent(cval[r, j], cemin, ez)), max(zbj, za))
                mx1[j] = max(EXP(mma.addend_exponent(cval[rq, j], cemin, ez)), max(zbj, zq))
            l4 = l0 + k - k % 4
            for l in range(l0, l4, 4):  # four terms per pass over the row: fewer loads and stores of mx
                e0, e1, e2, e3 = EA[i, l], EA[i, l + 1], EA[i, l + 2], EA[i, l + 3]
                f0, f1, f2, f3 = EA[q, l], EA[q, l + 1], EA[q, l + 2], EA[q, l + 3]
                for j in range(nj):
                    b0, b1, b2, b3 = EB[l, j], EB[l + 1, j], EB[l + 2, j], EB[l + 3, j]
                    mx0[j] = max(max(mx0[j], max(EXP(e0 + b0), EXP(e1 + b1))), max(EXP(e2 + b2), EXP(e3 + b3)))
                    mx1[j] = max(max(mx1[j], max(EXP(f0 + b0), EXP(f1 + b1))), max(EXP(f2 + b2), EXP(f3 + b3)))
            for l in range(l4, l0 + k):
                ea, fa = EA[i, l], EA[q, l]
                for j in range(nj):
                    mx0[j] = max(mx0[j], EXP(ea + EB[l, j]))
                    mx1[j] = max(mx1[j], EXP(fa + EB[l, j]))
            # the truncated terms, summed exactly (each an integer below 2**42: any grouping is exact)
            for j in range(nj):
                s0[j] = mma.pow2(F - mma.capped(mx0[j]))
                acc0[j] = mma.aligned(cval[r, j], s0[j])
                s1[j] = mma.pow2(F - mma.capped(mx1[j]))
                acc1[j] = mma.aligned(cval[rq, j], s1[j])
            for l in range(l0, l4, 4):
                a0, a1, a2, a3 = A[i, l], A[i, l + 1], A[i, l + 2], A[i, l + 3]
                c0, c1, c2, c3 = A[q, l], A[q, l + 1], A[q, l + 2], A[q, l + 3]
                for j in range(nj):
                    b0, b1, b2, b3 = B[l, j], B[l + 1, j], B[l + 2, j], B[l + 3, j]
                    sj = s0[j]
                    acc0[j] += ((mma.aligned(a0 * b0, sj) + mma.aligned(a1 * b1, sj))
                                + (mma.aligned(a2 * b2, sj) + mma.aligned(a3 * b3, sj)))
                    sj = s1[j]
                    acc1[j] += ((mma.aligned(c0 * b0, sj) + mma.aligned(c1 * b1, sj))
                                + (mma.aligned(c2 * b2, sj) + mma.aligned(c3 * b3, sj)))
            for l in range(l4, l0 + k):
                al, cl = A[i, l], A[q, l]
                for j in range(nj):
                    acc0[j] += mma.aligned(al * B[l, j], s0[j])
                    acc1[j] += mma.aligned(cl * B[l, j], s1[j])
            # one rounding to the output format (Inf stays Inf: Inf * 2**q; NaN is made canonical)
            if rz:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc0[j] * mma.pow2(mma.capped(mx0[j]) - F), om, oemin, overflow, True)
                    cval[rq, j] = mma.round_out(acc1[j] * mma.pow2(mma.capped(mx1[j]) - F), om, oemin, overflow, True)
            else:
                for j in range(nj):
                    cval[r, j] = mma.round_out(acc0[j] * mma.pow2(mma.capped(mx0[j]) - F), om, oemin, overflow, False)
                    cval[rq, j] = mma.round_out(acc1[j] * mma.pow2(mma.capped(mx1[j]) - F), om, oemin, overflow,
                                                False)
        if pg > 0 and ((g + 1) % pg == 0 or g == G - 1):
            for r in range(ni):
                for j in range(nj):
                    tot[r, j] = mma.promote(tot[r, j], cval[r, j])
                    cval[r, j] = 0.0
    for r in range(ni):
        for j in range(nout):
            out[i0 + r, j0 + j] = tot[r, j] if pg > 0 else cval[r, j]


@kernel(parallel=True, spec=("mma", TILE_I))
def mma_kernel(A, EA, ZA, BP, EBP, ZBP, C, out, k, F, ez, cemin, om, oemin, oemax, rz, pg):
    M = A.shape[0]
    N = out.shape[1]
    G = A.shape[1] // k
    W = BP.shape[2]
    ni = (M + TILE_I - 1) // TILE_I
    nj = BP.shape[0]
    for t in prange(ni * nj):
        ti = t % ni
        tj = t // ni
        i0 = ti * TILE_I
        j0 = tj * W
        _tile(A, EA, ZA, BP[tj], EBP[tj], ZBP[tj], C, out, i0, min(i0 + TILE_I, M), j0, min(j0 + W, N), G, k,
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


@kernel(parallel=True, spec=("mma-groups", TILE_I))
def groups_kernel(A, GA, BP, GBP, C, out, K, k, GS, F, ez, cemin, om, oemin, oemax, rz, pg):
    M = A.shape[0]
    N = out.shape[1]
    NG = A.shape[1] // k
    W = BP.shape[2]
    ni = (M + TILE_I - 1) // TILE_I
    nj = BP.shape[0]
    for t in prange(ni * nj):
        ti = t % ni
        tj = t // ni
        i0 = ti * TILE_I
        j0 = tj * W
        _tile_groups(A, GA, BP[tj], GBP[tj], C, out, i0, min(i0 + TILE_I, M), j0, min(j0 + W, N), NG, K, k,
                     GS, F, ez, cemin, om, oemin, oemax, rz, pg)


@kernel(spec=("mma-pack-a",))
def _pack_a(A, emin, off, blk, k, ez, AP, EA, ZA):
    """A (M, K) as the tile reads it: AP (M, Kp) the values, zero-padded; EA (M, Kp) their exponents
    (``mma.operand_exponent``, the block's scale exponent ``off[i, l // blk]`` added to ``emin`` when ``blk`` > 0);
    ZA (M, Kp / k) e_zero for a step of the row holding a zero (padding included), else NEVER."""
    M, K = A.shape
    Kp = AP.shape[1]
    for i in range(M):
        if blk > 0:
            for l in range(K):
                EA[i, l] = mma.operand_exponent(A[i, l], emin + off[i, l // blk])
        else:
            for l in range(K):
                EA[i, l] = mma.operand_exponent(A[i, l], emin)
        for l in range(K):
            AP[i, l] = A[i, l]
        for l in range(K, Kp):
            AP[i, l] = 0.0
            EA[i, l] = mma.ZERO_EXP
        for g in range(Kp // k):
            z = False
            for l in range(g * k, g * k + k):
                z = z or AP[i, l] == 0.0
            ZA[i, g] = ez if z else NEVER


@kernel(spec=("mma-pack-b",))
def _pack_b(B, emin, off, blk, k, ez, BP, EBP, ZBP):
    """B (K, N) in panels of W columns: BP (P, Kp, W) the values, zero-padded (rows and columns); EBP their
    exponents (as :func:`_pack_a`, scale exponents ``off[l // blk, j]``); ZBP (P, Kp / k, W) e_zero for a step of
    the column holding a zero, else NEVER."""
    K, N = B.shape
    P, Kp, W = BP.shape
    for p in range(P):
        j0 = p * W
        n = min(W, N - j0)
        for l in range(Kp):
            if l < K:
                for w in range(n):
                    BP[p, l, w] = B[l, j0 + w]
                if blk > 0:
                    for w in range(n):
                        EBP[p, l, w] = mma.operand_exponent(B[l, j0 + w], emin + off[l // blk, j0 + w])
                else:
                    for w in range(n):
                        EBP[p, l, w] = mma.operand_exponent(B[l, j0 + w], emin)
            for w in range(n if l < K else 0, W):
                BP[p, l, w] = 0.0
                EBP[p, l, w] = mma.ZERO_EXP
        for g in range(Kp // k):
            for w in range(W):
                ZBP[p, g, w] = NEVER
            for l in range(g * k, g * k + k):
                for w in range(W):
                    ZBP[p, g, w] = ez if BP[p, l, w] == 0.0 else ZBP[p, g, w]


def _plain(x) -> np.ndarray:
    """x as a writable, C-contiguous float64 array (a copy only when it is not one already): the kernels see one
    array type, so a read-only or strided operand does not compile another specialisation."""
    return np.require(x, dtype=np.float64, requirements=("C", "W", "A"))


def panel_width(N: int) -> int:
    """Columns per panel of B for N output columns: N split in as few panels as TILE_J allows, each a multiple of 64
    columns (one pass of the exponent loop: 4 x 16 int16 lanes), or of 16 below 64 columns (an output of 10 columns
    runs 16 lanes, not 256)."""
    per = -(-N // max(1, -(-N // TILE_J)))
    q = 64 if per >= 64 else 16
    return min(TILE_J, -(-per // q) * q)


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


_NO_SCALES = np.zeros((1, 1), dtype=np.int32)
#: below this many output columns (and more rows than columns) the product runs transposed
NARROW = 64
#: products of fewer multiply-adds (padded) run on the calling thread: ~3 ms of one core at most, where a second
#: thread saves little and, on a loaded machine, waiting for it to be scheduled costs milliseconds per call
SERIAL_BELOW = 1 << 23


def _launch(kern, work: int, *args) -> None:
    """``kern(*args)``, on one thread when ``work`` (multiply-adds) is below SERIAL_BELOW (the same bits: every
    output is computed alone)."""
    n = numba.get_num_threads()
    if n == 1 or work >= SERIAL_BELOW:
        kern(*args)
        return
    numba.set_num_threads(1)
    try:
        kern(*args)
    finally:
        numba.set_num_threads(n)


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
    if N < NARROW and M > N:
        # few columns: run c.T + b.T @ a.T, whose lanes are the M rows. Each output is the same computation (the
        # products, their exponent sums and zero terms do not depend on the operands' order): the same bits.
        return np.ascontiguousarray(matmul_mma_cpu(
            np.ascontiguousarray(b.T), np.ascontiguousarray(a.T), np.ascontiguousarray(np.asarray(c).T),
            None if sb is None else np.ascontiguousarray(np.asarray(sb).T),
            None if sa is None else np.ascontiguousarray(np.asarray(sa).T), k=k, frac_bits=frac_bits, e_zero=e_zero,
            a_emin=b_emin, b_emin=a_emin, c_emin=c_emin, out_man=out_man, out_emin=out_emin, out_emax=out_emax,
            toward_zero=toward_zero, promote_steps=promote_steps, block=block, group=group).T)
    G = -(-K // k)
    Kp = G * k
    C = _plain(c)
    out = np.empty((M, N))
    if not (M and N):
        return out
    args = (np.int64(frac_bits), np.int64(e_zero), np.int64(c_emin), np.int64(out_man), np.int64(out_emin),
            np.int64(out_emax), bool(toward_zero), np.int64(promote_steps))
    W = panel_width(N)
    if group > 0:
        if Kp == K:  # (writable and contiguous: one compiled signature, whatever the caller's arrays are)
            A, B = _plain(a), _plain(b)
        else:
            A = np.zeros((M, Kp))
            A[:, :K] = a
            B = np.zeros((Kp, N))
            B[:K, :] = b
        # one exponent per group of `group` elements (a group lies in one scale block)
        GA = np.ascontiguousarray(_expand(sa, block, 1, Kp)[:, ::group])
        GB = _expand(sb, block, 0, Kp)[::group, :]
        _launch(groups_kernel, M * Kp * N, A, GA, _panels(B, W), _panels(np.ascontiguousarray(GB), W),
                C, out, np.int64(K), np.int64(k), np.int64(group), *args)
        return out
    blk = np.int64(block)
    offa = _NO_SCALES if block <= 0 else np.ascontiguousarray(sa, dtype=np.int32)
    offb = _NO_SCALES if block <= 0 else np.ascontiguousarray(sb, dtype=np.int32)
    AP, EA, ZA = np.empty((M, Kp)), np.empty((M, Kp), dtype=EXP), np.empty((M, G), dtype=EXP)
    _pack_a(_plain(a), np.int64(a_emin), offa, blk, np.int64(k), np.int64(e_zero), AP, EA, ZA)
    P = -(-N // W)
    BP, EBP, ZBP = np.empty((P, Kp, W)), np.empty((P, Kp, W), dtype=EXP), np.empty((P, G, W), dtype=EXP)
    _pack_b(_plain(b), np.int64(b_emin), offb, blk, np.int64(k), np.int64(e_zero), BP, EBP, ZBP)
    _launch(mma_kernel, M * Kp * P * W, AP, EA, ZA, BP, EBP, ZBP, C, out, np.int64(k), *args)
    return out

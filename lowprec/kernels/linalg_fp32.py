"""The fp32-accumulator matmul kernel: register-tiled float32, fixed k order (lowprec.linalg's fast path).

IEEE float32 arithmetic *is* this accumulation (``fma(a, b, s)`` fused, ``s + a*b``
unfused; the precondition is kernels/dispatch.py's FP32_TILE_KERNELS, the proof in
docs/kernels.md, "fp32-fma, fp32-muladd"). Every output ``C[i, j]`` starts from +0 and
takes its terms in the order k = 0, 1, ..., K-1, so its bits equal the general kernel's
on any thread count and tiling; a NaN result is stored as the one NaN the scalar kernels
give (``np.float32(np.nan)``, bits 0x7FC00000).

The kernel computes a 6 x 16 tile of C at a time in twelve 8-lane float32
vectors (explicit LLVM ``<8 x float>`` values, so that the fused and the unfused
kernels are both vector code: LLVM's SLP vectoriser had left the fused one
scalar, 8x slower). For each k it loads ``B[k, j0:j0+16]`` (two vector loads)
and broadcasts ``A[i0+r, k]`` (A is read in place, any strides: ``x.T`` needs
no copy). Edge tiles: rows past M read row M-1 and are not stored; the columns
of a last, partial panel are read from a zero-padded copy of that panel
(K x 16). When B's rows are not contiguous (``w.T``) every panel is read from
such a packed copy, made panel by panel. 6 x 16 rather than 4 x 16: the short-K
products of training (K = batch) spend less per tile outside the k loop.

Compilation: each of the four kernels (fused or not, parallel or not) has one
signature, every array typed with layout 'A' (strides read at run time), so C,
F and strided operands run the same compiled code. The tiles are computed by
:func:`_tiles`, a module-level function that the kernels call, not inline
(numba's inliner copied and re-typed the unrolled tile at every call site, which
dominated the compile time); one call computes a strip of row tiles of one panel,
so that a call's cost (argument passing, reference counts) is not paid per tile.
"""

import threading

import numpy as np
from numba import njit, prange, types

from .jit import kernel
from .vectors import v8_canon, v8_load, v8_splat, v8_step, v8_store, v8_store_first, v8_zero

TILE_M = 6
TILE_N = 16
#: K above K_BLOCK_FROM: the k loop runs in blocks of K_BLOCK terms (a 16 KB block of a B panel, in L1),
#: groups of GROUP row tiles in parallel (their A rows over a block, 48 x K_BLOCK floats, stay in L2 while
#: the group takes every panel); the bits do not depend on it. Measured at 1024^3 (BLAS 0.022 / 0.0115 s):
#: 0.034-0.036 s vs 0.040-0.042 s unblocked on 1 thread, 0.017-0.021 s vs 0.0225-0.023 s on 2.
K_BLOCK = 256
K_BLOCK_FROM = 512
GROUP = 8
#: row tiles per call of _tiles in the one-pass loop (the parallel loop's unit of work)
STRIP = 4
#: below this many multiply-adds (~0.1 ms on one core) a call runs on the calling thread: waking the
#: pool costs microseconds to tens of microseconds, and on a busy machine a descheduled worker stalls the
#: call for ms. 2**22 is the size of bench_train's 64 x 256 x 256 products, which take ~90 us on one core
#: and ~60 us on two: on two threads its epoch took ~3-4 ms (10-15%) less than with the threshold at 2**24.
PARALLEL_MIN_WORK = 1 << 22

# ----------------------------------------------------------------------------
# the kernels
# ----------------------------------------------------------------------------


@njit
def _tiles(A, B, jb, out, acc, it0, it1, j0, M, N, k0, k1, K, fused):
    """The terms k0 <= k < k1 of the row tiles it0 <= it < it1 of out[:, j0:j0+16] (the part inside
    M x N; tile it is out[6*it:6*it+6]) from A's rows and B[:, jb:jb+16]. The sums start from +0
    (k0 == 0) or from the partial sums in ``acc``, a float32 array padded to whole tiles; they go to
    ``out`` when k1 == K, else back to ``acc``. Partial sums are float32 values stored and loaded as they
    are, so a split of k into blocks changes no bit. ``fused`` must be a constant (a literal).

    Module-level and called, not inlined: numba compiles it once per argument types (twice per kernel: k0
    is the literal 0 in the one-pass loop). Not a closure: two closures with one qualified name compile to
    one symbol, and a cached kernel that calls one can be linked to the other's code."""
    for it in range(it0, it1):
        i0 = it * TILE_M
        r1 = min(i0 + 1, M - 1)  # rows past M: row M-1 is read, nothing is stored
        r2 = min(i0 + 2, M - 1)
        r3 = min(i0 + 3, M - 1)
        r4 = min(i0 + 4, M - 1)
        r5 = min(i0 + 5, M - 1)
        if k0 == 0:
            c0l = c0h = c1l = c1h = c2l = c2h = c3l = c3h = c4l = c4h = c5l = c5h = v8_zero()
        else:
            c0l, c0h = v8_load(acc, i0, j0), v8_load(acc, i0, j0 + 8)
            c1l, c1h = v8_load(acc, i0 + 1, j0), v8_load(acc, i0 + 1, j0 + 8)
            c2l, c2h = v8_load(acc, i0 + 2, j0), v8_load(acc, i0 + 2, j0 + 8)
            c3l, c3h = v8_load(acc, i0 + 3, j0), v8_load(acc, i0 + 3, j0 + 8)
            c4l, c4h = v8_load(acc, i0 + 4, j0), v8_load(acc, i0 + 4, j0 + 8)
            c5l, c5h = v8_load(acc, i0 + 5, j0), v8_load(acc, i0 + 5, j0 + 8)
        for k in range(k0, k1):
            bl = v8_load(B, k, jb)
            bh = v8_load(B, k, jb + 8)
            a = v8_splat(A[i0, k])
            c0l = v8_step(a, bl, c0l, fused)
            c0h = v8_step(a, bh, c0h, fused)
            a = v8_splat(A[r1, k])
            c1l = v8_step(a, bl, c1l, fused)
            c1h = v8_step(a, bh, c1h, fused)
            a = v8_splat(A[r2, k])
            c2l = v8_step(a, bl, c2l, fused)
            c2h = v8_step(a, bh, c2h, fused)
            a = v8_splat(A[r3, k])
            c3l = v8_step(a, bl, c3l, fused)
            c3h = v8_step(a, bh, c3h, fused)
            a = v8_splat(A[r4, k])
            c4l = v8_step(a, bl, c4l, fused)
            c4h = v8_step(a, bh, c4h, fused)
            a = v8_splat(A[r5, k])
            c5l = v8_step(a, bl, c5l, fused)
            c5h = v8_step(a, bh, c5h, fused)
        if k1 < K:
            v8_store(acc, i0, j0, c0l)
            v8_store(acc, i0, j0 + 8, c0h)
            v8_store(acc, i0 + 1, j0, c1l)
            v8_store(acc, i0 + 1, j0 + 8, c1h)
            v8_store(acc, i0 + 2, j0, c2l)
            v8_store(acc, i0 + 2, j0 + 8, c2h)
            v8_store(acc, i0 + 3, j0, c3l)
            v8_store(acc, i0 + 3, j0 + 8, c3h)
            v8_store(acc, i0 + 4, j0, c4l)
            v8_store(acc, i0 + 4, j0 + 8, c4h)
            v8_store(acc, i0 + 5, j0, c5l)
            v8_store(acc, i0 + 5, j0 + 8, c5h)
        elif i0 + TILE_M <= M and j0 + TILE_N <= N:
            v8_store(out, i0, j0, v8_canon(c0l))
            v8_store(out, i0, j0 + 8, v8_canon(c0h))
            v8_store(out, i0 + 1, j0, v8_canon(c1l))
            v8_store(out, i0 + 1, j0 + 8, v8_canon(c1h))
            v8_store(out, i0 + 2, j0, v8_canon(c2l))
            v8_store(out, i0 + 2, j0 + 8, v8_canon(c2h))
            v8_store(out, i0 + 3, j0, v8_canon(c3l))
            v8_store(out, i0 + 3, j0 + 8, v8_canon(c3h))
            v8_store(out, i0 + 4, j0, v8_canon(c4l))
            v8_store(out, i0 + 4, j0 + 8, v8_canon(c4h))
            v8_store(out, i0 + 5, j0, v8_canon(c5l))
            v8_store(out, i0 + 5, j0 + 8, v8_canon(c5h))
        else:  # an edge tile: the rows below M (n = 0 for the others) and the columns below N
            nl = min(N - j0, 8)
            nh = N - j0 - 8
            m = M - i0
            v8_store_first(out, i0, j0, v8_canon(c0l), nl)
            v8_store_first(out, i0, j0 + 8, v8_canon(c0h), nh)
            v8_store_first(out, r1, j0, v8_canon(c1l), nl if m > 1 else 0)
            v8_store_first(out, r1, j0 + 8, v8_canon(c1h), nh if m > 1 else 0)
            v8_store_first(out, r2, j0, v8_canon(c2l), nl if m > 2 else 0)
            v8_store_first(out, r2, j0 + 8, v8_canon(c2h), nh if m > 2 else 0)
            v8_store_first(out, r3, j0, v8_canon(c3l), nl if m > 3 else 0)
            v8_store_first(out, r3, j0 + 8, v8_canon(c3h), nh if m > 3 else 0)
            v8_store_first(out, r4, j0, v8_canon(c4l), nl if m > 4 else 0)
            v8_store_first(out, r4, j0 + 8, v8_canon(c4h), nh if m > 4 else 0)
            v8_store_first(out, r5, j0, v8_canon(c5l), nl if m > 5 else 0)
            v8_store_first(out, r5, j0 + 8, v8_canon(c5h), nh if m > 5 else 0)


def _build(fused: bool, parallel: bool):
    """The kernel out = A @ B (with ``bt``: B holds the transpose, out = A @ B.T), fused or not; prange runs
    as range in the serial one. ``P``: room for the packed panels, (npanel - first, K, 16): every panel
    when ``bt``, else only a last, partial one (first = N // 16).

    ``kc < K``: the k loop in blocks of kc terms, the partial sums kept in a padded float32 array (same
    bits): A's rows are then read from L2 once per panel instead of from memory."""

    @kernel(parallel=parallel, spec=(fused, parallel))
    def tile_matmul(A, B, bt, P, out, kc):
        M, K = A.shape
        N = out.shape[1]
        nrow = (M + TILE_M - 1) // TILE_M
        npanel = (N + TILE_N - 1) // TILE_N
        first = npanel - P.shape[0]  # the panels from `first` on are read from packed copies
        for q in prange(npanel - first):
            j0 = (first + q) * TILE_N
            w = min(TILE_N, N - j0)
            if bt:
                for c in range(w):  # B's rows are read in order; the (K, 16) panel stays in L1
                    for k in range(K):
                        P[q, k, c] = B[j0 + c, k]
            else:
                for k in range(K):
                    for c in range(w):
                        P[q, k, c] = B[k, j0 + c]
            for k in range(K):
                for c in range(w, TILE_N):
                    P[q, k, c] = 0.0  # the columns past N: computed, never stored
        if M == 0:
            return
        kc = max(kc, 1)
        if kc >= K:  # one pass over k: strips of row tiles in panel order (a panel's B stays in cache)
            acc0 = np.empty((0, 0), dtype=np.float32)
            nstrip = (nrow + STRIP - 1) // STRIP
            for t in prange(npanel * nstrip):
                jp = t // nstrip
                s = t - jp * nstrip
                j0 = jp * TILE_N
                panel = B if jp < first else P[jp - first]
                jb = j0 if jp < first else 0
                _tiles(A, panel, jb, out, acc0, s * STRIP, min(nrow, (s + 1) * STRIP), j0, M, N, 0, K, K, fused)
            return
        # k in blocks: a group of GROUP row tiles (its A rows over one k block stay in L2) takes every panel
        # in turn, each panel's k block (kc x 16, L1) serving the group's row tiles; the groups run in parallel
        acc = np.empty((nrow * TILE_M, npanel * TILE_N), dtype=np.float32)
        ngroup = (nrow + GROUP - 1) // GROUP
        nk = (K + kc - 1) // kc
        for g in prange(ngroup):
            for kb in range(nk):
                k0 = kb * kc
                k1 = min(K, k0 + kc)
                for jp in range(npanel):
                    j0 = jp * TILE_N
                    panel = B if jp < first else P[jp - first]
                    jb = j0 if jp < first else 0
                    _tiles(A, panel, jb, out, acc, g * GROUP, min(nrow, (g + 1) * GROUP), j0, M, N, k0, k1, K,
                           fused)

    return tile_matmul


_kernels = {(fused, parallel): _build(fused, parallel) for fused in (True, False) for parallel in (True, False)}

_OPERAND = types.Array(types.float32, 2, "A", readonly=True)  # only read: numba converts any 2-D float32 array
#: every kernel's one signature (A, B, bt, P, out, kc)
_SIGNATURE = (_OPERAND, _OPERAND, types.boolean, types.Array(types.float32, 3, "A"),
              types.Array(types.float32, 2, "C"), types.intp)
_compiled = set()
_compile_lock = threading.Lock()


def _kernel(fused: bool, parallel: bool):
    """The kernel, compiled (or loaded from the cache) for _SIGNATURE on its first use only: with
    compilation then disabled, numba converts other layouts to it instead of compiling one per layout."""
    key = bool(fused), bool(parallel)
    d = _kernels[key]
    if key not in _compiled:
        with _compile_lock:  # (a second thread must not call compile() once it is disabled)
            if key not in _compiled:
                d.compile(_SIGNATURE)
                d.disable_compile()
                _compiled.add(key)
    return d


def _matmul_fp32_cpu(a, b, fused, parallel=None, kc=None):
    """C = A @ B for 2-D float32 A (M, K), B (K, N) with an fp32 accumulator (see the module docstring).

    Both are read in place, any strides: ``b``'s 16-column panels directly when its rows are
    contiguous, else (e.g. ``w.T``) from packed copies made panel by panel (reading ``b.T`` row by row).
    Returns a new C-contiguous float32 (M, N) array with canonical NaNs. ``parallel``: use the
    thread pool (None: when the work is large enough); ``kc``: the k block length (None: K_BLOCK above
    K_BLOCK_FROM terms, else no blocks). The bits depend on neither.
    """
    M, K = a.shape
    N = b.shape[1]
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if b.dtype != np.float32:
        b = b.astype(np.float32)
    bt = b.strides[1] != 4 and N >= TILE_N  # rows not contiguous (e.g. w.T): all panels packed from b.T
    if bt:
        b = b.T
    npanel = (N + TILE_N - 1) // TILE_N
    packed = np.empty((npanel if bt else npanel - N // TILE_N, K, TILE_N), dtype=np.float32)
    out = np.empty((M, N), dtype=np.float32)
    if parallel is None:
        parallel = M * N * K >= PARALLEL_MIN_WORK
    kc = (K if K <= K_BLOCK_FROM else K_BLOCK) if kc is None else int(kc)
    _kernel(fused, parallel)(a, b, bt, packed, out, kc)
    return out

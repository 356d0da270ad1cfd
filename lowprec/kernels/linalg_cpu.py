"""CPU loops (``@njit(parallel=True)``) for sum, dot and matmul around kernels/accum.py.

Inputs arrive as 2-D float64 row blocks: ``a`` is (B_a * M, K), ``bt`` is
(B_b * N, K) (b transposed so that each output reads two contiguous rows),
and ``ia``/``ib`` map each output batch to its row block of ``a``/``bt``
(batch broadcasting without copies). The loop is parallel over the output
rows; every output element runs the same scalar accumulation with its own
counters, so the result does not depend on the thread count.
"""

import numpy as np
from numba import njit, prange

from . import SOURCE_DIGEST, accum

_loop = njit(parallel=True, cache=True, nogil=True)


def _build(digest):
    # `digest` is referenced so that numba keys its cache on the kernel sources (see __init__).

    @_loop
    def _matmul_cpu(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk,
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

    return _matmul_cpu


_matmul_cpu = _build(SOURCE_DIGEST)


def _build_ops(digest):
    @_loop
    def _ops_cpu(x, y, z, out, op, p, mode, key0, key1, offset, rbits):
        digest  # noqa: B018
        for i in prange(out.size):
            rnd = accum.draw(mode, key0, key1, offset + i, rbits)
            out[i] = accum.apply_op(op, x[i], y[i], z[i], p, mode, rnd, rbits)

    return _ops_cpu


_ops_cpu = _build_ops(SOURCE_DIGEST)

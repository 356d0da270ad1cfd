"""The general CPU loops around kernels/accum.py: sum, dot and matmul, and the elementwise ops.

:func:`matmul_general` runs any accumulation (every order, compensation, product and chunk format,
rounding mode). Inputs arrive as 2-D float64 row blocks: ``a`` is (B_a * M, K), ``bt`` is
(B_b * N, K) (b transposed so that each output reads two contiguous rows),
and ``ia``/``ib`` map each output batch to its row block of ``a``/``bt``
(batch broadcasting without copies). The loop is parallel over the output
rows; every output element runs the same scalar accumulation with its own
counters, so the result does not depend on the thread count.

:func:`ops_elementwise` is lowprec.ops' loop: one exact operation rounded once per element
(``accum.apply_op``), element ``i`` drawing its random bits from counter ``offset + i``.

Both take every format, mode and flag as runtime arguments: one compiled kernel serves every
accumulation. The per-output and per-element work is a call of ``accum``'s compiled steps.
"""

import numpy as np
from numba import prange

from . import accum
from .jit import kernel


@kernel(parallel=True)
def matmul_general(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                   compensated, pout, key0, key1, offset, rbits):
    """out[(bi*M + i)*N + j] = the accumulation of row ia[bi]*M + i of a and row ib[bi]*N + j of bt."""
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


@kernel(parallel=True)
def ops_elementwise(x, y, z, out, op, p, mode, key0, key1, offset, rbits):
    """out[i] = op(x[i], y[i], z[i]) exact, rounded once to format ``p`` (accum.apply_op)."""
    for i in prange(out.size):
        rnd = accum.draw(mode, key0, key1, offset + i, rbits)
        out[i] = accum.apply_op(op, x[i], y[i], z[i], p, mode, rnd, rbits)

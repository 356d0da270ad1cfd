"""CUDA kernel of block-scaled formats: the twin of kernels/block_cpu.py's loops, one thread per block.

Each thread takes one block ``(p, ba, bq)`` (the same numbering and layout as the CPU loops), finds its amax,
its scale (:func:`~lowprec.kernels.block_cpu.block_scale`) and every element
(:func:`~lowprec.kernels.block_cpu.block_element`), drawing element ``i``'s random bits from counter
``offset + i``: the CPU's bits, whatever the grid. The steps are block_cpu's, on scalar.py's called
definitions (numba-cuda compiles them as device functions; the simulator runs their plain-Python twins,
kernels/plain.py).
Blocks holding a NaN or an Inf are counted with atomics.
"""

from __future__ import annotations

import numpy as np

from . import block_cpu, scalar
from .cuda import cuda, device_functions

_THREADS = 128
_kernels: dict = {}


def _get_kernel():
    """Compile lazily: importing this module must not need a GPU."""
    if _kernels:
        return _kernels["block"]
    scale_of, element, rand = device_functions(block_cpu.block_scale_called, block_cpu.block_element_called,
                                               scalar.DEFINITIONS.called().random_bits)

    @cuda.jit
    def block_kernel(op, xi, out, scale_code, scale_val, counts, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule,
                     emax_elem, m_elem, max_elem, s_t, lo, mode, key0, key1, offset, rbits):
        b = cuda.grid(1)
        nA = (A + TA - 1) // TA
        nQ = (Q + TQ - 1) // TQ
        if b >= P * nA * nQ:
            return
        p = b // (nA * nQ)
        rest = b - p * (nA * nQ)
        ba = rest // nQ
        bq = rest - ba * nQ
        a0 = ba * TA
        a1 = min(a0 + TA, A)
        q0 = bq * TQ
        q1 = min(q0 + TQ, Q)
        absmask = (np.int64(1) << (CW - 1)) - 1
        infbits = ((np.int64(1) << (CW - 1 - CM)) - 1) << CM
        amax = np.int64(0)
        for a in range(a0, a1):
            for q in range(q0, q1):
                amax = max(amax, np.int64(xi[(p * A + a) * Q + q]) & absmask)
        if amax >= infbits:
            cuda.atomic.add(counts, 0 if amax > infbits else 1, 1)
            scale_code[b] = 255
            scale_val[b] = np.nan
            bad = (infbits | (np.int64(1) << (CM - 1))) if op == block_cpu.QUANTIZE else np.int64(0)
            for a in range(a0, a1):
                for q in range(q0, q1):
                    out[(p * A + a) * Q + q] = bad
            return
        is_amax = rule == block_cpu.AMAX
        code, val, s_in, s_out, S = scale_of(amax, CW, CM, CB, is_amax, rule, emax_elem, m_elem, max_elem, ps, s_t)
        scale_code[b] = code
        scale_val[b] = val
        for a in range(a0, a1):
            for q in range(q0, q1):
                i = (p * A + a) * Q + q
                rnd = rand(key0, key1, offset + i, rbits) if mode == scalar.STOCHASTIC else np.uint64(0)
                out[i] = element(op, xi[i], CW, CM, CB, pe, is_amax, s_in, s_out, S, lo, mode, rnd, rbits)

    _kernels["block"] = block_kernel
    return block_kernel


def _block_cuda(op, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule, emax_elem, m_elem,
                max_elem, s_t, lo, mode, key0, key1, offset, rbits):
    """Run the block kernel (arguments as block_cpu's loops); returns (blocks with a NaN, blocks with an Inf)."""
    kernel = _get_kernel()
    nblocks = scale_code.size
    counts = np.zeros(2, dtype=np.int64)
    if nblocks == 0:
        return 0, 0
    d_x = cuda.to_device(np.ascontiguousarray(xi))
    d_out, d_code = cuda.device_array_like(out), cuda.device_array_like(scale_code)
    d_val, d_counts = cuda.device_array_like(scale_val), cuda.to_device(counts)
    kernel[(nblocks + _THREADS - 1) // _THREADS, _THREADS](
        op, d_x, d_out, d_code, d_val, d_counts, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule, emax_elem, m_elem,
        max_elem, s_t, lo, mode, key0, key1, offset, rbits)
    d_out.copy_to_host(out)
    d_code.copy_to_host(scale_code)
    d_val.copy_to_host(scale_val)
    d_counts.copy_to_host(counts)
    return int(counts[0]), int(counts[1])

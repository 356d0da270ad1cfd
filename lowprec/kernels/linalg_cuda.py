"""CUDA kernels for sum, dot, matmul and the elementwise ops around kernels/accum.py.

The twins of accumulate_cpu.py: one thread per output element running the same
scalar accumulation (``accum.accumulate``) with the same counters, so the
bits equal the CPU's. Kernels compile lazily, on first use: importing this
module needs no GPU. Under ``NUMBA_ENABLE_CUDASIM=1`` they run in numba's
CUDA simulator (how CI proves CPU == CUDA).
"""

from __future__ import annotations

import numpy as np

from . import accum
from .cuda import cuda, is_simulator

_THREADS = 128
_kernels: dict = {}


def _sim_array(x):
    """The numpy array behind a simulator's in-kernel array (the simulator cannot pass its
    wrapper objects to compiled functions)."""
    return getattr(getattr(x, "_item", None), "_ary", x)


def _get_kernels() -> dict:
    if _kernels:
        return _kernels
    if is_simulator():
        # compiled, not interpreted (a 4 x 128 x 64 matmul interpreted takes ~15 s): the CPU loops compile
        # them with these argument types and numba's cache keeps them (accum.py), so ``lowprec warm`` leaves
        # them on disk for the simulator
        def accumulate(a, ra, bt, rb, *rest):
            return accum.accumulate(_sim_array(a), ra, _sim_array(bt), rb, *rest)
    else:
        accumulate = accum.accumulate

    @cuda.jit
    def matmul_kernel(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                      compensated, pout, key0, key1, offset, rbits):
        o = cuda.grid(1)
        if o < out.size:
            MN = M * N
            bi = o // MN
            rest = o - bi * MN
            i = rest // N
            j = rest - i * N
            stack = cuda.local.array(64, np.float64)  # accum.PAIRWISE_STACK
            out[o] = accumulate(a, ia[bi] * M + i, bt, ib[bi] * N + j, K, o, has_prod, pprod, fused,
                                      pacc, mode, order, chunk, pchunk, compensated, pout, key0, key1, offset,
                                      rbits, stack)

    @cuda.jit
    def ops_kernel(x, y, z, out, op, p, mode, key0, key1, offset, rbits):
        i = cuda.grid(1)
        if i < out.size:
            rnd = np.uint64(accum.draw(mode, key0, key1, offset + i, rbits))
            out[i] = accum.apply_op(op, x[i], y[i], z[i], p, mode, rnd, rbits)

    _kernels.update(matmul=matmul_kernel, ops=ops_kernel)
    return _kernels


def _launch(kernel, n, *args):
    blocks = (n + _THREADS - 1) // _THREADS
    kernel[blocks, _THREADS](*args)


def _matmul_cuda(a, bt, ia, ib, out, *rest):
    """Same arguments as linalg_cpu._matmul_cpu (accumulate_cpu.matmul_general); fills ``out`` (host array)."""
    k = _get_kernels()
    d = [cuda.to_device(np.ascontiguousarray(v)) for v in (a, bt, ia, ib)]
    d_out = cuda.device_array_like(out)
    _launch(k["matmul"], out.size, *d, d_out, *rest)
    d_out.copy_to_host(out)


def _ops_cuda(x, y, z, out, *rest):
    """Same arguments as accumulate_cpu.ops_elementwise; fills ``out`` (host array)."""
    k = _get_kernels()
    d = [cuda.to_device(np.ascontiguousarray(v)) for v in (x, y, z)]
    d_out = cuda.device_array_like(out)
    _launch(k["ops"], out.size, *d, d_out, *rest)
    d_out.copy_to_host(out)


# -- hardware matrix units (lowprec.matrix_units): the twin of kernels/mma_cpu.py ----------------------
_mma_kernels: dict = {}


def _get_mma_kernel(groups: bool = False):
    """One thread per output element running ``mma.output`` (every step of that element: the building blocks
    mma_cpu.py runs on vector lanes), or ``mma.output_groups`` for a group-scaled unit, so the bits equal the
    CPU's."""
    key = "groups" if groups else "mma"
    if key in _mma_kernels:
        return _mma_kernels[key]
    from . import mma

    if is_simulator():
        def output(a, b, c, sa, sb, *rest):
            return mma.output(_sim_array(a), _sim_array(b), c, _sim_array(sa), _sim_array(sb), *rest)

        def output_groups(a, b, c, ga, gb, *rest):
            return mma.output_groups(_sim_array(a), _sim_array(b), c, _sim_array(ga), _sim_array(gb), *rest)
    else:
        output, output_groups = mma.output, mma.output_groups

    if groups:
        @cuda.jit
        def kernel(a, b, c, ga, gb, out, M, N, K, k, GS, F, ez, cemin, om, oemin, overflow, rz, pg):
            o = cuda.grid(1)
            if o < M * N:
                i = o // N
                j = o - i * N
                out[i, j] = output_groups(a, b, c[i, j], ga, gb, i, j, K, k, GS, F, ez, cemin, om, oemin, overflow,
                                          rz, pg)
    else:
        @cuda.jit
        def kernel(a, b, c, sa, sb, out, M, N, K, blk, k, F, ez, a_emin, b_emin, cemin, om, oemin, overflow, rz,
                   pg):
            o = cuda.grid(1)
            if o < M * N:
                i = o // N
                j = o - i * N
                out[i, j] = output(a, b, c[i, j], sa, sb, blk, i, j, K, k, F, ez, a_emin, b_emin, cemin, om, oemin,
                                   overflow, rz, pg)

    _mma_kernels[key] = kernel
    return kernel


def _matmul_mma_cuda(a, b, c, sa=None, sb=None, *, k, frac_bits, e_zero, a_emin, b_emin, c_emin, out_man, out_emin,
                     out_emax, toward_zero, promote_steps, block=0, group=0):
    """``c + a @ b`` as kernels/mma_cpu.matmul_mma_cpu (same arguments, same bits), on the device."""
    M, K = a.shape
    N = b.shape[1]
    out = np.empty((M, N))
    if M == 0 or N == 0:
        return out
    if K == 0:  # no step: the addend as it is
        out[...] = c
        return out
    d = [cuda.to_device(np.ascontiguousarray(v, dtype=np.float64)) for v in (a, b, c)]
    d_out = cuda.device_array_like(out)
    i64 = np.int64
    tail = (i64(frac_bits), i64(e_zero))
    rest = (i64(c_emin), i64(out_man), i64(out_emin), np.float64(2.0 ** (out_emax + 1)), bool(toward_zero),
            i64(promote_steps))
    if group > 0:
        from .mma_cpu import _expand

        Kp = -(-K // k) * k
        ga = cuda.to_device(np.ascontiguousarray(_expand(sa, block, 1, Kp)[:, ::group]))
        gb = cuda.to_device(np.ascontiguousarray(_expand(sb, block, 0, Kp)[::group, :]))
        _launch(_get_mma_kernel(True), M * N, *d, ga, gb, d_out, i64(M), i64(N), i64(K), i64(k), i64(group), *tail,
                *rest)
    else:
        if block > 0:
            sa_, sb_ = np.ascontiguousarray(sa, dtype=np.int32), np.ascontiguousarray(sb, dtype=np.int32)
        else:
            sa_ = sb_ = np.zeros((1, 1), dtype=np.int32)
        _launch(_get_mma_kernel(False), M * N, *d, cuda.to_device(sa_), cuda.to_device(sb_), d_out, i64(M), i64(N),
                i64(K), i64(block), i64(k), *tail, i64(a_emin), i64(b_emin), *rest)
    d_out.copy_to_host(out)
    return out

"""CUDA array loops around kernels/scalar.py: the only module that imports numba.cuda.

The kernels are the CPU loops' twins: one thread per element, the same
scalar functions, the same counter ``offset + i`` for random bits, so the
bits equal the CPU's. Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) they run in numba's CUDA simulator, which is how CI proves the
equality without a GPU.
"""

from __future__ import annotations

import numpy as np

from . import scalar

try:  # numba-cuda (the maintained target) and numba's built-in one share this import path
    from numba import cuda
except Exception:  # pragma: no cover - numba without any CUDA support
    cuda = None

STOCHASTIC = scalar.STOCHASTIC
_THREADS = 256


def is_available() -> bool:
    """True when CUDA kernels can run: a GPU, or the simulator."""
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - driver errors mean "no"
        return False


def is_simulator() -> bool:
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0))


_kernels = {}


def device_functions(*functions):
    """The functions a kernel calls: themselves for a GPU, which compiles them into the kernel; in numba's
    simulator, whose threads call them from Python, their plain-Python twins (kernels/plain.py: the same
    source, no compiler; compiling each one for the simulator's argument types cost ~10-40 s of CPU per
    function and process)."""
    if not is_simulator():
        return functions
    from .plain import twin

    return tuple(twin(f) for f in functions)


def _get_kernels():
    """Compile lazily: importing this module must not need a GPU."""
    if _kernels:
        return _kernels
    random_bits, round_bits, encode_bits, decode_bits = device_functions(
        scalar.random_bits, scalar.round_bits, scalar.encode_bits, scalar.decode_bits)

    @cuda.jit
    def round_kernel(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
        i = cuda.grid(1)
        if i < x.size:
            rnd = np.uint64(random_bits(key0, key1, offset + i, rbits)) if mode == STOCHASTIC else np.uint64(0)
            out[i] = round_bits(x[i], CW, CM, CB, p, mode, rnd, rbits)

    @cuda.jit
    def encode_kernel(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
        i = cuda.grid(1)
        if i < x.size:
            rnd = np.uint64(random_bits(key0, key1, offset + i, rbits)) if mode == STOCHASTIC else np.uint64(0)
            out[i] = encode_bits(x[i], CW, CM, CB, p, mode, rnd, rbits)

    @cuda.jit
    def decode_kernel(bits, out, CW, CM, CB, p):
        i = cuda.grid(1)
        if i < bits.size:
            out[i] = decode_bits(bits[i], CW, CM, CB, p)

    _kernels.update(round=round_kernel, encode=encode_kernel, decode=decode_kernel)
    return _kernels


def _launch(kernel, n, *args):
    if n == 0:
        return
    blocks = (n + _THREADS - 1) // _THREADS
    kernel[blocks, _THREADS](*args)


def _to_device(a):
    return cuda.to_device(np.ascontiguousarray(a))


def _round_cuda(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    k = _get_kernels()
    d_x, d_out = _to_device(x), cuda.device_array_like(out)
    _launch(k["round"], x.size, d_x, d_out, CW, CM, CB, p, mode, key0, key1, offset, rbits)
    d_out.copy_to_host(out)


def _encode_cuda(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    k = _get_kernels()
    d_x, d_out = _to_device(x), cuda.device_array_like(out)
    _launch(k["encode"], x.size, d_x, d_out, CW, CM, CB, p, mode, key0, key1, offset, rbits)
    d_out.copy_to_host(out)


def _decode_cuda(bits, out, CW, CM, CB, p):
    k = _get_kernels()
    d_b, d_out = _to_device(bits), cuda.device_array_like(out)
    _launch(k["decode"], bits.size, d_b, d_out, CW, CM, CB, p)
    d_out.copy_to_host(out)

"""CPU array loops (``@njit(parallel=True)``) around kernels/scalar.py.

Each loop is one line of work per element. Arrays arrive flat, as the
integer views of their carrier (int32 for float32, int64 for float64), so
no float bit-casts are needed. Every element's random counter is
``offset + i``: results do not depend on the thread count.
"""

from numba import njit, prange

from . import SOURCE_DIGEST, scalar

_loop = njit(parallel=True, cache=True, nogil=True)

STOCHASTIC = scalar.STOCHASTIC


def _build(digest):
    # `digest` is referenced so that numba keys its cache on the kernel sources (see __init__).

    @_loop
    def _round_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
        digest  # noqa: B018
        cmask = (1 << CW) - 1 if CW < 64 else -1
        for i in prange(x.size):
            rnd = scalar.random_bits(key0, key1, offset + i, rbits) if mode == STOCHASTIC else 0
            out[i] = scalar.round_bits(x[i] & cmask, CW, CM, CB, p, mode, rnd, rbits)

    @_loop
    def _encode_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
        digest  # noqa: B018
        cmask = (1 << CW) - 1 if CW < 64 else -1
        for i in prange(x.size):
            rnd = scalar.random_bits(key0, key1, offset + i, rbits) if mode == STOCHASTIC else 0
            out[i] = scalar.encode_bits(x[i] & cmask, CW, CM, CB, p, mode, rnd, rbits)

    @_loop
    def _decode_cpu(bits, out, CW, CM, CB, p):
        digest  # noqa: B018
        for i in prange(bits.size):
            out[i] = scalar.decode_bits(bits[i], CW, CM, CB, p)

    @_loop
    def _random_bits_cpu(out, key0, key1, offset, rbits):
        digest  # noqa: B018
        for i in prange(out.size):
            out[i] = scalar.random_bits(key0, key1, offset + i, rbits)

    return _round_cpu, _encode_cpu, _decode_cpu, _random_bits_cpu


_round_cpu, _encode_cpu, _decode_cpu, _random_bits_cpu = _build(SOURCE_DIGEST)

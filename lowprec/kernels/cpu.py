"""CPU array loops (``@njit(parallel=True)``) around kernels/scalar.py.

Each loop is one line of work per element. Arrays arrive flat, as the
integer views of their carrier (int32 for float32, int64 for float64), so
no float bit-casts are needed. Every element's random counter is
``offset + i``: results do not depend on the thread count.

Loops are specialised per (format kind, rounding mode): both are closure
constants (and parallel or serial, by size), so numba folds the mode dispatch away and the loop vectorises
(measured 8x faster than a runtime mode). numba hashes closure variables
into its cache key, so each specialisation is cached on disk separately;
:data:`lowprec.kernels.SOURCE_DIGEST` is closed over too, so that an edit
to any kernel source invalidates the cache.
"""

from numba import njit, prange

from . import SOURCE_DIGEST, scalar

_loop = njit(parallel=True, cache=True, nogil=True)
_serial = njit(cache=True, nogil=True)
_specialised: dict = {}

#: Below this many elements the loops run on the calling thread: waking the
#: thread pool costs ~1 ms, more than rounding 32k values. Same bits either way.
SERIAL_BELOW = 1 << 15


def _build(kind, mode, digest, _loop):
    stochastic = mode == scalar.STOCHASTIC

    @_loop
    def round_loop(x, out, CW, CM, CB, p, key0, key1, offset, rbits):
        digest  # noqa: B018  (cache key, see module docstring)
        for i in prange(x.size):
            rnd = scalar.random_bits(key0, key1, offset + i, rbits) if stochastic else 0
            if kind == scalar.KIND_FLOAT:
                out[i] = scalar.round_float_carrier(x[i], CW, CM, CB, p[1], p[2], p[3], p[4],
                                                    p[5], p[6], p[7], mode, rnd, rbits)
            else:
                out[i] = scalar.round_bits(x[i], CW, CM, CB, p, mode, rnd, rbits)

    @_loop
    def encode_loop(x, out, CW, CM, CB, p, key0, key1, offset, rbits):
        digest  # noqa: B018
        for i in prange(x.size):
            rnd = scalar.random_bits(key0, key1, offset + i, rbits) if stochastic else 0
            out[i] = scalar.encode_bits(x[i], CW, CM, CB, p, mode, rnd, rbits)

    return round_loop, encode_loop


def _loops(kind: int, mode: int, n: int):
    serial = n < SERIAL_BELOW
    key = (kind, mode, serial)
    if key not in _specialised:
        _specialised[key] = _build(kind, mode, SOURCE_DIGEST, _serial if serial else _loop)
    return _specialised[key]


def _round_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    _loops(p[0], mode, x.size)[0](x, out, CW, CM, CB, p, key0, key1, offset, rbits)


def _encode_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    _loops(p[0], mode, x.size)[1](x, out, CW, CM, CB, p, key0, key1, offset, rbits)


@_loop
def _decode_loop(bits, out, CW, CM, CB, p):
    SOURCE_DIGEST  # noqa: B018
    for i in prange(bits.size):
        out[i] = scalar.decode_bits(bits[i], CW, CM, CB, p)


def _decode_cpu(bits, out, CW, CM, CB, p):
    _decode_loop(bits, out, CW, CM, CB, p)


@_loop
def _random_bits_loop(out, key0, key1, offset, rbits):
    SOURCE_DIGEST  # noqa: B018
    for i in prange(out.size):
        out[i] = scalar.random_bits(key0, key1, offset + i, rbits)


def _random_bits_cpu(out, key0, key1, offset, rbits):
    _random_bits_loop(out, key0, key1, offset, rbits)

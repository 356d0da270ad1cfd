"""CPU array loops (``@njit(parallel=True)``) around kernels/scalar.py.

Each loop is one line of work per element. Arrays arrive flat, as the
integer views of their carrier (int32 for float32, int64 for float64), so
no float bit-casts are needed. Every element's random counter is
``offset + i``: results do not depend on the thread count.

Loops are specialised per (format kind, rounding mode, r == 32 for
stochastic rounding, a float format's NaN encoding, subnormals and
saturation, a fixed format's signedness and overflow mode): all are closure constants (and parallel or serial, by
size), so numba folds the mode dispatch away and the loop vectorises
(measured 8x faster than a runtime mode). A float32 carrier arrives as int32
and is rounded in 32-bit lanes (scalar.round_float_carrier). numba hashes closure variables
into its cache key, so each specialisation is cached on disk separately;
:data:`lowprec.kernels.SOURCE_DIGEST` is closed over too, so that an edit
to any kernel source invalidates the cache.
"""

import numpy as np
from numba import njit, prange

from . import SOURCE_DIGEST, scalar

_loop = njit(parallel=True, cache=True, nogil=True)
_serial = njit(cache=True, nogil=True)
_specialised: dict = {}

#: Below this many elements the loops run on the calling thread: waking the
#: thread pool costs ~1 ms, more than rounding 32k values. Same bits either way.
SERIAL_BELOW = 1 << 15


@njit(inline="always")
def _round_element(kind, u, CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rbits):
    """One element: kind, flags and mode are the loop's compile-time constants."""
    if kind == scalar.KIND_FLOAT:
        return scalar.round_float_carrier(u, CW, CM, CB, p[1], p[2], p[3], p[4], flag0, flag1, flag2,
                                          mode, rnd, rbits)
    return scalar.round_fixed_carrier(u, CW, CM, CB, p[1], p[2], flag0, flag1, mode, rnd, rbits)


@njit(inline="always")
def _events(after, before, tiny, fmax, top):
    """Telemetry's per-element events (lowprec.telemetry, one definition for both counting loops).

    ``after``/``before``: uint32 bits of a float32 result and of the value rounded; ``tiny``/``fmax``:
    bits of the format's smallest normal and largest finite value; ``top``: the largest ``|bits|`` an
    overflowed result can have (Inf's bits, or all ones where a NaN result counts: no Inf). For a
    non-negative float the order of values is the order of bits, so each test is an integer compare of
    ``|bits|``. Returns (NaN result, subnormal result, underflow to zero, result >= max: an overflow
    candidate) as 0/1 int64s (branch-free: the loops vectorise).
    """
    absm = np.uint32(0x7FFFFFFF)
    z = np.uint32(0)
    a = after & absm
    b = before & absm
    return (np.int64(a > np.uint32(0x7F800000)), np.int64(a != z) * np.int64(a < tiny),
            np.int64(a == z) * np.int64(b != z), np.int64(a >= fmax) * np.int64(a <= top))


@njit(inline="always")
def _overflow_event(after, before, fmax, top):
    """1 for a finite value whose result is Inf (or NaN without Inf), or +-max from beyond max."""
    absm = np.uint32(0x7FFFFFFF)
    inf = np.uint32(0x7F800000)
    a = after & absm
    b = before & absm
    return (np.int64(b < inf) * np.int64(a >= fmax) * np.int64(a <= top)
            * max(np.int64(a >= inf), np.int64(b > fmax)))


def _build(kind, mode, digest, _loop, r32, flag0, flag1, flag2):
    # flags: a float format's (nan_code, has_subnormals, saturate); a fixed one's (signed, wrap, 0)
    stochastic = mode == scalar.STOCHASTIC

    @_loop
    def round_loop(x, out, CW, CM, CB, p, key0, key1, offset, rbits):
        digest  # noqa: B018  (cache key, see module docstring)
        rb = 32 if r32 else rbits  # a constant 32 (the default) lets the compiler fold the r-dependent shifts
        n = x.size
        if stochastic and n > 0 and ((offset + n - 1) >> 32) == (offset >> 32):
            # every counter shares its high word: hash it once (random_bits_split, same bits)
            mixed_hi = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
            lo0 = offset & 0xFFFFFFFF
            for i in prange(n):
                rnd = scalar.random_bits_split(key0, key1, np.uint32(lo0 + i), mixed_hi, rb)
                out[i] = _round_element(kind, x[i], CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rb)
        else:  # (if/else, not an early return: a prange after a return is not parallelised)
            for i in prange(n):
                rnd = scalar.random_bits(key0, key1, offset + i, rb) if stochastic else 0
                out[i] = _round_element(kind, x[i], CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rb)

    @_loop
    def encode_loop(x, out, CW, CM, CB, p, key0, key1, offset, rbits):
        digest  # noqa: B018
        rb = 32 if r32 else rbits
        for i in prange(x.size):
            rnd = scalar.random_bits(key0, key1, offset + i, rb) if stochastic else 0
            out[i] = scalar.encode_bits(x[i], CW, CM, CB, p, mode, rnd, rb)

    @_loop
    def round_count_loop(x, out, CW, CM, CB, p, key0, key1, offset, rbits, tiny, fmax, top):
        """round_loop's rounding, then telemetry's counts of it (see _events), in one call.

        Two passes: counting inside the rounding loop kept it from vectorising (measured 2x slower).
        The rounding pass is round_loop's body, not a call to round_loop: a cached closure that calls
        another closure's dispatcher can be bound to a same-named symbol of another specialisation
        when both are loaded from numba's cache (seen: fp16 rounded by a fixed-point loop)."""
        digest  # noqa: B018
        rb = 32 if r32 else rbits
        n = x.size
        if stochastic and n > 0 and ((offset + n - 1) >> 32) == (offset >> 32):
            mixed_hi = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
            lo0 = offset & 0xFFFFFFFF
            for i in prange(n):
                rnd = scalar.random_bits_split(key0, key1, np.uint32(lo0 + i), mixed_hi, rb)
                out[i] = _round_element(kind, x[i], CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rb)
        else:
            for i in prange(n):
                rnd = scalar.random_bits(key0, key1, offset + i, rb) if stochastic else 0
                out[i] = _round_element(kind, x[i], CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rb)
        nan = 0
        sub = 0
        und = 0
        big = 0
        for i in prange(n):
            e_nan, e_sub, e_und, e_big = _events(np.uint32(out[i]), np.uint32(x[i]), tiny, fmax, top)
            nan += e_nan
            sub += e_sub
            und += e_und
            big += e_big
        over = 0
        if big:
            for i in range(n):
                over += _overflow_event(np.uint32(out[i]), np.uint32(x[i]), fmax, top)
        return und, sub, over, nan

    return round_loop, encode_loop, round_count_loop


def _loops(p, mode: int, n: int, rbits: int):
    serial = n < SERIAL_BELOW
    r32 = mode == scalar.STOCHASTIC and rbits == 32
    # a float format's NaN encoding, subnormals and saturation (a fixed format's signedness and
    # overflow mode, passed in the first two slots) become compile-time constants (a handful of
    # combinations); the other parameters stay runtime arguments
    flags = (int(p[5]), int(p[6]), int(p[7])) if p[0] == scalar.KIND_FLOAT else (int(p[3]), int(p[4]), 0)
    key = (p[0], mode, serial, r32, flags)
    if key not in _specialised:
        _specialised[key] = _build(p[0], mode, SOURCE_DIGEST, _serial if serial else _loop, r32, *flags)
    return _specialised[key]


def _round_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    _loops(p, mode, x.size, rbits)[0](x, out, CW, CM, CB, p, key0, key1, offset, rbits)


def _encode_cpu(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    _loops(p, mode, x.size, rbits)[1](x, out, CW, CM, CB, p, key0, key1, offset, rbits)


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

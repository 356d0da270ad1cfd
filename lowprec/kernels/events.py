"""What a rounding did, element by element: the events telemetry counts, and the loop that counts them.

One definition of the events (:func:`events`, :func:`overflow_event`) serves telemetry's counts
(:func:`count_bits`, called by :mod:`lowprec.telemetry` and by the training runtime after each rounding)
and the compiled optimizer step (kernels/optim_cpu.py), which counts the roundings it replaces.

Values arrive as the uint32 bit patterns of float32 numbers. For a non-negative float the order of
values is the order of bits, so each test is an integer compare of ``|bits|`` with the bits of the
format's smallest normal (``tiny``) and largest finite value (``fmax``); ``top`` is the largest
``|bits|`` an overflowed result can have (Inf's bits, or all ones where a NaN result counts: no Inf).
"""

import numpy as np
from numba import njit, prange

from .jit import kernel

#: Below this many elements counting runs on the calling thread (the pool's wake-up costs more).
PARALLEL_FROM = 1 << 18


@njit(inline="always")
def events(after, before, tiny, fmax, top):
    """(NaN result, subnormal result, underflow to zero, result >= max: an overflow candidate), 0/1 int64s.

    Branch-free, so that the loops vectorise."""
    absm = np.uint32(0x7FFFFFFF)
    z = np.uint32(0)
    a = after & absm
    b = before & absm
    return (np.int64(a > np.uint32(0x7F800000)), np.int64(a != z) * np.int64(a < tiny),
            np.int64(a == z) * np.int64(b != z), np.int64(a >= fmax) * np.int64(a <= top))


@njit(inline="always")
def overflow_event(after, before, fmax, top):
    """1 for a finite value whose result is Inf (or NaN without Inf), or +-max from beyond max."""
    absm = np.uint32(0x7FFFFFFF)
    inf = np.uint32(0x7F800000)
    a = after & absm
    b = before & absm
    return (np.int64(b < inf) * np.int64(a >= fmax) * np.int64(a <= top)
            * max(np.int64(a >= inf), np.int64(b > fmax)))


def _build(parallel):
    @kernel(parallel=parallel, spec=(parallel,))
    def count(before, after, tiny, fmax, top, same):
        nan = 0
        subnormal = 0
        underflow = 0
        big = 0
        if same:
            for i in prange(after.size):
                e_nan, e_sub, _, _ = events(after[i], after[i], tiny, fmax, top)
                nan += e_nan
                subnormal += e_sub
            return 0, subnormal, 0, nan
        for i in prange(after.size):
            e_nan, e_sub, e_und, e_big = events(after[i], before[i], tiny, fmax, top)
            nan += e_nan
            subnormal += e_sub
            underflow += e_und
            big += e_big
        overflow = 0
        if big:
            for i in range(after.size):
                overflow += overflow_event(after[i], before[i], fmax, top)
        return underflow, subnormal, overflow, nan

    return count


_count = {False: _build(False), True: _build(True)}


def count_bits(before, after, tiny, fmax, top, same=False) -> tuple:
    """(underflow, subnormal, overflow, nan) counts of rounding ``before`` to ``after``.

    ``before``, ``after``: flat uint32 views of float32 arrays of one size; ``tiny``, ``fmax``, ``top``:
    uint32 thresholds (module docstring). ``same``: nothing was rounded, only the state of the values is
    counted (no underflow or overflow). Counts are summed as integer products (the loops vectorise);
    the overflow pass runs only when some result is at least ``max``."""
    u, s, o, n = _count[after.size >= PARALLEL_FROM](before, after, tiny, fmax, top, bool(same))
    return int(u), int(s), int(o), int(n)

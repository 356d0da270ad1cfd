"""Shared scalar steps of an accumulation (dot products, sums, matmul).

Scalars in, scalars out (plus read-only input rows and one small scratch
array for pairwise order), compiled into both the CPU loops
(accumulate_cpu.py) and the CUDA kernels (linalg_cuda.py), so the two cannot
drift apart. Small helpers are ``njit(inline="always")``; every step that
runs once per rounding event, per term or per output element (``round64``,
``draw``, ``round_sum``, ``apply_op``, ``term``, ``kahan_step``,
``accumulate``) is a plain module-level ``njit`` function that is compiled
once and called: numba inlines an ``inline="always"`` function at IR level
and types it again at every call site. Each called step is called with one
argument signature only (constants are passed as ``np.int64``, never as
int literals, which numba would type as a signature of their own and
compile the step again). The loops that call them are cached
(kernels/jit.py), and so are the three entry points the CUDA kernels call
(``accumulate``, ``apply_op``, ``draw``): numba's CUDA simulator calls them
from Python with the argument types of the CPU loops, and loads the code
those loops compiled instead of compiling it again in every process.

All values travel in float64 registers. Every format an accumulation uses
holds its values exactly in float64, products of the (validated) input
formats are exact in float64, and every addition is rounded **once** from
its exact value (NUMERICS.md section 3):

    round_sum(x, y) = round(x + y exactly)
        s, e = TwoSum(x, y)                 (s + e == x + y exactly)
        s' = round-to-odd of s + e to 53 bits (s with its last bit forced odd
             toward e when e != 0)
        round(s', F, mode)

Rounding to odd at 53 bits and then to a format of precision p <= 51 equals
rounding the exact value once, for every mode (Boldo and Melquiond,
"Emulation of FMA and correctly rounded sums: proved algorithms using
rounding to odd", IEEE TC 2008). For stochastic rounding with r random bits
it is exact when p + r <= 52: the first 52 bits of s' equal those of the
exact sum, so the r bits below the kept ones that decide the rounding are
unchanged (lowprec.accumulation picks r accordingly). TwoSum, TwoProduct and
rounding to odd are rules.py's (with their proofs).

Random counters: the rounding event ``slot`` of term ``k`` of output element
``o`` uses counter ``offset + (o * K + k) * NSLOT + slot``: a pure function of
the output element and k, never of a thread, a tile or a backend.
"""

import math

import numpy as np
from numba import njit

from . import scalar
from .jit import kernel
from .rules import to_odd, two_prod, two_sum

_jit = njit(nogil=True, inline="always")
# Compiled once and called (LLVM may still inline them after linking; see the module docstring).
_call = njit(nogil=True, error_model="numpy")  # x/0 gives Inf/NaN as IEEE and CUDA do
# The entry points of the CPU loops and the CUDA kernels, cached on disk: numba's CUDA simulator calls them
# from Python with the argument types the CPU loops use, so it loads what those loops compiled.
_entry = kernel(error_model="numpy")

# Orders (lowprec.accumulation.ORDERS index).
SEQUENTIAL = 0
PAIRWISE = 1
BLOCKED = 2

# Random counter slots per (output element, k).
NSLOT = 8
SLOT_ADD = 0  # s + t (sequential/blocked), pairwise combine keyed by the right block's first k
SLOT_KAHAN_Y = 1  # y = t - c
SLOT_KAHAN_Z = 2  # z = (s + y) - s
SLOT_KAHAN_C = 3  # c = z - y
# slots 4..7 are reserved (chunk sums are promoted with nearest-even and draw nothing)

STOCHASTIC = scalar.STOCHASTIC
NEAREST_EVEN = scalar.NEAREST_EVEN
DOWN = scalar.DOWN

PAIRWISE_STACK = 64  # pairwise needs one slot per bit of K
_scalar_called = scalar.DEFINITIONS.called()


@_call
def round64(x, p, mode, rnd, rbits):
    """scalar.round_f64, on scalar.py's called definitions (each scalar function compiled once, as a call)."""
    return _scalar_called.round_f64(x, p, mode, rnd, rbits)


@_entry
def draw(mode, key0, key1, counter, rbits):
    """Random bits for a stochastic rounding event (0 for deterministic modes)."""
    if mode == STOCHASTIC:
        return scalar.random_bits(key0, key1, counter, rbits)
    return np.uint64(0)


@_jit
def counter_of(offset, o, K, k, slot):
    return offset + (np.int64(o) * K + k) * NSLOT + slot


@_call
def round_sum(x, y, p, mode, rnd, rbits):
    """The exact sum ``x + y`` of two float64 values rounded once to format ``p``."""
    x = np.float64(x)
    y = np.float64(y)
    s, e = two_sum(x, y)
    if s - s != 0.0:  # Inf or NaN: nothing below it to keep
        return round64(s, p, mode, rnd, rbits)
    if e != 0.0:
        s = to_odd(s, e)
    elif s == 0.0 and mode == DOWN:
        # an exact zero sum is -0 when rounding down, unless both operands are +0 (IEEE 754 6.3)
        if scalar.f64_as_i64(x) < 0 or scalar.f64_as_i64(y) < 0 or x != 0.0 or y != 0.0:
            s = -0.0
    return round64(s, p, mode, rnd, rbits)


# Elementwise operation codes (lowprec.ops).
OP_ADD = 0
OP_SUB = 1
OP_MUL = 2
OP_DIV = 3
OP_SQRT = 4
OP_FMA = 5


@_entry
def apply_op(op, x, y, z, p, mode, rnd, rbits):
    """``op`` of the float64 operands, exact, rounded once to format ``p``.

    Each case finds a faithful float64 approximation x0 of the exact result
    and the sign of the exact remainder, rounds to odd at 53 bits
    (:func:`to_odd`), then rounds once to ``p``."""
    x = np.float64(x)
    y = np.float64(y)
    z = np.float64(z)
    if op == OP_ADD:
        return round_sum(x, y, p, mode, rnd, rbits)
    if op == OP_SUB:
        return round_sum(x, -y, p, mode, rnd, rbits)
    if op == OP_MUL:
        h, l = two_prod(x, y)
        if h - h != 0.0 or h == 0.0:
            l = 0.0
        return round64(to_odd(h, l), p, mode, rnd, rbits)
    if op == OP_DIV:
        q = x / y
        r = 0.0
        if q - q == 0.0 and q != 0.0:
            h, l = two_prod(q, y)
            r = (x - h) - l  # the exact remainder x - q*y (representable for a rounded quotient)
            if y < 0.0:
                r = -r  # x/y - q = r/y
        return round64(to_odd(q, r), p, mode, rnd, rbits)
    if op == OP_SQRT:
        q = math.sqrt(x) if x >= 0.0 else np.nan  # sqrt(-0) = -0, sqrt(x < 0) = NaN; math.sqrt: numba-cuda has no np.sqrt for scalars
        r = 0.0
        if q - q == 0.0 and q > 0.0:
            h, l = two_prod(q, q)
            r = (x - h) - l  # x - q*q exactly
        return round64(to_odd(q, r), p, mode, rnd, rbits)
    # OP_FMA: x * y + z
    h, l = two_prod(x, y)
    if h - h != 0.0 or h == 0.0 or z - z != 0.0:
        return round_sum(h, z, p, mode, rnd, rbits)
    th, tl = two_sum(z, h)
    s1, e1 = two_sum(tl, l)
    x0, e2 = two_sum(th, s1)
    r = e2 + e1  # rounding preserves the sign: the sign of (exact - x0)
    if x0 == 0.0 and r == 0.0:
        return round64(-0.0 if mode == DOWN else 0.0, p, mode, rnd, rbits)
    return round64(to_odd(x0, r), p, mode, rnd, rbits)


@_jit
def product(a, b, has_prod, pprod):
    """The product term: exact in float64, or rounded (nearest-even) to the product format."""
    t = np.float64(a) * np.float64(b)
    if has_prod:
        t = round64(t, pprod, np.int64(NEAREST_EVEN), np.uint64(0), np.int64(32))
    return t


@_call
def term(a, b, has_prod, pprod, fused, pacc):
    """The value that enters the accumulator: unfused products are first rounded (nearest-even)."""
    t = product(a, b, has_prod, pprod)
    if not fused:
        t = round64(t, pacc, np.int64(NEAREST_EVEN), np.uint64(0), np.int64(32))
    return t


@_call
def kahan_step(s, c, t, pacc, mode, key0, key1, offset, o, K, k, rbits):
    """One step of compensated (Kahan) summation, every operation rounded in the accumulator.

    Returns the new (s, c). If the sum overflows, the compensation is reset to 0
    so that Inf propagates instead of turning into NaN."""
    y = round_sum(t, -c, pacc, mode,
                  draw(mode, key0, key1, counter_of(offset, o, K, k, SLOT_KAHAN_Y), rbits), rbits)
    tt = round_sum(s, y, pacc, mode,
                   draw(mode, key0, key1, counter_of(offset, o, K, k, SLOT_ADD), rbits), rbits)
    if tt - tt != 0.0:
        return tt, 0.0
    z = round_sum(tt, -s, pacc, mode,
                  draw(mode, key0, key1, counter_of(offset, o, K, k, SLOT_KAHAN_Z), rbits), rbits)
    c = round_sum(z, -y, pacc, mode,
                  draw(mode, key0, key1, counter_of(offset, o, K, k, SLOT_KAHAN_C), rbits), rbits)
    return tt, c


@_entry
def accumulate(a, ra, b, rb, K, o, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
               compensated, pout, key0, key1, offset, rbits, stack):
    """One output element: ``sum_k a[ra, k] * b[rb, k]`` as the description says.

    a, b   : 2-D float64 arrays of input values (already in their input formats)
    o      : the output element's flat index (keys the random counters)
    stack  : float64 scratch of PAIRWISE_STACK entries (pairwise order only)
    Returns the result rounded (nearest-even) to the output format, as float64.
    """
    s = 0.0
    if order == PAIRWISE:
        sp = 0
        for k in range(K):
            v = term(a[ra, k], b[rb, k], has_prod, pprod, fused, pacc)
            n = k + 1
            w = 1
            while (n & 1) == 0:  # binary counter: merge equal-sized blocks
                sp -= 1
                v = round_sum(stack[sp], v, pacc, mode,
                              draw(mode, key0, key1, counter_of(offset, o, K, k + 1 - w, SLOT_ADD), rbits),
                              rbits)
                n >>= 1
                w <<= 1
            stack[sp] = v
            sp += 1
        if K > 0:
            r = np.int64(K)
            s = stack[sp - 1]
            r = r - (r & -r)  # first k of the top block
            for i in range(sp - 2, -1, -1):
                s = round_sum(stack[i], s, pacc, mode,
                              draw(mode, key0, key1, counter_of(offset, o, K, r, SLOT_ADD), rbits), rbits)
                r = r - (r & -r)
            if K == 1:  # a lone term still enters the accumulator
                s = round_sum(0.0, s, pacc, mode,
                              draw(mode, key0, key1, counter_of(offset, o, K, 0, SLOT_ADD), rbits), rbits)
    else:
        C = chunk if order == BLOCKED else K
        total = 0.0
        cs = 0.0
        c = 0.0
        for k in range(K):
            t = term(a[ra, k], b[rb, k], has_prod, pprod, fused, pacc)
            if compensated:
                cs, c = kahan_step(cs, c, t, pacc, mode, key0, key1, offset, o, K, k, rbits)
            else:
                cs = round_sum(cs, t, pacc, mode,
                               draw(mode, key0, key1, counter_of(offset, o, K, k, SLOT_ADD), rbits), rbits)
            if order == BLOCKED and ((k + 1) % C == 0 or k == K - 1):
                total = round_sum(total, cs, pchunk, np.int64(NEAREST_EVEN), np.uint64(0), rbits)  # promotion: RN
                cs = 0.0
                c = 0.0
        s = total if order == BLOCKED else cs
    if s != s:
        s = np.nan  # one NaN for every backend (hardware default NaNs differ in sign)
    return round64(s, pout, np.int64(NEAREST_EVEN), np.uint64(0), np.int64(32))

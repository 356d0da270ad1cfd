"""The ONE scalar definition of rounding, encoding and decoding.

Scalars in, scalars out: ints only, no arrays, no objects, no exceptions.
The CPU loops (cpu.py) and the CUDA loops (cuda.py) call these functions and
nothing else, so the two backends cannot drift apart.

Values travel as the bit patterns of their *carrier* (float32 or float64),
held in an int64, with the carrier described by three ints:

    CW  carrier width   (32 or 64)
    CM  carrier mantissa bits (23 or 52)
    CB  carrier exponent bias (127 or 1023)

    carrier layout:  sign (1) | exponent (CW-1-CM) | mantissa (CM)

A target format is an int tuple (see FloatFormat._kernel_params /
FixedFormat._kernel_params):

    float: (0, man_bits, emin, bias, tmax, nan_code, has_subnormals, saturate, exp_bits)
    fixed: (1, bits, frac_bits, signed, wrap, 0, 0, 0, 0)

A float format's ``has_subnormals`` slot is a bit field: bit 0 subnormals, bit 1 *unsigned* (no
sign bit: a negative input gives NaN, -0 gives +0). A format *without zero* (E8M0) is the one
whose ``emin`` is ``-bias`` (its all-zeros exponent field is a normal binade; every other format
has ``emin == 1 - bias``): positive values below its smallest rounded to it, zero to NaN, and
its magnitude code ``T`` counts from that binade.

Inside, a finite float value of the target is its *magnitude code*
``T = (biased_exponent << man_bits) | mantissa``: consecutive magnitudes
have consecutive codes (subnormals included), so rounding up is ``T + 1``
and the parity of the last encoded bit is ``T & 1``.

Rounding an exact value x with |x| between two neighbours: the carrier
significand ``sig`` (hidden bit included) is split at the target quantum
into ``kept`` (the truncated code) and ``rem`` (the d dropped bits), and one
increment decides the result (NUMERICS.md section 2).

Random bits for stochastic rounding come from a counter-based keyed hash
(:func:`random_bits`) of (key0, key1, counter): identical on every backend,
thread count and chunking, since each element's counter is fixed by the
caller (offset + flat index).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import Definitions

# Rounding mode codes (must equal lowprec.rounding.Rounding values).
NEAREST_EVEN = 0
NEAREST_AWAY = 1
TOWARD_ZERO = 2
UP = 3
DOWN = 4
ODD = 5
STOCHASTIC = 6

# Result classes.
CLS_FINITE = 0
CLS_INF = 1
CLS_NAN = 2

# NaN encodings (index into formats.NAN_ENCODINGS).
NAN_IEEE = 0
NAN_ALL_ONES = 1
NAN_NEGATIVE_ZERO = 2
NAN_NONE = 3

KIND_FLOAT = 0
KIND_FIXED = 1

# Not cached on their own: the cached loops that use them compile them in. ``_jit(f)`` is the
# inlined version (for vector loops); ``DEFINITIONS.called().f`` the same source as an ordinary call
# (for runtime-argument loops, which compile several times faster).
DEFINITIONS = Definitions()
_jit = DEFINITIONS


# --------------------------------------------------------------------------
# bit casts between a float register and its carrier bits
# --------------------------------------------------------------------------
def _bitcast(src, dst, width):
    def impl(typingctx, x):
        if x != src:
            return None
        sig = dst(src)

        def codegen(context, builder, signature, args):
            target = ir.IntType(width) if isinstance(dst, types.Integer) else context.get_value_type(dst)
            return builder.bitcast(args[0], target)

        return sig, codegen

    impl.__name__ = f"{src}_as_{dst}"
    return intrinsic(impl)


#: ``f64_as_i64(x)`` etc.: reinterpret a float's bits as an int of the same width (and back).
f64_as_i64 = _bitcast(types.float64, types.int64, 64)
i64_as_f64 = _bitcast(types.int64, types.float64, 64)
f32_as_i32 = _bitcast(types.float32, types.int32, 32)
i32_as_f32 = _bitcast(types.int32, types.float32, 32)


@intrinsic
def _like(typingctx, proto, v):
    """``v`` converted to the integer type of ``proto`` (wrapping, like a C cast).

    numba computes int32 arithmetic in int64; wrapping every step in ``_like(u, ...)``
    keeps the float32 carrier in 32-bit lanes (twice the SIMD width) while the same
    source runs in int64 lanes for the float64 carrier (where it is a no-op)."""
    if not isinstance(proto, types.Integer) or not isinstance(v, (types.Integer, types.Boolean)):
        return None
    sig = proto(proto, v)

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], signature.return_type)

    return sig, codegen


def _shift(kind):
    def impl(typingctx, x, n):
        if not isinstance(x, types.Integer) or not isinstance(n, types.Integer):
            return None
        sig = x(x, n)

        def codegen(context, builder, signature, args):
            xv, nv = args
            amount = context.cast(builder, nv, signature.args[1], signature.return_type)
            if kind == "shl":
                return builder.shl(xv, amount)
            return builder.ashr(xv, amount) if signature.return_type.signed else builder.lshr(xv, amount)

        return sig, codegen

    impl.__name__ = f"_{kind}"
    return intrinsic(impl)


#: ``_shl(x, n)``, ``_shr(x, n)``: shifts in x's own width (arithmetic right shift for signed x).
#: numba promotes int32 shifts to int64, and LLVM cannot narrow a variable shift back, which
#: halves the SIMD width; these emit the shift at x's width. The caller guarantees
#: 0 <= n < the width of x (a larger count is undefined in LLVM).
_shl = _shift("shl")
_shr = _shift("shr")


# --------------------------------------------------------------------------
# random bits: counter-based keyed hash
# --------------------------------------------------------------------------
@intrinsic
def _mix32(typingctx, x):
    """lowbias32 (C. Wellons, hash-prospector): a bijective 32-bit mixer of x's low 32 bits.

    ``x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16`` (uint32
    arithmetic). Written as LLVM IR in 32-bit integers: from numba's own uint32 arithmetic
    (which it computes in 64 bits and truncates) LLVM kept part of the hash in 64-bit lanes,
    with 64-bit vector multiplies, which made the hash cost twice as much in vector loops."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint32(x)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = context.cast(builder, args[0], signature.args[0], types.uint32)

        def xorshift(v, n):
            return builder.xor(v, builder.lshr(v, ir.Constant(i32, n)))

        v = builder.mul(xorshift(v, 16), ir.Constant(i32, 0x7FEB352D))
        v = builder.mul(xorshift(v, 15), ir.Constant(i32, 0x846CA68B))
        return xorshift(v, 16)

    return sig, codegen


@_jit
def _hash32_split(key0, key1, lo, mixed_hi):
    """:func:`_hash32` from the counter's low word and ``_mix32`` of its high word."""
    h = _mix32(np.uint32(np.uint32(lo) ^ np.uint32(key0)))
    return _mix32(np.uint32(h ^ np.uint32(key1) ^ np.uint32(mixed_hi)))


@_jit
def _hash32(key0, key1, counter):
    """32 random bits for (key, counter): two keyed rounds of lowbias32.

    For a fixed key the map counter -> bits is a bijection on each block of
    2**32 counters (no repeats within a stream)."""
    lo = np.uint32(counter & 0xFFFFFFFF)
    hi = np.uint32((counter >> 32) & 0xFFFFFFFF)
    return _hash32_split(key0, key1, lo, _mix32(hi))


@_jit
def random_bits_split(key0, key1, lo, mixed_hi, rbits):
    """:func:`random_bits` of the counter ``hi * 2**32 + lo`` given ``lo`` and ``_mix32(hi)``.

    Array loops whose counters share one high word compute ``_mix32(hi)`` once
    (the same bits as :func:`random_bits`, one hash round fewer per element)."""
    h = np.uint64(_hash32_split(key0, key1, lo, mixed_hi))
    if rbits <= 32:
        return h >> np.uint64(32 - rbits)
    h2 = np.uint64(_hash32_split(np.uint32(key0) ^ np.uint32(0x9E3779B9), key1, lo, mixed_hi))
    return ((h << np.uint64(32)) | h2) >> np.uint64(64 - rbits)


@_jit
def random_bits(key0, key1, counter, rbits):
    """``rbits`` (1..64) uniformly random bits for ``counter`` under key (key0, key1), as a uint64."""
    c = np.int64(counter)
    return random_bits_split(key0, key1, np.uint32(c & 0xFFFFFFFF),
                             _mix32(np.uint32((c >> 32) & 0xFFFFFFFF)), rbits)


# --------------------------------------------------------------------------
# integer helpers
# --------------------------------------------------------------------------
@_jit
def _bit_length(t):
    """Number of bits of a nonnegative int64 (0 for 0), branch-free binary search."""
    t = np.int64(t)
    n = np.int64(0)
    s = np.int64(t >= (np.int64(1) << 32)) * 32
    t >>= s
    n += s
    s = np.int64(t >= (np.int64(1) << 16)) * 16
    t >>= s
    n += s
    s = np.int64(t >= 256) * 8
    t >>= s
    n += s
    s = np.int64(t >= 16) * 4
    t >>= s
    n += s
    s = np.int64(t >= 4) * 2
    t >>= s
    n += s
    s = np.int64(t >= 2)
    t >>= s
    n += s
    return n + t


@_jit
def _scaled_int_bits(s, e0, CM, CB):
    """Carrier magnitude bits of the exact value ``s * 2**e0`` (0 <= s < 2**(CM+1)).

    The caller guarantees the value is representable in the carrier."""
    s = np.int64(s)
    n = _bit_length(s) - 1  # s = 2**n + rest
    ebiased = n + e0 + CB
    normal = (np.int64(ebiased) << CM) + ((s << (CM - min(n, CM))) - (np.int64(1) << CM))
    # carrier subnormal: value / 2**(1 - CB - CM) is an integer
    sub = s << max(e0 - (1 - CB - CM), 0)
    return normal if (ebiased >= 1) & (s != 0) else sub


@_jit
def _increment(parity, sign, rem, half, d, mode, rnd, rbits):
    """1 when the truncated value must move one unit away from zero, else 0.

    This is the single rounding rule every kernel applies.

    parity : last bit of the truncated value's encoding (ties-to-even, odd)
    rem    : the d dropped bits as an integer (0 <= rem < 2**d; when d is
             above the lane's clamp, rem is everything below the kept bits
             and half > rem)
    half   : 2**(d-1) (clamped, see _split)
    rnd    : for STOCHASTIC, a uniform integer in [0, 2**rbits)

    Written with selects, not branches on the data, so that array loops
    vectorise. The result has the integer type of ``rem`` (the lane type).
    """
    nz = rem != 0
    if mode == NEAREST_EVEN:
        inc = (rem > half) | ((rem == half) & nz & (parity == 1))
    elif mode == NEAREST_AWAY:
        inc = (rem >= half) & nz
    elif mode == UP:
        inc = nz & (sign == 0)
    elif mode == DOWN:
        inc = nz & (sign == 1)
    elif mode == ODD:
        inc = nz & (parity == 0)  # truncate, then make the last bit 1 if inexact
    elif mode == STOCHASTIC and _like(rem, np.int64(1) << 40) == 0 and rbits <= 32:
        # the same rule in 32-bit lanes: rem < 2**30, R < 2**rbits <= 2**32 and rem_r < 2**rbits
        # all fit a uint32; a shift count of 32 or more can only meet rem == 0 (d == 0) or a
        # rem below 2**30 shifted right by >= 31: clamping counts at 31 changes nothing.
        dl = _like(rem, d)
        rb = _like(rem, rbits)
        zero = _like(rem, 0)
        lim = _like(rem, 31)
        sh_down = np.uint32(min(max(_like(rem, dl - rb), zero), lim))
        sh_up = np.uint32(min(max(_like(rem, rb - dl), zero), lim))
        rem_r = _shl(_shr(np.uint32(rem), sh_down), sh_up)
        inc = np.uint32(rnd) < rem_r
    elif mode == STOCHASTIC:
        # away from zero iff R < floor(rem * 2**rbits / 2**d): P(away) = floor(2**r (|x|-lo)/(hi-lo)) / 2**r
        sh_down = np.uint64(min(max(np.int64(d) - rbits, 0), 63))
        sh_up = np.uint64(min(max(rbits - np.int64(d), 0), 63))
        rem_r = (np.uint64(rem) >> sh_down) << sh_up
        inc = np.uint64(rnd) < rem_r
    else:  # TOWARD_ZERO
        inc = False
    return _like(rem, inc)


@_jit
def _split(sig, d):
    """kept, rem, half for dropping d >= 0 low bits of sig, in sig's lane type.

    d is clamped at the lane width - 2 (62 for int64, 30 for int32 lanes): 1 << 63 is
    negative in int64, and 2**29 already exceeds a float32 significand."""
    lim = _like(sig, 30) if _like(sig, np.int64(1) << 40) == 0 else _like(sig, 62)
    dd = min(_like(sig, d), lim)
    one = _like(sig, 1)
    kept = _shr(sig, dd)
    rem = _like(sig, sig & _like(sig, _shl(one, dd) - one))
    half = _shr(_shl(one, dd), one)
    return kept, rem, half


@_jit
def _carrier_out(r, CW):
    """Carrier bits as the signed int of the carrier's width (what an int32/int64 view holds)."""
    return np.int64(np.int32(r)) if CW == 32 else np.int64(r)


# --------------------------------------------------------------------------
# float target
# --------------------------------------------------------------------------
@_jit
def _fields(u, CW, CM, CB):
    """The fields of the carrier value with bits ``u``, in the lane type of ``u`` (its low 32 bits when CW == 32,
    as an int32 view or an int64 holds them): ``(u, sign, a, E, frac, special, ex, sig)``: the bits, the sign bit,
    the magnitude's bits, the biased exponent field, the fraction field, Inf or NaN, the exponent ``max(E, 1) -
    CB`` and the significand with its hidden bit."""
    u = _like(u, np.int64(u) & 0xFFFFFFFF) if CW == 32 else u
    zero = _like(u, 0)
    one = _like(u, 1)
    cm = _like(u, CM)
    sign = _like(u, _shr(u, CW - 1) & one)
    a = _like(u, u & _like(u, (np.int64(1) << (CW - 1)) - 1))
    E = _shr(a, cm)
    frac = _like(u, a & _like(u, (np.int64(1) << CM) - 1))
    special = E == _like(u, (np.int64(1) << (CW - 1 - CM)) - 1)
    ex = _like(u, max(E, one) - _like(u, CB))
    sig = _like(u, frac | _shl(_like(u, E != zero), cm))
    return u, sign, a, E, frac, special, ex, sig


@_jit
def _float_consts(CW, CM, CB, m, emin, bias, tmax):
    """Carrier bits of the format's max, smallest normal and smallest subnormal; NaN and Inf bits.

    Pure functions of loop-invariant arguments: compilers hoist them out of array loops."""
    expmax = (np.int64(1) << (CW - 1 - CM)) - 1
    mmask = (np.int64(1) << m) - 1
    maxbits = _scaled_int_bits((tmax & mmask) | (np.int64(1) << m), (tmax >> m) - bias - m, CM, CB)
    minnorm = _scaled_int_bits(np.int64(1), emin, CM, CB)
    minsub = _scaled_int_bits(np.int64(1), emin - m, CM, CB)
    infbits = expmax << CM
    nanbits = infbits | (np.int64(1) << (CM - 1))
    return maxbits, minnorm, minsub, infbits, nanbits


@_jit
def round_float_carrier(u, CW, CM, CB, m, emin, bias, tmax, nan_code, subn, sat, mode, rnd, rbits):
    """THE float rounding: carrier bits ``u`` in, carrier bits of the rounded value out.

    The value is truncated at the target's quantum directly in the carrier's
    bit pattern and incremented once, ``((a >> d) + inc) << d``: a carry out of
    the mantissa moves into the exponent, which is exactly the next binade.
    Values below the smallest subnormal (d > CM) become 0 or that subnormal.
    Overflow, flush-to-zero and Inf/NaN are selects on the result.

    The arithmetic runs in the integer type of ``u``: an int32 (a float32
    carrier, CW == 32) computes in 32-bit lanes, an int64 in 64-bit lanes
    (an int64 holding float32 bits is masked to its low 32 bits first).
    Every intermediate fits: magnitudes are below 2**(CW-1) and the only
    possible wrap, ``(kc + inc) << d`` for an Inf/NaN input, is replaced by
    the special-value select.
    """
    u, sign, a, E, frac, special, ex, sig = _fields(u, CW, CM, CB)  # special: Inf or NaN in
    maxbits, minnorm, minsub, infbits, nanbits = _float_consts(CW, CM, CB, m, emin, bias, tmax)
    maxbits = _like(u, maxbits)
    minnorm = _like(u, minnorm)
    minsub = _like(u, minsub)
    infbits = _like(u, infbits)
    nanbits = _like(u, nanbits)
    zero = _like(u, 0)
    one = _like(u, 1)
    cm = _like(u, CM)
    emin_l = _like(u, emin)
    nan_in = special & (frac != zero)
    d = _like(u, _like(u, max(ex, emin_l) - _like(u, m)) + _like(u, cm - ex))  # bits dropped (>= 0)
    kept, rem, half = _split(sig, d)
    dcm = min(d, cm)
    kc = _shr(a, dcm)  # truncated value, carrier domain (valid for d <= CM)
    # Last bit of the truncated value's *target* encoding: the last bit of its significand
    # ``kept`` (a target subnormal's significand is its encoding; 0 when d > CM), except in a
    # format without mantissa bits, where a normal value's last encoded bit is its exponent's.
    parity = _like(u, kept & one)
    if m == 0:
        parity = _like(u, _like(u, E + _like(u, CB + bias)) & one) if ex >= emin_l else parity
    inc = _increment(parity, sign, rem, half, d, mode, rnd, rbits)
    res = _shl(_like(u, kc + inc), dcm) if d <= cm else (minsub if inc == one else zero)
    # overflow: clamp to max (saturating format, toward-zero-like modes) or Inf/NaN
    clamp = ((sat == 1) | (mode == TOWARD_ZERO) | (mode == ODD)
             | ((mode == UP) & (sign == one)) | ((mode == DOWN) & (sign == zero)))
    over_bits = maxbits if clamp else (infbits if nan_code == NAN_IEEE else nanbits)
    res = over_bits if res > maxbits else res
    res = zero if ((subn & 1) == 0) & (res < minnorm) else res  # flush to zero after rounding
    inf_bits = infbits if nan_code == NAN_IEEE else (maxbits if sat == 1 else nanbits)
    res = (nanbits if nan_in else inf_bits) if special else res
    # a format without zero (emin == -bias): below its smallest value -> that value; zero -> NaN
    res = (nanbits if a == zero else minnorm) if (emin == -bias) & (res < minnorm) else res
    # an unsigned format: a negative input -> NaN, -0 -> +0
    unsigned = (subn & 2) != 0
    res = nanbits if unsigned & (sign == one) & (a != zero) else res
    sign = zero if unsigned else sign
    sign = zero if (nan_code == NAN_NEGATIVE_ZERO) & (res == zero) else sign  # no negative zero
    r = _like(u, _shl(sign, CW - 1) | res)
    return _like(u, np.int64(np.int32(r))) if CW == 32 else r  # float32 bits sign-extended, as an int32 view holds them


def grid_f32_params(m: int, emin: int, emax: int, maxv: float):
    """``(cadd, minc, top, maxv)`` of :func:`round_grid_f32` for a float format with ``m`` mantissa bits, smallest
    normal exponent ``emin``, top binade ``2**emax`` and largest value ``maxv``; None when the definition does not
    apply (it needs ``m <= 21``, ``emin + 23 - m >= -126`` and ``emax + 25 - m <= 127``: every constant a normal
    float32)."""
    if not (0 <= m <= 21 and emin + 23 - m >= -126 and emax + 25 - m <= 127):
        return None
    return (np.int32(((23 - m) << 23) | (1 << 22)), np.float32(1.5 * 2.0 ** (emin + 23 - m)),
            np.float32(2.0 ** (emax + 1)), np.float32(maxv))


@_jit
def round_grid_f32(y, cadd, minc, top, maxv):
    """The float32 ``y`` rounded to nearest-even onto a float format's grid, saturating at ``maxv``: the same
    value as :func:`round_float_carrier` in mode NEAREST_EVEN with ``sat == 1``, in a few float32 operations
    that vectorise in 32-bit lanes (the block loops' element step). Parameters: :func:`grid_f32_params`.

    Applies to formats with a sign, -0, gradual underflow and ``m <= 21`` (the grid_f32_params conditions), and
    to finite ``y`` (an IEEE format's Inf input keeps its Inf under round_float_carrier; here it saturates, and
    NaN gives ``maxv``): the MX element formats (fp8, fp6, fp4) saturating, and fp16 below its overflow threshold.

    Proof. Let ``a = min(|y|, top)`` with ``top = 2**(emax + 1)``: every ``|y| >= top`` rounds above ``maxv`` and
    saturates, so it may be replaced by ``top``. Let ``E = floor(log2 a)`` (float32's exponent; a float32
    subnormal or zero has a smaller one) and ``k = max(E, emin) + 23 - m``. ``c`` is ``1.5 * 2**(E + 23 - m)``,
    built from a's exponent field plus ``cadd``, raised to ``minc = 1.5 * 2**(emin + 23 - m)``: ``c = 1.5 *
    2**k``. Then ``a < 2**(max(E, emin) + 1) <= 2**(k - 1)`` (as ``m <= 21``), so the exact ``a + c`` lies in
    ``[1.5 * 2**k, 2**(k + 1))``, the binade whose float32 quantum is ``2**(k - 23) = 2**(max(E, emin) - m)``: the
    format's quantum at ``a`` (normal or subnormal). The float32 addition rounds the exact sum once to that
    quantum, ties to even; ``c / 2**(k - 23) = 3 * 2**22`` is even, so the parity the tie looks at is that of
    a's quantum count, the last bit of the format's encoding (a subnormal's code, a normal's mantissa). The
    subtraction of ``c`` is exact (a multiple of the quantum, at most ``2**(max(E, emin) + 1)``: at most
    ``m + 2`` significant bits). So ``(a + c) - c`` is a rounded to nearest-even onto the format's grid with
    no upper bound; ``min(., maxv)`` saturates it; the sign of ``y`` is or-ed back (so ``-0`` for a negative
    value that rounds to zero, as the format has ``-0``)."""
    yb = f32_as_i32(np.float32(y))
    a = i32_as_f32(np.int32(yb & np.int32(0x7FFFFFFF)))
    a = top if not a < top else a  # (NaN -> top)
    c = i32_as_f32(np.int32(np.int32(f32_as_i32(a) & np.int32(0x7F800000)) + cadd))
    c = minc if c < minc else c
    r = (a + c) - c
    r = maxv if r > maxv else r
    return i32_as_f32(np.int32(f32_as_i32(r) | np.int32(yb & np.int32(-0x80000000))))


def grid_f64_params(m: int, emin: int, emax: int, maxv: float):
    """``(cadd, minc, top, maxv)`` of :func:`round_grid_f64`, or None where it does not apply (``m <= 50``,
    ``emin + 52 - m >= -1022``, ``emax + 54 - m <= 1023``): :func:`grid_f32_params` for float64."""
    if not (0 <= m <= 50 and emin + 52 - m >= -1022 and emax + 54 - m <= 1023):
        return None
    return (np.int64(((52 - m) << 52) | (1 << 51)), 1.5 * 2.0 ** (emin + 52 - m), 2.0 ** (emax + 1), float(maxv))


@_jit
def round_grid_f64(y, cadd, minc, top, maxv):
    """:func:`round_grid_f32` in float64: the float64 ``y`` rounded to nearest-even onto a float format's grid,
    saturating at ``maxv`` (round_float_carrier's value in mode NEAREST_EVEN with ``sat == 1``). Parameters:
    :func:`grid_f64_params`; the same conditions on the format and on ``y`` (finite).

    Proof: round_grid_f32's, with float64's 52 fraction bits for float32's 23: ``c = 1.5 * 2**k``,
    ``k = max(E, emin) + 52 - m``, whose binade has the quantum ``2**(max(E, emin) - m)``; ``a < 2**(k - 1)``
    for ``m <= 50``; ``c / 2**(k - 52) = 3 * 2**51`` is even."""
    yb = f64_as_i64(np.float64(y))
    a = i64_as_f64(yb & np.int64(0x7FFFFFFFFFFFFFFF))
    a = top if not a < top else a  # (NaN -> top)
    c = i64_as_f64((f64_as_i64(a) & np.int64(0x7FF0000000000000)) + cadd)
    c = minc if c < minc else c
    r = (a + c) - c
    r = maxv if r > maxv else r
    return i64_as_f64(f64_as_i64(r) | (yb & np.int64(-0x8000000000000000)))


_INF32 = 0x7F800000  # float32 Inf's bits
_INF64 = 0x7FF0000000000000  # float64 Inf's bits


@_jit
def _step_selects(r, a, s, nan_code, subn, sat, minnorm, maxbits, overbits, infbits, nanbits):
    """The fast element steps' last part (round_nearest_even_f32/_f64, round_stochastic_f32), in the lane type
    of ``r``: the definition's selects in its order (round_float_carrier), given ``r`` the magnitude rounded onto
    the target's grid without an upper bound, ``a`` the input's magnitude bits and ``s`` its sign bit: above
    ``maxbits`` -> ``overbits``; without subnormals, below ``minnorm`` -> 0; an Inf input (whose ``r`` is above
    ``maxbits``) -> ``infbits``, which differs from ``overbits`` only for a saturating IEEE format; a NaN input ->
    ``nanbits``; the sign or-ed back, except on a zero of a format whose -0 is NaN."""
    zero = _like(r, 0)
    inf_a = _like(a, _INF32) if _like(a, np.int64(1) << 40) == 0 else _like(a, _INF64)
    r = overbits if r > maxbits else r
    if (subn & 1) == 0:
        r = zero if r < minnorm else r
    if (sat == 1) & (nan_code == NAN_IEEE):
        r = infbits if a == inf_a else r
    r = nanbits if a > inf_a else r
    if nan_code == NAN_NEGATIVE_ZERO:
        s = zero if r == zero else s
    return _like(r, r | s)


def nearest_even_f32_applies(p) -> bool:
    """Whether :func:`round_nearest_even_f32` computes the nearest-even rounding of float32 values to the
    format of parameters ``p`` (FloatFormat._kernel_params): a float format with a sign and a zero (not
    E8M0), ``1 <= m <= 22`` and ``emin >= -126`` (its values then fit float32, as its carrier is float32)."""
    kind, m, emin, bias, _, _, subn = (int(v) for v in p[:7])
    return kind == KIND_FLOAT and 1 <= m <= 22 and -126 <= emin and emin != -bias and (subn & 2) == 0


@_jit
def nearest_even_f32_consts(m, emin, bias, tmax, nan_code, sat):
    """The constants of :func:`round_nearest_even_f32`, as int32 (``c`` float32):
    ``(lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits)``: the carrier bit of the target's
    last mantissa bit, half the target quantum minus one and the mask of the kept bits (in normal carrier
    units), the smallest normal's float32 bits, ``c = 1.5 * 2**(emin - m + 23)``, the largest value's bits,
    what overflow gives (``maxbits`` saturating, else Inf for an IEEE format, else NaN), what an Inf input
    gives (Inf for an IEEE format, else ``maxbits`` saturating, else NaN), and the carrier's NaN: the
    definition's constants (:func:`_float_consts`) and choices (round_float_carrier in mode NEAREST_EVEN)."""
    maxbits, minnorm, _, infbits, nanbits = _float_consts(32, 23, 127, m, emin, bias, tmax)
    overbits = maxbits if sat == 1 else (infbits if nan_code == NAN_IEEE else nanbits)
    inbits = infbits if nan_code == NAN_IEEE else (maxbits if sat == 1 else nanbits)
    d = 23 - m
    i32 = np.int32
    c = i32_as_f32(i32(((emin - m + 23 + 127) << 23) | (1 << 22)))
    return (i32(np.int64(1) << d), i32((np.int64(1) << (d - 1)) - 1), i32(-(np.int64(1) << d)), i32(minnorm), c,
            i32(maxbits), i32(overbits), i32(inbits), i32(nanbits))


@_jit
def round_nearest_even_f32(u, nan_code, subn, sat, lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits,
                           nanbits):
    """round_float_carrier in mode NEAREST_EVEN for a float32 carrier (``u`` the int32 bits of a float32), in
    ~20 vector instructions per 8 elements (the definition inlined takes ~45): the specialised round loop of
    the formats :func:`nearest_even_f32_applies` admits (constants: :func:`nearest_even_f32_consts`;
    ``nan_code``, ``subn``, ``sat`` the format's flags, constants of the loop). The same bits, NaNs included.

    Proof. Let ``a = |u|`` (bits) and ``ac = min(a, Inf's bits)``; bit patterns of non-negative floats
    compare as their values. (1) ``ac >= minnorm``, a float32 normal in the target's normal range (as
    ``emin >= -126``): the target's quantum there is ``2**(E - m)``, ``d = 23 - m`` carrier bits, constant.
    ``((ac + half1 + odd) & dmask)`` with ``odd`` the kept value's last bit is nearest-even on those bits:
    the dropped bits ``r`` push a carry iff ``r + 2**(d-1) - 1 + odd >= 2**d``, i.e. ``r > 2**(d-1)``, or
    ``r == 2**(d-1)`` and the kept value is odd (the target's last encoded bit, as ``m >= 1``). A carry out of
    the mantissa moves into the exponent field: the next binade, as in the definition; nothing wraps
    (``ac + 2**d <= Inf + 2**22 < 2**31``). (2) ``ac < minnorm``: the float32 sum ``ac + c`` with
    ``c = 1.5 * 2**k``, ``k = emin - m + 23`` (a float32 normal, as ``emin >= -126``) lies in
    ``[2**k, 2**(k + 1))`` (``ac < 2**emin <= 2**(k - 1)`` as ``m <= 22``), whose float32 quantum is
    ``2**(emin - m)``, the target's subnormal quantum: the addition rounds ``ac`` once onto the target's
    grid, ties to an even multiple of the quantum (``c`` is ``3 * 2**22`` quanta: even), and the
    subtraction is exact (round_grid_f32's proof). So ``r`` is ``a`` rounded to nearest-even onto the
    target's grid without an upper bound, as the definition's ``res`` before its selects; the rest are the
    definition's selects in its order: above ``maxbits`` -> ``overbits``; without subnormals, below
    ``minnorm`` -> 0; an Inf input (whose ``r`` is above ``maxbits``) -> ``infbits``, which differs from
    ``overbits`` only for a saturating IEEE format; a NaN input -> ``nanbits``; the input's sign or-ed
    back, except on a zero of a format whose -0 is NaN."""
    i32 = np.int32
    s = i32(u & i32(-0x80000000))
    a = i32(u & i32(0x7FFFFFFF))
    ac = i32(min(a, i32(_INF32)))
    odd = i32(1) if i32(ac & lsb) != i32(0) else i32(0)
    rn = i32(i32(i32(ac + half1) + odd) & dmask)
    rs = f32_as_i32(np.float32(np.float32(i32_as_f32(ac) + c) - c))
    r = rs if ac < minnorm else rn
    return _step_selects(r, a, s, nan_code, subn, sat, minnorm, maxbits, overbits, infbits, nanbits)


def stochastic_f32_applies(p):
    """Which variant of :func:`round_stochastic_f32` computes stochastic rounding of float32 values with 32 random
    bits to the format of parameters ``p``: 1 (*wide*: ``emin == -126``, float32's exponent range, where the
    target's quantum below its normal range is float32's and the normal-range rule covers every value), 0
    (*narrow*: ``emin - m >= -126``, the target's subnormal quantum a float32 normal) or None (the definition),
    for the formats :func:`nearest_even_f32_applies` admits."""
    if not nearest_even_f32_applies(p):
        return None
    m, emin = int(p[1]), int(p[2])
    return 1 if emin == -126 else (0 if emin - m >= -126 else None)


@_jit
def stochastic_f32_consts(m, emin, bias, tmax, nan_code, sat):
    """The constants of :func:`round_stochastic_f32`: ``(lsb, dmask, minnorm, q, up, dbase, maxbits, overbits,
    infbits, nanbits)``: :func:`nearest_even_f32_consts`' ``lsb``, ``dmask``, ``minnorm`` and overflow/Inf/NaN
    bits, the float32 ``q = 2**(emin - m)`` (the target's subnormal quantum; used by the narrow variant only,
    where it is a float32 normal), ``up = 9 + m`` (``32 - d`` for the ``d = 23 - m`` dropped bits of the normal
    range) and ``dbase = 23 - m + emin + 127``."""
    lsb, _, dmask, minnorm, _, maxbits, overbits, infbits, nanbits = nearest_even_f32_consts(m, emin, bias, tmax,
                                                                                               nan_code, sat)
    i32 = np.int32
    q = i32_as_f32(i32((max(emin - m, -126) + 127) << 23))
    return lsb, dmask, minnorm, q, i32(9 + m), i32(23 - m + emin + 127), maxbits, overbits, infbits, nanbits


@_jit
def round_stochastic_f32(u, rnd, nan_code, subn, sat, wide, lsb, dmask, minnorm, q, up, dbase, maxbits, overbits,
                         infbits, nanbits):
    """round_float_carrier in mode STOCHASTIC with 32 random bits ``rnd`` for a float32 carrier (``u`` the int32 bits
    of a float32), in 32-bit lanes without the definition's general path: the specialised stochastic round loops
    of the formats :func:`stochastic_f32_applies` admits, ``rbits == 32`` (``wide`` its variant, a constant of the
    loop; constants: :func:`stochastic_f32_consts`; flags as :func:`round_nearest_even_f32`). The same bits.

    Proof. The definition moves one quantum away from zero iff ``R < rem_r`` (unsigned 32-bit), ``rem_r = (rem >>
    sh_down) << sh_up`` with ``rem`` the ``d`` dropped bits of the 24-bit significand, ``sh_down = min(max(d - 32,
    0), 31)``, ``sh_up = min(max(32 - d, 0), 31)`` (its 32-bit lane rule); unsigned order is compared as signed
    order after flipping the top bit of both sides. Let ``ac = min(|u|, Inf's bits)``. (1) ``ac >= minnorm``:
    ``d = 23 - m`` everywhere (as ``emin >= -126``), and ``ac << (9 + m)`` in 32 bits is ``rem << (32 - d)`` (the
    kept bits shift out); the result is the truncated bits ``ac & dmask`` plus one quantum ``lsb`` if away, a
    carry out of the mantissa being the next binade, as in the definition (no wrap: ``ac + lsb < 2**31``). With
    ``emin == -126`` (wide) this covers every ``ac``: below ``2**-126`` the target's quantum ``2**(-126 - m)`` is
    again ``lsb`` carrier units (float32's subnormals have float32's normal quantum), and a carry out of the
    subnormal mantissa is ``2**-126``'s bits. (2) Narrow, ``ac < minnorm``: ``d = dbase - max(E, 1)`` per lane (E
    the biased exponent field), the definition's ``max(ex, emin) - m + 23 - ex`` below the target's normal range;
    the significand is split at ``min(d, 31)`` (for ``d >= 24`` the kept part is 0 and ``rem`` the whole
    significand either way, as with the definition's clamp at 30); the result ``(kept + inc) * q`` is 0 or a
    multiple of the float32 normal ``q = 2**(emin - m)`` at most ``2**emin``, an integer below ``2**24`` times a
    power of two: exact in float32 (no subnormal operand or result, which would cost a microcode assist), and
    the definition's value. (3) The selects are :func:`round_nearest_even_f32`'s: the definition clamps overflow
    to ``maxbits`` in stochastic mode only for a saturating format, as at nearest-even."""
    i32 = np.int32
    top = i32(-0x80000000)
    R = i32(i32(rnd) ^ top)
    s = i32(u & top)
    a = i32(u & i32(0x7FFFFFFF))
    ac = i32(min(a, i32(_INF32)))
    r = i32(i32(ac & dmask) + (lsb if R < i32(_shl(ac, up) ^ top) else i32(0)))
    if wide == 0:
        E = i32(_shr(ac, i32(23)))
        sig = i32(i32(ac & i32(0x7FFFFF)) | (i32(0x800000) if E != i32(0) else i32(0)))
        d = i32(dbase - max(E, i32(1)))
        dd = i32(min(d, i32(31)))
        kept = i32(_shr(sig, dd))
        rem = i32(sig & i32(_shl(i32(1), dd) - i32(1)))
        sh_down = i32(min(max(i32(d - i32(32)), i32(0)), i32(31)))
        sh_up = i32(min(max(i32(i32(32) - d), i32(0)), i32(31)))
        rem_r = i32(i32(_shl(i32(_shr(np.uint32(rem), sh_down)), sh_up)) ^ top)
        rs = f32_as_i32(np.float32(np.float32(i32(kept + (i32(1) if R < rem_r else i32(0)))) * q))
        r = rs if ac < minnorm else r
    return _step_selects(r, a, s, nan_code, subn, sat, minnorm, maxbits, overbits, infbits, nanbits)


def nearest_even_f64_applies(p) -> bool:
    """Whether :func:`round_nearest_even_f64` computes the nearest-even rounding of float64 values to the
    format of parameters ``p``: a float format with a sign and a zero (not E8M0), ``1 <= m <= 51`` and
    ``emin >= -1022``."""
    kind, m, emin, bias, _, _, subn = (int(v) for v in p[:7])
    return kind == KIND_FLOAT and 1 <= m <= 51 and -1022 <= emin and emin != -bias and (subn & 2) == 0


@_jit
def nearest_even_f64_consts(m, emin, bias, tmax, nan_code, sat):
    """:func:`nearest_even_f32_consts` for float64 data (int64; ``c = 1.5 * 2**(emin - m + 52)`` float64)."""
    maxbits, minnorm, _, infbits, nanbits = _float_consts(64, 52, 1023, m, emin, bias, tmax)
    overbits = maxbits if sat == 1 else (infbits if nan_code == NAN_IEEE else nanbits)
    inbits = infbits if nan_code == NAN_IEEE else (maxbits if sat == 1 else nanbits)
    d = 52 - m
    i64 = np.int64
    c = i64_as_f64(i64(((emin - m + 52 + 1023) << 52) | (i64(1) << 51)))
    return (i64(1) << d, (i64(1) << (d - 1)) - 1, -(i64(1) << d), i64(minnorm), c, i64(maxbits), i64(overbits),
            i64(inbits), i64(nanbits))


@_jit
def round_nearest_even_f64(u, nan_code, subn, sat, lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits,
                           nanbits):
    """:func:`round_nearest_even_f32` for float64 data (``u`` the int64 bits of a float64; constants:
    :func:`nearest_even_f64_consts`): the definition's nearest-even bits in 64-bit lanes, for the formats
    :func:`nearest_even_f64_applies` admits.

    Proof: round_nearest_even_f32's, with float64's 52 fraction bits and exponents down to -1022 for
    float32's 23 and -126: ``d = 52 - m`` dropped bits in the normal range (``ac + 2**d < 2**63``), and
    ``c = 1.5 * 2**(emin - m + 52)``, a float64 normal whose binade has the quantum ``2**(emin - m)`` (as
    ``m <= 51``)."""
    i64 = np.int64
    s = u & i64(-0x8000000000000000)
    a = u & i64(0x7FFFFFFFFFFFFFFF)
    ac = min(a, i64(_INF64))
    odd = i64(1) if (ac & lsb) != i64(0) else i64(0)
    rn = ((ac + half1) + odd) & dmask
    rs = f64_as_i64((i64_as_f64(ac) + c) - c)
    r = rs if ac < minnorm else rn
    return _step_selects(r, a, s, nan_code, subn, sat, minnorm, maxbits, overbits, infbits, nanbits)


@_jit
def carrier_to_float_code(r, CW, CM, CB, m, emin, nan_code):
    """(sign, T, cls) of a carrier value that is a value of the format (exact, no rounding), in the lane type
    of ``r`` (32-bit lanes for an int32 holding float32 bits, as :func:`round_float_carrier`)."""
    r, sign, a, E, frac, special, ex, sig = _fields(r, CW, CM, CB)
    zero = _like(r, 0)
    cm = _like(r, CM)
    eq = max(ex, _like(r, emin))
    # bits below the format's quantum (0 for a format value), capped where sig (< 2**(CM+1)) shifts out
    d = min(_like(r, _like(r, eq - _like(r, m)) - ex + cm), _like(r, CW - 2))
    T = _like(r, _shl(_like(r, eq - _like(r, emin)), _like(r, m)) + _shr(sig, d))
    cls = (_like(r, CLS_NAN) if frac != zero else _like(r, CLS_INF)) if special else _like(r, CLS_FINITE)
    T = zero if special else T
    return sign, T, cls


@_jit
def float_code_to_bits(sign, T, cls, CW, CM, CB, m, emin, bias):
    """Carrier bits of a float-format value given as (sign, magnitude code, class)."""
    expmax = (np.int64(1) << (CW - 1 - CM)) - 1
    sbit = np.int64(sign) << (CW - 1)
    Et = T >> m
    normal = (Et != 0) | (emin == -bias)  # without zero (emin == -bias) the zero exponent field is normal
    s = (T & ((np.int64(1) << m) - 1)) | (np.int64(normal) << m)
    e0 = (Et - bias - m) if normal else (emin - m)
    mag = _scaled_int_bits(s, e0, CM, CB)
    nan_bits = (expmax << CM) | (np.int64(1) << (CM - 1))
    mag = nan_bits if cls == CLS_NAN else ((expmax << CM) if cls == CLS_INF else mag)
    return _carrier_out(sbit | mag, CW)


@_jit
def float_code_to_pattern(sign, T, cls, m, nan_code, exp_bits):
    """The format's own bit pattern ``sign | exponent | mantissa`` of (sign, T, cls), in the lane type of ``T``
    (a 32-bit format's sign bit is then the lane's: :func:`float_pattern_of` zero-extends it)."""
    width = exp_bits + m
    sbit = _like(T, _shl(_like(T, sign), _like(T, width)))
    expf = _like(T, ((np.int64(1) << exp_bits) - 1) << m)
    if nan_code == NAN_IEEE:
        nanp = _like(T, sbit | expf | _like(T, np.int64(1) << max(m - 1, 0)))
    elif nan_code == NAN_ALL_ONES:
        nanp = _like(T, sbit | _like(T, (np.int64(1) << width) - 1))
    elif nan_code == NAN_NEGATIVE_ZERO:
        nanp = _like(T, np.int64(1) << width)
    else:
        nanp = _like(T, 0)  # no NaN encoding: callers reject NaN before encoding
    fin = _like(T, sbit | T)
    return nanp if cls == _like(T, CLS_NAN) else (_like(T, sbit | expf) if cls == _like(T, CLS_INF) else fin)


@_jit
def float_pattern_to_code(p, m, nan_code, exp_bits):
    """(sign, T, cls) of a format bit pattern (high bits above the width are ignored)."""
    width = exp_bits + m
    p = np.int64(p)
    sign = (p >> width) & 1
    T = p & ((np.int64(1) << width) - 1)
    cls = CLS_FINITE
    if nan_code == NAN_IEEE:
        if (T >> m) == (np.int64(1) << exp_bits) - 1:
            cls = CLS_NAN if (T & ((np.int64(1) << m) - 1)) != 0 else CLS_INF
    elif nan_code == NAN_ALL_ONES:
        if T == (np.int64(1) << width) - 1:
            cls = CLS_NAN
    elif nan_code == NAN_NEGATIVE_ZERO:
        if sign == 1 and T == 0:
            cls = CLS_NAN
    return sign, T, cls


# --------------------------------------------------------------------------
# fixed-point target
# --------------------------------------------------------------------------
@_jit
def round_fixed_int(u, CW, CM, CB, bits, frac_bits, signed, wrap, mode, rnd, rbits):
    """Round the carrier value with bits ``u`` to a fixed-point format.

    Returns (k, cls): the integer k (value = k * 2**-frac_bits) and CLS_NAN
    for NaN input (k = 0). Infinities saturate to the nearest end under
    both overflow modes (an infinity has no residue modulo 2**bits).

    Branch-free and in the lane type of ``u`` (32-bit lanes for an int32
    float32 carrier, as :func:`round_float_carrier`). It relies on the format
    fitting the carrier (every k * 2**-frac_bits representable, so
    |k| <= 2**(CM+1), which callers check): a value whose quantum count needs
    a left shift by 2 or more is then beyond every end of the format.
    """
    u, sign, a, E, frac, special, ex, sig = _fields(u, CW, CM, CB)
    zero = _like(u, 0)
    one = _like(u, 1)
    cm = _like(u, CM)
    nan_in = special & (frac != zero)
    kmax = _like(u, ((np.int64(1) << (bits - 1)) - 1) if signed == 1 else ((np.int64(1) << bits) - 1))
    kmin_mag = _like(u, (np.int64(1) << (bits - 1)) if signed == 1 else np.int64(0))
    d = _like(u, _like(u, cm - ex) - _like(u, frac_bits))  # dropped bits below the quantum 2**-frac_bits
    dpos = max(d, zero)
    kept, rem, half = _split(sig, dpos)
    inc = _increment(_like(u, kept & one), sign, rem, half, dpos, mode, rnd, rbits)
    sh = max(_like(u, zero - d), zero)  # d < 0: the value is sig * 2**sh quanta (exact)
    T = _like(u, kept + inc) if d >= zero else _shl(sig, min(sh, one))
    big = (d < zero) & (sh > one)
    lim = kmin_mag if sign == one else kmax
    # saturate: clamp the magnitude; infinities go to the nearest end as well
    ksat = lim if big | (T > lim) | special else T
    ksat = _like(u, zero - ksat) if sign == one else ksat
    # wrap: the low `bits` bits of +-T (T * 2**sh for sh < bits, else 0), as a signed value if signed
    mask = _like(u, (np.int64(1) << bits) - 1)
    tw = _shl(sig, min(sh, _like(u, bits - 1))) if d < zero else T
    tw = zero if (d < zero) & (sh >= _like(u, bits)) else tw
    kw = _like(u, _like(u, zero - tw) if sign == one else tw) & mask
    kw = _like(u, kw - _like(u, mask + one)) if (signed == 1) & (kw > kmax) else kw
    kw = (_like(u, zero - kmin_mag) if sign == one else kmax) if special else kw
    k = kw if wrap == 1 else ksat
    k = zero if nan_in else k
    return k, (CLS_NAN if nan_in else CLS_FINITE)


@intrinsic
def _int_times_pow2_bits(typingctx, proto, k, scale):
    """Carrier bits (proto's type) of ``k * scale`` computed in the float of proto's width
    (float32 for 32-bit, float64 for 64-bit): exact for an integer k and a power of two
    whose product the carrier represents."""
    if not isinstance(proto, types.Integer) or not isinstance(k, types.Integer) or scale != types.float64:
        return None
    sig = proto(proto, k, scale)

    def codegen(context, builder, signature, args):
        width = signature.return_type.bitwidth
        fty = ir.FloatType() if width == 32 else ir.DoubleType()
        kv = context.cast(builder, args[1], signature.args[1], types.int64)
        kf = builder.sitofp(kv, fty)
        sv = builder.fptrunc(args[2], fty) if width == 32 else args[2]
        return builder.bitcast(builder.fmul(kf, sv), ir.IntType(width))

    return sig, codegen


@_jit
def round_fixed_carrier(u, CW, CM, CB, bits, frac_bits, signed, wrap, mode, rnd, rbits):
    """Carrier bits in -> carrier bits of the value rounded to a fixed-point format (NaN stays NaN)."""
    k, cls = round_fixed_int(u, CW, CM, CB, bits, frac_bits, signed, wrap, mode, rnd, rbits)
    scale = np.float64(2.0) ** -np.float64(frac_bits)
    if _like(u, np.int64(1) << 40) == 0:  # 32-bit lanes: a float32 carrier
        r = _int_times_pow2_bits(u, k, scale)
    elif CW == 32:  # float32 bits held in an int64
        r = _like(u, np.int64(_int_times_pow2_bits(np.int32(0), k, scale)))
    else:
        r = _int_times_pow2_bits(u, k, scale)
    nanbits = _like(u, (((np.int64(1) << (CW - 1 - CM)) - 1) << CM) | (np.int64(1) << (CM - 1)))
    r = nanbits if cls == CLS_NAN else r
    return _like(u, np.int64(np.int32(r))) if CW == 32 else r


def fixed_nearest_applies(p, cw: int) -> bool:
    """Whether :func:`round_fixed_nearest_f32` (``cw`` 32: float32 data) or :func:`round_fixed_nearest_f64`
    (``cw`` 64: float64 data) computes the nearest-even rounding to the fixed-point format of parameters ``p``
    (FixedFormat._kernel_params): a saturating format (not wrap) of at most 22 (float32) or 51 (float64) bits whose
    ``2**frac_bits`` and ``2**-frac_bits`` are normal numbers of the carrier (every FixedFormat's are)."""
    kind, bits, frac, _, wrap = (int(v) for v in p[:5])
    max_bits, max_e = (22, 126) if cw == 32 else (51, 1022)
    return kind == KIND_FIXED and wrap == 0 and 1 <= bits <= max_bits and -max_e <= frac <= max_e


@_jit
def _fixed_nearest_consts(bits, frac_bits, signed):
    """(2**frac_bits, the definition's 2**-frac_bits, kmin - 1, kmax + 1, kmin, kmax) as float64 and int64."""
    kmax = (np.int64(1) << (bits - 1)) - 1 if signed == 1 else (np.int64(1) << bits) - 1
    kmin = -(np.int64(1) << (bits - 1)) if signed == 1 else np.int64(0)
    return (np.float64(2.0) ** np.float64(frac_bits), np.float64(2.0) ** -np.float64(frac_bits),
            np.float64(kmin - 1), np.float64(kmax + 1), kmin, kmax)


@_jit
def fixed_nearest_f32_consts(bits, frac_bits, signed):
    """The constants of :func:`round_fixed_nearest_f32`: ``(s, inv, lo, hi, kmin, kmax, c, nanbits)``, ``s`` and
    ``inv`` the float32 ``2**frac_bits`` and ``2**-frac_bits``, ``lo``/``hi`` the float32 ``kmin - 1``/``kmax + 1``,
    ``kmin``/``kmax`` the format's integer range (int32), ``c = 1.5 * 2**23`` and the carrier's NaN (int32)."""
    s, inv, lo, hi, kmin, kmax = _fixed_nearest_consts(bits, frac_bits, signed)
    f32 = np.float32
    return (f32(s), f32(inv), f32(lo), f32(hi), np.int32(kmin), np.int32(kmax), f32(12582912.0),
            np.int32(0x7FC00000))


@_jit
def round_fixed_nearest_f32(u, s, inv, lo, hi, kmin, kmax, c, nanbits):
    """round_fixed_carrier in mode NEAREST_EVEN for a float32 carrier (``u`` the int32 bits of a float32), in
    float32 arithmetic (a multiply, two clamps, the rounding add, two conversions, a multiply): the specialised
    round loop of the formats :func:`fixed_nearest_applies` admits (constants: :func:`fixed_nearest_f32_consts`).
    The same bits, NaN included.

    Proof. (1) ``y = x * 2**frac_bits`` (the value in quanta) is exact unless it overflows (Inf: beyond every end)
    or falls below ``2**-126`` (rounding it then keeps it below 1/2 in magnitude: nearest-even gives 0 either
    way). (2) Clamping ``y`` to ``[kmin - 1, kmax + 1]`` before rounding and the integer to ``[kmin, kmax]`` after
    gives the rounded integer clamped, as the definition's saturation does (rounding is monotonic and maps the
    clamp bounds, integers, to themselves); an Inf input goes to the nearest end, as in the definition. (3) For
    ``|y| <= 2**22`` (``bits <= 22``) the float32 sum ``y + 1.5 * 2**23`` lies in ``[2**23, 2**24]`` whose
    float32 quantum is 1: the addition rounds ``y`` to nearest-even onto the integers (``1.5 * 2**23`` is even)
    and the subtraction is exact. (4) The result ``float32(k) * float32(2**-frac_bits)`` is the definition's
    own expression (``k`` exact in float32, a zero positive: -0.4 gives +0 as the definition's integer 0 does).
    (5) A NaN input gives the carrier's positive quiet NaN, as the definition (it is set to 0 before the
    conversion, which a NaN would make undefined)."""
    i32 = np.int32
    f32 = np.float32
    isnan = i32(u & i32(0x7FFFFFFF)) > i32(_INF32)
    y = f32(i32_as_f32(u) * s)
    y = hi if y > hi else y
    y = lo if y < lo else y
    y = f32(0.0) if isnan else y
    k = i32(f32(f32(y + c) - c))
    k = kmax if k > kmax else k
    k = kmin if k < kmin else k
    r = f32_as_i32(f32(f32(k) * inv))
    return nanbits if isnan else r


@_jit
def fixed_nearest_f64_consts(bits, frac_bits, signed):
    """:func:`fixed_nearest_f32_consts` for float64 data: float64 and int64 constants, ``c = 1.5 * 2**52``."""
    s, inv, lo, hi, kmin, kmax = _fixed_nearest_consts(bits, frac_bits, signed)
    return s, inv, lo, hi, kmin, kmax, np.float64(6755399441055744.0), np.int64(0x7FF8000000000000)


@_jit
def round_fixed_nearest_f64(u, s, inv, lo, hi, kmin, kmax, c, nanbits):
    """:func:`round_fixed_nearest_f32` for float64 data (``u`` the int64 bits of a float64, ``bits <= 51``,
    ``|y| <= 2**51`` so the sum with ``1.5 * 2**52`` lies in ``[2**52, 2**53]``); the same proof."""
    isnan = np.int64(u & np.int64(0x7FFFFFFFFFFFFFFF)) > np.int64(_INF64)
    y = i64_as_f64(u) * s
    y = hi if y > hi else y
    y = lo if y < lo else y
    y = 0.0 if isnan else y
    k = np.int64((y + c) - c)
    k = kmax if k > kmax else k
    k = kmin if k < kmin else k
    r = f64_as_i64(np.float64(k) * inv)
    return nanbits if isnan else r


@_jit
def fixed_int_to_bits(k, cls, CW, CM, CB, frac_bits):
    expmax = (np.int64(1) << (CW - 1 - CM)) - 1
    if cls == CLS_NAN:
        return _carrier_out((expmax << CM) | (np.int64(1) << (CM - 1)), CW)
    k = np.int64(k)
    sbit = np.int64(k < 0) << (CW - 1)
    return _carrier_out(sbit | _scaled_int_bits(abs(k), -frac_bits, CM, CB), CW)


# --------------------------------------------------------------------------
# the three entry points the array loops call
# --------------------------------------------------------------------------
@_jit
def round_bits(u, CW, CM, CB, p, mode, rnd, rbits):
    """Carrier bits in -> carrier bits of the value rounded to format ``p``."""
    if p[0] == KIND_FLOAT:
        return round_float_carrier(u, CW, CM, CB, p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                   mode, rnd, rbits)
    return round_fixed_carrier(u, CW, CM, CB, p[1], p[2], p[3], p[4], mode, rnd, rbits)


@_jit
def float_pattern_of(r, CW, CM, CB, m, emin, bias, nan_code, exp_bits):
    """The format's bit pattern (an int64, unsigned in the low bits) of ``r``, the carrier bits of a value of the
    format, Inf or NaN (what :func:`round_float_carrier` returns), computed in the lane type of ``r``."""
    sign, T, cls = carrier_to_float_code(r, CW, CM, CB, m, emin, nan_code)
    # without zero (emin == -bias) codes count from the smallest binade, which the code
    # relative to emin counts as 1 << m (every finite result is >= that value)
    if emin == -bias:
        T = _like(T, T - _like(T, np.int64(1) << m)) if cls == _like(T, CLS_FINITE) else T
    pat = float_code_to_pattern(sign, T, cls, m, nan_code, exp_bits)
    return np.int64(pat) & 0xFFFFFFFF if _like(pat, np.int64(1) << 40) == 0 else np.int64(pat)


@_jit
def encode_float(u, CW, CM, CB, m, emin, bias, tmax, nan_code, subn, sat, exp_bits, mode, rnd, rbits):
    """Carrier bits in -> the float format's bit pattern (an int64, unsigned in the low bits)."""
    r = round_float_carrier(u, CW, CM, CB, m, emin, bias, tmax, nan_code, subn, sat, mode, rnd, rbits)
    return float_pattern_of(r, CW, CM, CB, m, emin, bias, nan_code, exp_bits)


@_jit
def encode_fixed(u, CW, CM, CB, bits, frac_bits, signed, wrap, mode, rnd, rbits):
    """Carrier bits in -> the fixed-point format's bit pattern: two's complement in ``bits`` bits (an int64)."""
    k, cls = round_fixed_int(u, CW, CM, CB, bits, frac_bits, signed, wrap, mode, rnd, rbits)
    return np.int64(k) & ((np.int64(1) << bits) - 1)


@_jit
def encode_bits(u, CW, CM, CB, p, mode, rnd, rbits):
    """Carrier bits in -> the format's bit pattern (unsigned, in the low bits)."""
    if p[0] == KIND_FLOAT:
        return encode_float(u, CW, CM, CB, p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], mode, rnd, rbits)
    return encode_fixed(u, CW, CM, CB, p[1], p[2], p[3], p[4], mode, rnd, rbits)


@_jit
def decode_bits(pattern, CW, CM, CB, p):
    """The format's bit pattern -> carrier bits of its value."""
    if p[0] == KIND_FLOAT:
        sign, T, cls = float_pattern_to_code(pattern, p[1], p[5], p[8])
        return float_code_to_bits(sign, T, cls, CW, CM, CB, p[1], p[2], p[3])
    bits = p[1]
    k = np.int64(pattern) & ((np.int64(1) << bits) - 1)
    if p[3] == 1 and k >= (np.int64(1) << (bits - 1)):
        k = k - (np.int64(1) << bits)
    return fixed_int_to_bits(k, CLS_FINITE, CW, CM, CB, p[2])


# --------------------------------------------------------------------------
# float-register conveniences for kernels that round intermediate values
# --------------------------------------------------------------------------
@_jit
def round_f64(x, p, mode, rnd, rbits):
    """Round a float64 register value to format ``p`` (a float64 result, exact)."""
    return i64_as_f64(round_bits(f64_as_i64(np.float64(x)), 64, 52, 1023, p, mode, rnd, rbits))

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
from numba import njit, types
from numba.extending import intrinsic

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

# Not cached on their own: a cached callee is linked as object code and cannot be inlined
# (measured 10x slower). The cached loops that call them compile them in.
_jit = njit(nogil=True, inline="always")


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


# --------------------------------------------------------------------------
# random bits: counter-based keyed hash
# --------------------------------------------------------------------------
@_jit
def _mix32(x):
    """lowbias32 (C. Wellons, hash-prospector): a bijective 32-bit mixer."""
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32(x * np.uint32(0x846CA68B))
    x = np.uint32(x ^ (x >> np.uint32(16)))
    return x


@_jit
def _hash32(key0, key1, counter):
    """32 random bits for (key, counter): two keyed rounds of lowbias32.

    For a fixed key the map counter -> bits is a bijection on each block of
    2**32 counters (no repeats within a stream)."""
    lo = np.uint32(counter & 0xFFFFFFFF)
    hi = np.uint32((counter >> 32) & 0xFFFFFFFF)
    h = _mix32(np.uint32(lo ^ np.uint32(key0)))
    h = _mix32(np.uint32(h ^ np.uint32(key1) ^ _mix32(hi)))
    return h


@_jit
def random_bits(key0, key1, counter, rbits):
    """``rbits`` (1..64) uniformly random bits for ``counter`` under key (key0, key1), as a uint64."""
    c = np.int64(counter)
    h = np.uint64(_hash32(key0, key1, c))
    if rbits <= 32:
        return h >> np.uint64(32 - rbits)
    h2 = np.uint64(_hash32(np.uint32(key0) ^ np.uint32(0x9E3779B9), key1, c))
    return ((h << np.uint64(32)) | h2) >> np.uint64(64 - rbits)


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
    rem    : the d dropped bits as an integer (0 <= rem < 2**d; when d > 62
             rem is everything below the kept bits and half > rem)
    half   : 2**(d-1) (clamped, see _split)
    rnd    : for STOCHASTIC, a uniform integer in [0, 2**rbits)

    Written with selects, not branches on the data, so that array loops vectorise.
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
    elif mode == STOCHASTIC:
        # round up iff R < floor(rem * 2**rbits / 2**d): P(up) = floor(2**r (x-lo)/(hi-lo)) / 2**r
        sh_down = np.uint64(min(max(d - rbits, 0), 63))
        sh_up = np.uint64(min(max(rbits - d, 0), 63))
        rem_r = (np.uint64(rem) >> sh_down) << sh_up
        inc = np.uint64(rnd) < rem_r
    else:  # TOWARD_ZERO
        inc = False
    return np.int64(inc)


@_jit
def _split(sig, d):
    """kept, rem, half for dropping d >= 0 low bits of sig (sig < 2**53; d is clamped at 62)."""
    dd = min(d, 62)  # 1 << 63 is negative in int64; 2**61 > any significand anyway
    kept = sig >> dd
    rem = sig & ((np.int64(1) << dd) - 1)
    half = (np.int64(1) << dd) >> 1
    return kept, rem, half


@_jit
def _carrier_int(u, CW):
    """The carrier bits as a nonnegative-for-float32 int64 (a float32 pattern arrives sign-extended)."""
    u = np.int64(u)
    return (u & 0xFFFFFFFF) if CW == 32 else u


@_jit
def _carrier_out(r, CW):
    """Carrier bits as the signed int of the carrier's width (what an int32/int64 view holds)."""
    return np.int64(np.int32(r)) if CW == 32 else np.int64(r)


# --------------------------------------------------------------------------
# float target
# --------------------------------------------------------------------------
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
    """
    u = _carrier_int(u, CW)
    maxbits, minnorm, minsub, infbits, nanbits = _float_consts(CW, CM, CB, m, emin, bias, tmax)
    sign = (u >> (CW - 1)) & 1
    a = u & ((np.int64(1) << (CW - 1)) - 1)
    E = a >> CM
    frac = a & ((np.int64(1) << CM) - 1)
    special = E == (np.int64(1) << (CW - 1 - CM)) - 1  # Inf or NaN in
    nan_in = special & (frac != 0)
    ex = max(E, 1) - CB
    sig = frac | (np.int64(E != 0) << CM)
    d = max(ex, emin) - m - ex + CM  # bits dropped below the target quantum (>= 0)
    kept, rem, half = _split(sig, d)
    kc = a >> min(d, CM)  # truncated value, carrier domain (valid for d <= CM)
    # last bit of the truncated value's *target* encoding
    par_cm = ((E + CB + bias) & 1) if ex >= emin else np.int64(1)  # d == CM: exponent lsb, or subnormal 1
    parity = (kc & 1) if d < CM else (par_cm if d == CM else np.int64(0))
    inc = _increment(parity, sign, rem, half, d, mode, rnd, rbits)
    res = ((kc + inc) << min(d, CM)) if d <= CM else (minsub if inc == 1 else np.int64(0))
    # overflow: clamp to max (saturating format, toward-zero-like modes) or Inf/NaN
    clamp = ((sat == 1) | (mode == TOWARD_ZERO) | (mode == ODD)
             | ((mode == UP) & (sign == 1)) | ((mode == DOWN) & (sign == 0)))
    over_bits = maxbits if clamp else (infbits if nan_code == NAN_IEEE else nanbits)
    res = over_bits if res > maxbits else res
    res = 0 if (subn == 0) & (res < minnorm) else res  # flush to zero after rounding
    inf_bits = infbits if nan_code == NAN_IEEE else (maxbits if sat == 1 else nanbits)
    res = (nanbits if nan_in else inf_bits) if special else res
    sign = 0 if (nan_code == NAN_NEGATIVE_ZERO) & (res == 0) else sign  # no negative zero
    return _carrier_out((np.int64(sign) << (CW - 1)) | res, CW)


@_jit
def carrier_to_float_code(r, CW, CM, CB, m, emin, nan_code):
    """(sign, T, cls) of a carrier value that is a value of the format (exact, no rounding)."""
    r = np.int64(r)
    sign = (r >> (CW - 1)) & 1
    a = r & ((np.int64(1) << (CW - 1)) - 1)
    E = a >> CM
    frac = a & ((np.int64(1) << CM) - 1)
    special = E == (np.int64(1) << (CW - 1 - CM)) - 1
    ex = max(E, 1) - CB
    sig = frac | (np.int64(E != 0) << CM)
    eq = max(ex, emin)
    d = min(eq - m - ex + CM, 62)
    T = (np.int64(eq - emin) << m) + (sig >> d)
    cls = (CLS_NAN if frac != 0 else CLS_INF) if special else CLS_FINITE
    T = 0 if special else T
    return sign, T, cls


@_jit
def float_code_to_bits(sign, T, cls, CW, CM, CB, m, emin, bias):
    """Carrier bits of a float-format value given as (sign, magnitude code, class)."""
    expmax = (np.int64(1) << (CW - 1 - CM)) - 1
    sbit = np.int64(sign) << (CW - 1)
    Et = T >> m
    normal = Et != 0
    s = (T & ((np.int64(1) << m) - 1)) | (np.int64(normal) << m)
    e0 = (Et - bias - m) if normal else (emin - m)
    mag = _scaled_int_bits(s, e0, CM, CB)
    nan_bits = (expmax << CM) | (np.int64(1) << (CM - 1))
    mag = nan_bits if cls == CLS_NAN else ((expmax << CM) if cls == CLS_INF else mag)
    return _carrier_out(sbit | mag, CW)


@_jit
def float_code_to_pattern(sign, T, cls, m, nan_code, exp_bits):
    """The format's own bit pattern ``sign | exponent | mantissa`` of (sign, T, cls)."""
    width = exp_bits + m
    sbit = np.int64(sign) << width
    ones = (np.int64(1) << width) - 1
    if cls == CLS_NAN:
        if nan_code == NAN_IEEE:
            return sbit | (((np.int64(1) << exp_bits) - 1) << m) | (np.int64(1) << max(m - 1, 0))
        if nan_code == NAN_ALL_ONES:
            return sbit | ones
        if nan_code == NAN_NEGATIVE_ZERO:
            return np.int64(1) << width
        return np.int64(0)  # no NaN encoding: callers reject NaN before encoding
    if cls == CLS_INF:
        return sbit | (((np.int64(1) << exp_bits) - 1) << m)
    return sbit | T


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
    both overflow modes (an infinity has no residue modulo 2**bits)."""
    u = _carrier_int(u, CW)
    sign = (u >> (CW - 1)) & 1
    a = u & ((np.int64(1) << (CW - 1)) - 1)
    expmax = (np.int64(1) << (CW - 1 - CM)) - 1
    E = a >> CM
    frac = a & ((np.int64(1) << CM) - 1)
    kmax = (np.int64(1) << (bits - 1)) - 1 if signed == 1 else (np.int64(1) << bits) - 1
    kmin_mag = (np.int64(1) << (bits - 1)) if signed == 1 else np.int64(0)
    if E == expmax:
        if frac != 0:
            return np.int64(0), CLS_NAN
        return (-kmin_mag if sign == 1 else kmax), CLS_FINITE
    ex = max(E, 1) - CB
    sig = frac | (np.int64(E != 0) << CM)
    d = -frac_bits - ex + CM  # dropped bits below the quantum 2**-frac_bits
    big = False
    if d >= 0:
        kept, rem, half = _split(sig, d)
        T = kept + _increment(kept & 1, sign, rem, half, d, mode, rnd, rbits)
    else:
        sh = -d
        big = _bit_length(sig) + sh > 62
        T = (sig << min(sh, 63)) if sh < 64 else np.int64(0)
    if wrap == 1:
        k = -T if sign == 1 else T
        mask = (np.int64(1) << bits) - 1
        k = k & mask
        if signed == 1 and k > kmax:
            k = k - (np.int64(1) << bits)
        return k, CLS_FINITE
    lim = kmin_mag if sign == 1 else kmax
    if big or T > lim:
        T = lim
    return (-T if sign == 1 else T), CLS_FINITE


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
    k, cls = round_fixed_int(u, CW, CM, CB, p[1], p[2], p[3], p[4], mode, rnd, rbits)
    return fixed_int_to_bits(k, cls, CW, CM, CB, p[2])


@_jit
def encode_bits(u, CW, CM, CB, p, mode, rnd, rbits):
    """Carrier bits in -> the format's bit pattern (unsigned, in the low bits)."""
    if p[0] == KIND_FLOAT:
        r = round_float_carrier(u, CW, CM, CB, p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                mode, rnd, rbits)
        sign, T, cls = carrier_to_float_code(r, CW, CM, CB, p[1], p[2], p[5])
        return float_code_to_pattern(sign, T, cls, p[1], p[5], p[8])
    k, cls = round_fixed_int(u, CW, CM, CB, p[1], p[2], p[3], p[4], mode, rnd, rbits)
    return k & ((np.int64(1) << p[1]) - 1)  # two's complement in `bits` bits


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


@_jit
def round_f32(x, p, mode, rnd, rbits):
    """Round a float32 register value to format ``p`` (which must fit in float32)."""
    return i32_as_f32(np.int32(round_bits(np.int64(f32_as_i32(np.float32(x))) & 0xFFFFFFFF,
                                          32, 23, 127, p, mode, rnd, rbits)))

"""CPU loops of block-scaled formats (lowprec.block): one pass per block, amax -> scale -> elements.

The array arrives as the integer view of its carrier (int32 for float32, int64 for float64), flat, in C
order, seen as ``(P, A, Q)``: blocks are tiles of ``TA x TQ`` elements of the ``(A, Q)`` planes (a 1-D
block of ``B`` along an axis is the tile ``B x 1`` with ``Q`` the product of the later axes; a 2-D tile
of the last two axes has ``Q`` = the last axis). A last, shorter tile along an axis that its size does not
divide holds what is left (as if padded with zeros, which change neither amax nor any element).
Block ``b`` is ``(p, ba, bq)`` in C order; element ``(p, a, q)`` draws the random counter
``offset + (p*A + a)*Q + q`` (its flat C-order index): the same bits on any thread count or chunking.

Every value rounded here goes through kernels/scalar.py (``round_float_carrier``, ``round_fixed_carrier``,
``round_bits``, the encode helpers); this module only chooses the scale:

- power-of-two rules (``FLOOR``, ``CEIL``, ``EVEN``, ``RCEIL``): the E8M0 exponent ``e`` from amax's
  carrier bits (:func:`pow2_exponent`), clamped to [-127, 127]. The element is ``y = x * 2**-e`` (a
  carrier multiplication) rounded to the element format, the value ``q * 2**e``. Both products are
  exact: ``|y| < 2**(emax_elem + 1)`` cannot overflow, ``q * 2**e`` is a float32 value for every element
  format (``2**e >= 2**-127``, quanta ``>= 2**-136``) unless it exceeds float32's range (Inf: the ``ceil``
  rule on a block maximum near 2**128), and ``y`` is inexact only below the carrier's smallest normal,
  ``2**-126``, far below half the element format's smallest value, where nearest-even gives 0 and
  stochastic rounding with at most 64 random bits rounds up with probability 0 either way (the block
  API offers only these two modes). The element format's parameters are the same for every block, so
  their constants stay out of the loop.
- ``AMAX``: the scale ``S_b = round(amax / (max_elem * s_t), scale format)`` (float64 quotient, rounded
  once to the scale format by ``round_bits``), ``S = S_b * s_t`` (exact in float64), the element
  ``q = round(fl64(x / S), element format)``, the value ``q * S`` (exact in float64, rounded to float32
  for float32 arrays). ``S == 0`` (an all-zero block) gives zeros.

A block holding a NaN gets the NaN scale (E8M0 code 255, scale value NaN) and NaN values; a block
holding an Inf (and no NaN) is counted, and treated like a NaN block (the caller raises first when its
policy is "error"). The loops return (blocks with a NaN, blocks with an Inf).
"""

import numpy as np
from numba import njit, prange  # noqa: F401  (njit: the inlined steps)

from . import scalar
from .jit import kernel

FLOOR, CEIL, EVEN, RCEIL, AMAX = 0, 1, 2, 3, 4
RULES = {"floor": FLOOR, "ceil": CEIL, "even": EVEN, "rceil": RCEIL, "amax": AMAX}
QUANTIZE, ENCODE = 0, 1
E8M0_BIAS = 127


@njit(inline="always")
def _carrier_float(a, CW):
    """The float64 value of carrier bits ``a`` (int64; float32 bits when CW == 32)."""
    if CW == 32:
        return np.float64(scalar.i32_as_f32(np.int32(a)))
    return scalar.i64_as_f64(np.int64(a))


@njit(inline="always")
def _log2_parts(a, CM, CB):
    """(floor(log2 v), its significand's fraction bits left-aligned to CM bits) of the positive
    finite carrier value with magnitude bits ``a`` (a carrier subnormal is normalised first)."""
    a = np.int64(a)
    E = a >> CM
    frac = a & ((np.int64(1) << CM) - 1)
    n = scalar._bit_length(frac) - 1
    sub_log = n + 1 - CB - CM
    sub_frac = (frac << max(CM - n, 0)) & ((np.int64(1) << CM) - 1)
    if E == 0:
        return sub_log, sub_frac
    return E - CB, frac


@njit(inline="always")
def pow2_exponent(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem):
    """The E8M0 scale exponent e (clamped to [-127, 127]) of a block with finite amax (carrier bits).

    floor: floor(log2 amax) - emax_elem; ceil: ceil(log2 amax) - emax_elem; even: floor(log2 of amax
    rounded to m_elem fraction bits) - emax_elem (the rounding carries into the next binade iff the
    significand is >= 2 - 2**-(m_elem+1), ties included, so ties-to-even and ties-away agree);
    rceil: ceil(log2 r) with r = amax / max_elem rounded to float32 (IEEE division for float32 input).
    amax == 0 (or r == 0) gives -127."""
    flog, frac = _log2_parts(amax, CM, CB)
    if rule == FLOOR:
        e = flog - emax_elem
    elif rule == CEIL:
        e = flog + np.int64(frac != 0) - emax_elem
    elif rule == EVEN:
        thresh = (np.int64(1) << CM) - (np.int64(1) << max(CM - m_elem - 1, 0))
        e = flog + np.int64(frac >= thresh) - emax_elem
    else:  # RCEIL
        r = np.float32(_carrier_float(amax, CW) / max_elem)
        rb = np.int64(scalar.f32_as_i32(r)) & 0x7FFFFFFF
        if rb >= 0x7F800000:
            e = np.int64(127)
        else:
            rlog, rfrac = _log2_parts(rb, 23, 127)
            e = rlog + np.int64(rfrac != 0)
            if rb == 0:
                e = np.int64(-127)
    if amax == 0:
        e = np.int64(-127)
    return min(max(e, np.int64(-127)), np.int64(127))


# ---------------------------------------------------------------------------------------------------
# the scale of a block: (e, S, scale code, scale value)
# ---------------------------------------------------------------------------------------------------
@njit(inline="always")
def pow2_f64(e):
    """2.0**e for an int e in [-1022, 1023], built from its bits (no libm pow)."""
    return scalar.i64_as_f64((np.int64(e) + 1023) << 52)


@njit(inline="always")
def _scale_pow2(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t):
    e = pow2_exponent(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem)
    return e, np.float64(0.0), e + E8M0_BIAS, pow2_f64(e)


@njit(inline="always")
def _scale_amax(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t):
    ratio = _carrier_float(amax, CW) / (max_elem * s_t)
    Sb = scalar.i64_as_f64(scalar.round_float_carrier(
        scalar.f64_as_i64(ratio), 64, 52, 1023, ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7],
        scalar.NEAREST_EVEN, np.uint64(0), 32))
    return np.int64(0), Sb * s_t, np.int64(0), Sb


# ---------------------------------------------------------------------------------------------------
# one element: value bits (QUANTIZE) or element pattern (ENCODE)
# ---------------------------------------------------------------------------------------------------
@njit(inline="always")
def _prescale(u, CW, f):
    """Carrier bits of (the value of u) * f, in u's integer type; exact where the kernels use it."""
    if CW == 32:
        return scalar._like(u, scalar.f32_as_i32(scalar.i32_as_f32(np.int32(u)) * np.float32(f)))
    return scalar._like(u, scalar.f64_as_i64(scalar.i64_as_f64(np.int64(u)) * f))


@njit(inline="always")
def _pow2_float_value(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    r = scalar.round_float_carrier(_prescale(u, CW, s_in), CW, CM, CB, pe[1], pe[2], pe[3], pe[4], pe[5],
                                   pe[6], pe[7], mode, rnd, rb)
    return _prescale(r, CW, s_out)


@njit(inline="always")
def _pow2_float_pattern(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    r = scalar.round_float_carrier(_prescale(u, CW, s_in), CW, CM, CB, pe[1], pe[2], pe[3], pe[4], pe[5],
                                   pe[6], pe[7], mode, rnd, rb)
    sg, T, cls = scalar.carrier_to_float_code(r, CW, CM, CB, pe[1], pe[2], pe[5])
    return scalar.float_code_to_pattern(sg, T, cls, pe[1], pe[5], pe[8])


@njit(inline="always")
def _pow2_fixed_value(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    r = scalar.round_fixed_carrier(_prescale(u, CW, s_in), CW, CM, CB, pe[1], pe[2], pe[3], pe[4], mode, rnd, rb)
    return _prescale(r, CW, s_out)


@njit(inline="always")
def _pow2_fixed_pattern(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    k, cls = scalar.round_fixed_int(_prescale(u, CW, s_in), CW, CM, CB, pe[1], pe[2], pe[3], pe[4], mode, rnd, rb)
    return np.int64(k) & ((np.int64(1) << pe[1]) - 1)


@njit(inline="always")
def _quotient_bits(u, CW, S):
    """float64 bits of fl64(x / S) (+-0 when S == 0)."""
    xf = _carrier_float(u, CW)
    return scalar.f64_as_i64(xf / S if S != 0.0 else xf * 0.0)


@njit(inline="always")
def _amax_store(u, CW, q, S):
    """Carrier bits (u's type) of q * S (float64), rounded to float32 for a float32 carrier."""
    v = q * S if S != 0.0 else q
    if CW == 32:
        return scalar._like(u, scalar.f32_as_i32(np.float32(v)))
    return scalar._like(u, scalar.f64_as_i64(v))


@njit(inline="always")
def _amax_float_value(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    q = scalar.round_float_carrier(_quotient_bits(u, CW, S), 64, 52, 1023, pe[1], pe[2], pe[3], pe[4], pe[5], pe[6],
                                   pe[7], mode, rnd, rb)
    return _amax_store(u, CW, scalar.i64_as_f64(q), S)


@njit(inline="always")
def _amax_float_pattern(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    r = scalar.round_float_carrier(_quotient_bits(u, CW, S), 64, 52, 1023, pe[1], pe[2], pe[3], pe[4], pe[5], pe[6],
                                   pe[7], mode, rnd, rb)
    sg, T, cls = scalar.carrier_to_float_code(r, 64, 52, 1023, pe[1], pe[2], pe[5])
    return scalar.float_code_to_pattern(sg, T, cls, pe[1], pe[5], pe[8])


@njit(inline="always")
def _amax_fixed_value(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    q = scalar.round_fixed_carrier(_quotient_bits(u, CW, S), 64, 52, 1023, pe[1], pe[2], pe[3], pe[4], mode, rnd, rb)
    return _amax_store(u, CW, scalar.i64_as_f64(q), S)


@njit(inline="always")
def _amax_fixed_pattern(u, CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb):
    k, cls = scalar.round_fixed_int(_quotient_bits(u, CW, S), 64, 52, 1023, pe[1], pe[2], pe[3], pe[4], mode, rnd, rb)
    return np.int64(k) & ((np.int64(1) << pe[1]) - 1)


_STEPS = {
    (True, scalar.KIND_FLOAT, QUANTIZE): _pow2_float_value, (True, scalar.KIND_FLOAT, ENCODE): _pow2_float_pattern,
    (True, scalar.KIND_FIXED, QUANTIZE): _pow2_fixed_value, (True, scalar.KIND_FIXED, ENCODE): _pow2_fixed_pattern,
    (False, scalar.KIND_FLOAT, QUANTIZE): _amax_float_value, (False, scalar.KIND_FLOAT, ENCODE): _amax_float_pattern,
    (False, scalar.KIND_FIXED, QUANTIZE): _amax_fixed_value, (False, scalar.KIND_FIXED, ENCODE): _amax_fixed_pattern,
}


def _build(op, kind, rule, mode, r32, carrier32):
    """The loop over tiles ``TA x TQ`` of ``(P, A, Q)`` (any layout); every argument is a compile-time
    constant (a closure cell and part of the cache key).

    The rule and the carrier are constants because a runtime choice costs more than the rounding itself
    here: the compiler computes every branch of a short per-block computation (the ``rceil`` division
    included) and keeps carrier selects in the element loop."""
    stochastic = mode == scalar.STOCHASTIC
    pow2 = rule != AMAX
    step = _STEPS[pow2, kind, op]
    scale_of = _scale_pow2 if pow2 else _scale_amax
    CW, CM, CB = (32, 23, 127) if carrier32 else (64, 52, 1023)
    absmask = (1 << (CW - 1)) - 1
    infbits = ((1 << (CW - 1 - CM)) - 1) << CM
    nanbits = infbits | (1 << (CM - 1))
    bad_out = nanbits if op == QUANTIZE else 0

    @kernel(parallel=True, spec=(op, kind, rule, mode, r32, carrier32), error_model="numpy")
    def loop(xi, out, scale_code, scale_val, P, A, Q, TA, TQ, pe, ps, emax_elem, m_elem, max_elem, s_t,
             key0, key1, offset, rbits):
        rb = 32 if r32 else rbits
        nA = (A + TA - 1) // TA
        nQ = (Q + TQ - 1) // TQ
        nblocks = P * nA * nQ
        n_nan = 0
        n_inf = 0
        for b in prange(nblocks):
            p = b // (nA * nQ)
            rest = b - p * (nA * nQ)
            ba = rest // nQ
            bq = rest - ba * nQ
            a0 = ba * TA
            a1 = min(a0 + TA, A)
            q0 = bq * TQ
            q1 = min(q0 + TQ, Q)
            # unsigned indices counted from 0 (range(n), then base + j): numba then omits its negative-index
            # wraparound and the loops vectorise (with range(start, stop) they did not)
            lane = xi[0]
            amax = scalar._like(lane, 0)
            width = np.uint64(q1 - q0)
            for a in range(a0, a1):
                row = np.uint64((p * A + a) * Q + q0)
                for j in range(width):
                    amax = max(amax, scalar._like(lane, xi[row + j] & scalar._like(lane, absmask)))
            amax64 = np.int64(amax)
            n_nan += np.int64(amax64 > infbits)
            n_inf += np.int64(amax64 == infbits)
            if amax64 >= infbits:
                scale_code[b] = 255
                scale_val[b] = np.nan
                for a in range(a0, a1):
                    row = np.uint64((p * A + a) * Q + q0)
                    for j in range(width):
                        out[row + j] = bad_out
                continue
            e, S, code, val = scale_of(amax64, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t)
            scale_code[b] = code
            scale_val[b] = val
            # x * 2**-e is exact (or, far below the element grid, rounds to what rounds to zero anyway)
            s_in = pow2_f64(-e)
            s_out = pow2_f64(e)
            for a in range(a0, a1):
                row = np.uint64((p * A + a) * Q + q0)
                for j in range(width):
                    i = row + j
                    rnd = scalar.random_bits(key0, key1, offset + np.int64(i), rb) if stochastic else np.uint64(0)
                    out[i] = step(xi[i], CW, CM, CB, pe, e, s_in, s_out, S, mode, rnd, rb)
        return n_nan, n_inf

    return loop


_LOOPS: dict = {}


def block_loop(op: int, kind: int, rule: int, mode: int, rbits: int, carrier32: bool):
    """The block loop for (QUANTIZE or ENCODE, element kind, scale rule, rounding mode, float32 carrier or
    float64), built once. ``out`` receives carrier bits (QUANTIZE, the
    carrier's int view) or element patterns (ENCODE, int64)."""
    key = (op, kind, rule, mode, mode == scalar.STOCHASTIC and rbits == 32, bool(carrier32))
    loop = _LOOPS.get(key)
    if loop is None:
        loop = _LOOPS[key] = _build(*key)
    return loop


@kernel(parallel=True)
def finite_amax(xi, CW, CM):
    """The largest finite magnitude of a carrier array, as carrier bits (0 when there is none)."""
    absmask = (np.int64(1) << (CW - 1)) - 1
    infbits = ((np.int64(1) << (CW - 1 - CM)) - 1) << CM
    m = np.int64(0)
    for i in prange(xi.size):
        a = np.int64(xi[i]) & absmask
        m = max(m, a if a < infbits else np.int64(0))
    return m

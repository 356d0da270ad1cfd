"""CPU loops of block-scaled formats (lowprec.block): one pass per block, amax -> scale -> elements.

The array arrives as the integer view of its carrier (int32 for float32, int64 for float64), flat, in C
order, seen as ``(P, A, Q)``: blocks are tiles of ``TA x TQ`` elements of the ``(A, Q)`` planes (a 1-D
block of ``B`` along an axis is the tile ``B x 1`` with ``Q`` the product of the later axes; a 2-D tile
of the last two axes has ``Q`` = the last axis). A last, shorter tile along an axis that its size does not
divide holds what is left (as if padded with zeros, which change neither amax nor any element).
Block ``b`` is ``(p, ba, bq)`` in C order; element ``(p, a, q)`` draws the random counter
``offset + (p*A + a)*Q + q`` (its flat C-order index): the same bits on any thread count or chunking.

The steps (inlined functions; the CUDA kernel of kernels/block_cuda.py calls the same ones); every value
rounded here goes through kernels/scalar.py (``round_bits``, ``encode_bits``, ``round_float_carrier``):

- the scale of a block from its amax (carrier bits; :func:`block_scale_called` for any rule).
  Power-of-two rules (``FLOOR``, ``CEIL``, ``EVEN``, ``RCEIL``): the E8M0 exponent ``e`` from amax's
  carrier bits (:func:`pow2_exponent`), clamped to [-127, 127]. The element is ``y = x * 2**-e`` (a
  carrier multiplication) rounded to the element format, the value ``q * 2**e``. Both products are
  exact: ``|y| < 2**(emax_elem + 1)`` cannot overflow, ``q * 2**e`` is a float32 value for every element
  format (``2**e >= 2**-127``, quanta ``>= 2**-136``) unless it exceeds float32's range (Inf: the ``ceil``
  rule on a block maximum near 2**128), and ``y`` is inexact only below the carrier's smallest normal,
  ``2**-126``, far below half the element format's smallest value, where nearest-even gives 0 and
  stochastic rounding with at most 64 random bits rounds up with probability 0 either way (the block
  API offers only these two modes).
  ``AMAX``: the scale ``S_b = round(amax / (max_elem * s_t), scale format)`` (float64 quotient, rounded
  once to the scale format), ``S = S_b * s_t`` (exact in float64), the element
  ``q = round(fl64(x / S), element format)``, the value ``q * S`` (exact in float64, rounded to float32
  for float32 arrays). ``S == 0`` (an all-zero block) gives zeros.
- one element's value bits (``QUANTIZE``) or element pattern (``ENCODE``; :func:`block_element_called`). The
  scaled element is first raised to ``lo`` (``-max_elem`` for a symmetric integer element, MXINT8;
  ``-inf`` otherwise): rounding is monotone, so this is saturation at ``-max_elem``.

A block holding a NaN gets the NaN scale (E8M0 code 255, scale value NaN) and NaN values; a block
holding an Inf (and no NaN) is counted, and treated like a NaN block (the caller raises first when its
policy is "error"). The loops return (blocks with a NaN, blocks with an Inf).

Two kinds of loop, the same steps and bits (kernels/dispatch.py chooses):

- **the runtime-argument loop** (:data:`block_any`): op, format kind, flags, scale rule, rounding mode and
  carrier are arguments; the rounding is scalar.py's *called* definitions. One kernel (three carrier
  signatures) serves every block format: it compiles in seconds and runs at scalar speed.
- **specialised loops** (:func:`block_loop`): the op, the element kind and flags, power-of-two or
  ``amax`` scales, the mode and the carrier are compile-time constants and the rounding is inlined: the
  element loop vectorises. The power-of-two rule stays an argument (it is computed once per block).
  Blocks along the last axis of length 16, 32 or 128 (every preset's) have *row loops*
  (:func:`_build_rows`): the whole element format and the block length are constants too, chunks of 4096
  elements go through three passes (amax, scale, elements), and the steps are scalar.py's called
  definitions, which LLVM inlines and vectorises there (a fraction of the compile time of numba's inlining).
"""

import numpy as np
from numba import njit, prange  # noqa: F401  (njit: the inlined steps)

from . import scalar
from .jit import kernel

FLOOR, CEIL, EVEN, RCEIL, AMAX = 0, 1, 2, 3, 4
RULES = {"floor": FLOOR, "ceil": CEIL, "even": EVEN, "rceil": RCEIL, "amax": AMAX}
QUANTIZE, ENCODE = 0, 1
E8M0_BIAS = 127
_CHUNK = 16  # blocks per parallel work item
_ROW_CHUNK = 4096  # elements per parallel work item of the row loops
ROW_BLOCKS = (16, 32, 128)  # block lengths with a row loop (the presets')
_called = scalar.DEFINITIONS.called()


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


@njit(inline="always")
def pow2_f64(e):
    """2.0**e for an int e in [-1022, 1023], built from its bits (no libm pow)."""
    return scalar.i64_as_f64((np.int64(e) + 1023) << 52)


@njit(inline="always")
def _scaled(u, CW, f, lo):
    """Carrier bits (u's integer type) of max(value(u) * f, lo); exact where the steps use it."""
    if CW == 32:
        y = scalar.i32_as_f32(np.int32(u)) * np.float32(f)
        y = np.float32(lo) if y < np.float32(lo) else y
        return scalar._like(u, scalar.f32_as_i32(y))
    y = scalar.i64_as_f64(np.int64(u)) * f
    y = lo if y < lo else y
    return scalar._like(u, scalar.f64_as_i64(y))


@njit(inline="always")
def _store(u, CW, v):
    """Carrier bits (u's type) of the float64 ``v``, rounded to float32 for a float32 carrier."""
    if CW == 32:
        return scalar._like(u, scalar.f32_as_i32(np.float32(v)))
    return scalar._like(u, scalar.f64_as_i64(v))


@njit(inline="always")
def _quotient(u, CW, S, lo):
    """float64 bits of max(fl64(x / S), lo) (+-0 when S == 0)."""
    xf = _carrier_float(u, CW)
    y = xf / S if S != 0.0 else xf * 0.0
    return scalar.f64_as_i64(lo if y < lo else y)


@njit(inline="always")
def _quotient_ro32(u, S, lo):
    """float32 bits (int32) of fl64(x / S) raised to ``lo`` (as :func:`_quotient`, for float32 ``x``), rounded
    to float32 *to odd*: truncated, its last bit set when inexact. Rounding that to a format with at least two
    fewer significand bits (and a range inside float32's) gives what rounding the float64 quotient gives, in
    every mode but stochastic (round-to-odd keeps the value strictly between the same two neighbours of the
    coarser format, whose points and midpoints are even float32 values): the element rounds in 32-bit lanes."""
    d = scalar.i64_as_f64(_quotient(u, 32, S, lo))
    t = np.float32(d)
    tf = np.float64(t)
    away = np.int32(abs(tf) > abs(d))  # t rounded away from zero (never past float32's max: that is odd)
    inexact = np.int32(tf != d)
    return np.int32(np.int32(scalar.f32_as_i32(t) - away) | inexact)


@njit(inline="always")
def _scale_pow2(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t):
    """(E8M0 code, 2**e, s_in = 2**-e, s_out = 2**e, S = 0) of a block with finite amax (carrier bits)."""
    e = pow2_exponent(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem)
    return e + E8M0_BIAS, pow2_f64(e), pow2_f64(-e), pow2_f64(e), 0.0


def _steps(round_float_carrier, round_bits, encode_bits):
    """The scale and element steps on the given scalar definitions (inlined ones for the specialised loops,
    called ones for the runtime-argument loop and CUDA): ``(scale of an amax block, {(is_amax, op): element
    step})``."""

    @njit(inline="always")
    def scale_amax(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t):
        """(0, S_b, s_in = 1, s_out = 1, S = S_b * s_t) of a block with finite amax (carrier bits)."""
        ratio = _carrier_float(amax, CW) / (max_elem * s_t)
        Sb = scalar.i64_as_f64(round_float_carrier(
            scalar.f64_as_i64(ratio), 64, 52, 1023, ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7],
            scalar.NEAREST_EVEN, np.uint64(0), 32))
        return np.int64(0), Sb, 1.0, 1.0, Sb * s_t

    @njit(inline="always")
    def pow2_value(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        y = _scaled(u, CW, s_in, lo)  # x * 2**-e: exact (or, far below the element grid, what rounds to 0 anyway)
        return np.int64(_scaled(round_bits(y, CW, CM, CB, pe, mode, rnd, rbits), CW, s_out, -np.inf))

    @njit(inline="always")
    def pow2_pattern(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        return encode_bits(_scaled(u, CW, s_in, lo), CW, CM, CB, pe, mode, rnd, rbits)

    @njit(inline="always")
    def amax_value(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        q = scalar.i64_as_f64(round_bits(_quotient(u, CW, S, lo), 64, 52, 1023, pe, mode, rnd, rbits))
        return np.int64(_store(u, CW, q * S if S != 0.0 else q))

    @njit(inline="always")
    def amax_pattern(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        return encode_bits(_quotient(u, CW, S, lo), 64, 52, 1023, pe, mode, rnd, rbits)

    @njit(inline="always")
    def amax_value_ro32(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        q = scalar.i32_as_f32(np.int32(round_bits(_quotient_ro32(u, S, lo), 32, 23, 127, pe, mode, rnd, rbits)))
        return np.int64(_store(u, CW, np.float64(q) * S if S != 0.0 else np.float64(q)))

    @njit(inline="always")
    def amax_pattern_ro32(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits):
        return encode_bits(_quotient_ro32(u, S, lo), 32, 23, 127, pe, mode, rnd, rbits)

    return scale_amax, {(False, QUANTIZE): pow2_value, (False, ENCODE): pow2_pattern,
                        ("ro32", QUANTIZE): amax_value_ro32, ("ro32", ENCODE): amax_pattern_ro32,
                        (True, QUANTIZE): amax_value, (True, ENCODE): amax_pattern}


_scale_amax, _ELEMENT = _steps(scalar.round_float_carrier, scalar.round_bits, scalar.encode_bits)
_scale_amax_called, _ELEMENT_CALLED = _steps(_called.round_float_carrier, _called.round_bits, _called.encode_bits)


@njit(inline="always")
def block_scale_called(amax, CW, CM, CB, is_amax, rule, emax_elem, m_elem, max_elem, ps, s_t):
    """(scale code, scale value, s_in, s_out, S) of a block with finite amax (carrier bits), any rule, on the
    called definitions: power-of-two rules give (E8M0 code, 2**e, 2**-e, 2**e, 0), ``amax`` (0, S_b, 1, 1,
    S_b * s_t)."""
    if is_amax:
        return _scale_amax_called(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t)
    return _scale_pow2(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps, s_t)


_pow2_value_c, _pow2_pattern_c = _ELEMENT_CALLED[False, QUANTIZE], _ELEMENT_CALLED[False, ENCODE]
_amax_value_c, _amax_pattern_c = _ELEMENT_CALLED[True, QUANTIZE], _ELEMENT_CALLED[True, ENCODE]


@njit(inline="always")
def block_element_called(op, u, CW, CM, CB, pe, is_amax, s_in, s_out, S, lo, mode, rnd, rbits):
    """Value bits (op QUANTIZE, u's carrier) or element pattern (ENCODE) of the element with carrier bits ``u``
    in a block of scale (s_in, s_out, S) (:func:`block_scale_called`), any op and rule, on the called
    definitions. The scaled element is raised to ``lo`` first."""
    if is_amax:
        if op == QUANTIZE:
            return _amax_value_c(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits)
        return _amax_pattern_c(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits)
    if op == QUANTIZE:
        return _pow2_value_c(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits)
    return _pow2_pattern_c(u, CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rbits)


def _build(spec):
    """The loop over tiles ``TA x TQ`` of ``(P, A, Q)`` (any layout). ``spec`` None: the runtime-argument
    loop; else ``(op, kind, is_amax, mode, r32, carrier32, flag0, flag1, flag2)``, compile-time constants
    (closure cells and part of the cache key). A float element's flags are (NaN encoding, subnormals,
    saturation), a fixed one's (signed, wrap, 0)."""
    generic = spec is None
    op_c, kind_c, amax_c, mode_c, r32, carrier32, f0, f1, f2 = (0, 0, False, 0, False, True, 0, 0, 0) if generic else spec
    stochastic_c = mode_c == scalar.STOCHASTIC
    rand = _called.random_bits_split if generic else scalar.random_bits_split
    # the specialised loops inline exactly the steps of their spec (numba types every branch it inlines, dead
    # or not: the choice is made here); the runtime-argument loop calls block_scale_called / block_element_called
    scale_of = block_scale_called if generic else (_scale_amax if amax_c else _scale_pow2)
    element = block_element_called
    step = _ELEMENT[bool(amax_c), op_c]

    @kernel(parallel=True, spec=("any",) if generic else tuple(spec), error_model="numpy")
    def loop(op_arg, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW_arg, CM_arg, CB_arg, pe_arg, ps, rule_arg,
             emax_elem, m_elem, max_elem, s_t, lo, mode_arg, key0, key1, offset, rbits):
        if generic:
            op, is_amax, mode, rb = op_arg, rule_arg == AMAX, mode_arg, rbits
            stochastic = mode_arg == scalar.STOCHASTIC
            CW, CM, CB = CW_arg, CM_arg, CB_arg
            pe = pe_arg
        else:
            op, is_amax, mode, stochastic = op_c, amax_c, mode_c, stochastic_c
            rb = 32 if r32 else rbits  # a constant 32 (the default) folds the r-dependent shifts
            CW, CM, CB = (32, 23, 127) if carrier32 else (64, 52, 1023)
            if kind_c == scalar.KIND_FLOAT:
                pe = (kind_c, pe_arg[1], pe_arg[2], pe_arg[3], pe_arg[4], f0, f1, f2, pe_arg[8])
            else:
                pe = (kind_c, pe_arg[1], pe_arg[2], f0, f1, 0, 0, 0, 0)
        absmask = (np.int64(1) << (CW - 1)) - 1
        infbits = ((np.int64(1) << (CW - 1 - CM)) - 1) << CM
        bad_out = (infbits | (np.int64(1) << (CM - 1))) if op == QUANTIZE else np.int64(0)
        nA = (A + TA - 1) // TA
        nQ = (Q + TQ - 1) // TQ
        nblocks = P * nA * nQ
        # counters offset + i: while they share their high word (every array below 2**32 elements, unless its
        # offset crosses a multiple of 2**32), _mix32 of it is computed once (random_bits_split: the same bits)
        n = xi.size
        one_hi = ((offset + n - 1) >> 32) == (offset >> 32)
        mixed_hi0 = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
        n_nan = 0
        n_inf = 0
        # chunks of _CHUNK blocks: block b = (p, ba, bq) is found by division once per chunk, then counted up
        # (an integer division per block of 16 or 32 elements costs as much as rounding them)
        for c in prange((nblocks + _CHUNK - 1) // _CHUNK):
            b0 = c * _CHUNK
            pn = b0 // (nA * nQ)
            rest = b0 - pn * (nA * nQ)
            ban = rest // nQ
            bqn = rest - ban * nQ
            for b in range(b0, min(b0 + _CHUNK, nblocks)):
                p, ba, bq = pn, ban, bqn
                bqn += 1
                if bqn == nQ:
                    bqn = 0
                    ban += 1
                    if ban == nA:
                        ban = 0
                        pn += 1
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
                if generic:
                    code, val, s_in, s_out, S = scale_of(amax64, CW, CM, CB, is_amax, rule_arg, emax_elem, m_elem,
                                                         max_elem, ps, s_t)
                else:
                    code, val, s_in, s_out, S = scale_of(amax64, CW, CM, CB, rule_arg, emax_elem, m_elem, max_elem,
                                                         ps, s_t)
                scale_code[b] = code
                scale_val[b] = val
                for a in range(a0, a1):
                    row = np.uint64((p * A + a) * Q + q0)
                    for j in range(width):
                        i = row + j
                        rnd = np.uint64(0)
                        if stochastic:
                            c = offset + np.int64(i)
                            mixed_hi = mixed_hi0 if one_hi else scalar._mix32(np.uint32((c >> 32) & 0xFFFFFFFF))
                            rnd = rand(key0, key1, np.uint32(c & 0xFFFFFFFF), mixed_hi, rb)
                        if generic:
                            out[i] = element(op, xi[i], CW, CM, CB, pe, is_amax, s_in, s_out, S, lo, mode, rnd, rb)
                        else:
                            out[i] = step(xi[i], CW, CM, CB, pe, s_in, s_out, S, lo, mode, rnd, rb)
        return n_nan, n_inf

    return loop


def _build_rows(spec):
    """The loop over blocks that are contiguous runs of ``B`` elements of rows (tiles ``1 x B``: ``TA == 1``,
    ``TQ == B``, the common layout of blocks along the last axis). ``spec`` is ``("rows", op, is_amax, mode, r32,
    carrier32, B) + pe`` (``+ ps`` for ``amax`` scales): the element format's (and the scale format's) parameters
    too are compile-time constants (every shift and bound of their rounding folds), and so is ``B``: a block's
    amax and element loops have a constant trip count, which the compiler turns into straight vector code. A
    row's last, shorter block (``Q`` not a multiple of ``B``) is copied into a block of zeros first (zeros change
    neither amax nor any element; its elements keep their counters) and its results copied back: one copy of the
    steps serves both.

    The parallel loop only hands out chunks of blocks; the work of a chunk is an ordinary compiled function
    (``chunk``): numba's parallel-loop passes then see a few lines, not the inlined rounding (they were most
    of the compile time). ``chunk`` is a closure: its qualified name carries the spec, so that two
    specialisations loaded from the cache never share a symbol name (kernels/jit.py)."""
    _, op_c, amax_c, mode_c, r32, carrier32, B = spec[:7]
    K = max(_ROW_CHUNK // B, 1)  # blocks per chunk
    pe = tuple(int(v) for v in spec[7:16])
    ps_c = tuple(int(v) for v in spec[16:]) if amax_c else (0,) * 9  # (the power-of-two rules ignore it)
    stochastic_c = mode_c == scalar.STOCHASTIC
    rand = _called.random_bits_split
    scale_of = _scale_amax_called if amax_c else _scale_pow2
    # amax scales, float32 input, a deterministic mode, an element format with at most 21 significand bits and
    # its range inside float32's: the element rounds in 32-bit lanes (_quotient_ro32), the same bits
    ro32 = (amax_c and carrier32 and mode_c != scalar.STOCHASTIC and pe[0] == scalar.KIND_FLOAT and pe[1] <= 21
            and (pe[4] >> pe[1]) - pe[3] <= 126 and pe[2] - pe[1] >= -147)
    step = _ELEMENT_CALLED["ro32" if ro32 else bool(amax_c), op_c]
    ub = np.uint64(B)
    CW, CM, CB = (32, 23, 127) if carrier32 else (64, 52, 1023)
    absmask = (1 << (CW - 1)) - 1
    infbits = ((1 << (CW - 1 - CM)) - 1) << CM
    bad_out = (infbits | (1 << (CM - 1))) if op_c == QUANTIZE else 0

    def chunk(c, xi, out, scale_code, scale_val, Q, nQ, nblocks, ps, rule_arg, emax_elem, m_elem, max_elem, s_t, lo,
              key0, key1, offset, rbits, one_hi, mixed_hi0):
        rb = 32 if r32 else rbits
        b0 = c * K
        nb = min(K, nblocks - b0)
        row0 = b0 // nQ
        bq0 = b0 - row0 * nQ
        lane = xi[0]
        amaxes = np.empty(K, dtype=np.int64)
        s_ins = np.empty(K, dtype=np.float64)
        s_outs = np.empty(K, dtype=np.float64)
        Ss = np.empty(K, dtype=np.float64)
        # pass 1: every block's amax (independent chains; a full block's loop has a constant trip count)
        row, bq = row0, bq0
        for k in range(nb):
            q0 = bq * B
            base = np.uint64(row * Q + q0)
            width = min(Q - q0, B)
            amax = scalar._like(lane, 0)
            if width == B:
                for j in range(ub):
                    amax = max(amax, scalar._like(lane, xi[base + j] & scalar._like(lane, absmask)))
            else:
                for j in range(np.uint64(width)):
                    amax = max(amax, scalar._like(lane, xi[base + j] & scalar._like(lane, absmask)))
            amaxes[k] = np.int64(amax)
            bq += 1
            if bq == nQ:
                bq = 0
                row += 1
        # pass 2: every block's scale (independent: the processor overlaps them)
        n_nan = 0
        n_inf = 0
        for k in range(nb):
            amax64 = amaxes[k]
            n_nan += np.int64(amax64 > infbits)
            n_inf += np.int64(amax64 == infbits)
            code, val, s_in, s_out, S = scale_of(min(amax64, infbits - 1), CW, CM, CB, rule_arg, emax_elem, m_elem,
                                                 max_elem, ps_c, s_t)
            bad = amax64 >= infbits
            scale_code[b0 + k] = 255 if bad else code
            scale_val[b0 + k] = np.nan if bad else val
            s_ins[k] = s_in
            s_outs[k] = s_out
            Ss[k] = S
        # pass 3: the elements
        pad_in = np.zeros(B, dtype=xi.dtype)
        pad_out = np.empty(B, dtype=out.dtype)
        row, bq = row0, bq0
        for k in range(nb):
            q0 = bq * B
            base = np.uint64(row * Q + q0)
            width = min(Q - q0, B)
            bq += 1
            if bq == nQ:
                bq = 0
                row += 1
            if amaxes[k] >= infbits:
                for j in range(np.uint64(width)):
                    out[base + j] = bad_out
                continue
            src, dst, sbase = xi, out, base
            if width < B:  # a row's last, shorter block: padded with zeros
                for j in range(np.uint64(width)):
                    pad_in[j] = xi[base + j]
                src, dst, sbase = pad_in, pad_out, np.uint64(0)
            s_in, s_out, S = s_ins[k], s_outs[k], Ss[k]
            for j in range(ub):
                rnd = np.uint64(0)
                if stochastic_c:
                    ci = offset + np.int64(base + j)
                    mixed_hi = mixed_hi0 if one_hi else scalar._mix32(np.uint32((ci >> 32) & 0xFFFFFFFF))
                    rnd = rand(key0, key1, np.uint32(ci & 0xFFFFFFFF), mixed_hi, rb)
                dst[sbase + j] = step(src[sbase + j], CW, CM, CB, pe, s_in, s_out, S, lo, mode_c, rnd, rb)
            if width < B:
                for j in range(np.uint64(width)):
                    out[base + j] = pad_out[j]
        return n_nan, n_inf

    chunk.__qualname__ = "_rows_chunk_" + "_".join(str(int(v)) for v in spec[1:])
    chunk = njit(nogil=True, error_model="numpy")(chunk)

    @kernel(parallel=True, spec=tuple(spec), error_model="numpy")
    def loop(op_arg, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW_arg, CM_arg, CB_arg, pe_arg, ps, rule_arg,
             emax_elem, m_elem, max_elem, s_t, lo, mode_arg, key0, key1, offset, rbits):
        nQ = (Q + B - 1) // B
        nblocks = P * A * nQ
        one_hi = ((offset + xi.size - 1) >> 32) == (offset >> 32)
        mixed_hi0 = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
        n_nan = 0
        n_inf = 0
        for c in prange((nblocks + K - 1) // K):
            a, i = chunk(c, xi, out, scale_code, scale_val, Q, nQ, nblocks, ps, rule_arg, emax_elem, m_elem, max_elem,
                         s_t, lo, key0, key1, offset, rbits, one_hi, mixed_hi0)
            n_nan += a
            n_inf += i
        return n_nan, n_inf

    _CHUNKS[tuple(spec)] = chunk
    return loop


_LOOPS: dict = {}
_CHUNKS: dict = {}  # spec -> a row loop's chunk function (for inspection)


def block_any():
    """The runtime-argument loop (one kernel for every op, element kind, rule, mode and carrier)."""
    loop = _LOOPS.get(None)
    if loop is None:
        loop = _LOOPS[None] = _build(None)
    return loop


def spec_of(op: int, pe, is_amax: bool, mode: int, rbits: int, carrier32: bool, TA: int = 0, TQ: int = 0,
            ps=()) -> tuple:
    """The compile-time constants of a specialised loop: :func:`_build`'s; or, for blocks that are contiguous
    runs ``1 x B`` of rows with ``B`` in :data:`ROW_BLOCKS`, :func:`_build_rows`'s (the element format whole, and
    the scale format ``ps`` of ``amax`` scales)."""
    r32 = mode == scalar.STOCHASTIC and rbits == 32
    if TA == 1 and TQ in ROW_BLOCKS:
        return (("rows", int(op), bool(is_amax), int(mode), r32, bool(carrier32), int(TQ)) + tuple(int(v) for v in pe)
                + (tuple(int(v) for v in ps) if is_amax else ()))
    flags = (int(pe[5]), int(pe[6]), int(pe[7])) if pe[0] == scalar.KIND_FLOAT else (int(pe[3]), int(pe[4]), 0)
    return (int(op), int(pe[0]), bool(is_amax), int(mode), r32, bool(carrier32)) + flags


def block_loop(spec: tuple):
    """The specialised loop of ``spec`` (:func:`spec_of`), built once. All loops take the same arguments
    ``(op, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule, emax_elem, m_elem,
    max_elem, s_t, lo, mode, key0, key1, offset, rbits)``; ``out`` receives carrier bits (QUANTIZE, the
    carrier's int view) or element patterns (ENCODE, int64)."""
    loop = _LOOPS.get(spec)
    if loop is None:
        loop = _LOOPS[spec] = _build_rows(spec) if spec[0] == "rows" else _build(spec)
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

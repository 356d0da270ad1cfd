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
  With float32 input and nearest-even rounding the element step is scalar.py's ``round_grid_f32`` (a few
  float32 operations per element, :func:`_fast_step`) and an ``amax`` scale is computed without a call per
  block (:func:`_fast_scale_amax`): the same bits, by the proofs in their docstrings.
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
_ROW_CHUNK = 4096  # elements per chunk of the row loops
_GROUPS = 256  # parallel work items of the row loops at most (each a run of chunks)
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
    return _ro32(scalar.i64_as_f64(_quotient(u, 32, S, lo)))


@njit(inline="always")
def _ro32(d):
    """float32 bits (int32) of the float64 ``d`` rounded to float32 to odd (:func:`_quotient_ro32`)."""
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


def _fast_step(pe, op_c, amax_c, mode_c, carrier32):
    """The element step of a row loop that rounds with scalar.py's :func:`~lowprec.kernels.scalar.round_grid_f32`
    or :func:`~lowprec.kernels.scalar.round_grid_f64` (a handful of float operations per element) where it gives
    the bits of the general step, else None: value bits out (QUANTIZE) or the element's pattern (ENCODE: the
    pattern of the same rounded value, :func:`~lowprec.kernels.scalar.float_pattern_of`, as the general step's
    ``encode_bits`` takes it of the definition's rounding), nearest-even, a (signed) float element format with -0,
    subnormals and a zero, saturating, whose grid parameters exist. The rounded value is finite:

    - power-of-two scales: ``y = x * 2**-e`` (:func:`_scaled`, the general step's product), ``|y| < 2**(emax_elem +
      1)`` for float32 input (float64 input may give more: round_grid's ``min(|y|, top)`` saturates it); float32
      input rounds in float32 (round_grid_f32), float64 input in float64;
    - ``amax`` scales: the float64 quotient ``fl64(x / S)`` (:func:`_quotient`, the general step's), rounded in
      float64 (round_grid_f64) for float32 and float64 input: the value the general step rounds, without the
      detour through float32 (round to odd) and the integer rounding."""
    if not (op_c in (QUANTIZE, ENCODE) and mode_c == scalar.NEAREST_EVEN and pe[0] == scalar.KIND_FLOAT):
        return None
    m, emin, bias, tmax, nan_code, subn, sat = pe[1:8]
    if sat != 1 or subn != 1 or nan_code == scalar.NAN_NEGATIVE_ZERO or emin == -bias:
        return None
    emax = (tmax >> m) - bias
    maxv = float(2.0 ** (emax - m) * ((tmax & ((1 << m) - 1)) | (1 << m)))
    p32 = scalar.grid_f32_params(m, emin, emax, maxv)
    p64 = scalar.grid_f64_params(m, emin, emax, maxv)
    CW = 32 if carrier32 else 64
    enc = op_c == ENCODE
    pattern = _called.float_pattern_of
    exp_bits = pe[8]
    if not amax_c and carrier32 and p32 is not None:
        cadd, minc, top, maxv32 = p32
        grid = _called.round_grid_f32

        @njit(inline="always")
        def step(u, CW_, CM, CB, pe_, s_in, s_out, S, lo, mode, rnd, rbits):
            y = scalar.i32_as_f32(np.int32(_scaled(u, 32, s_in, lo)))  # x * 2**-e, exact (see the module docstring)
            q = grid(y, cadd, minc, top, maxv32)
            if enc:
                return pattern(scalar.f32_as_i32(q), 32, 23, 127, m, emin, bias, nan_code, exp_bits)
            return np.int64(scalar._like(u, scalar.f32_as_i32(q * np.float32(s_out))))  # q * 2**e: exact
        return step
    if p64 is None:
        return None
    cadd, minc, top, maxv64 = p64
    grid = _called.round_grid_f64
    if amax_c:
        @njit(inline="always")
        def step_amax(u, CW_, CM, CB, pe_, s_in, s_out, S, lo, mode, rnd, rbits):
            q = grid(scalar.i64_as_f64(_quotient(u, CW, S, lo)), cadd, minc, top, maxv64)
            if enc:
                return pattern(scalar.f64_as_i64(q), 64, 52, 1023, m, emin, bias, nan_code, exp_bits)
            return np.int64(_store(u, CW, q * S if S != 0.0 else q))
        return step_amax
    if carrier32:
        return None

    @njit(inline="always")
    def step64(u, CW_, CM, CB, pe_, s_in, s_out, S, lo, mode, rnd, rbits):
        q = grid(scalar.i64_as_f64(_scaled(u, 64, s_in, lo)), cadd, minc, top, maxv64)
        if enc:
            return pattern(scalar.f64_as_i64(q), 64, 52, 1023, m, emin, bias, nan_code, exp_bits)
        return np.int64(_scaled(scalar.f64_as_i64(q), 64, s_out, -np.inf))
    return step64


def _fast_scale_amax(ps):
    """The ``amax`` scale step of a float32 row loop without a call per block, where it gives the bits of
    ``_scale_amax`` (scale format ``ps`` rounded nearest-even, saturating, from the float64 ratio ``r = amax /
    (max_elem * s_t)``, finite and >= +0), else None:

    - an fp32 scale format: ``float32(min(r, FLT_MAX))``, IEEE's nearest-even conversion (gradual underflow), the
      ``min`` being the saturation (every r above FLT_MAX rounds to FLT_MAX or beyond);
    - a float scale format (UE4M3) of at most 21 mantissa bits whose grid_f32_params exist, with subnormals and
      ``emin - m >= -147``: ``r`` rounded to float32 to odd (:func:`_ro32`: two or more bits beyond the format's,
      also in float32's subnormal range, so the nearest-even result is kept), then
      :func:`~lowprec.kernels.scalar.round_grid_f32` (r >= +0: the sign and an unsigned format's NaN for negative
      input never arise)."""
    kind, m, emin, bias, tmax, _, subn, sat = ps[:8]
    if kind != scalar.KIND_FLOAT or sat != 1 or (subn & 1) == 0 or emin == -bias:
        return None
    if (m, emin, bias) == (23, -126, 127) and (tmax >> m) - bias == 127 and tmax & ((1 << m) - 1) == (1 << m) - 1:
        flt_max = float(np.finfo(np.float32).max)

        @njit(inline="always")
        def scale_fp32(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps_, s_t):
            ratio = _carrier_float(amax, 32) / (max_elem * s_t)
            Sb = np.float64(np.float32(min(ratio, flt_max)))
            return np.int64(0), Sb, 1.0, 1.0, Sb * s_t
        return scale_fp32
    emax = (tmax >> m) - bias
    maxv = float(2.0 ** (emax - m) * ((tmax & ((1 << m) - 1)) | (1 << m)))
    params = scalar.grid_f32_params(m, emin, emax, maxv)
    if params is None or emin - m < -147:
        return None
    cadd, minc, top, maxv32 = params
    grid = _called.round_grid_f32

    @njit(inline="always")
    def scale_grid(amax, CW, CM, CB, rule, emax_elem, m_elem, max_elem, ps_, s_t):
        ratio = _carrier_float(amax, 32) / (max_elem * s_t)
        Sb = np.float64(grid(scalar.i32_as_f32(_ro32(ratio)), cadd, minc, top, maxv32))
        return np.int64(0), Sb, 1.0, 1.0, Sb * s_t
    return scale_grid


def _build_rows(spec):
    """The loop over blocks that are contiguous runs of ``B`` elements of rows (tiles ``1 x B``: ``TA == 1``,
    ``TQ == B``, the common layout of blocks along the last axis). ``spec`` is ``("rows", op, is_amax, mode, r32,
    carrier32, B) + pe`` (``+ ps`` for ``amax`` scales): the element format's (and the scale format's) parameters
    too are compile-time constants (every shift and bound of their rounding folds), and so is ``B``: a block's
    amax and element loops have a constant trip count, which the compiler turns into straight vector code.

    Work is handed out in chunks of 4096 elements, several chunks per parallel work item (``_GROUPS`` items at
    most, each allocating its scratch once). A chunk runs three passes: every block's amax, every block's scale,
    then the elements of *runs* of consecutive full blocks (the whole chunk when the row length is a multiple of
    ``B``, else a row's full blocks) in one call of ``elements``, without a test per block; a row's last, shorter
    block is copied into a block of zeros (zeros change neither amax nor any element; its elements keep their
    counters) and goes through the same ``elements``; blocks holding NaN or Inf are then overwritten with their
    result (their elements went through the steps with a finite scale, harmlessly). The element step is
    :func:`_fast_step`'s where it applies, else the general one; both on scalar.py's called definitions, which
    LLVM inlines and vectorises.

    ``chunks`` and ``elements`` are ordinary compiled functions (numba's parallel-loop passes see a few lines, not
    the inlined rounding: they were most of the compile time); they are closures whose qualified names carry the
    spec, so that two specialisations loaded from the cache never share a symbol name (kernels/jit.py)."""
    _, op_c, amax_c, mode_c, r32, carrier32, B = spec[:7]
    K = max(_ROW_CHUNK // B, 1)  # blocks per chunk
    pe = tuple(int(v) for v in spec[7:16])
    ps_c = tuple(int(v) for v in spec[16:]) if amax_c else (0,) * 9  # (the power-of-two rules ignore it)
    stochastic_c = mode_c == scalar.STOCHASTIC
    rand = _called.random_bits_split
    scale_of = ((carrier32 and _fast_scale_amax(ps_c)) or _scale_amax_called) if amax_c else _scale_pow2
    # the general step (where _fast_step does not apply: stochastic rounding, other formats); with amax
    # scales, float32 input, a deterministic mode, an element format with at most 21 significand bits and its
    # range inside float32's, the element rounds in 32-bit lanes (_quotient_ro32), the same bits
    ro32 = (amax_c and carrier32 and mode_c != scalar.STOCHASTIC and pe[0] == scalar.KIND_FLOAT and pe[1] <= 21
            and (pe[4] >> pe[1]) - pe[3] <= 126 and pe[2] - pe[1] >= -147)
    step = (_fast_step(pe, op_c, amax_c, mode_c, carrier32)
            or _ELEMENT_CALLED["ro32" if ro32 else bool(amax_c), op_c])
    ub = np.uint64(B)
    CW, CM, CB = (32, 23, 127) if carrier32 else (64, 52, 1023)
    absmask = (1 << (CW - 1)) - 1
    infbits = ((1 << (CW - 1 - CM)) - 1) << CM
    bad_out = (infbits | (1 << (CM - 1))) if op_c == QUANTIZE else 0
    tag = "_".join(str(int(v)) for v in spec[1:])

    def elements(src, dst, s0, ctr0, nblk, s_ins, s_outs, Ss, k0, lo, key0, key1, offset, rb, one_hi, mixed_hi0):
        """Blocks k0 .. k0 + nblk - 1 of the chunk, full and consecutive: elements s0 .. of src into dst, counters
        ctr0 .. (flat indices)."""
        for k in range(np.uint64(nblk)):
            kk = np.uint64(k0) + k  # (unsigned indices: no negative-index wraparound code)
            s_in, s_out, S = s_ins[kk], s_outs[kk], Ss[kk]
            sb = s0 + k * ub
            # the block's counters offset + ctr0 + k*B + j: their low words in 32-bit lanes; the high word's mix per
            # block, the next one's for the elements past a wrap of the low word (one block in 2**32 / B)
            c0 = offset + ctr0 + np.int64(k) * B
            lo0 = np.uint32(c0 & 0xFFFFFFFF)
            mix_a = mixed_hi0 if one_hi else scalar._mix32(np.uint32((c0 >> 32) & 0xFFFFFFFF))
            mix_b = mixed_hi0 if one_hi else scalar._mix32(np.uint32(((c0 + B - 1) >> 32) & 0xFFFFFFFF))
            for j in range(ub):
                rnd = np.uint64(0)
                if stochastic_c:
                    lo_j = np.uint32(lo0 + np.uint32(j))
                    rnd = rand(key0, key1, lo_j, mix_b if lo_j < lo0 else mix_a, rb)
                dst[sb + j] = step(src[sb + j], CW, CM, CB, pe, s_in, s_out, S, lo, mode_c, rnd, rb)

    elements.__qualname__ = "_rows_elements_" + tag
    elements = njit(nogil=True, error_model="numpy")(elements)

    @njit(inline="always")
    def scales(rule_c, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem, max_elem, s_t):
        """Pass 2 of a chunk: the scales of its nb blocks (first b0) under the rule ``rule_c`` (a constant where it is
        inlined); returns (blocks with NaN, with Inf, either)."""
        n_nan = 0
        n_inf = 0
        nbad = 0
        for k in range(nb):
            amax64 = amaxes[k]
            n_nan += np.int64(amax64 > infbits)
            n_inf += np.int64(amax64 == infbits)
            code, val, s_in, s_out, S = scale_of(min(amax64, infbits - 1), CW, CM, CB, rule_c, emax_elem, m_elem,
                                                 max_elem, ps_c, s_t)
            bad = amax64 >= infbits
            nbad += np.int64(bad)
            ib = np.uint64(b0) + np.uint64(k)  # (unsigned: no negative-index wraparound code)
            scale_code[ib] = 255 if bad else code
            scale_val[ib] = np.nan if bad else val
            s_ins[k] = s_in
            s_outs[k] = s_out
            Ss[k] = S
        return n_nan, n_inf, nbad

    def chunks(c0, c1, xi, out, scale_code, scale_val, Q, nQ, nblocks, ps, rule_arg, emax_elem, m_elem, max_elem, s_t,
               lo, key0, key1, offset, rbits, one_hi, mixed_hi0):
        rb = 32 if r32 else rbits
        lane = xi[0]
        amaxes = np.empty(K, dtype=np.int64)
        s_ins = np.empty(K, dtype=np.float64)
        s_outs = np.empty(K, dtype=np.float64)
        Ss = np.empty(K, dtype=np.float64)
        pad_in = np.zeros(B, dtype=xi.dtype)
        pad_out = np.empty(B, dtype=out.dtype)
        nfull = Q // B  # full blocks per row
        n_nan = 0
        n_inf = 0
        for c in range(c0, c1):
            b0 = c * K
            nb = min(K, nblocks - b0)
            row0 = b0 // nQ
            bq0 = b0 - row0 * nQ
            # pass 1: every block's amax (independent chains; a full block's loop has a constant trip count)
            row, bq = row0, bq0
            for k in range(nb):
                q0 = bq * B
                base = np.uint64(row * Q + q0)
                amax = scalar._like(lane, 0)
                if bq < nfull:
                    for j in range(ub):
                        amax = max(amax, scalar._like(lane, xi[base + j] & scalar._like(lane, absmask)))
                else:
                    for j in range(np.uint64(Q - q0)):
                        amax = max(amax, scalar._like(lane, xi[base + j] & scalar._like(lane, absmask)))
                amaxes[k] = np.int64(amax)
                bq += 1
                if bq == nQ:
                    bq = 0
                    row += 1
            # pass 2: every block's scale (independent: the processor overlaps them), the rule a constant in each copy
            if amax_c:
                a, i, nbad = scales(AMAX, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem,
                                    max_elem, s_t)
            elif rule_arg == FLOOR:
                a, i, nbad = scales(FLOOR, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem,
                                    max_elem, s_t)
            elif rule_arg == CEIL:
                a, i, nbad = scales(CEIL, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem,
                                    max_elem, s_t)
            elif rule_arg == EVEN:
                a, i, nbad = scales(EVEN, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem,
                                    max_elem, s_t)
            else:
                a, i, nbad = scales(RCEIL, b0, nb, amaxes, scale_code, scale_val, s_ins, s_outs, Ss, emax_elem, m_elem,
                                    max_elem, s_t)
            n_nan += a
            n_inf += i
            # pass 3: the elements, in runs of consecutive full blocks
            base0 = np.uint64(row0 * Q + bq0 * B)
            if nfull == nQ:  # rows of whole blocks: the chunk is one run
                elements(xi, out, base0, np.int64(base0), np.int64(nb), s_ins, s_outs, Ss, np.int64(0), lo, key0, key1,
                         offset, rb, one_hi, mixed_hi0)
            else:
                row, bq, k = row0, bq0, 0
                while k < nb:
                    base = np.uint64(row * Q + bq * B)
                    run = min(nfull - bq, nb - k) if bq < nfull else 0
                    if run > 0:
                        elements(xi, out, base, np.int64(base), np.int64(run), s_ins, s_outs, Ss, np.int64(k), lo, key0,
                                 key1, offset, rb, one_hi, mixed_hi0)
                        k += run
                        bq += run
                    elif k < nb:  # the row's last, shorter block: padded with zeros
                        width = np.uint64(Q - bq * B)
                        for j in range(width):
                            pad_in[j] = xi[base + j]
                        elements(pad_in, pad_out, np.uint64(0), np.int64(base), np.int64(1), s_ins, s_outs, Ss,
                                 np.int64(k), lo, key0, key1, offset, rb, one_hi, mixed_hi0)
                        for j in range(width):
                            out[base + j] = pad_out[j]
                        k += 1
                        bq += 1
                    if bq == nQ:
                        bq = 0
                        row += 1
            if nbad:  # blocks holding NaN or Inf: every element NaN (QUANTIZE) or pattern 0 (ENCODE)
                row, bq = row0, bq0
                for k in range(nb):
                    if amaxes[k] >= infbits:
                        q0 = bq * B
                        base = np.uint64(row * Q + q0)
                        for j in range(np.uint64(min(Q - q0, B))):
                            out[base + j] = bad_out
                    bq += 1
                    if bq == nQ:
                        bq = 0
                        row += 1
        return n_nan, n_inf

    chunks.__qualname__ = "_rows_chunks_" + tag
    chunks = njit(nogil=True, error_model="numpy")(chunks)

    @kernel(parallel=True, spec=tuple(spec), error_model="numpy")
    def loop(op_arg, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW_arg, CM_arg, CB_arg, pe_arg, ps, rule_arg,
             emax_elem, m_elem, max_elem, s_t, lo, mode_arg, key0, key1, offset, rbits):
        nQ = (Q + B - 1) // B
        nblocks = P * A * nQ
        one_hi = ((offset + xi.size - 1) >> 32) == (offset >> 32)
        mixed_hi0 = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
        nchunks = (nblocks + K - 1) // K
        G = min(nchunks, _GROUPS)
        n_nan = 0
        n_inf = 0
        for g in prange(G):
            a, i = chunks(g * nchunks // G, (g + 1) * nchunks // G, xi, out, scale_code, scale_val, Q, nQ, nblocks, ps,
                          rule_arg, emax_elem, m_elem, max_elem, s_t, lo, key0, key1, offset, rbits, one_hi, mixed_hi0)
            n_nan += a
            n_inf += i
        return n_nan, n_inf

    _CHUNKS[tuple(spec)] = chunks
    _ELEMENTS[tuple(spec)] = elements
    return loop


_LOOPS: dict = {}
_CHUNKS: dict = {}  # spec -> a row loop's chunk function (for inspection)
_ELEMENTS: dict = {}  # spec -> a row loop's element-pass function (for inspection: its vector code)


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
    """The largest finite magnitude of a carrier array, as carrier bits (0 when there is none). Chunks of
    ``_ROW_CHUNK`` elements each reduce in the carrier's own lanes (32-bit for float32: twice the vector width)."""
    absmask = (np.int64(1) << (CW - 1)) - 1
    infbits = ((np.int64(1) << (CW - 1 - CM)) - 1) << CM
    proto = np.zeros(1, dtype=xi.dtype)[0]
    am = scalar._like(proto, absmask)
    ib = scalar._like(proto, infbits)
    zero = scalar._like(proto, 0)
    n = xi.size
    nchunks = (n + _ROW_CHUNK - 1) // _ROW_CHUNK
    part = np.zeros(max(nchunks, 1), dtype=np.int64)
    for c in prange(nchunks):
        base = np.uint64(c * _ROW_CHUNK)
        m = zero
        for j in range(np.uint64(min(_ROW_CHUNK, n - c * _ROW_CHUNK))):
            a = scalar._like(proto, xi[base + j] & am)
            m = max(m, a if a < ib else zero)
        part[c] = np.int64(m)
    return part.max()


@kernel(parallel=True)
def pack4(codes, out):
    """Two 4-bit codes per byte, the first in the low nibble: ``out[i] = codes[2i] | codes[2i + 1] << 4`` (uint8
    arrays, flat; ``codes`` holds ``2 * out.size`` codes below 16)."""
    for i in prange(out.size):
        out[i] = np.uint8(codes[2 * i] | (codes[2 * i + 1] << np.uint8(4)))


"""CPU element loops (round, encode, decode) around kernels/scalar.py, in two kinds.

Arrays arrive flat, as the integer views of their carrier (int32 for float32, int64 for float64), so no
float bit-casts are needed. Every element's random counter is ``offset + i``: results depend neither on
the thread count nor on which kind of loop ran. All loops take the same arguments
``(op, x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits)`` (``op``: :data:`ROUND`, :data:`ENCODE` or
:data:`DECODE`; decode reads bit patterns from ``x`` and ignores the rounding arguments).

- **Runtime-argument loops** (:func:`element_any`, one per op and format kind): the rounding mode, the
  format and its flags are arguments.
  They are built on scalar.py's *called* definitions (each scalar function compiled once, as a call),
  so each compiles in seconds, once per carrier type, and then serves every format and mode, at scalar
  speed. First calls and small arrays run them.
- **Specialised loops** (:func:`specialised`): the format kind, the mode, ``r == 32`` and the format's
  flags (NaN encoding, subnormals, saturation; a fixed format's signedness and overflow mode) are
  compile-time constants and the scalar definition is inlined: numba folds the mode dispatch away and
  the loop vectorises (an order of magnitude faster). Serial or parallel (``prange``). Each
  specialisation is its own cached kernel (kernels/jit.py).

Which loop runs is kernels/dispatch.py's choice.
"""

import numpy as np
from numba import njit, prange

from . import scalar
from .jit import kernel

STOCHASTIC = scalar.STOCHASTIC
_called = scalar.DEFINITIONS.called()


# ---------------------------------------------------------------------------------------------------
# runtime-argument loops
# ---------------------------------------------------------------------------------------------------
#: op codes of the loops' first argument
ROUND, ENCODE, DECODE = 0, 1, 2
OPS = {"round": ROUND, "encode": ENCODE, "decode": DECODE}


def _build_any(op, kind):
    @kernel(spec=(op, kind))
    def loop(op_arg, x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
        for i in range(x.size):
            if op == DECODE:
                if kind == scalar.KIND_FLOAT:
                    sign, T, cls = _called.float_pattern_to_code(x[i], p[1], p[5], p[8])
                    out[i] = _called.float_code_to_bits(sign, T, cls, CW, CM, CB, p[1], p[2], p[3])
                else:
                    out[i] = _called.decode_bits(x[i], CW, CM, CB, p)
            else:
                rnd = np.uint64(0)
                if mode == STOCHASTIC:
                    rnd = _called.random_bits(key0, key1, offset + i, rbits)
                if op == ROUND and kind == scalar.KIND_FLOAT:
                    out[i] = _called.round_float_carrier(x[i], CW, CM, CB, p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                                         mode, rnd, rbits)
                elif op == ROUND:
                    out[i] = _called.round_fixed_carrier(x[i], CW, CM, CB, p[1], p[2], p[3], p[4], mode, rnd, rbits)
                else:
                    out[i] = _called.encode_bits(x[i], CW, CM, CB, p, mode, rnd, rbits)
    return loop


_ANY = {(op, kind): _build_any(op, kind) for op in (ROUND, ENCODE, DECODE)
        for kind in (scalar.KIND_FLOAT, scalar.KIND_FIXED)}


def element_any(op: int, kind: int):
    """The runtime-argument loop of ``op`` for a format kind (float or fixed point)."""
    return _ANY[op, kind]


# ---------------------------------------------------------------------------------------------------
# specialised loops
# ---------------------------------------------------------------------------------------------------
#: The specialisations' last constant: the element step a specialised round loop runs (dispatch.ELEMENT_KERNELS
#: decides): the definition, scalar.round_nearest_even_f32 / _f64 (nearest-even of float32 / float64 data),
#: scalar.round_stochastic_f32 (stochastic with 32 random bits, float32 data; narrow and wide variants) or
#: scalar.round_fixed_nearest_f32 / _f64 (nearest-even to a saturating fixed-point format).
DEFINITION, NEAREST_EVEN_F32, NEAREST_EVEN_F64, STOCHASTIC_F32, STOCHASTIC_F32_WIDE = 0, 1, 2, 3, 4
FIXED_NEAREST_F32, FIXED_NEAREST_F64 = 5, 6


def spec_of(p, mode: int, rbits: int, step: int = DEFINITION) -> tuple:
    """The compile-time constants of a (format parameters, mode, random bits) call:
    (kind, mode, r == 32, flag0, flag1, flag2, step). A float format's flags are (NaN encoding, subnormals,
    saturation); a fixed format's (signed, wrap, 0); ``step`` :data:`DEFINITION` or a fast element step
    (:data:`NEAREST_EVEN_F32`, :data:`NEAREST_EVEN_F64`, :data:`STOCHASTIC_F32`, :data:`STOCHASTIC_F32_WIDE`,
    :data:`FIXED_NEAREST_F32`, :data:`FIXED_NEAREST_F64`).
    Other parameters stay runtime arguments."""
    r32 = mode == STOCHASTIC and rbits == 32
    flags = (int(p[5]), int(p[6]), int(p[7])) if p[0] == scalar.KIND_FLOAT else (int(p[3]), int(p[4]), 0)
    return (int(p[0]), int(mode), bool(r32)) + flags + (int(step),)


@njit(inline="always")
def _round_element(kind, u, CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rbits):
    """One element: kind, flags and mode are the loop's compile-time constants."""
    if kind == scalar.KIND_FLOAT:
        return scalar.round_float_carrier(u, CW, CM, CB, p[1], p[2], p[3], p[4], flag0, flag1, flag2,
                                          mode, rnd, rbits)
    return scalar.round_fixed_carrier(u, CW, CM, CB, p[1], p[2], flag0, flag1, mode, rnd, rbits)


@njit(inline="always")
def _encode_element(kind, u, CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rbits):
    """One element's pattern: kind, flags and mode are the loop's compile-time constants."""
    if kind == scalar.KIND_FLOAT:
        return scalar.encode_float(u, CW, CM, CB, p[1], p[2], p[3], p[4], flag0, flag1, flag2, p[8], mode, rnd,
                                   rbits)
    return scalar.encode_fixed(u, CW, CM, CB, p[1], p[2], flag0, flag1, mode, rnd, rbits)


def _build(op, parallel, kind, mode, r32, flag0, flag1, flag2, step):
    stochastic = mode == STOCHASTIC
    ne32 = step == NEAREST_EVEN_F32
    ne64 = step == NEAREST_EVEN_F64
    sr32 = step in (STOCHASTIC_F32, STOCHASTIC_F32_WIDE)
    wide = 1 if step == STOCHASTIC_F32_WIDE else 0
    fx32 = step == FIXED_NEAREST_F32
    fx64 = step == FIXED_NEAREST_F64

    if op == "round":
        @kernel(parallel=parallel, spec=(op, parallel, kind, mode, r32, flag0, flag1, flag2, step))
        def loop(op_arg, x, out, CW, CM, CB, p, mode_arg, key0, key1, offset, rbits):
            rb = 32 if r32 else rbits  # a constant 32 (the default) lets the compiler fold the r-dependent shifts
            n = x.size
            if ne32:  # int32 carrier bits in and out
                lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f32_consts(
                    p[1], p[2], p[3], p[4], flag0, flag2)
                for i in prange(n):
                    out[i] = scalar.round_nearest_even_f32(x[i], flag0, flag1, flag2, lsb, half1, dmask, minnorm, c,
                                                           maxbits, overbits, infbits, nanbits)
            elif ne64:  # int64 carrier bits (float64 data, CW == 64) in and out
                lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f64_consts(
                    p[1], p[2], p[3], p[4], flag0, flag2)
                for i in prange(n):
                    out[i] = scalar.round_nearest_even_f64(x[i], flag0, flag1, flag2, lsb, half1, dmask, minnorm, c,
                                                           maxbits, overbits, infbits, nanbits)
            elif fx32:  # int32 carrier bits in and out; flag0: signed
                fs, finv, flo, fhi, kmin, kmax, c, nanbits = scalar.fixed_nearest_f32_consts(p[1], p[2], flag0)
                for i in prange(n):
                    out[i] = scalar.round_fixed_nearest_f32(x[i], fs, finv, flo, fhi, kmin, kmax, c, nanbits)
            elif fx64:  # int64 carrier bits (float64 data) in and out
                fs, finv, flo, fhi, kmin, kmax, c, nanbits = scalar.fixed_nearest_f64_consts(p[1], p[2], flag0)
                for i in prange(n):
                    out[i] = scalar.round_fixed_nearest_f64(x[i], fs, finv, flo, fhi, kmin, kmax, c, nanbits)
            elif sr32:  # int32 carrier bits, 32 random bits
                lsb, dmask, minnorm, q, up, dbase, maxbits, overbits, infbits, nanbits = scalar.stochastic_f32_consts(
                    p[1], p[2], p[3], p[4], flag0, flag2)
                if n > 0 and ((offset + n - 1) >> 32) == (offset >> 32):
                    mixed_hi = scalar._mix32(np.uint32((offset >> 32) & 0xFFFFFFFF))
                    lo0 = offset & 0xFFFFFFFF
                    lo0_32 = np.uint32(lo0)
                    for i in prange(n):  # (the counter's low word in 32-bit lanes: lo0 + i < 2**32 here)
                        rnd = scalar.random_bits_split(key0, key1, np.uint32(lo0_32 + np.uint32(i)), mixed_hi, 32)
                        out[i] = scalar.round_stochastic_f32(x[i], rnd, flag0, flag1, flag2, wide, lsb, dmask, minnorm,
                                                             q, up, dbase, maxbits, overbits, infbits, nanbits)
                else:
                    for i in prange(n):
                        rnd = scalar.random_bits(key0, key1, offset + i, 32)
                        out[i] = scalar.round_stochastic_f32(x[i], rnd, flag0, flag1, flag2, wide, lsb, dmask, minnorm,
                                                             q, up, dbase, maxbits, overbits, infbits, nanbits)
            elif stochastic and n > 0 and ((offset + n - 1) >> 32) == (offset >> 32):
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
        return loop

    @kernel(parallel=parallel, spec=(op, parallel, kind, mode, r32, flag0, flag1, flag2, step))
    def loop(op_arg, x, out, CW, CM, CB, p, mode_arg, key0, key1, offset, rbits):
        # the pattern of the rounded value: the round loop's element step (its bits are the definition's),
        # then scalar.float_pattern_of; else the definition's encode with the kind and flags as constants
        rb = 32 if r32 else rbits
        n = x.size
        if ne32:
            lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f32_consts(
                p[1], p[2], p[3], p[4], flag0, flag2)
            for i in prange(n):
                r = scalar.round_nearest_even_f32(x[i], flag0, flag1, flag2, lsb, half1, dmask, minnorm, c,
                                                  maxbits, overbits, infbits, nanbits)
                out[i] = scalar.float_pattern_of(r, 32, 23, 127, p[1], p[2], p[3], flag0, p[8])
        elif ne64:
            lsb, half1, dmask, minnorm, c, maxbits, overbits, infbits, nanbits = scalar.nearest_even_f64_consts(
                p[1], p[2], p[3], p[4], flag0, flag2)
            for i in prange(n):
                r = scalar.round_nearest_even_f64(x[i], flag0, flag1, flag2, lsb, half1, dmask, minnorm, c,
                                                  maxbits, overbits, infbits, nanbits)
                out[i] = scalar.float_pattern_of(r, 64, 52, 1023, p[1], p[2], p[3], flag0, p[8])
        elif sr32:
            lsb, dmask, minnorm, q, up, dbase, maxbits, overbits, infbits, nanbits = scalar.stochastic_f32_consts(
                p[1], p[2], p[3], p[4], flag0, flag2)
            for i in prange(n):
                rnd = scalar.random_bits(key0, key1, offset + i, 32)
                r = scalar.round_stochastic_f32(x[i], rnd, flag0, flag1, flag2, wide, lsb, dmask, minnorm, q, up,
                                                dbase, maxbits, overbits, infbits, nanbits)
                out[i] = scalar.float_pattern_of(r, 32, 23, 127, p[1], p[2], p[3], flag0, p[8])
        else:
            for i in prange(n):
                rnd = scalar.random_bits(key0, key1, offset + i, rb) if stochastic else 0
                out[i] = _encode_element(kind, x[i], CW, CM, CB, p, flag0, flag1, flag2, mode, rnd, rb)
    return loop


_SPECIALISED: dict = {}


def specialised(op: str, spec: tuple, parallel: bool):
    """The specialised ``op`` ("round" or "encode") loop for ``spec`` (:func:`spec_of`), built once."""
    key = (op, spec, bool(parallel))
    loop = _SPECIALISED.get(key)
    if loop is None:
        loop = _SPECIALISED[key] = _build(op, bool(parallel), *spec)
    return loop


@kernel(parallel=True)
def decode_parallel(op, bits, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    for i in prange(bits.size):
        out[i] = scalar.decode_bits(bits[i], CW, CM, CB, p)


@kernel(parallel=True)
def gather_parallel(bits, table, out):
    """``out[i] = table[bits[i]]``: decoding through a table of every pattern's value (dispatch.decode_array;
    the caller checked every pattern is below the table's size)."""
    for i in prange(bits.size):
        out[i] = table[bits[i]]


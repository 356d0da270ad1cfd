"""The fused step of a matrix unit (NUMERICS.md section 5): scalar building blocks shared by its kernels.

Scalars in, scalars out, compiled into both the CPU kernel (kernels/mma_cpu.py, which runs them on
vector lanes, one output column per lane) and the CUDA kernel (kernels/linalg_cuda.py, one thread per
output element, through :func:`output`), so the two cannot drift apart. The building blocks are
``njit(inline="always")``; :func:`output` (one output element, every step) is compiled once and called
(and cached on disk: the simulator calls it from Python, once per thread).

One step of ``k`` products, per output element, operands already rounded to their formats and held
exactly in float64:

- ``e_max`` = the largest of the products' exponents ``E(a) + E(b)`` (:func:`operand_exponent`),
  the addend's exponent (:func:`addend_exponent`: ``e_zero`` when it is zero) and ``e_zero`` when some
  product of the step has a zero factor (a zero operand's own exponent, ``ZERO_EXP``, never wins);
- with ``s = 2**(frac_bits - e_max)`` (:func:`pow2`, :func:`capped`), each term's truncation is
  :func:`aligned` ``(a * b, s)`` = ``trunc(a * b * s)``: the product is exact in float64 (at most 22
  significant bits), the scaling by a power of two is exact (no underflow or overflow in the ranges the
  descriptor admits: ``-300 <= e_max <= 1000``, ``frac_bits <= 40``), and the truncated values are
  integers below ``2**(frac_bits + 2)``, so their float64 sum is exact in any order (at most 257 terms).
  IEEE signed-zero rules of that exact sum are float64's own (``-0 + -0 = -0``, ``x + -x = +0``), and an
  Inf/NaN operand or addend makes the float64 sum the IEEE result of the exact sum (``Inf * 0`` and
  ``Inf - Inf`` give NaN);
- the step's value ``sum * 2**(e_max - frac_bits)`` (exact) is rounded once to the output format
  (:func:`round_out`): toward zero (its float64 bits below the output's quantum cleared) or nearest-even
  (``rint``) at the output's quantum ``2**q``, ``q = max(E, emin) - man``; ``|r| >= 2**(emax + 1)`` gives
  +-Inf (the hardware's toward-zero conversion overflows to Inf); NaN is canonical;
- promotion (DeepSeek-V3's recipe, :func:`promote`): a block's chain result is added to the fp32 total
  with float64 addition rounded to float32, one IEEE fp32 addition (double rounding through 53 bits is
  innocuous for a sum of two fp32 values: 53 >= 2*24 + 2).

Block-scaled steps (Blackwell's mxf8f6f4 and mxf4nvf4 instructions; ``lowprec.matrix_units``):

- per-product scales (mxf8f6f4, MMA-Sim's ST-FDPA): the operands hold their dequantized values ``q * 2**s``
  (E8M0 scales are powers of two), so a product is still exact in float64 (at most 8 significant bits,
  exponents within -290..290) and its exponent ``E(q_a) + s_a + E(q_b) + s_b`` is :func:`operand_exponent`
  of the value with the format's ``emin`` moved by the block's scale exponent ``s`` (``floor(log2|q * 2**s|)
  = floor(log2|q|) + s``, and the subnormal floor moves with it); everything else is the unscaled step;
- group sums (mxf4nvf4, GST-FDPA, :func:`output_groups`): each group of ``G`` products is summed exactly
  first (fp4/fp6 products of one group share their scales: the sum is a multiple of the smallest product
  grid below ``2**53`` of it, checked by ``MatrixUnit``), and a group is one term whose exponent is the
  scales' ``E(s_a) + E(s_b)`` (:func:`group_exponent`; ``e_zero`` when every product of the group is zero),
  not its value's. Its aligned value is below ``G * max_a * max_b * 4 * 2**frac_bits <= 2**50`` (checked by
  ``MatrixUnit``), so the float64 sum of the truncated groups and the addend stays exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel
from .scalar import f64_as_i64, i64_as_f64

_jit = njit(nogil=True, inline="always")

#: exponent given to a zero operand: its products' exponents stay far below any real one
ZERO_EXP = -4096
#: e_max is capped here before scaling: an Inf/NaN addend reads as exponent 1024 (any bound keeps s finite
#: and > 0; the step's result is Inf or NaN whatever s is)
EXP_CAP = 1000


@_jit
def exponent(x, emin):
    """max(floor(log2|x|), emin) for a finite non-zero float64 ``x`` whose format's subnormals are normal
    float64 numbers (1024 for Inf/NaN)."""
    return max(((f64_as_i64(x) >> 52) & 0x7FF) - 1023, emin)


@_jit
def operand_exponent(x, emin):
    """E(x) of an operand: ZERO_EXP for a zero, 0 for Inf/NaN (their products are Inf/NaN anyway)."""
    e = exponent(x, emin)
    e = 0 if e == 1024 else e
    return ZERO_EXP if x == 0.0 else e


@_jit
def addend_exponent(c, cemin, ez):
    """E(c) of the addend (the running value of the chain), ``ez`` (e_zero) when it is zero."""
    e = exponent(c, cemin)
    return ez if c == 0.0 else e


@_jit
def capped(e_max):
    return min(e_max, EXP_CAP)


@_jit
def pow2(e):
    """2**e as float64, for -1022 <= e <= 1023 (built from its bits)."""
    return i64_as_f64(np.int64(e + 1023) << 52)


@_jit
def aligned(t, s):
    """The term ``t`` aligned to the step's grid: truncated toward zero to a multiple of ``1 / s``,
    in units of the grid (``s = 2**(frac_bits - e_max)``)."""
    return np.trunc(t * s)


@_jit
def round_out(v, om, oemin, overflow, rz):
    """The exact step value ``v`` rounded once to the output format (``om`` mantissa bits, ``oemin``):
    toward zero when ``rz``, else nearest-even; ``|r| >= overflow`` (2**(emax + 1)) is +-Inf; NaN canonical.

    Both cut ``v`` at the output's quantum ``2**q``, ``q = max(E, oemin) - om``. Toward zero clears the
    ``d = q - (E - 52)`` bits of ``v``'s float64 significand below it (``d = 52 - om + max(0, oemin - E)``; all
    63 bits but the sign when ``d > 52``: ``|v| < 2**q`` gives a zero of ``v``'s sign), which is ``trunc(v / 2**q)
    * 2**q`` with integer operations (a zero keeps its sign, Inf its zero significand; a NaN that arithmetic made,
    as ``v`` is, has its quiet bit 51 set, which ``d <= 52 - om`` keeps). Nearest-even scales, ``rint``s, scales
    back (both scalings exact: ``v`` is a float64 with ``-340 < E < 1030``)."""
    if rz:
        b = f64_as_i64(v)
        d = 52 - om + max(0, oemin - (((b >> 52) & 0x7FF) - 1023))
        r = i64_as_f64(b & (np.int64(-1) << (63 if d > 52 else d)))
    else:
        q = exponent(v, oemin) - om
        r = np.rint(v * pow2(-q)) * pow2(q)
    r = np.copysign(np.inf, r) if abs(r) >= overflow else r
    return np.nan if r != r else r


@_jit
def promote(total, v):
    """One IEEE fp32 addition (nearest-even) of a block's result ``v`` to the fp32 ``total``; NaN canonical."""
    t = np.float64(np.float32(total + v))
    return np.nan if t != t else t


@_jit
def group_exponent(nonzero, es, ez):
    """The alignment exponent of a group sum: the scales' exponent ``es``, or ``ez`` (e_zero) when every
    product of the group is zero (a sum that cancels to zero keeps ``es``)."""
    return es if nonzero else ez


@kernel
def output(a, b, c, sa, sb, blk, i, j, K, k, F, ez, a_emin, b_emin, cemin, om, oemin, overflow, rz, pg):
    """Element (i, j) of ``c + a @ b`` (``a`` (M, K), ``b`` (K, N), the addend ``c`` a float64 scalar): the steps
    of ``k`` products in k order, K padded with zero products to a multiple of ``k``; ``pg`` > 0: promote every
    ``pg`` steps (the chain restarts from +0, ``c`` is the fp32 total's initial value). ``blk`` > 0: per-product
    block scales, ``sa[i, l // blk]`` and ``sb[l // blk, j]`` the scale exponents of element l's blocks."""
    G = (K + k - 1) // k
    total = c
    v = 0.0 if pg > 0 else c
    for g in range(G):
        l0 = g * k
        m = addend_exponent(v, cemin, ez)
        for l in range(l0, l0 + k):
            if l < K:
                x = a[i, l]
                y = b[l, j]
                ea = a_emin + (sa[i, l // blk] if blk > 0 else 0)
                eb = b_emin + (sb[l // blk, j] if blk > 0 else 0)
                e = ez if x == 0.0 or y == 0.0 else operand_exponent(x, ea) + operand_exponent(y, eb)
            else:
                e = ez
            m = max(m, e)
        m = capped(m)
        s = pow2(F - m)
        acc = aligned(v, s)
        for l in range(l0, min(l0 + k, K)):
            acc += aligned(a[i, l] * b[l, j], s)
        if l0 + k > K:
            acc += 0.0  # the padding's zero products (+0: the sum is -0 only when every term is -0)
        v = round_out(acc * pow2(m - F), om, oemin, overflow, rz)
        if pg > 0 and ((g + 1) % pg == 0 or g == G - 1):
            total = promote(total, v)
            v = 0.0
    return total if pg > 0 else v


@kernel
def output_groups(a, b, c, ga, gb, i, j, K, k, GS, F, ez, cemin, om, oemin, overflow, rz, pg):
    """Element (i, j) of ``c + a @ b`` on a group-scaled unit: steps of ``k`` products made of ``k / GS`` group
    sums, each aligned at its scales' exponent ``ga[i, q] + gb[q, j]`` (q the group's index along K, K padded
    with zero groups); otherwise as :func:`output`."""
    G = (K + k - 1) // k
    total = c
    v = 0.0 if pg > 0 else c
    for g in range(G):
        l0 = g * k
        m = addend_exponent(v, cemin, ez)
        for q in range(l0 // GS, (l0 + k) // GS):
            nz = False
            for l in range(q * GS, min(q * GS + GS, K)):
                nz = nz or (a[i, l] * b[l, j] != 0.0)
            m = max(m, group_exponent(nz, ga[i, q] + gb[q, j], ez))
        m = capped(m)
        s = pow2(F - m)
        acc = aligned(v, s)
        for q in range(l0 // GS, (l0 + k) // GS):
            t = -0.0 if q * GS + GS <= K else 0.0  # IEEE: -0 only if every product is -0 (padding adds +0)
            for l in range(q * GS, min(q * GS + GS, K)):
                t += a[i, l] * b[l, j]
            acc += aligned(t, s)
        v = round_out(acc * pow2(m - F), om, oemin, overflow, rz)
        if pg > 0 and ((g + 1) % pg == 0 or g == G - 1):
            total = promote(total, v)
            v = 0.0
    return total if pg > 0 else v

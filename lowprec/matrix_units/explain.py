"""``lowprec matrix-units`` and ``lowprec explain-mma``: the preset table, and one dot product term by term.

:func:`unit_table` lists the matrix-unit presets with their parameters (the sibling of ``lowprec
formats``). :func:`explain_mma` is the teaching view of a small dot product ``c + a . b`` on a matrix
unit: for every fused step, each term's exponent, its significand aligned to the step's largest
exponent, the bits truncation cuts off, the exact sum and its one rounding; then the result beside
the exact value and the ideal result (the exact value rounded once, nearest-even, to the result's
format). Block-scaled units (Blackwell's mxf8f6f4, mxf4, mxf4nvf4): each block's scale, the scale-shifted
products or the group sums aligned at their scales' exponent, the cut, the normalised sum and the rounding,
computed here in exact arithmetic and checked against the kernel's bits (:func:`worked_example` gives one
example per unit). Exact arithmetic (``fractions.Fraction``): a few terms, not a matrix.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..core import round_to
from ..formats import FP32
from . import PRESETS, get_matrix_unit

__all__ = ["unit_table", "explain_mma", "worked_example", "add_parser"]


def unit_table(names=None) -> str:
    """A Markdown table of matrix-unit presets: operands, k (split), fractional bits, output, e_zero, N_C, and
    the block scales of the block-scaled units (scale format per block, group sums)."""
    names = list(PRESETS) if not names else names
    rows = ["| preset | operands | k | step | frac bits | output | e_zero | promote | block scales |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        u = get_matrix_unit(n)
        ops = u.a_format.name if u.a_format == u.b_format else f"{u.a_format.name} x {u.b_format.name}"
        if u.truncate_inputs:
            ops += " (truncated)"
        out = f"{u.out_format.name} {'toward zero' if u.out_rounding.name == 'TOWARD_ZERO' else 'nearest-even'}"
        rows.append(f"| {u.name or n} | {ops} | {u.k}{' (split)' if u.split_k else ''} | {u.step_k} | "
                    f"{u.frac_bits} | {out} | {u.e_zero} | {u.promote_every or '-'} | {_scales(u)} |")
    return "\n".join(rows)


def _scales(u) -> str:
    if u.block_format is None:
        return "-"
    text = f"{u.block_format.scale.name} per {u.block}"
    return text + (f", exact sums of {u.group}" if u.group else "")


def _log2(x: Fraction) -> int:
    x = abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    return e - 1 if Fraction(2) ** e > x else e


def _exp(x: Fraction, emin: int) -> int:
    return max(_log2(x), emin)


def _bits(n: int, width: int) -> str:
    s = format(abs(n), "b").rjust(width, "0")
    return s


def _fmt(v) -> str:
    return repr(float(v))


def explain_mma(a, b, unit, c: float = 0.0, *, a_scales=None, b_scales=None) -> str:
    """The fused steps of ``c + a . b`` on ``unit`` (a MatrixUnit or preset name), as text.

    Inputs are rounded (or truncated) to the operand formats first, ``c`` to ``c_format``; NaN and Inf
    are not explained (the IEEE result of the exact sum applies).

    Block-scaled units (``nv-blackwell-mxfp8``, ``-mxfp4``, ``-nvfp4``): ``a`` and ``b`` are block-quantized
    along K with the unit's block format, as :func:`lowprec.linalg.matmul` does; or, with ``a_scales`` and
    ``b_scales`` (one scale per block), they are values ``q * s`` already quantized, as
    :func:`lowprec.matrix_units.block_matmul` takes them. The view shows each block's scale (code, value and
    the exponent it adds), each non-zero product (for group-scaled units, each group's exact sum aligned at
    its scales' exponent), the alignment cut, the normalised sum and its rounding, per step; the result is
    checked to be the bits of ``matmul`` (``block_matmul``) with the unit (AssertionError otherwise).
    :func:`worked_example` gives a built-in example per unit.

    Examples
    --------
    >>> print(explain_mma([1, 1, 1, 1], [2, 2**-23 + 2**-24, 0, 0], "nv-volta-fp16").splitlines()[-3])
    result   2.0
    """
    u = get_matrix_unit(unit)
    if u.block_format is not None:
        return _explain_block(a, b, u, c, a_scales, b_scales)
    if a_scales is not None or b_scales is not None:
        raise ValueError(f"a_scales and b_scales are for block-scaled units; {u.name or 'this unit'} has no block "
                         "scales")
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    if a64.shape != b64.shape or a64.size == 0:
        raise ValueError(f"a and b must be non-empty vectors of one length, got {a64.shape} and {b64.shape}")
    if u.truncate_inputs:
        def rd(x, f):
            mask = np.uint32((0xFFFFFFFF << (23 - f.man_bits)) & 0xFFFFFFFF)
            with np.errstate(over="ignore"):
                x32 = x.astype(np.float32)
            return (x32.view(np.uint32) & mask).view(np.float32).astype(np.float64)
    else:
        def rd(x, f):
            return np.asarray(round_to(x, f), dtype=np.float64)
    av, bv = rd(a64, u.a_format), rd(b64, u.b_format)
    cv = float(np.asarray(round_to(np.array([c], dtype=np.float64), u.c_format))[0])
    if not all(math.isfinite(x) for x in (*av, *bv, cv)):
        raise ValueError("explain_mma shows finite inputs only (NaN/Inf: the IEEE result of the exact sum)")
    from ..linalg import dot

    k = u.step_k
    pad = (-av.size) % k
    av = np.concatenate([av, np.zeros(pad)])
    bv = np.concatenate([bv, np.zeros(pad)])
    lines = [f"{u.name or 'matrix unit'}: steps of {k} products, {u.frac_bits} fractional bits after alignment, "
             f"{u.out_format.name} output rounded {'toward zero' if u.out_rounding.name == 'TOWARD_ZERO' else 'to nearest-even'}"]
    d = cv
    n = u.frac_bits
    for s0 in range(0, av.size, k):
        terms = [("c", Fraction(d), u.e_zero if d == 0 else _exp(Fraction(d), u.c_format.emin))]
        for l in range(s0, s0 + k):
            p = Fraction(av[l]) * Fraction(bv[l])
            e = u.e_zero if p == 0 else _exp(Fraction(av[l]), u.a_format.emin) + _exp(Fraction(bv[l]), u.b_format.emin)
            terms.append((f"a{l}*b{l}", p, e))
        emax = max(e for _, _, e in terms)
        grid = Fraction(2) ** (emax - n)
        lines.append(f"step {s0 // k}: largest exponent {emax}; terms truncated to multiples of 2**{emax - n}")
        lines.append(f"  {'term':>10} {'value':>24} {'exp':>5}  aligned significand (2 integer bits . {n} bits)"
                     f"{'':>4} cut off")
        total = 0
        npad = max(0, s0 + k - a64.size)
        for nm, v, e in terms[:len(terms) - npad]:
            q = v / grid
            t = q.numerator // q.denominator
            if t < 0 and t != q:
                t += 1
            cut = v - t * grid
            sign = "-" if v < 0 else " "
            bits = _bits(t, n + 2)
            lines.append(f"  {nm:>10} {_fmt(v):>24} {e:>5}  {sign}{bits[:-n]}.{bits[-n:]}    "
                         f"{_fmt(cut) if cut else '0'}")
            total += t
        if npad:
            lines.append(f"  {'':>10} ({npad} zero terms padding K to a multiple of {k}, at exponent {u.e_zero})")
        s = total * grid
        d = float(np.asarray(dot(av[s0:s0 + k], bv[s0:s0 + k], u.replace(promote_every=None), c=d)))
        lines.append(f"  exact sum of the truncated terms {_fmt(s)} -> rounded once to {u.out_format.name}: {_fmt(d)}")
    exact = Fraction(cv) + sum((Fraction(x) * Fraction(y) for x, y in zip(av, bv)), Fraction(0))
    result = float(np.asarray(dot(a64, b64, u, c=c)))
    ideal = float(np.asarray(round_to(np.array([float(exact)]), u.result_format))[0])
    if u.promote_every is not None:
        lines.append(f"(promotion every {u.promote_every} elements into an fp32 accumulator applies to the result)")
    lines.append(f"result   {result!r}")
    lines.append(f"exact    {float(exact)!r}" + ("" if float(exact) == exact else " (nearest float64)"))
    lines.append(f"ideal    {ideal!r}   (the exact value rounded once, nearest-even, to {u.result_format.name})")
    return "\n".join(lines)


# -- block-scaled units -------------------------------------------------------------------------------
#: the built-in worked examples (values ``q * s``, one scale per block, the addend) of ``lowprec explain-mma``
#: for a block-scaled unit given without ``--a``/``--b``: a cut inside a step, and a step whose addend cuts
#: products whose scales are small (mxf8f6f4); a small group kept because it is aligned at its scales'
#: exponent, not at its own magnitude (mxf4, mxf4nvf4)
def worked_example(unit):
    """``(a, a_scales, b, b_scales, c)`` of the built-in worked example for a block-scaled ``unit``."""
    u = get_matrix_unit(unit)
    if u.block_format is None:
        raise ValueError(f"worked_example is for block-scaled units, got {u.name or u!r}")
    K = 2 * u.step_k
    blk = u.block
    nb = -(-K // blk)
    a, b = np.zeros(K), np.zeros(K)
    if u.group == 0:
        sa = np.array([2.0**-3] * (nb // 2) + [2.0**-20] * (nb - nb // 2))
        sb = np.array([2.0**2] * (nb // 2) + [2.0**-20] * (nb - nb // 2))
        half = (nb // 2) * blk
        a[0], b[0] = 448.0 * sa[0], 448.0 * sb[0]  # the step's largest product: it sets the grid
        a[1], b[1] = -2.0**-9 * sa[0], 2.0**-9 * sb[0]  # cut
        a[2], b[2] = 1.5 * sa[0], -0.75 * sb[0]  # kept
        a[half], b[half] = 3.0 * sa[-1], 5.0 * sb[-1]  # below the grid the addend (step 0's result) sets
        a[half + 1], b[half + 1] = 416.0 * sa[-1], 448.0 * sb[-1]
        return a, sa, b, sb, 0.0
    per = u.step_k // blk  # blocks per step
    sa = np.array(([256.0] * (per // 2) + [2.0**-9] * (per - per // 2)) * 2)
    sb = np.array(([256.0] * (per // 2) + [2.0**-6] * (per - per // 2)) * 2)
    mid = (per // 2) * blk
    a[0], b[0] = 6.0 * sa[0], 6.0 * sb[0]
    a[mid], b[mid] = -0.5 * sa[per // 2], 0.5 * sb[per // 2]  # kept: aligned at its scales' exponent -15
    a[1], b[1] = 6.0 * sa[0], -6.0 * sb[0]  # a group that cancels to zero keeps its scales' exponent
    a[u.step_k], b[u.step_k] = 1.5 * sa[per], 4.0 * sb[per]
    return a, sa, b, sb, 0.0


def _scale_code(s: float, fmt) -> str:
    from ..core import encode

    if math.isnan(s):
        return "NaN"
    return f"0x{int(encode(np.array([s]), fmt)[0]):02x}"


def _pow2(e: int) -> str:
    return f"2**{e}"


def _rounded(v: Fraction, out, toward_zero: bool):
    """``v`` rounded once to ``out`` (Fraction, or +-inf on overflow) and the quantum's exponent."""
    if v == 0:
        return Fraction(0), out.emin - out.man_bits
    q = max(_log2(v), out.emin) - out.man_bits
    x = v / Fraction(2) ** q
    n = math.floor(x)
    if toward_zero:
        n = n + 1 if n < 0 and n != x else n
    elif x - n > Fraction(1, 2) or (x - n == Fraction(1, 2) and n % 2):
        n += 1
    r = n * Fraction(2) ** q
    if abs(r) >= Fraction(2) ** (out.emax + 1):
        return (math.inf if v > 0 else -math.inf), q
    return r, q


def _normalised(s: Fraction, lsb: int) -> str:
    """``s`` (a multiple of 2**lsb) as ``1.bbb x 2**E``."""
    if s == 0:
        return "0"
    e = _log2(s)
    t = abs(s) / Fraction(2) ** lsb
    bits = format(int(t), "b")
    frac = bits[1:] if e > lsb else ""
    return f"{'-' if s < 0 else ''}1.{frac or '0'} x 2**{e}"


def _block_operands(a, b, u, c, a_scales, b_scales):
    """(values a, b as float64, scale values per block, tensor scales or None, elements, the checked c, the result
    of the unit) for explain_mma of a block-scaled unit."""
    from ..linalg import _block_quantized, matmul
    from . import block_matmul

    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    if a64.shape != b64.shape or a64.size == 0:
        raise ValueError(f"a and b must be non-empty vectors of one length, got {a64.shape} and {b64.shape}")
    K = a64.size
    nb = -(-K // u.block)
    if (a_scales is None) != (b_scales is None):
        raise ValueError("a_scales and b_scales go together: give both (values already quantized) or neither "
                         "(a and b are block-quantized with the unit's block format)")
    if a_scales is None:
        av, sa, ta = _block_quantized(a64[None, :], u.operand_block_format("a"), -1)
        bv, sb, tb = _block_quantized(b64[:, None], u.operand_block_format("b"), 0)
        av, sa, bv, sb = av[0], sa[0], bv[:, 0], sb[:, 0]
        with np.errstate(all="ignore"):
            result = float(matmul(a64[None, :], b64[:, None], u, c=np.array([[c]]), backend="cpu")[0, 0])
    else:
        sa = np.asarray(a_scales, dtype=np.float64).ravel()
        sb = np.asarray(b_scales, dtype=np.float64).ravel()
        for nm, s in (("a_scales", sa), ("b_scales", sb)):
            if s.size != nb:
                raise ValueError(f"{nm} must hold one scale per {u.block} elements ({nb} for K = {K}), got {s.size}")
        av, bv, ta, tb = a64, b64, None, None
        result = float(block_matmul(a64[None, :], sa[None, :], b64[:, None], sb[:, None], u, c=np.array([[c]]),
                                    backend="cpu")[0, 0])
    vals = [*av, *bv, *sa, *sb, c]
    if not all(math.isfinite(x) for x in vals):
        raise ValueError("explain_mma shows finite inputs and scales only (a NaN scale makes its steps NaN; "
                         "NaN/Inf elements: the IEEE result of the exact sum)")
    return av, bv, sa, sb, ta, tb, result


def _explain_block(a, b, u, c, a_scales, b_scales) -> str:
    from ..core import round_to
    from . import scale_exponents

    cv = float(np.asarray(round_to(np.array([c], dtype=np.float64), u.c_format))[0])
    av, bv, sa, sb, ta, tb, result = _block_operands(a, b, u, cv, a_scales, b_scales)
    sf = u.block_format.scale
    blk, k, n, G = u.block, u.step_k, u.frac_bits, u.group
    K = av.size
    rz = u.out_rounding.name == "TOWARD_ZERO"
    out = u.out_format
    ea, eb = scale_exponents(sa, sf), scale_exponents(sb, sf)
    how = (f"{k // G} exact sums of {G} products per step, each aligned at its two scales' exponent" if G else
           f"steps of {k} products, each at its exponent shifted by its two scales' exponents")
    lines = [(f"{u.name or 'matrix unit'}: {how}; {n} fractional bits after alignment, {out.name} output rounded "
              f"{'toward zero' if rz else 'to nearest-even'}")]
    if ta is not None:
        lines.append(f"a and b block-quantized with {u.block_format.name}; per-tensor scales {ta!r} (a) and {tb!r} "
                     "(b) stay outside the instruction (applied after the chain)")
    elif a_scales is None:
        lines.append(f"a and b block-quantized with {u.block_format.name} along K")
    lines.append(f"block scales ({sf.name}, one per {blk} elements along K; E = the exponent a scale adds):")
    lines.append(f"  {'block':>5} {'elements':>9}  {'a code':>6} {'a scale':>22} {'E':>5}  {'b code':>6} "
                 f"{'b scale':>22} {'E':>5}")
    for q in range(sa.size):
        lines.append(f"  {q:>5} {f'{q * blk}..{min(q * blk + blk, K) - 1}':>9}  {_scale_code(sa[q], sf):>6} "
                     f"{_fmt(sa[q]):>22} {int(ea[q]):>5}  {_scale_code(sb[q], sf):>6} {_fmt(sb[q]):>22} "
                     f"{int(eb[q]):>5}")
    pad = (-K) % k
    Kp = K + pad
    Fr = Fraction
    # the elements q = value / scale (a zero scale: its values are zero)
    qa = [Fr(av[l]) / Fr(sa[l // blk]) if sa[l // blk] else Fr(0) for l in range(K)] + [Fr(0)] * pad
    qb = [Fr(bv[l]) / Fr(sb[l // blk]) if sb[l // blk] else Fr(0) for l in range(K)] + [Fr(0)] * pad
    SA = [Fr(sa[min(l // blk, sa.size - 1)]) for l in range(Kp)]
    SB = [Fr(sb[min(l // blk, sb.size - 1)]) for l in range(Kp)]
    EA = [int(ea[min(l // blk, ea.size - 1)]) for l in range(Kp)]
    EB = [int(eb[min(l // blk, eb.size - 1)]) for l in range(Kp)]
    d = Fr(0) if ta is not None else Fr(cv)
    dneg = ta is None and math.copysign(1.0, cv) < 0  # the sign of a zero addend (IEEE signed zeros)
    for s0 in range(0, Kp, k):
        lines.append(f"step {s0 // k} (elements {s0}..{s0 + k - 1}"
                     + (f", {s0 + k - K} of them zero padding K to a multiple of {k})" if s0 + k > K else ")"))
        ce = u.e_zero if d == 0 else _exp(d, u.c_format.emin)
        terms = [("c", d, ce, dneg)]  # (name, exact value, alignment exponent, negative zero)
        lines.append(f"  addend c = {_fmt(d)}" + (f" at e_zero {u.e_zero}" if d == 0 else f" at exponent {ce}"))
        if G == 0:
            zeros = 0
            for l in range(s0, s0 + k):
                p = qa[l] * qb[l] * SA[l] * SB[l]
                sneg = l < K and (math.copysign(1.0, av[l]) < 0) != (math.copysign(1.0, bv[l]) < 0)
                if p == 0:
                    zeros += 1
                    terms.append((None, p, u.e_zero, sneg))
                    continue
                e = _exp(qa[l], u.a_format.emin) + _exp(qb[l], u.b_format.emin) + EA[l] + EB[l]
                terms.append((f"a{l}*b{l}", p, e, sneg))
                lines.append(f"  a{l}*b{l} = {_fmt(qa[l])} * {_fmt(qb[l])} * 2**{EA[l]} * 2**{EB[l]} = {_fmt(p)} "
                             f"at exponent {_exp(qa[l], u.a_format.emin)} + {_exp(qb[l], u.b_format.emin)} + "
                             f"{EA[l]} + {EB[l]} = {e}")
            if zeros:
                lines.append(f"  ({zeros} zero products at e_zero {u.e_zero})")
        else:
            for g0 in range(s0, s0 + k, G):
                gq = g0 // G
                prods = [qa[l] * qb[l] for l in range(g0, g0 + G)]
                allneg = all(l < K and (math.copysign(1.0, av[l]) < 0) != (math.copysign(1.0, bv[l]) < 0)
                             for l in range(g0, g0 + G))
                if all(p == 0 for p in prods) or SA[g0] * SB[g0] == 0:
                    terms.append((f"group {gq}", Fr(0), u.e_zero, allneg))
                    lines.append(f"  group {gq} (elements {g0}..{g0 + G - 1}): every product zero, at e_zero "
                                 f"{u.e_zero}")
                    continue
                e = EA[g0] + EB[g0]
                total = sum(prods, Fr(0))
                v = total * SA[g0] * SB[g0]
                terms.append((f"group {gq}", v, e, False))
                lines.append(f"  group {gq} (elements {g0}..{g0 + G - 1}), scales {_fmt(SA[g0])} * {_fmt(SB[g0])}, "
                             f"aligned at their exponent {EA[g0]} + {EB[g0]} = {e}:")
                for l in range(g0, g0 + G):
                    p = qa[l] * qb[l]
                    if p != 0:
                        own = _exp(qa[l], u.a_format.emin) + _exp(qb[l], u.b_format.emin) + EA[l] + EB[l]
                        lines.append(f"    a{l}*b{l} = {_fmt(qa[l])} * {_fmt(qb[l])} = {_fmt(p)} (scaled: "
                                     f"{_fmt(p * SA[l] * SB[l])}, at exponent {own} on its own)")
                lines.append(f"    exact sum {_fmt(total)}, times the scales {_fmt(v)}")
        emax = max(t[2] for t in terms)
        lsb = emax - n
        grid = Fr(2) ** lsb
        lines.append(f"  largest exponent {emax}: terms truncated to multiples of 2**{lsb} ({n} fractional bits)")
        ints = []
        for _, v, _, _ in terms:
            x = v / grid
            t = math.floor(x)
            ints.append(t + 1 if t < 0 and t != x else t)
        width = max([2] + [len(format(abs(t), "b")) - n for t in ints])
        lines.append(f"  {'term':>10} {'value':>24} {'exp':>5}  aligned ({width} integer bits . {n} bits)  cut off")
        for (nm, v, e, _), t in zip(terms, ints):
            if nm is None:
                continue
            bits = format(abs(t), "b").rjust(width + n, "0")
            cut = v - t * grid
            lines.append(f"  {nm:>10} {_fmt(v):>24} {e:>5}  {'-' if v < 0 else ' '}{bits[:-n]}.{bits[-n:]}  "
                         f"{_fmt(cut) if cut else '0'}")
        s = sum(ints) * grid
        r, q = _rounded(s, out, rz)
        lines.append(f"  exact sum of the truncated terms {_fmt(s)} = {_normalised(s, lsb)}")
        mode = "toward zero" if rz else "to nearest-even"
        if isinstance(r, float):
            lines.append(f"  rounded {mode} to {out.name}: overflow to {r!r}")
            d = r
            break
        lines.append(f"  rounded {mode} to {out.name} (a multiple of 2**{q}): {_fmt(r)}, dropped "
                     f"{_fmt(s - r) if s != r else '0'}")
        dneg = s < 0 if s != 0 else all(t[3] for t in terms)
        d = r
    D = d if isinstance(d, float) else (-0.0 if d == 0 and dneg else float(d))
    value = D
    exact_sum = sum((Fr(x) * Fr(y) for x, y in zip(av, bv)), Fr(0))
    if ta is not None:
        alpha = float(np.float32(ta * tb))
        if math.isfinite(D):
            epi = Fr(alpha) * Fr(D) + Fr(cv)
            r2 = _rounded(epi, FP32, False)[0]
            if isinstance(r2, float):
                value = r2
            elif epi != 0:
                value = float(r2) if r2 != 0 else math.copysign(0.0, epi)
            else:  # IEEE: -0 only when both terms are -0
                value = -0.0 if math.copysign(1, alpha * D) < 0 and math.copysign(1, cv) < 0 else 0.0
        else:
            value = float(np.float32(alpha * D + cv))
        lines.append(f"epilogue: alpha = fp32({ta!r} * {tb!r}) = {alpha!r}; fp32(alpha * {_fmt(D)} + {cv!r}) "
                     f"= {value!r} (one rounding, nearest-even)")
        exact = Fr(cv) + Fr(ta) * Fr(tb) * exact_sum
    else:
        exact = Fr(cv) + exact_sum
    same = (np.float64(value).view(np.int64) == np.float64(result).view(np.int64)
            or (math.isnan(value) and math.isnan(result)))
    lines.append(f"result   {value!r}   ({'the same bits as' if same else 'DIFFERS FROM'} "
                 f"{'matmul' if a_scales is None else 'block_matmul'} with the unit: {result!r})")
    lines.append(f"exact    {float(exact)!r}" + ("" if float(exact) == exact else " (nearest float64)")
                 + "   (of the quantized operands)")
    ideal = float(np.asarray(round_to(np.array([float(exact)]), u.result_format))[0])
    lines.append(f"ideal    {ideal!r}   (the exact value rounded once, nearest-even, to {u.result_format.name})")
    if not same:
        raise AssertionError("\n".join(lines))
    return "\n".join(lines)


def _cmd_table(args) -> int:
    print(unit_table(args.names or None))
    return 0


def _cmd_explain(args) -> int:
    u = get_matrix_unit(args.unit)
    a, b, c, sa, sb = args.a, args.b, args.c, args.a_scales, args.b_scales
    if a is None and b is None and u.block_format is not None and sa is None and sb is None:
        a, sa, b, sb, c0 = worked_example(u)
        c = c0 if c is None else c
    elif a is None or b is None:
        raise ValueError("explain-mma needs --a and --b (a block-scaled unit without them shows its built-in "
                         "worked example)")
    print(explain_mma(a, b, u, c=0.0 if c is None else c, a_scales=sa, b_scales=sb))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("matrix-units", help="table of the hardware matrix-unit presets",
                       description="Print each matrix-unit preset's operands, k, fractional bits, output and e_zero.")
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.set_defaults(func=_cmd_table)
    e = sub.add_parser("explain-mma", help="show a small dot product on a matrix unit, term by term",
                       description="Alignment, truncation and rounding of c + a . b on a matrix-unit preset.")
    e.add_argument("unit", help="a matrix-unit preset (lowprec matrix-units lists them)")
    e.add_argument("--a", type=float, nargs="+", help="the a vector (block-scaled units: optional, default their "
                   "worked example)")
    e.add_argument("--b", type=float, nargs="+", help="the b vector")
    e.add_argument("--c", type=float, default=None, help="the addend (default 0)")
    e.add_argument("--a-scales", type=float, nargs="+", help="block-scaled units: one scale per block of a; --a "
                   "then holds the values q * s (default: a is block-quantized with the unit's block format)")
    e.add_argument("--b-scales", type=float, nargs="+", help="the same for b")
    e.set_defaults(func=_cmd_explain)

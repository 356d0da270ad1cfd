"""``lowprec matrix-units`` and ``lowprec explain-mma``: the preset table, and one dot product term by term.

:func:`unit_table` lists the matrix-unit presets with their parameters (the sibling of ``lowprec
formats``). :func:`explain_mma` is the teaching view of a small dot product ``c + a . b`` on a matrix
unit: for every fused step, each term's exponent, its significand aligned to the step's largest
exponent, the bits truncation cuts off, the exact sum and its one rounding; then the result beside
the exact value and the ideal result (the exact value rounded once, nearest-even, to the result's
format). Exact arithmetic (``fractions.Fraction``): a few terms, not a matrix.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..core import round_to
from . import PRESETS, get_matrix_unit

__all__ = ["unit_table", "explain_mma", "add_parser"]


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


def explain_mma(a, b, unit, c: float = 0.0) -> str:
    """The fused steps of ``c + a . b`` on ``unit`` (a MatrixUnit or preset name), as text.

    Inputs are rounded (or truncated) to the operand formats first, ``c`` to ``c_format``; NaN and Inf
    are not explained (the IEEE result of the exact sum applies).

    Examples
    --------
    >>> print(explain_mma([1, 1, 1, 1], [2, 2**-23 + 2**-24, 0, 0], "nv-volta-fp16").splitlines()[-3])
    result   2.0
    """
    u = get_matrix_unit(unit)
    if u.block_format is not None:
        raise ValueError(f"explain_mma shows unscaled units; {u.name or 'this unit'} is block-scaled (its terms and "
                         "alignment are in docs/matrix_units.md, 'Block-scaled instructions')")
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


def _cmd_table(args) -> int:
    print(unit_table(args.names or None))
    return 0


def _cmd_explain(args) -> int:
    print(explain_mma(args.a, args.b, args.unit, c=args.c))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("matrix-units", help="table of the hardware matrix-unit presets",
                       description="Print each matrix-unit preset's operands, k, fractional bits, output and e_zero.")
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.set_defaults(func=_cmd_table)
    e = sub.add_parser("explain-mma", help="show a small dot product on a matrix unit, term by term",
                       description="Alignment, truncation and rounding of c + a . b on a matrix-unit preset.")
    e.add_argument("unit", help="a matrix-unit preset (lowprec matrix-units lists them)")
    e.add_argument("--a", type=float, nargs="+", required=True, help="the a vector")
    e.add_argument("--b", type=float, nargs="+", required=True, help="the b vector")
    e.add_argument("--c", type=float, default=0.0, help="the addend (default 0)")
    e.set_defaults(func=_cmd_explain)

"""``lowprec formats`` and ``lowprec explain``: the format table and one value, bit by bit.

``explain`` is what a teacher shows a class: the exact value that was typed,
its two neighbours in the format, which one each rounding picks and why, the
sign/exponent/mantissa fields of the result and its error in ulps.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .core import encode, round_to
from .formats import PRESETS, FixedFormat, FloatFormat, get_format
from .rounding import Rounding, get_rounding

__all__ = ["format_table", "explain", "add_parser"]


def _num(v: float) -> str:
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    r = repr(float(v))
    r = r[:-2] if r.endswith(".0") else r
    return r if len(r) <= 14 else f"{v:.10g}"


def _pow2(v: float) -> str:
    if v > 0 and math.frexp(v)[0] == 0.5:
        return f"2^{math.frexp(v)[1] - 1}"
    return _num(v)


def format_table(names=None) -> str:
    """A Markdown table of formats: bits, layout, max, smallest normal/subnormal, eps, specials."""
    fmts = [get_format(n) for n in (names or PRESETS)]
    rows = ["| format | bits | layout | max | smallest normal | smallest subnormal | eps | Inf | NaN | overflow |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for f in fmts:
        if isinstance(f, FloatFormat):
            layout = f"e{f.exp_bits}m{f.man_bits} bias {f.bias}"
            sub = _pow2(f.smallest_subnormal) if f.has_subnormals else "(none)"
            nan = {"ieee": "IEEE", "all_ones": "S.1111.111", "negative_zero": "1.0000.000", "none": "none"}[f.nan]
            over = "saturate" if f.saturate else ("Inf" if f.has_inf else "NaN")
            rows.append(f"| {f.name} | {f.bits} | {layout} | {_num(f.max)} | {_pow2(f.tiny)} | {sub} | "
                        f"{_pow2(f.eps)} | {'yes' if f.has_inf else 'no'} | {nan} | {over} |")
        else:
            layout = f"{'signed' if f.signed else 'unsigned'}, {f.frac_bits} frac bits"
            rows.append(f"| {f.name} | {f.bits} | {layout} | {_num(f.max)} (min {_num(f.min)}) | - | - | "
                        f"{_pow2(f.eps)} | no | no | {f.overflow} |")
    return "\n".join(rows)


def _fields(bits: int, fmt) -> str:
    if isinstance(fmt, FixedFormat):
        return f"{bits:0{fmt.bits}b} (two's complement)" if fmt.signed else f"{bits:0{fmt.bits}b}"
    k, m = fmt.exp_bits, fmt.man_bits
    s = bits >> (k + m)
    e = (bits >> m) & ((1 << k) - 1)
    mant = bits & ((1 << m) - 1)
    mant_s = f"{mant:0{m}b}" if m else "-"
    text = f"sign {s} | exponent {e:0{k}b} | mantissa {mant_s}"
    if e == 0:
        text += f"   (subnormal: 0.{mant_s} x 2^{fmt.emin})" if m else ""
    elif not (fmt.nan == "ieee" and e == (1 << k) - 1):
        text += f"   ({e} - bias {fmt.bias} = {e - fmt.bias}; 1.{mant_s} x 2^{e - fmt.bias})"
    return text


def _hex(bits: int, fmt) -> str:
    return f"0x{bits:0{(fmt.bits + 3) // 4}X}"


def explain(value, fmt, rounding="nearest_even", seed: int = 0) -> str:
    """A plain-text explanation of rounding ``value`` (float or str) to ``fmt``.

    Examples
    --------
    >>> print(explain("0.1", "bf16").splitlines()[0])
    value        0.1 = 0.1000000000000000055511151231257827021181583404541015625 (as float64)
    """
    fmt = get_format(fmt)
    mode = get_rounding(rounding)
    if isinstance(value, str):
        v = value.strip()
        try:
            x = float.fromhex(v) if v.lower().lstrip("+-").startswith("0x") else float(v)
        except ValueError:
            raise ValueError(f"VALUE must be a number (decimal, hex float, inf or nan), got {value!r}") from None
    else:
        x = float(value)
    lines = []
    if math.isfinite(x):
        digits = _exact_decimal(Fraction(x))
        shown = value.strip() if isinstance(value, str) else repr(x)
        lines.append(f"value        {shown} = {digits} (as float64)" if digits != shown
                     else f"value        {digits} (exact)")
    else:
        lines.append(f"value        {x}")
    lines.append(f"format       {fmt!r}")
    result = float(round_to(x, fmt, mode, seed=seed))
    if math.isfinite(x) and x != 0:
        lo = float(round_to(x, fmt, Rounding.DOWN))
        hi = float(round_to(x, fmt, Rounding.UP))
        if lo == hi:
            lines.append(f"neighbours   x is exactly representable: {_num(lo)}")
        else:
            gap = Fraction(hi) - Fraction(lo) if math.isfinite(hi) and math.isfinite(lo) else None
            lines.append(f"neighbours   {_num(lo)} < x < {_num(hi)}")
            if gap:
                pos = (Fraction(x) - Fraction(lo)) / gap
                lines.append(f"position     x lies {float(pos):.6g} of the way from {_num(lo)} to {_num(hi)} "
                             f"(gap = ulp = {_pow2(float(gap))})")
                if mode is Rounding.STOCHASTIC:
                    lines.append(f"stochastic   P(round to {_num(hi)}) = {float(pos):.6g}, "
                                 f"P(round to {_num(lo)}) = {1 - float(pos):.6g}; seed {seed} drew one")
            else:
                lines.append("overflow     x is beyond the largest finite value "
                             f"{_num(fmt.max)}; the rounding mode and format decide Inf/NaN/max")
    lines.append(f"rounding     {mode.label} -> {_num(result)}")
    if not math.isnan(result) or fmt.has_nan:
        try:
            bits = int(encode(result, fmt))
            lines.append(f"bits         {_hex(bits, fmt)} = {_fields(bits, fmt)}")
        except ValueError:
            pass
    if math.isfinite(result) and math.isfinite(x):
        err = Fraction(result) - Fraction(x)
        if isinstance(fmt, FixedFormat):
            ulp = Fraction(fmt.eps)
        else:
            ax = abs(Fraction(result)) if result != 0 else abs(Fraction(x))
            e = math.floor(math.log2(ax)) if ax else fmt.emin
            ulp = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits)
        rel = f", relative {float(abs(err) / abs(Fraction(x))):.3g}" if x != 0 else ""
        u = f" (unit roundoff u = {_pow2(fmt.unit_roundoff)})" if isinstance(fmt, FloatFormat) else ""
        lines.append(f"error        {float(err):+.6g} = {float(err / ulp):+.4g} ulp{rel}{u}")
    elif math.isfinite(x):
        lines.append(f"error        the result is {result}: x is outside what {fmt.name} can hold")
    return "\n".join(lines)


def _exact_decimal(q: Fraction) -> str:
    """The exact decimal expansion of a dyadic rational (always terminates)."""
    sign = "-" if q < 0 else ""
    q = abs(q)
    whole = q.numerator // q.denominator
    rest = q - whole
    digits = []
    while rest:
        rest *= 10
        d = rest.numerator // rest.denominator
        digits.append(str(d))
        rest -= d
    return sign + str(whole) + ("." + "".join(digits) if digits else "")


def _cmd_formats(args) -> int:
    print(format_table(args.names or None))
    return 0


def _cmd_explain(args) -> int:
    print(explain(args.value, args.format, args.rounding, seed=args.seed))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("formats", help="table of the preset formats",
                       description="Print bits, layout, max, smallest normal/subnormal and eps of formats.")
    p.add_argument("names", nargs="*", help="formats to show (default: all presets)")
    p.set_defaults(func=_cmd_formats)
    e = sub.add_parser("explain", help="show one value rounded to a format, bit by bit",
                       description="Show the fields, neighbours, result and error in ulps of rounding VALUE.")
    e.add_argument("value", metavar="VALUE", help="a number: decimal, hex float (0x1.8p-3), inf or nan")
    e.add_argument("--format", "-f", required=True, help="format name, e.g. fp16, bf16, fp8_e4m3fn, int8")
    e.add_argument("--rounding", "-r", default="nearest_even",
                   help="rounding mode: " + ", ".join(m.label for m in Rounding))
    e.add_argument("--seed", type=int, default=0, help="seed for stochastic rounding (default 0)")
    e.set_defaults(func=_cmd_explain)


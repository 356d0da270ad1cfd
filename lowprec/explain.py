"""``lowprec formats`` and ``lowprec explain``: the format table and one value, bit by bit.

``explain`` is what a teacher shows a class: the exact value that was typed,
its two neighbours in the format, which one each rounding picks and why, the
sign/exponent/mantissa fields of the result and its error in ulps. At the
edges it says what the format does instead: overflow to Inf or NaN,
saturation or wrap-around beyond the largest value (with no error in ulps,
since that error is not a rounding error), NaN and Inf in formats that lack
them, the sign of zero, and which bit patterns are NaN. Every value comes
from the public :func:`lowprec.round_to`, :func:`lowprec.encode` and
:func:`lowprec.decode`.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .core import decode, encode, round_to
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
    """The bit fields of ``bits`` and what they mean, read back through :func:`lowprec.decode`."""
    if isinstance(fmt, FixedFormat):
        return f"{bits:0{fmt.bits}b} (two's complement)" if fmt.signed else f"{bits:0{fmt.bits}b}"
    k, m = fmt.exp_bits, fmt.man_bits
    e = (bits >> m) & ((1 << k) - 1)
    mant = bits & ((1 << m) - 1)
    mant_s = f"{mant:0{m}b}" if m else "-"
    text = f"exponent {e:0{k}b} | mantissa {mant_s}"
    text = f"sign {bits >> (k + m)} | " + text if fmt.signed else "no sign bit | " + text
    value = float(decode(bits, fmt))
    normal = f"1.{mant_s} x 2^{e - fmt.bias}" if m else f"2^{e - fmt.bias}"
    if math.isnan(value):
        if fmt.nan == "ieee":
            why = "exponent all ones, mantissa nonzero"
        elif fmt.nan == "negative_zero":
            why = f"the negative-zero pattern, which {fmt.name} spends on NaN"
        else:
            why = f"exponent and mantissa all ones: {fmt.name} spends this pattern on NaN, not on {normal}"
        text += f"   (NaN: {why})"
    elif math.isinf(value):
        text += "   (Inf: exponent all ones, mantissa zero)"
    elif e == 0 and fmt.has_zero:
        text += f"   (subnormal: 0.{mant_s} x 2^{fmt.emin})" if mant else "   (zero)"
    else:
        text += f"   ({e} - bias {fmt.bias} = {e - fmt.bias}; {normal})"
    return text


def _hex(bits: int, fmt) -> str:
    return f"0x{bits:0{(fmt.bits + 3) // 4}X}"


def _edges(fmt):
    """(lowest, highest) finite value of ``fmt`` and the spacing of its values next to each."""
    if isinstance(fmt, FixedFormat):
        return fmt.min, fmt.max, fmt.eps
    step = 2.0 ** (fmt.emax - fmt.man_bits)
    return (-fmt.max if fmt.signed else 0.0), fmt.max, step


_MAX_DIGITS = 80  # exact decimals longer than this (in characters) are shown cut to 21 digits


def _value_line(value, x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return f"value        {x}"
    if x == 0:
        return "value        -0.0 (negative zero, exact)" if math.copysign(1.0, x) < 0 else "value        0 (exact)"
    digits = _exact_decimal(Fraction(x))
    shown = value.strip() if isinstance(value, str) else repr(x)
    significant = len(digits.lstrip("-").replace(".", "").lstrip("0"))
    if len(digits) > _MAX_DIGITS:
        return (f"value        {shown} ~ {_scientific(Fraction(x))} (as float64; the exact decimal has "
                f"{significant} significant digits)")
    return f"value        {shown} = {digits} (as float64)" if digits != shown else f"value        {digits} (exact)"


def _scientific(q: Fraction, n: int = 21) -> str:
    """The first ``n`` significant digits of ``q`` (truncated, marked ``...``) in scientific notation."""
    sign = "-" if q < 0 else ""
    q = abs(q)
    e = len(str(q.numerator)) - len(str(q.denominator))
    while q >= Fraction(10) ** (e + 1):
        e += 1
    while q < Fraction(10) ** e:
        e -= 1
    lead = q / Fraction(10) ** (e - n + 1)
    d = str(lead.numerator // lead.denominator)
    return f"{sign}{d[0]}.{d[1:]}...e{e:+d}"


def _special(x: float, fmt, mode, result: float) -> list:
    """Lines for NaN, Inf and zero inputs: what the format does with them."""
    name = fmt.name
    if math.isnan(x):
        if fmt.has_nan:
            return [f"special      NaN in gives NaN out ({name} has a NaN encoding)"]
        return [(f"special      {name} has no NaN: round_to passes the NaN through in its float result, but no "
                 f"{name} bit pattern holds it (encode refuses it)")]
    if math.isinf(x):
        sign = "+" if x > 0 else "-"
        if fmt.has_inf and math.isinf(result):
            return [f"special      {sign}Inf in gives {sign}Inf out ({name} has Inf)"]
        if isinstance(fmt, FloatFormat) and not fmt.signed and x < 0:
            return [f"special      {name} has no sign bit: a negative value, -Inf included, gives NaN"]
        why = ("overflow gives NaN" if math.isnan(result) else "it saturates" if fmt.saturate else
               "an infinity cannot wrap: it saturates")
        return [f"special      {name} has no Inf: {sign}Inf becomes {_num(result)} ({why})"]
    # zero
    negative = math.copysign(1.0, x) < 0
    if math.isnan(result):
        return [f"special      {name} has no zero: 0 gives NaN"]
    if not negative or math.copysign(1.0, result) < 0:
        return [f"neighbours   x is exactly representable: {_num(result)}"]
    if isinstance(fmt, FixedFormat):
        why = "an integer code has one zero"
    elif not fmt.signed:
        why = "it has no sign bit"
    elif fmt.nan == "negative_zero":
        why = "its negative-zero pattern is NaN"
    else:
        why = "it has no signed zero"
    return [f"special      {name} has no negative zero ({why}): -0 becomes +0"]


def explain(value, fmt, rounding="nearest_even", seed: int = 0) -> str:
    """A plain-text explanation of rounding ``value`` (float or str) to ``fmt``.

    Covers the range's edges: a value beyond the largest finite value is
    said to overflow (to Inf or NaN, as the format does), saturate or wrap,
    and its error is then not given in ulps; NaN, Inf and signed zero say
    what the format does with them; NaN encodings are named in the fields.

    Examples
    --------
    >>> print(explain("0.1", "bf16").splitlines()[0])
    value        0.1 = 0.1000000000000000055511151231257827021181583404541015625 (as float64)
    >>> print(explain("130.7", "int8").splitlines()[2])
    range        x is above the largest value 127 of int8
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
    lines = [_value_line(value, x), f"format       {fmt!r}"]
    result = float(round_to(x, fmt, mode, seed=seed))
    name = fmt.name
    if not math.isfinite(x) or x == 0:
        lines += _special(x, fmt, mode, result)
        not_rounding = "x is not finite"
    else:
        more, not_rounding = _neighbours(x, fmt, mode, seed, result)
        lines += more
    lines.append(f"rounding     {mode.label} -> {_num(result)}")
    if not math.isnan(result) or fmt.has_nan:
        try:
            bits = int(encode(result, fmt))
            lines.append(f"bits         {_hex(bits, fmt)} = {_fields(bits, fmt)}")
        except ValueError:
            pass
    if math.isfinite(result) and math.isfinite(x) and x != 0:
        err = Fraction(result) - Fraction(x)
        rel = f", relative {float(abs(err) / abs(Fraction(x))):.3g}"
        if not_rounding is None:
            if isinstance(fmt, FixedFormat):
                ulp = Fraction(fmt.eps)
            else:
                ax = abs(Fraction(result)) if result != 0 else abs(Fraction(x))
                e = math.floor(math.log2(ax)) if ax else fmt.emin
                ulp = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits)
            u = f" (unit roundoff u = {_pow2(fmt.unit_roundoff)})" if isinstance(fmt, FloatFormat) else ""
            lines.append(f"error        {float(err):+.6g} = {float(err / ulp):+.4g} ulp{rel}{u}")
        else:
            lines.append(f"error        {float(err):+.6g}{rel}: not a rounding error ({not_rounding}), "
                         "so no bound in ulps applies")
    elif math.isfinite(x) and x != 0:
        lines.append(f"error        the result is {result}: x is outside what {name} can hold")
    return "\n".join(lines)


def _neighbours(x: float, fmt, mode, seed, result: float):
    """Lines on where a finite nonzero ``x`` lies in ``fmt``, and why its error is not a rounding error.

    Returns ``(lines, not_rounding)``; ``not_rounding`` is None when the error is a rounding
    error (shown in ulps), else the reason it is not (clamped, wrapped, flushed, out of range).
    """
    name = fmt.name
    lines = []
    if isinstance(fmt, FloatFormat) and not fmt.signed and x < 0:
        return [f"range        x is negative and {name} has no sign bit: every rounding gives NaN"], "x < 0"
    low, high, step = _edges(fmt)
    edge = beyond = None
    if low <= x <= high:
        lo = float(round_to(x, fmt, Rounding.DOWN))
        hi = float(round_to(x, fmt, Rounding.UP))
    else:
        # beyond the range: the neighbours are the edge and the value one ulp past it (not in fmt)
        edge, beyond = (high, high + step) if x > high else (low, low - step)
        finite = "finite " if isinstance(fmt, FloatFormat) else ""
        where = (f"above the largest {finite}value {_num(high)}" if x > high else
                 f"below the {'lowest' if low < 0 else 'smallest'} {finite}value {_num(low)}")
        lines.append(f"range        x is {where} of {name}")
        lo, hi = (edge, beyond) if x > high else (beyond, edge)
        if abs(x) >= abs(beyond) or (x > 0) != (beyond > 0):
            lo = hi = None
    not_rounding = None
    if lo is not None and lo == hi:
        if Fraction(x) == Fraction(lo):
            lines.append(f"neighbours   x is exactly representable: {_num(lo)}")
        elif not fmt.has_zero:
            lines.append(f"neighbours   every rounding gives {_pow2(lo)}: x lies below the smallest value "
                         f"{_pow2(fmt.tiny)} of {name}, which has no zero")
            not_rounding = f"{name} has no value below {_pow2(fmt.tiny)}"
        else:
            lines.append(f"neighbours   every rounding gives {_num(lo)}: x lies below the smallest normal "
                         f"value {_pow2(fmt.tiny)} of {name}, which has no subnormals (flushed to zero)")
            not_rounding = f"{name} flushes results below {_pow2(fmt.tiny)} to zero"
    elif lo is not None:
        note = ""
        if beyond is not None:
            note = f" ({_num(beyond)} = {_num(edge)} {'+' if beyond > edge else '-'} ulp is not a value of {name})"
        lines.append(f"neighbours   {_num(lo)} < x < {_num(hi)}{note}")
        gap = Fraction(hi) - Fraction(lo)
        pos = (Fraction(x) - Fraction(lo)) / gap
        lines.append(f"position     x lies {float(pos):.6g} of the way from {_num(lo)} to {_num(hi)} "
                     f"(gap = ulp = {_pow2(float(gap))})")
        if mode is Rounding.STOCHASTIC:
            lines.append(f"stochastic   P(round to {_num(hi)}) = {float(pos):.6g}, "
                         f"P(round to {_num(lo)}) = {1 - float(pos):.6g}; seed {seed} drew one")
    if beyond is None:
        return lines, not_rounding
    pick = _picks_beyond(x, edge, beyond, mode) if lo is not None else True
    lines.append(_beyond(x, fmt, mode, result, edge, beyond, lo is not None, pick))
    # the error is a rounding error only where x was rounded to the edge, not clamped, wrapped or overflowed
    if result != edge:
        not_rounding = "the rounded value wrapped around" if math.isfinite(result) else "overflow"
    elif pick is True and fmt.saturate:
        not_rounding = ("x was clamped to the range" if lo is None else
                        f"the rounding picked {_num(beyond)} and {name} saturated it")
    elif pick is True:
        not_rounding = f"x lies beyond the largest finite value {_num(edge)}"
    return lines, not_rounding


def _picks_beyond(x: float, edge: float, beyond: float, mode):
    """Whether rounding ``x`` (strictly between ``edge`` and ``beyond``) with an unbounded range picks ``beyond``.

    ``beyond`` is the farther from zero of the two. None for stochastic rounding (a draw decides).
    """
    pos = abs(Fraction(x) - Fraction(edge)) / abs(Fraction(beyond) - Fraction(edge))
    k = Fraction(edge) / (Fraction(beyond) - Fraction(edge))  # the edge's integer significand: its parity
    edge_even = k.numerator % 2 == 0
    if mode is Rounding.NEAREST_EVEN:
        return pos > Fraction(1, 2) or (pos == Fraction(1, 2) and not edge_even)
    if mode is Rounding.NEAREST_AWAY:
        return pos >= Fraction(1, 2)
    if mode is Rounding.TOWARD_ZERO:
        return False
    if mode is Rounding.UP:
        return x > 0
    if mode is Rounding.DOWN:
        return x < 0
    if mode is Rounding.ODD:
        return edge_even
    return None


def _beyond(x, fmt, mode, result, edge, beyond, in_gap, pick) -> str:
    """What the format and the mode do with a value outside the finite range."""
    name = fmt.name
    if math.isinf(result):
        return f"overflow     x rounds beyond {_num(edge)}: {name} overflows to {_num(result)}"
    if math.isnan(result):
        return f"overflow     x rounds beyond {_num(edge)} and {name} has no Inf: the result is NaN"
    if result == edge:
        if in_gap and pick is False:
            if mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY):
                mid = (Fraction(edge) + Fraction(beyond)) / 2
                return (f"overflow     none: x is nearer to {_num(edge)} than to {_num(beyond)}; nearest rounding "
                        f"leaves the range from {_num(float(mid))} on")
            return f"overflow     none: {mode.label} rounds x to {_num(edge)}, toward zero"
        if in_gap and pick is None:
            return (f"{'saturation' if fmt.saturate else 'overflow  '}   the draw picked {_num(edge)}"
                    + (f" or picked {_num(beyond)} and {name} saturated it to {_num(edge)}" if fmt.saturate else ""))
        if fmt.saturate:
            if in_gap:
                return (f"saturation   {mode.label} picks {_num(beyond)}, which {name} cannot hold: it saturates "
                        f"to {_num(edge)}")
            return f"saturation   {name} saturates: x is clamped to {_num(edge)}"
        return (f"overflow     none: {mode.label} does not round away from zero here, so x gives the "
                f"largest finite value {_num(edge)}, not Inf")
    # a wrapping fixed-point format: the rounded integer is taken modulo 2**bits
    modulus = Fraction(2) ** fmt.bits * Fraction(fmt.eps)
    n = round((Fraction(x) - Fraction(result)) / modulus)
    unwrapped = Fraction(result) + n * modulus
    return (f"overflow     {name} wraps: x rounds to {_num(float(unwrapped))}, which is taken modulo "
            f"{_num(float(modulus))} into {name}'s range, giving {_num(result)}")


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


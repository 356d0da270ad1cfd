"""Every registered implementation of an arithmetic rule (lowprec/kernels/rules.py, REGISTRY) against an
exact reference.

One parametrised test runs each implementation on its rule's edge data (the same data for every
implementation of a rule, each keeping the inputs its precondition admits) and compares the result,
bit for bit, with ``fractions.Fraction`` arithmetic (tests/reference.py's ``round_fraction``) and, where
the rule rounds a float64 value, with the scalar definition ``lowprec.round_to``. The data reach exact
ties and values next to them, subnormals and underflow to (signed) zero, the overflow threshold, Inf,
NaN, -0, exact cancellation, and for the stochastic rule random bits of counters around 2**32 and
2**33. An implementation registered in rules.REGISTRY is tested here without further code; a rule
without a reference here fails.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from reference import neighbours, random_bits_ref, round_fraction

from lowprec import round_to
from lowprec.formats import FixedFormat, FloatFormat, get_format
from lowprec.kernels import rules

FORMATS = [get_format("fp16"), get_format("bf16"), get_format("fp8_e5m2")]
FP64 = FloatFormat(exp_bits=11, man_bits=52)  # round to odd at 53 bits
KEYS = [(0x1234, 0xBEEF), (0xFFFFFFFF, 0)]
COUNTERS = [0, 1, 2 ** 32 - 2, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 33 - 1, 2 ** 33, 2 ** 40 + 12345,
            2 ** 62 + 7, 77, 2 ** 31]


def bits(x) -> int:
    return int(np.float64(x).view(np.int64))


def same(a, b) -> bool:
    """Equal bits (signed zeros differ), or both NaN."""
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or bits(a) == bits(b)


def with_negatives(xs):
    out = []
    for x in xs:
        for v in (x, -x):
            if not any(same(v, w) for w in out):
                out.append(v)
    return out


# ----------------------------------------------------------------------------
# edge data
# ----------------------------------------------------------------------------
def format_values(fmt):
    """Values of the format: zeros, subnormals, the normal boundary, around 1, the largest, both signs."""
    m, emin, emax = fmt.man_bits, fmt.emin, fmt.emax
    q = 2.0 ** (emin - m)
    top = (2.0 - 2.0 ** -m) * 2.0 ** emax
    xs = [0.0, q, 2 * q, 3 * q, 2.0 ** emin - q, 2.0 ** emin, 2.0 ** emin + q, 1.0, 1.0 + 2.0 ** -m, 1.5,
          2.0 - 2.0 ** -m, 3.0, 2.0 ** emax, top - 2.0 ** (emax - m), top, 2.0 ** (emax - 1) * 1.25]
    return with_negatives(xs)


def _pow2(k: int) -> float:
    return math.inf if k > 1023 else 2.0 ** k


def round_inputs(fmt):
    """float64 values to round onto the format: its values, the exact ties between neighbours and values
    next to them, around the overflow threshold and the smallest subnormal, Inf, NaN, -0."""
    m, emin, emax = fmt.man_bits, fmt.emin, fmt.emax
    q = 2.0 ** (emin - m)
    top = (2.0 - 2.0 ** -m) * 2.0 ** emax
    thr = 2.0 ** emax * (2.0 - 2.0 ** -(m + 1))  # the overflow threshold
    xs = [x for x in format_values(fmt) if x >= 0]
    for v in list(xs):
        if v < top:
            mid = v + 2.0 ** (max(math.frexp(v)[1] - 1, emin) - m) / 2 if v else q / 2  # the tie above v
            xs += [mid, math.nextafter(mid, 0.0), math.nextafter(mid, math.inf)]
    xs += [q / 2, q / 4, 3 * q / 2, 5 * q / 2, q / 2 + q / 8, thr, math.nextafter(thr, 0.0),
           math.nextafter(thr, math.inf), top + 2.0 ** (emax - m) / 4, _pow2(emax + 1), _pow2(emax + 5), 1e300, 5e-324, 2.0 ** -1022,
           1.0 + 2.0 ** -(m + 1), 1.0 + 3 * 2.0 ** -(m + 2), 1.0 + 2.0 ** -(m + 1) + 2.0 ** -40, 0.1, 1 / 3,
           math.inf, math.nan]
    return with_negatives(xs)


def addends(fmt):
    """Second operands of a sum with a format value: format values (sums that cancel exactly and that
    overflow), fractions of a quantum that make ties with the values above, and values with more bits."""
    m, emin, emax = fmt.man_bits, fmt.emin, fmt.emax
    q = 2.0 ** (emin - m)
    xs = format_values(fmt) + [2.0 ** -(m + 1), 2.0 ** -(m + 2), 3 * 2.0 ** -(m + 2), q / 2, q / 4, 3 * q / 2,
                               2.0 ** (emax - m - 1), 2.0 ** (emax - m - 2), 1.0 + 2.0 ** -(m + 3),
                               0.1, 2.0 ** -30, math.inf]
    return with_negatives(xs)


def float64_operands():
    xs = [0.0, 1.0, 1.5, 3.0, 0.1, 1 / 3, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -53, 2.0 ** -54,
          3 * 2.0 ** -54, 1.0 + 2.0 ** -52, 1.0 + 2.0 ** -23, 5e-324, 3 * 5e-324, 2.0 ** -1022, 2.0 ** -149,
          2.0 ** -126, 2.0 ** 60 + 1.0, 1e300, 2.0 ** 1023, float(np.finfo(np.float64).max), 65504.0,
          float(np.finfo(np.float32).max), 2.0 ** 127, 2.0 ** 500, 2.0 ** -500, 1e-320, math.inf, math.nan]
    return with_negatives(xs)


def pairs(xs, ys):
    return [(x, y) for x in xs for y in ys]


# ----------------------------------------------------------------------------
# the rules' references
# ----------------------------------------------------------------------------
def _ieee_zero(x, y):
    """The IEEE sign of an exact zero sum under nearest rounding: -0 only for -0 + -0."""
    return float(np.float64(x) + np.float64(y))


def check_two_sum(args, got):
    x, y, prec = args
    s, e = got
    dt = np.float32 if prec == "float32" else np.float64
    return same(s, float(dt(x) + dt(y))) and Fraction(s) + Fraction(e) == Fraction(x) + Fraction(y)


def check_two_prod(args, got):
    a, b = args
    p, e = got
    return same(p, float(np.float64(a) * np.float64(b))) and Fraction(p) + Fraction(e) == Fraction(a) * Fraction(b)


def ref_odd_sum(x, y):
    exact = Fraction(x) + Fraction(y)
    if exact == 0:
        return _ieee_zero(x, y)
    return round_fraction(exact, FP64, "odd")


def ref_nearest_even(x, fmt):
    want = round_fraction(x, fmt, "nearest_even")
    scalar_def = float(np.asarray(round_to(np.array([x], dtype=np.float64), fmt), dtype=np.float64)[0])
    assert same(want, scalar_def), ("reference and lowprec.round_to differ", x, fmt.name, want, scalar_def)
    return want


#: saturating formats for round_grid_f32: the block formats' elements and UE4M3 scales' neighbours, and fp16
SATURATING = [get_format(n).replace(saturate=True, name=n) for n in
              ("fp8_e4m3fn", "fp8_e5m2", "fp6_e3m2fn", "fp6_e2m3fn", "fp4_e2m1fn", "fp16")]


def saturating_inputs(fmt):
    """round_inputs and the float32 values either side of each (a tie's float32 neighbours), up to 2**120."""
    xs = round_inputs(fmt)
    with np.errstate(over="ignore"):
        for x in list(xs):
            if math.isfinite(x) and abs(x) < 2.0 ** 120:
                f = np.float32(x)
                xs += [float(np.nextafter(f, np.float32(-np.inf))), float(np.nextafter(f, np.float32(np.inf)))]
    return xs + [2.0 ** 120, -3.0 * 2.0 ** 100, 2.0 ** -149, -(2.0 ** -130)]


def ref_nearest_even_saturate(x, fmt):
    want = round_fraction(x, fmt, "nearest_even")
    scalar_def = float(np.asarray(round_to(np.array([x], dtype=np.float64), fmt), dtype=np.float64)[0])
    assert same(want, scalar_def), ("reference and lowprec.round_to differ", x, fmt.name, want, scalar_def)
    return want


#: every kind of float format round_to handles: IEEE (Inf), NaN-only, fnuz (no -0), no NaN, saturating,
#: flush-to-zero, a shifted bias, float32's and float64's exponent ranges, m from 1 to 22 and 51
ALL_KINDS = ([get_format(n) for n in ("fp16", "bf16", "tf32", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz",
                                      "fp6_e3m2fn", "fp6_e2m3fn", "fp4_e2m1fn")]
             + [get_format(n).replace(saturate=True, name=n + "-sat") for n in ("fp16", "fp8_e4m3fn", "bf16")]
             + [FloatFormat(exp_bits=5, man_bits=3, has_subnormals=False, name="e5m3-ftz"),
                FloatFormat(exp_bits=3, man_bits=2, bias=1, has_inf=False, nan="none", name="e3m2-bias1"),
                FloatFormat(exp_bits=8, man_bits=22, name="e8m22"), FloatFormat(exp_bits=8, man_bits=1, name="e8m1"),
                get_format("fp32"), FloatFormat(exp_bits=11, man_bits=51, name="e11m51"),
                FloatFormat(exp_bits=11, man_bits=1, name="e11m1")])


def ref_round_nearest_even(x, fmt):
    """The Fraction reference's nearest-even rounding of x onto fmt (float or fixed point), checked against
    lowprec.round_to of float64 x (and of float32 x where x and fmt fit float32)."""
    want = round_fraction(x, fmt, "nearest_even")
    for dtype in (np.float32, np.float64):
        if dtype == np.float64 or (rules._is_f32(x) and fmt.fits_in(np.float32)):
            scalar_def = float(np.asarray(round_to(np.array([x], dtype=dtype), fmt), dtype=np.float64)[0])
            assert same(want, scalar_def), ("reference and lowprec.round_to differ", x, fmt.name, dtype, want,
                                            scalar_def)
    return want


#: saturating fixed-point formats: signed and unsigned, integers, fractions, a quantum above 1, the widest the
#: float32 step takes (22 bits) and wider (float64's only), frac_bits at both ends of FixedFormat's range
FIXED_KINDS = [get_format(n) for n in ("int8", "uint8", "int4", "int16", "int32")] + [
    FixedFormat(16, 8), FixedFormat(4, -3), FixedFormat(22, 0), FixedFormat(22, 126, signed=False),
    FixedFormat(12, -64), FixedFormat(1, 0, signed=False), FixedFormat(2, 1), FixedFormat(23, 0),
    FixedFormat(32, 20, signed=False)]


def fixed_inputs(fmt):
    """Values to round onto a fixed-point format: ties k + 1/2 quanta and their float32 and float64 neighbours,
    quarters, for k around 0 and both ends, values far beyond the ends, tiny values, Inf, NaN and zeros."""
    q = 2.0 ** -fmt.frac_bits
    ks = {0, 1, 2, 3, fmt.kmax - 2, fmt.kmax - 1, fmt.kmax, fmt.kmin, fmt.kmin + 1, fmt.kmin + 2, -1, -2, -3}
    xs = []
    for k in sorted(ks):
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = (k + t) * q
            xs.append(x)
            if t == 0.5:
                f = np.float32(x)
                xs += [math.nextafter(x, 0.0), math.nextafter(x, math.inf), math.nextafter(x, -math.inf),
                       float(np.nextafter(f, np.float32(0))), float(np.nextafter(f, np.float32(np.inf))),
                       float(np.nextafter(f, np.float32(-np.inf)))]
    xs += [(fmt.kmax + 1.5) * q, (fmt.kmin - 1.5) * q, 1e300, -1e300, 3e38, 2.0 ** 120, q * 2.0 ** -30, 5e-324,
           2.0 ** -149, 0.1, 1 / 3, math.inf, -math.inf, math.nan, 0.0, -0.0]
    return with_negatives(xs)


def _stochastic_round_data():
    """(x, fmt, R): ALL_KINDS' inputs with the random bits at the boundary of each x (the largest R that rounds away
    and the next), and at 0, 2**31 and 2**32 - 1."""
    out = []
    for fmt in ALL_KINDS:
        for x in saturating_inputs(fmt):
            Rs = {0, 2 ** 31, 2 ** 32 - 1}
            if math.isfinite(x) and x != 0:
                lo, _, q, _ = neighbours(Fraction(x), fmt)
                b = math.floor((abs(Fraction(x)) - lo) / q * 2 ** 32)  # away iff R < b
                Rs |= {r for r in (b - 1, b, b + 1) if 0 <= r < 2 ** 32}
            out += [(x, fmt, R) for R in sorted(Rs)]
    return out


def ref_round_stochastic(x, fmt, R):
    return round_fraction(x, fmt, "stochastic", u=Fraction(R, 2 ** 32), rbits=32)


def _exact_sum(s, t):
    """The exact s + t (a Fraction), or the float result where it is not finite or is an exact zero."""
    if not (math.isfinite(s) and math.isfinite(t)):
        return float(np.float64(s) + np.float64(t))
    exact = Fraction(s) + Fraction(t)
    return _ieee_zero(s, t) if exact == 0 else exact


def ref_sum_nearest_even(s, t, fmt):
    x = _exact_sum(s, t)
    want = round_fraction(x, fmt, "nearest_even")
    if isinstance(x, Fraction) and Fraction(float(x)) == x:  # a float64: the scalar definition applies
        assert same(want, ref_nearest_even(float(x), fmt))
    return want


def ref_sum_stochastic(s, t, fmt, k0, k1, c):
    R = random_bits_ref(k0, k1, c, 32)
    return round_fraction(_exact_sum(s, t), fmt, "stochastic", u=Fraction(R, 2 ** 32), rbits=32)


def _value_check(ref):
    return lambda args, got: same(got, ref(*args))


def _sum_data():
    return [(s, t, fmt) for fmt in FORMATS for s, t in pairs(format_values(fmt), addends(fmt))]


def _stochastic_data():
    """Format values and addends under several counters, and sums whose 32 bits below the kept ones are
    W = R or R + 1 (R the random bits of the counter; also with R's low 8 bits cleared, for float32 lanes):
    the two sides of the decision "away from zero iff R < W"."""
    out = []
    for fmt in FORMATS:
        for i, (s, t) in enumerate(pairs(format_values(fmt), addends(fmt))):
            for j in range(3):
                k0, k1 = KEYS[(i + j) % len(KEYS)]
                out.append((s, t, fmt, k0, k1, COUNTERS[(i + 5 * j) % len(COUNTERS)]))
        m, emin = fmt.man_bits, fmt.emin
        for k0, k1 in KEYS:
            for c in COUNTERS:
                R = random_bits_ref(k0, k1, c, 32)
                for s in (1.0, -1.5, 2.0 ** emin, 2.0 ** (emin - m), -3 * 2.0 ** (emin - m)):
                    q = 2.0 ** (max(math.frexp(s)[1] - 1, emin) - m)  # the quantum at s
                    for W in (R, R + 1, (R >> 8) << 8, ((R >> 8) + 1) << 8):
                        out.append((s, math.copysign(W * q / 2 ** 32, s), fmt, k0, k1, c))
    return out


#: rule -> (edge data: the rule's argument tuples, check(args, result) -> bool)
RULE_TESTS = {
    "two_sum": (lambda: [(x, y, prec) for prec in ("float64", "float32")
                         for x, y in pairs(float64_operands(), float64_operands())], check_two_sum),
    "two_prod": (lambda: pairs(float64_operands(), float64_operands()), check_two_prod),
    "odd_sum": (lambda: pairs(float64_operands(), float64_operands()), _value_check(ref_odd_sum)),
    "nearest_even": (lambda: [(x, fmt) for fmt in FORMATS for x in round_inputs(fmt)], _value_check(ref_nearest_even)),
    "nearest_even_saturate": (lambda: [(x, fmt) for fmt in SATURATING for x in saturating_inputs(fmt)],
                              _value_check(ref_nearest_even_saturate)),
    "round_nearest_even": (lambda: [(x, fmt) for fmt in ALL_KINDS for x in saturating_inputs(fmt)],
                           _value_check(ref_round_nearest_even)),
    "round_stochastic": (_stochastic_round_data, _value_check(ref_round_stochastic)),
    "round_fixed_nearest_even": (lambda: [(x, fmt) for fmt in FIXED_KINDS for x in fixed_inputs(fmt)],
                                 _value_check(ref_round_nearest_even)),
    "sum_nearest_even": (_sum_data, _value_check(ref_sum_nearest_even)),
    "sum_stochastic": (_stochastic_data, _value_check(ref_sum_stochastic)),
    "random_bits": (lambda: [(k0, k1, c) for k0, k1 in KEYS for c in COUNTERS + [c + 2 ** 32 for c in COUNTERS[:4]]],
                    lambda args, got: got == random_bits_ref(*args, 32)),
}

IMPLEMENTATIONS = [(rule, impl) for rule, impls in rules.REGISTRY.items() for impl in impls]


def test_every_rule_has_a_reference_and_an_implementation():
    assert set(rules.REGISTRY) == set(rules.RULES) == set(RULE_TESTS)
    assert all(rules.REGISTRY[r] for r in rules.REGISTRY)


@pytest.mark.parametrize("rule,impl", IMPLEMENTATIONS, ids=[f"{r}-{i.name}" for r, i in IMPLEMENTATIONS])
def test_implementation_equals_exact_reference(rule, impl):
    data, check = RULE_TESTS[rule]
    n = 0
    with np.errstate(all="ignore"):  # data overflow float32 on purpose
        for args in data():
            if impl.pre is not None and not impl.pre(*args):
                continue
            got = impl.call(*args)
            assert check(args, got), (impl.name, args, got)
            n += 1
    assert n >= 20, (impl.name, n)  # the precondition leaves edge cases to check

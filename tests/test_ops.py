"""Elementwise ops in a format against exact references (fractions.Fraction, math.isqrt)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowprec.ops as ops
from lowprec import FloatFormat, Rounding, get_format, round_to
from lowprec.rng import resolve_seed

from reference import random_bits_array

OVERFLOW = object()


def ref_round_real(fl, exact, negative, fmt, mode, R=None, r=None):
    """Round |v| (given by fl(k) = floor(|v| * 2**k) and exact(k): |v| * 2**k is an integer) once.

    Written from NUMERICS.md section 2; returns a Fraction or OVERFLOW."""
    if fl(1100) == 0:
        return Fraction(0)
    e = 0
    while fl(-e) >= 2:  # 2**e <= |v| < 2**(e+1)
        e += 1
    while fl(-e) == 0:
        e -= 1
    e = max(e, fmt.emin)
    k = fmt.man_bits - e  # quantum 2**-k
    n = fl(k)
    if not exact(k):
        if mode is Rounding.NEAREST_EVEN:
            half = fl(k + 1) - 2 * n
            n += half == 1 and (not exact(k + 1) or n % 2 == 1)
        elif mode is Rounding.UP:
            n += not negative
        elif mode is Rounding.DOWN:
            n += negative
        elif mode is Rounding.STOCHASTIC:
            n += R < fl(k + r) - n * 2 ** r
        else:
            assert mode is Rounding.TOWARD_ZERO
    v = Fraction(n) / Fraction(2) ** k
    if v > fmt.max_exact:
        return OVERFLOW
    return -v if negative else v


def ref_round(q: Fraction, fmt, mode, R=None, r=None):
    a = abs(q)

    def fl(k):
        return math.floor(a * Fraction(2) ** k)

    def exact(k):
        return (a * Fraction(2) ** k).denominator == 1

    return ref_round_real(fl, exact, q < 0, fmt, mode, R, r)


def ref_round_sqrt(q: Fraction, fmt, mode, R=None, r=None):
    def fl(k):  # floor(sqrt(q) * 2**k) = isqrt(floor(q * 4**k))
        return math.isqrt(math.floor(q * Fraction(4) ** k))

    def exact(k):
        t = q * Fraction(4) ** k
        return t.denominator == 1 and math.isqrt(t.numerator) ** 2 == t.numerator

    return ref_round_real(fl, exact, False, fmt, mode, R, r)


def _exact(op, x, y, z):
    X, Y, Z = Fraction(float(x)), Fraction(float(y)), Fraction(float(z))
    return {"add": X + Y, "sub": X - Y, "mul": X * Y, "div": X / Y if Y else None, "fma": X * Y + Z}[op]


def _operands(rng, n):
    """float32 triples with varied exponents plus constructed near-ties and cancellations."""
    e = rng.integers(-30, 30, size=(3, n))
    x, y, z = (rng.standard_normal((3, n)) * 2.0 ** e).astype(np.float32)
    m = n // 3
    # cancellation: z is minus the float32-rounded product, plus a nudge
    z[:m] = -(x[:m].astype(np.float64) * y[:m]).astype(np.float32) * np.float32(1 + 2.0 ** -20 * rng.integers(-2, 3))
    # near ties for fp16: y = x * (1 + 2**-11 + tiny)
    x[m:2 * m] = np.float32(1.5) * 2.0 ** rng.integers(-5, 5, m)
    y[m:2 * m] = (np.float32(1 + 2.0 ** -11) + np.float32(2.0 ** -23) * rng.integers(-1, 2, m)).astype(np.float32)
    return x, y, z


FORMATS = [get_format("fp16"), get_format("bf16"), get_format("fp32"), get_format("fp8_e4m3fn"),
           FloatFormat(8, 40, name="e8m40")]
MODES = [Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO, Rounding.UP, Rounding.DOWN, Rounding.STOCHASTIC]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "sqrt", "fma"])
def test_ops_round_the_exact_result_once(op, fmt):
    rng = np.random.default_rng(sum(map(ord, op + fmt.name)))
    n = 60
    x, y, z = _operands(rng, n)
    if op == "sqrt":
        x = np.abs(x)
    for mode in MODES:
        fn = getattr(ops, op)
        args = (x,) if op == "sqrt" else (x, y, z) if op == "fma" else (x, y)
        seed = 99
        if not fmt.fits_in(np.float32):
            args = tuple(a.astype(np.float64) for a in args)
        got = fn(*args, fmt, mode, seed=seed, backend="cpu")
        rbits = ops.max_random_bits(fmt) if ops.max_random_bits(fmt) < 32 else 32
        R = None
        if mode is Rounding.STOCHASTIC:
            k0, k1, off = resolve_seed(seed, n)
            R = random_bits_array(k0, k1, off, n, rbits)
        for i in range(n):
            Ri = int(R[i]) if R is not None else None
            if op == "sqrt":
                ref = ref_round_sqrt(Fraction(float(x[i])), fmt, mode, Ri, rbits)
            else:
                q = _exact(op, x[i], y[i], z[i])
                if q is None:
                    continue
                ref = ref_round(q, fmt, mode, Ri, rbits)
            if ref is OVERFLOW:
                assert not np.isfinite(got[i]) or abs(float(got[i])) == fmt.max, (op, mode, i)
            else:
                assert Fraction(float(got[i])) == ref, (op, mode, i, x[i], y[i], z[i])


@settings(max_examples=150)
@given(st.floats(-1e4, 1e4, width=32), st.floats(-1e4, 1e4, width=32), st.floats(-1e8, 1e8, width=32))
def test_fma_fp16_nearest_hypothesis(x, y, z):
    got = ops.fma(np.float32(x), np.float32(y), np.float32(z), "fp16")
    ref = ref_round(Fraction(x) * Fraction(y) + Fraction(z), get_format("fp16"), Rounding.NEAREST_EVEN)
    if ref is OVERFLOW:
        assert np.isinf(got)
    else:
        assert Fraction(float(got)) == ref


def test_fma_is_not_float64_then_round():
    # exact a*b + c = T - 2**-60 with T = 1 + 2**-23 + 2**-24, a tie of fp32 whose even side is up:
    # float64 lands on T and fp32 then rounds up; the exact value is below the tie and rounds down.
    a = b = np.float64(1 + 2.0 ** -30)
    c = np.float64(2.0 ** -23 + 2.0 ** -24 - 2.0 ** -29 - 2.0 ** -59)
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    assert exact == 1 + Fraction(2) ** -23 + Fraction(2) ** -24 - Fraction(2) ** -60
    naive = round_to(a * b + c, "fp32")
    got = ops.fma(a, b, c, "fp32")
    assert float(got) == 1 + 2.0 ** -23 == ref_round(exact, get_format("fp32"), Rounding.NEAREST_EVEN)
    assert float(naive) == 1 + 2.0 ** -22  # the double rounding the kernel avoids


def test_stochastic_sum_needs_more_than_float64():
    # 1 + 2**-60: float64 drops 2**-60; stochastic rounding to bf16 with 32 bits must still see it as
    # P(up) = floor(2**32 * 2**-53) / 2**32 = 0 -> never up; but 1 + 2**-9 + 2**-60 must round up with
    # P = floor(2**32 * (2**-9 / 2**-7)) / 2**32 = 1/4 exactly.
    x = np.full(20000, 1 + 2.0 ** -9)
    got = ops.add(x, 2.0 ** -60, "bf16", "stochastic", seed=5)
    frac_up = np.mean(got > 1)
    assert abs(frac_up - 0.25) < 6 * math.sqrt(0.25 * 0.75 / x.size)


def test_special_values_and_signed_zeros():
    inf = np.inf
    assert np.isnan(ops.sqrt(-1.0, "fp16")) and np.signbit(ops.sqrt(-0.0, "fp16"))
    assert ops.div(1.0, 0.0, "fp16") == inf and ops.div(-1.0, 0.0, "bf16") == -inf
    assert np.isnan(ops.add(inf, -inf, "fp16")) and np.isnan(ops.mul(0.0, inf, "fp16"))
    assert ops.fma(2.0, 3.0, inf, "fp16") == inf
    assert np.signbit(ops.add(-0.0, -0.0, "fp16")) and not np.signbit(ops.add(3.0, -3.0, "fp16"))
    assert np.signbit(ops.add(3.0, -3.0, "fp16", "down")) and np.signbit(ops.sub(2.0, 2.0, "bf16", "down"))
    assert np.signbit(ops.fma(2.0, 3.0, -6.0, "fp16", "down")) and not np.signbit(ops.fma(2.0, 3.0, -6.0, "fp16"))
    assert ops.mul(300.0, 300.0, "fp16") == inf
    assert ops.mul(300.0, 300.0, "fp16", "toward_zero") == 65504.0
    assert np.isnan(ops.mul(30.0, 30.0, "fp8_e4m3fn"))  # e4m3fn has no Inf: overflow is NaN


def test_shapes_dtypes_scalars():
    a32 = np.ones((2, 3), np.float32)
    assert ops.add(a32, 1.0, "fp16").dtype == np.float64  # Python numbers are float64
    assert ops.add(a32, np.float32(1), "fp16").dtype == np.float32
    assert ops.add(a32, np.ones(3, np.float32), "fp16").shape == (2, 3)
    s = ops.mul(1.5, 2.0, "fp16")
    assert np.ndim(s) == 0 and s == 3.0
    assert ops.add(np.ones(0, np.float32), np.ones(0, np.float32), "fp16").shape == (0,)


def test_stochastic_reproducible_and_stream_offsets():
    x = np.full(64, 1 + 2.0 ** -10)
    a = ops.mul(x, 1.0, "bf16", "stochastic", seed=3)
    assert np.array_equal(a, ops.mul(x, 1.0, "bf16", "stochastic", seed=3))
    # counters offset + i: element i of an offset call equals element offset+i of a longer one
    long = ops.mul(np.full(80, 1 + 2.0 ** -10), 1.0, "bf16", "stochastic", seed=3)
    assert np.array_equal(long[16:], ops.mul(x, 1.0, "bf16", "stochastic", seed=3, offset=16))
    # and equals round_to's stochastic rounding of the (exact) product
    assert np.array_equal(a, round_to(x, "bf16", "stochastic", seed=3))


def test_bad_input():
    with pytest.raises(ValueError, match=r"x \(2,\), y \(3,\)"):
        ops.add(np.ones(2), np.ones(3), "fp16")
    with pytest.raises(TypeError, match="x must be"):
        ops.add(np.ones(2, np.complex64), 1.0, "fp16")
    with pytest.raises(ValueError, match="random_bits must be in 1..28 for fp32"):
        ops.add(1.0, 2.0, "fp32", "stochastic", random_bits=32)
    with pytest.raises(ValueError, match="at most 51"):
        ops.add(1.0, 2.0, FloatFormat(11, 52))
    with pytest.raises(ValueError, match="unknown rounding"):
        ops.add(1.0, 2.0, "fp16", "sideways")
    with pytest.raises(ValueError, match="float32 cannot hold"):
        ops.add(np.float32(1), np.float32(2), FloatFormat(11, 30))

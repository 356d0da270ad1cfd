"""Affine quantization: exact-quotient rounding against Fractions, properties, granularity, bad input."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


from lowprec import testing as lt
from lowprec.quant.affine import (AffineQuantizer, choose_qparams, dequantize, fake_quantize, qrange,
                                  quantize)

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _tol(s):
    """scale/2 plus the float64 roundings of (q - zp) * s and of |y - x| (2**-52 relative each)."""
    return lambda x: s / 2 + 2.0 ** -51 * (np.abs(x) + s)


DETERMINISTIC = ["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd"]


def _round_fraction(r: Fraction, mode: str) -> int:
    """Independent reference: an exact rational rounded to an integer."""
    fl = math.floor(r)
    if fl == r:
        return int(fl)
    if mode == "nearest_even":
        return round(r)  # Python rounds Fractions half to even
    if mode == "nearest_away":
        m = math.floor(abs(r) + Fraction(1, 2))
        return m if r > 0 else -m
    if mode == "toward_zero":
        return math.trunc(r)
    if mode == "up":
        return math.ceil(r)
    if mode == "down":
        return fl
    if mode == "odd":
        m = math.trunc(abs(r)) | 1  # truncate, then set the last bit (inexact)
        return m if r > 0 else -m
    raise AssertionError(mode)


def _reference(x: float, s: float, zp: int, bits: int, signed: bool, mode: str, reciprocal=False) -> int:
    qmin, qmax = qrange(bits, signed)
    if math.isinf(x):
        return qmax if x > 0 else qmin
    r = Fraction(x) * Fraction(1.0 / s) if reciprocal else Fraction(x) / Fraction(s)
    return min(max(_round_fraction(r, mode) + zp, qmin), qmax)


scales = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def grid_case(draw):
    """A scale, zero point, width and x concentrated at the grid's levels and ties (lowprec.testing)."""
    s = draw(scales)
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    qmin, qmax = qrange(bits, signed)
    zp = draw(st.integers(qmin, qmax))
    k = draw(st.integers(qmin - 3, qmax + 3))
    local = [(k + j - zp) * s for j in (-1, 0, 1)]
    x = draw(lt.values_near(local))
    return x, s, zp, bits, signed


@settings(max_examples=300)
@given(grid_case(), st.sampled_from(DETERMINISTIC))
def test_quantize_is_the_exact_quotient_rounded_once(case, mode):
    x, s, zp, bits, signed = case
    got = int(quantize(x, s, zp, bits=bits, signed=signed, rounding=mode))
    assert got == _reference(x, s, zp, bits, signed, mode)


@settings(max_examples=150)
@given(grid_case(), st.sampled_from(["nearest_even", "nearest_away", "up"]))
def test_reciprocal_is_the_exact_product_with_the_rounded_reciprocal(case, mode):
    x, s, zp, bits, signed = case
    got = int(quantize(x, s, zp, bits=bits, signed=signed, rounding=mode, reciprocal=True))
    assert got == _reference(x, s, zp, bits, signed, mode, reciprocal=True)


def test_division_and_reciprocal_differ_where_documented():
    # exact 0.45/0.1 is just below 4.5; exact 0.45 * fl(1/0.1) is just above it
    assert Fraction(0.45) / Fraction(0.1) < Fraction(9, 2) < Fraction(0.45) * Fraction(1 / 0.1)
    assert int(quantize(0.45, 0.1)) == 4
    assert int(quantize(0.45, 0.1, reciprocal=True)) == 5
    # the float64 quotient alone would be the tie 2.5 (rounded to 2 by nearest-even); the exact one is above
    assert 0.75 / 0.3 == 2.5 and Fraction(0.3 * 2.5) / Fraction(0.3) > Fraction(5, 2)
    assert int(quantize(0.3 * 2.5, 0.3)) == 3


# dyadic scales m * 2**e (m < 2**20): every level (k - zp) * s is exact in float64, so the
# level set the checkers see is the real grid (directed modes would otherwise see rounded levels)
dyadic_scales = st.builds(lambda m, e: m * 2.0 ** e, st.integers(1, 2 ** 20), st.integers(-40, 0))


@settings(max_examples=60)
@given(st.integers(2, 16), st.booleans(), st.data())
def test_fake_quant_properties_with_lowprec_testing(bits, signed, data):
    qmin, qmax = qrange(bits, signed)
    s = data.draw(dyadic_scales)
    zp = data.draw(st.integers(qmin, qmax))
    levels = (np.arange(qmin, qmax + 1) - zp) * s
    x = data.draw(lt.arrays(levels[:: max(1, levels.size // 64)], shape=st.integers(1, 30)))
    kw = dict(bits=bits, signed=signed)
    q = lambda v: fake_quantize(v, s, zp, **kw)  # noqa: E731
    lt.check_idempotent(q, x)
    lt.check_monotone(q, x)
    lt.check_in_levels(q, x, levels)
    lt.check_neighbours(q, x, levels)
    # inside the range, nearest modes are within scale/2
    inside = (x >= levels[0]) & (x <= levels[-1])
    lt.check_bounded_error(q, x, _tol(s), where=inside)
    qa = lambda v: fake_quantize(v, s, zp, rounding="nearest_away", **kw)  # noqa: E731
    lt.check_bounded_error(qa, x, _tol(s), where=inside)
    lt.check_neighbours(qa, x, levels)
    for mode in ("toward_zero", "up", "down", "odd"):
        qd = lambda v: fake_quantize(v, s, zp, rounding=mode, **kw)  # noqa: E731
        lt.check_neighbours(qd, x, levels)
        lt.check_bounded_error(qd, x, lambda v: 2 * _tol(s)(v), where=inside)


def test_round_trip_error_is_at_most_half_a_step_inside_the_range():
    rng = np.random.default_rng(1)
    for bits, signed in [(2, True), (4, False), (8, True), (16, False)]:
        q = AffineQuantizer.from_range(-1.3, 2.9, bits=bits, signed=signed)
        lv = q.levels()
        x = rng.uniform(lv[0], lv[-1], 5000)
        err = np.abs(q.fake_quantize(x) - x)
        assert err.max() <= float(q.scale) / 2
        assert np.isin(q.fake_quantize(x), lv).all()


def test_saturation_at_the_ends():
    for bits, signed in [(2, True), (3, False), (8, True), (16, True), (16, False)]:
        qmin, qmax = qrange(bits, signed)
        zp = (qmin + qmax) // 2
        x = np.array([-np.inf, -1e300, -1e6, 1e6, 1e300, np.inf])
        q = quantize(x, 0.01, zp, bits=bits, signed=signed)
        assert q.tolist() == [qmin] * 3 + [qmax] * 3
    assert quantize(np.float32(3.4e38), np.float32(1e-30), bits=8).item() == 127


def test_dtypes_and_scalars():
    assert quantize(np.zeros(2), 1.0, bits=8).dtype == np.int8
    assert quantize(np.zeros(2), 1.0, bits=8, signed=False).dtype == np.uint8
    assert quantize(np.zeros(2), 1.0, bits=12).dtype == np.int16
    assert quantize(np.zeros(2), 1.0, bits=16, signed=False).dtype == np.uint16
    assert np.ndim(quantize(1.0, 0.5)) == 0 and int(quantize(1.0, 0.5)) == 2
    x32 = np.array([0.3, 1.7], dtype=np.float32)
    y = fake_quantize(x32, 0.25)
    assert y.dtype == np.float32
    # float32 output is the float64 value rounded once
    y64 = dequantize(quantize(x32, 0.1), 0.1)
    assert np.array_equal(dequantize(quantize(x32, 0.1), 0.1, dtype=np.float32), y64.astype(np.float32))


@settings(max_examples=40)
@given(st.data())
def test_per_channel_equals_looping_per_tensor(data):
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    bits = data.draw(st.integers(2, 10))
    x = data.draw(lt.arrays(np.linspace(-3, 3, 13), shape=shape))
    c = shape[axis]
    s = np.array(data.draw(st.lists(scales.filter(lambda v: v < 10), min_size=c, max_size=c)))
    qmin, qmax = qrange(bits)
    zp = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=c, max_size=c)))
    mode = data.draw(st.sampled_from(DETERMINISTIC))
    q = quantize(x, s, zp, bits=bits, axis=axis, rounding=mode)
    for i in range(c):
        sl = [slice(None)] * ndim
        sl[axis] = i
        want = quantize(x[tuple(sl)], s[i], int(zp[i]), bits=bits, rounding=mode)
        assert np.array_equal(q[tuple(sl)], want)
    back = dequantize(q, s, zp, axis=axis)
    for i in range(c):
        sl = [slice(None)] * ndim
        sl[axis] = i
        assert np.array_equal(back[tuple(sl)], dequantize(q[tuple(sl)], s[i], int(zp[i])))


def test_per_group_equals_looping_over_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10))
    k = 4
    s = rng.uniform(0.01, 0.2, size=(3, 3))  # ceil(10 / 4) = 3 groups, the last one of 2
    q = quantize(x, s, 0, bits=4, group_size=k)
    for r in range(3):
        for g in range(3):
            cols = slice(g * k, min((g + 1) * k, 10))
            assert np.array_equal(q[r, cols], quantize(x[r, cols], s[r, g], bits=4))
    # grouping along axis 0
    s0 = rng.uniform(0.01, 0.2, size=(2, 10))
    q0 = quantize(x, s0, 0, bits=4, group_size=2, axis=0)
    assert np.array_equal(q0[2], quantize(x[2], s0[1], bits=4, axis=0)) if False else True
    for col in range(10):
        for g, rows in enumerate([slice(0, 2), slice(2, 3)]):
            assert np.array_equal(q0[rows, col], quantize(x[rows, col], s0[g, col], bits=4))


def test_stochastic_is_seeded_and_unbiased():
    s = 0.25
    x = np.array([0.1, -0.3, 0.62, 1.0, 0.875])
    a = quantize(x, s, rounding="stochastic", seed=5)
    b = quantize(x, s, rounding="stochastic", seed=5)
    assert np.array_equal(a, b)
    levels = (np.arange(-128, 128)) * s
    q = lambda v: fake_quantize(v, s, rounding="stochastic", seed=11)  # noqa: E731
    lt.check_unbiased(q, x, levels, n=4000)
    # a biased quantizer (nearest) fails the same check
    with pytest.raises(AssertionError, match="biased"):
        lt.check_unbiased(lambda v: fake_quantize(v, s), x, levels, n=4000)


def test_choose_qparams_represent_zero_and_cover_the_range():
    for lo, hi in [(-1.0, 3.0), (0.5, 2.0), (-7.0, -0.1), (0.0, 0.0)]:
        for signed in (True, False):
            s, z = choose_qparams(lo, hi, bits=8, signed=signed)
            assert float(dequantize(quantize(0.0, s, z, bits=8, signed=signed), s, z)) == 0.0
            qmin, qmax = qrange(8, signed)
            if hi > lo:
                assert abs(int(quantize(min(lo, 0.0), s, z, bits=8, signed=signed)) - qmin) <= 1
                assert abs(int(quantize(max(hi, 0.0), s, z, bits=8, signed=signed)) - qmax) <= 1
    s, z = choose_qparams(-2.0, 1.0, bits=8, symmetric=True)
    assert int(z) == 0 and float(s) == 2.0 / 127
    s, z = choose_qparams(-2.0, 1.0, bits=8, signed=False, symmetric=True)
    assert int(z) == 128
    s, z = choose_qparams(np.array([-1.0, 0.0]), np.array([1.0, 4.0]), bits=4, symmetric=True)
    assert s.shape == (2,) and np.allclose(s, [1 / 7, 4 / 7])


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, [1.0, 0.0]])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quantize(np.ones(2), scale, axis=0 if np.ndim(scale) else None)


@pytest.mark.parametrize("bits", [0, 1, 17, 32])
def test_bad_width(bits):
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        quantize(np.ones(2), 1.0, bits=bits)
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        choose_qparams(0.0, 1.0, bits=bits)


def test_bad_input():
    with pytest.raises(TypeError, match="bits must be an int"):
        quantize(np.ones(2), 1.0, bits=8.0)
    with pytest.raises(ValueError, match="zero_point must be in -128..127 for this range, got 128"):
        quantize(np.ones(2), 1.0, 128)
    with pytest.raises(ValueError, match="zero_point must be in 0..15 for this range, got -1"):
        quantize(np.ones(2), 1.0, -1, bits=4, signed=False)
    with pytest.raises(ValueError, match="zero_point must hold integers"):
        quantize(np.ones(2), 1.0, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="per-channel scale along axis 1 must be 1-D of length 3"):
        quantize(np.ones((2, 3)), np.ones(2), axis=1)
    with pytest.raises(ValueError, match="per-tensor scale must be a scalar"):
        quantize(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        quantize(np.ones((2, 3)), np.ones(3), axis=2)
    with pytest.raises(TypeError, match="x must be a real"):
        quantize(np.array(["a"]), 1.0)
    with pytest.raises(ValueError, match="unknown rounding"):
        quantize(np.ones(2), 1.0, rounding="banker")
    with pytest.raises(TypeError, match="q must be an integer array"):
        dequantize(np.ones(2), 1.0)
    with pytest.raises(ValueError, match="xmin must be <= xmax"):
        choose_qparams(1.0, 0.0)
    with pytest.raises(ValueError, match="must be finite"):
        choose_qparams(np.nan, 1.0)


def test_choose_qparams_on_a_range_wider_than_float64():
    # hi - lo = 3.4e308 is not a float64, the range and its scale are: the scale is finite,
    # within one rounding of each of (hi - lo) and / n of the exact (hi - lo) / n, and the
    # levels cover the range (quantize then dequantize the ends stays within half a step).
    lo, hi = -1.7e308, 1.7e308
    for signed in (True, False):
        qmin, qmax = qrange(8, signed)
        s, z = choose_qparams(lo, hi, bits=8, signed=signed)
        exact = (Fraction(hi) - Fraction(lo)) / (qmax - qmin)
        assert math.isfinite(float(s)) and abs(Fraction(float(s)) - exact) <= exact * Fraction(2) ** -52
        ends = dequantize(quantize(np.array([lo, 0.0, hi]), s, z, bits=8, signed=signed), s, z)
        assert ends[1] == 0.0 and np.all(np.isfinite(ends))
        assert all(abs(Fraction(e) - Fraction(v)) <= Fraction(float(s)) / 2 * (1 + Fraction(2) ** -40)
                   for e, v in zip(ends.tolist(), [lo, 0.0, hi]))
    # element-wise: a per-channel range array mixing ordinary and extreme ranges
    s, z = choose_qparams(np.array([-1.0, -np.finfo(np.float64).max]), np.array([3.0, np.finfo(np.float64).max]),
                          bits=8, signed=False)
    assert s[0] == 4.0 / 255 and np.isfinite(s[1]) and z[0] == 64 and z[1] in (127, 128)  # -max / s ~ -127.5

"""Codebook quantization: interval semantics, uniform = affine, Lloyd-Max optimality conditions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import testing as lt
from lowprec.quant.affine import fake_quantize
from lowprec.quant.codebook import Codebook, lloyd_max, uniform_codebook

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def test_intervals_are_closed_below_open_above_and_saturate():
    cb = Codebook.from_intervals([(-np.inf, -1.0), (-1.0, 0.5), (0.5, 2.0), (2.0, np.inf)], [-2.0, 0.0, 1.0, 3.0])
    x = np.array([-1e300, -1.0, np.nextafter(-1.0, -2), 0.5, np.nextafter(0.5, 0), 2.0, 1e300])
    assert cb.encode(x).tolist() == [0, 1, 0, 2, 1, 3, 3]
    assert cb.decode(cb.encode(x)).tolist() == [-2.0, 0.0, -2.0, 1.0, 0.0, 3.0, 3.0]
    assert cb.intervals()[1].tolist() == [-1.0, 0.5]


dyadic = st.builds(lambda m, e: m * 2.0 ** e, st.integers(1, 2 ** 16), st.integers(-20, 4))


@settings(max_examples=60)
@given(dyadic, st.integers(2, 8), st.data())
def test_uniform_codebook_equals_the_affine_quantizer(s, bits, data):
    k = 1 << bits
    cb = uniform_codebook(0.0, (k - 1) * s, k)
    levels = np.arange(k) * s
    x = data.draw(lt.arrays(levels, shape=st.integers(1, 30)))
    # [a, b) sends ties up: for x >= 0 that is nearest-away; below 0 both give level 0
    want = fake_quantize(x, s, 0, bits=bits, signed=False, rounding="nearest_away")
    assert np.array_equal(cb.quantize(x), want)
    lt.check_idempotent(cb.quantize, x)
    lt.check_monotone(cb.quantize, x)
    lt.check_in_levels(cb.quantize, x, levels)
    lt.check_neighbours(cb.quantize, x, levels)


def test_lloyd_max_properties_and_fixed_point():
    rng = np.random.default_rng(0)
    data = np.r_[rng.normal(size=3000), rng.laplace(size=3000) * 3]
    cb = lloyd_max(data, 8)
    x = np.r_[data[:500], np.linspace(-20, 20, 101)]
    lt.check_idempotent(cb.quantize, x)
    lt.check_monotone(cb.quantize, x)
    lt.check_in_levels(cb.quantize, x, cb.levels)
    lt.check_neighbours(cb.quantize, x, cb.levels)  # thresholds are midpoints: nearest level
    inside = (x >= cb.levels[0]) & (x <= cb.levels[-1])
    lt.check_bounded_error(cb.quantize, x, np.diff(cb.levels).max() / 2, where=inside)
    # optimality conditions at convergence: thresholds at midpoints, levels at the cell means
    assert np.allclose(cb.thresholds, (cb.levels[:-1] + cb.levels[1:]) / 2, rtol=0, atol=0)
    idx = cb.encode(data)
    for i in range(cb.n_levels):
        assert np.isclose(cb.levels[i], data[idx == i].mean(), rtol=1e-12, atol=1e-12)


def test_lloyd_max_matches_the_gaussian_tables():
    # Max (1960): 2 levels +-0.7979; 4 levels +-0.4528, +-1.510 with thresholds 0, +-0.9816
    x = np.random.default_rng(1).normal(size=200_000)
    cb2 = lloyd_max(x, 2)
    assert np.allclose(cb2.levels, [-0.7979, 0.7979], atol=0.01)
    cb4 = lloyd_max(x, 4)
    assert np.allclose(cb4.levels, [-1.510, -0.4528, 0.4528, 1.510], atol=0.02)
    assert np.allclose(cb4.thresholds, [-0.9816, 0.0, 0.9816], atol=0.02)
    # and it beats the uniform codebook over the same span
    uni = uniform_codebook(cb4.levels[0], cb4.levels[-1], 4)
    assert cb4.mse(x) <= uni.mse(x)


def test_lloyd_max_is_deterministic_and_each_iteration_does_not_increase_mse():
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, size=5000)
    a = lloyd_max(x, 6)
    b = lloyd_max(rng.permutation(x), 6)
    assert np.array_equal(a.levels, b.levels) and np.array_equal(a.thresholds, b.thresholds)
    mses = [lloyd_max(x, 6, max_iter=i).mse(x) for i in range(1, 12)]
    assert all(m2 <= m1 * (1 + 1e-12) for m1, m2 in zip(mses, mses[1:]))


def test_lloyd_max_with_few_distinct_values():
    cb = lloyd_max(np.array([1.0, 1.0, 3.0, 3.0, 7.0]), 4)
    assert cb.levels.tolist() == [1.0, 3.0, 7.0] and cb.mse(np.array([1.0, 3.0, 7.0])) == 0.0
    cb1 = lloyd_max(np.array([2.0, 2.0]), 3)
    assert cb1.quantize(np.array([2.0])).tolist() == [2.0]


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        lloyd_max(np.array([]), 4)
    with pytest.raises(ValueError, match="NaN"):
        lloyd_max(np.array([1.0, np.nan]), 4)
    with pytest.raises(ValueError, match="n_levels must be in 2..65536, got 1"):
        lloyd_max(np.ones(3), 1)
    with pytest.raises(ValueError, match="thresholds must be strictly increasing"):
        Codebook([1.0, 0.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="levels must be strictly increasing"):
        Codebook([0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="3 levels need 2 thresholds, got 1"):
        Codebook([0.5], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="contiguous"):
        Codebook.from_intervals([(-np.inf, 0.0), (0.5, np.inf)], [0.0, 1.0])
    cb = uniform_codebook(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="NaN"):
        cb.encode(np.array([np.nan]))
    with pytest.raises(ValueError, match="indices must be in 0..2"):
        cb.decode(np.array([3]))
    with pytest.raises(ValueError, match="need finite lo < hi"):
        uniform_codebook(1.0, 1.0, 3)


def test_uniform_codebook_on_a_range_wider_than_float64():
    from fractions import Fraction
    top = np.finfo(np.float64).max
    for lo, hi, k in [(-1.7e308, 1.7e308, 5), (-top, top, 256), (-top, 1e300, 3)]:
        cb = uniform_codebook(lo, hi, k)
        step = (Fraction(hi) - Fraction(lo)) / (k - 1)
        # levels within a few roundings of lo + i step (exact, by Fractions), thresholds between them
        for i, v in enumerate(cb.levels.tolist()):
            assert abs(Fraction(v) - (Fraction(lo) + i * step)) <= step * Fraction(2) ** -40
        assert cb.levels[0] == lo and cb.levels[-1] == hi
        assert np.all(np.isfinite(cb.thresholds)) and np.all(cb.levels[:-1] < cb.thresholds)
        assert np.all(cb.thresholds < cb.levels[1:])
        assert cb.quantize(np.array([-np.inf, lo, hi, np.inf])).tolist() == [lo, lo, hi, hi]

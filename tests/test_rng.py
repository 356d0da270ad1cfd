"""Stochastic rounding and its counter-based random bits."""

import math
from fractions import Fraction

import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lowprec
from lowprec.formats import FixedFormat, get_format
from lowprec.rng import RandomStream, derive_key

from reference import neighbours, random_bits_array, random_bits_ref, round_fraction


def _draws(x, fmt, n, seed=0, **kw):
    """n independent stochastic roundings of the same value (one element each)."""
    return lowprec.round_to(np.full(n, x), fmt, "stochastic", seed=seed, **kw)


@given(x=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=32),
       fmt=st.sampled_from([lowprec.FP16, lowprec.BF16, lowprec.FP8_E4M3FN, lowprec.FP8_E5M2, lowprec.INT8]),
       seed=st.integers(0, 2 ** 64 - 1))
def test_always_one_of_the_two_neighbours(x, fmt, seed):
    r = _draws(x, fmt, 64, seed=seed)
    lo = round_fraction(x, fmt, "down")
    hi = round_fraction(x, fmt, "up")
    ok = (r == lo) | (r == hi)
    if not np.isfinite(hi) or not np.isfinite(lo):  # overflow: max + ulp is the overflow value
        ok |= ~np.isfinite(r) | (np.abs(r) == fmt.max)
    assert ok.all(), (x, lo, hi, np.unique(r))


@given(k=st.integers(-2 ** 10, 2 ** 10), fmt=st.sampled_from([lowprec.FP16, lowprec.BF16, lowprec.INT8]))
def test_exact_values_unchanged(k, fmt):
    x = float(lowprec.round_to(k / 16, fmt))
    assert (_draws(x, fmt, 32, seed=k & 0xFF) == x).all()


@pytest.mark.parametrize("x,fmt", [(1 + 2 ** -9, "bf16"), (1 + 0.3 * 2 ** -7, "bf16"), (1.1, "fp16"),
                                   (0.3, "fp8_e4m3fn"), (2.7, "int8"), (-2.7, "int8"), (3e-8, "fp16"),
                                   (200.0, "fp8_e5m2")])
def test_probability_of_rounding_up_matches_distance(x, fmt):
    """Empirical P(up) within a 5-sigma binomial bound of (x - lo)/(hi - lo)."""
    fmt = get_format(fmt)
    n = 40_000
    r = _draws(x, fmt, n, seed=12345)
    lo, hi = round_fraction(x, fmt, "down"), round_fraction(x, fmt, "up")
    p = float((Fraction(x) - Fraction(lo)) / (Fraction(hi) - Fraction(lo)))
    ups = int((r == hi).sum())
    assert ups + int((r == lo).sum()) == n
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(ups - n * p) <= 5 * sigma + 1, (ups, n * p, sigma)


def test_unbiased_on_average():
    """Mean of stochastic roundings of random data equals the data's mean within a 5-sigma bound."""
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, 200_000)
    r = lowprec.round_to(x, "bf16", "stochastic", seed=9)
    err = r - x
    q = 2.0 ** -7  # bf16 spacing in [1, 2)
    assert abs(err.mean()) <= 5 * (q / 2) / math.sqrt(x.size)
    nearest_bias = (lowprec.round_to(x, "bf16", "toward_zero") - x).mean()
    assert nearest_bias < -q / 4  # truncation is biased, stochastic is not


def test_random_bits_quantise_the_probability():
    # r = 1: P(up) = floor(2 * 0.75)/2 = 0.5 for a value 3/4 of the way up
    x = 1 + 0.75 * 2 ** -7
    n = 20_000
    r = _draws(x, "bf16", n, seed=3, random_bits=1)
    frac_up = (r > 1).mean()
    assert abs(frac_up - 0.5) < 5 * math.sqrt(0.25 / n)
    # r = 1 and distance 0.4 < 1/2: never rounds up
    assert (_draws(1 + 0.4 * 2 ** -7, "bf16", 5000, seed=3, random_bits=1) == 1).all()
    # r = 64 works (two 32-bit words)
    r64 = _draws(x, "bf16", n, seed=3, random_bits=64)
    assert abs((r64 > 1).mean() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)


def test_same_seed_same_bits_and_streams_differ():
    x = np.random.default_rng(2).standard_normal(10_000)
    a = lowprec.round_to(x, "fp8_e4m3fn", "stochastic", seed=42)
    b = lowprec.round_to(x, "fp8_e4m3fn", "stochastic", seed=42)
    np.testing.assert_array_equal(a, b)
    c = lowprec.round_to(x, "fp8_e4m3fn", "stochastic", seed=43)
    d = lowprec.round_to(x, "fp8_e4m3fn", "stochastic", seed=42, stream=1)
    assert (a != c).mean() > 0.1 and (a != d).mean() > 0.1


def test_random_stream_gives_fresh_yet_reproducible_numbers():
    x = np.full(1000, 1 + 2 ** -9)
    s = RandomStream(7)
    first, second = (lowprec.round_to(x, "bf16", "stochastic", seed=s) for _ in range(2))
    assert s.offset == 2000
    assert (first != second).any()  # no silent reuse between calls
    t = RandomStream(7)
    again = [lowprec.round_to(x, "bf16", "stochastic", seed=t) for _ in range(2)]
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    # the same as the int seed with explicit offsets
    np.testing.assert_array_equal(second, lowprec.round_to(x, "bf16", "stochastic", seed=7, offset=1000))


def test_chunking_does_not_change_bits():
    x = np.random.default_rng(5).standard_normal(9999)
    whole = lowprec.round_to(x, "fp16", "stochastic", seed=11)
    parts = [lowprec.round_to(x[i:i + 1234], "fp16", "stochastic", seed=11, offset=i) for i in range(0, x.size, 1234)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_one_and_two_threads_identical():
    x = np.random.default_rng(6).standard_normal(300_000).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = lowprec.round_to(x, "bf16", "stochastic", seed=1)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = lowprec.round_to(x, "bf16", "stochastic", seed=1)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_float32_and_float64_inputs_agree():
    x = np.random.default_rng(8).standard_normal(50_000).astype(np.float32)
    a = lowprec.round_to(x, "fp8_e5m2", "stochastic", seed=5)
    b = lowprec.round_to(x.astype(np.float64), "fp8_e5m2", "stochastic", seed=5)
    np.testing.assert_array_equal(a.astype(np.float64), b)


def test_generator_and_none_seeds_draw_fresh_keys():
    x = np.full(2000, 1 + 2 ** -9)
    g = np.random.default_rng(0)
    a, b = lowprec.round_to(x, "bf16", "stochastic", seed=g), lowprec.round_to(x, "bf16", "stochastic", seed=g)
    assert (a != b).any()
    g2 = np.random.default_rng(0)
    np.testing.assert_array_equal(lowprec.round_to(x, "bf16", "stochastic", seed=g2), a)
    assert (lowprec.round_to(x, "bf16", "stochastic") != lowprec.round_to(x, "bf16", "stochastic")).any()


def test_streams_are_not_correlated_across_seeds():
    """Up/down decisions of neighbouring seeds agree as often as independent coins would."""
    n = 50_000
    x = np.full(n, 1 + 2 ** -8)  # P(up) = 1/2 in bf16
    ups = [lowprec.round_to(x, "bf16", "stochastic", seed=s) > 1 for s in range(6)]
    for i in range(5):
        agree = (ups[i] == ups[i + 1]).mean()
        assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / n)
        assert abs(ups[i].mean() - 0.5) < 5 * math.sqrt(0.25 / n)


def test_random_bits_are_uniform_bytes():
    k0, k1 = derive_key(123, 0)
    out = random_bits_array(k0, k1, 0, 1 << 16, 8)
    counts = np.bincount(out.astype(np.int64), minlength=256)
    assert counts.size == 256
    expected = out.size / 256
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 255 + 5 * math.sqrt(2 * 255)  # chi-square with 255 dof, 5 sigma


def test_random_stream_validation():
    with pytest.raises(ValueError, match="seed must be in"):
        RandomStream(-3)
    with pytest.raises(ValueError, match="pass stream/offset inside the RandomStream"):
        lowprec.round_to(1.0, "fp16", "stochastic", seed=RandomStream(1), offset=4)
    s = RandomStream(1)
    assert s.spawn(3).stream == 3 and s.spawn(3).offset == 0


def test_fixed_point_stochastic_neighbours():
    f = FixedFormat(8, 2)
    r = _draws(1.1, f, 4000, seed=2)
    assert set(np.unique(r)) <= {1.0, 1.25}
    p = float((Fraction(1.1) - 1) / Fraction(1, 4))
    assert abs((r == 1.25).mean() - p) < 5 * math.sqrt(p * (1 - p) / 4000)


def test_neighbours_helper_is_consistent():
    lo, hi, q, parity = neighbours(Fraction(3, 10), lowprec.FP8_E4M3FN)
    assert (lo, hi, q) == (Fraction(9, 32), Fraction(10, 32), Fraction(1, 32))


@pytest.mark.parametrize("rbits", [32, 20, 40])
@pytest.mark.parametrize("offset,n", [(2 ** 32 - 37, 100), (2 ** 32 - 20_000, 40_000), (5 * 2 ** 32 + 3, 40_000)],
                         ids=["small-crossing", "parallel-crossing", "parallel-high-word"])
@pytest.mark.parametrize("fmt,dtype", [("bf16", np.float32), ("fp8_e4m3fn", np.float64)])
def test_stochastic_rounding_follows_the_documented_hash(rbits, offset, n, fmt, dtype):
    """Every element's decision equals the contract's rule with R from the documented hash of
    counter offset + i, whether or not the counters cross a 2**32 boundary (the loops hash the
    shared high word once when they do not) and for r = 32 (a specialised loop) or not."""
    rng = np.random.default_rng(rbits + n)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    got = lowprec.round_to(x, fmt, "stochastic", seed=123, stream=4, offset=offset, random_bits=rbits)
    k0, k1 = derive_key(123, 4)
    f = get_format(fmt)
    crossing = [i for i in range(n) if (offset + i) % 2 ** 32 < 3 or (offset + i) % 2 ** 32 > 2 ** 32 - 4]
    idx = sorted(set(rng.choice(n, min(n, 1500), replace=False).tolist()) | set(crossing) | {0, n - 1})
    for i in idx:
        R = random_bits_ref(k0, k1, offset + i, rbits)
        want = round_fraction(float(x[i]), f, "stochastic", u=Fraction(R, 2 ** rbits), rbits=rbits)
        assert float(got[i]) == want, (i, float(x[i]), float(got[i]), want)

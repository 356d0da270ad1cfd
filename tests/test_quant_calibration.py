"""Calibration: min-max, percentile, MSE search, EMA observer; per channel/group; bad data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowprec import testing as lt
from lowprec.quant.affine import fake_quantize, qrange
from lowprec.quant.calibration import (EMAObserver, calibrate, grouped_rows, minmax_range, mse_range,
                                       percentile_range)

pytestmark = pytest.mark.usefixtures("one_numba_thread")


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=50)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=finite),
       st.data())
def test_minmax_per_channel_equals_looping(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    lo, hi = minmax_range(x, axis=axis)
    for i in range(x.shape[axis]):
        sl = np.take(x, i, axis=axis)
        assert lo[i] == sl.min() and hi[i] == sl.max()
    lo, hi = minmax_range(x)
    assert lo == x.min() and hi == x.max()


def test_grouped_rows_match_the_quantizer_groups():
    x = np.arange(24.0).reshape(2, 3, 4)
    rows, shape = grouped_rows(x, axis=1, group_size=2)
    assert shape == (2, 2, 4)
    lo, hi = minmax_range(x, axis=1, group_size=2)
    # group g of axis 1 holds indices 2g, 2g+1 (the last group only index 2)
    assert np.array_equal(lo[:, 0, :], x[:, 0, :]) and np.array_equal(hi[:, 0, :], x[:, 1, :])
    assert np.array_equal(lo[:, 1, :], x[:, 2, :]) and np.array_equal(hi[:, 1, :], x[:, 2, :])


def test_calibrated_quantizer_properties_and_range_cover():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 300)) * np.array([[0.1], [1.0], [10.0], [0.01]])
    for method in ("minmax", "percentile", "mse"):
        q = calibrate(x, method, bits=6, axis=0)
        assert q.scale.shape == (4,)
        y = q.fake_quantize(x)
        for c in range(4):  # each channel behaves like its own per-tensor quantizer
            qc = lambda v, c=c: fake_quantize(v, q.scale[c], q.zero_point[c], bits=6)  # noqa: E731
            assert np.array_equal(y[c], qc(x[c]))
            levels = (np.arange(*np.add(qrange(6), (0, 1))) - q.zero_point[c]) * q.scale[c]
            lt.check_idempotent(qc, x[c])
            lt.check_monotone(qc, x[c])
            lt.check_in_levels(qc, x[c], levels)
            lt.check_neighbours(qc, x[c], levels)
    q = calibrate(x, "minmax", bits=8, axis=0)
    lo, hi = minmax_range(x, axis=0)
    for c in range(4):  # min-max: the whole range is inside, error <= scale/2 (+ float64 rounding)
        err = np.abs(q.fake_quantize(x)[c] - x[c])
        assert err.max() <= q.scale[c] / 2 * (1 + 1e-12)


def test_percentile_clips_outliers_and_mse_beats_minmax():
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(size=20000), 60.0, -45.0]
    lo, hi = percentile_range(x, 99.9)
    assert -4.5 < lo < -2.5 and 2.5 < hi < 4.5
    assert np.isclose(hi, np.percentile(x, 99.9)) and np.isclose(lo, np.percentile(x, 0.1))
    err = {m: np.mean((calibrate(x, m, bits=4, symmetric=True).fake_quantize(x) - x) ** 2)
           for m in ("minmax", "mse")}
    assert err["mse"] < err["minmax"] / 3  # the two clipped outliers alone cost (57.5**2 + 42.5**2) / 20002
    # the search is over c in (0, 1]: its range is inside the min-max one and c=1 is a candidate
    lo_m, hi_m = mse_range(x, bits=4, symmetric=True)
    assert x.min() <= lo_m < 0 < hi_m <= x.max()
    lo1, hi1 = mse_range(np.array([-1.0, 0.0, 1.0]), bits=2, symmetric=True)
    assert (float(lo1), float(hi1)) == (-1.0, 1.0)  # the three points are levels at c = 1: zero error


def test_ema_observer():
    obs = EMAObserver(averaging_constant=0.25)
    batches = [np.array([-1.0, 2.0]), np.array([0.0, 6.0]), np.array([-3.0, 2.0])]
    lo, hi = -1.0, 2.0
    for i, b in enumerate(batches):
        obs.update(b)
        if i:
            lo += 0.25 * (b.min() - lo)
            hi += 0.25 * (b.max() - hi)
    assert obs.range() == (lo, hi) and obs.count == 3
    q = obs.quantizer(bits=8, signed=False)
    assert float(q.scale) == (hi - lo) / 255
    per_ch = EMAObserver(0.5, axis=1)
    per_ch.update(np.array([[1.0, -2.0], [3.0, 4.0]]))
    per_ch.update(np.array([[0.0, 0.0], [0.0, 0.0]]))
    assert per_ch.range()[1].tolist() == [1.5, 2.0]
    with pytest.raises(ValueError, match="has seen no data"):
        EMAObserver().range()
    with pytest.raises(ValueError, match="averaging_constant must be in"):
        EMAObserver(0.0)
    with pytest.raises(ValueError, match="holds"):
        per_ch.update(np.ones((2, 3)))


@pytest.mark.parametrize("fn", [minmax_range, percentile_range, mse_range,
                                lambda x: calibrate(x, "mse"), lambda x: EMAObserver().update(x)])
def test_bad_calibration_data(fn):
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="infinite"):
        fn(np.array([1.0, np.inf]))
    with pytest.raises(TypeError, match="real"):
        fn(np.array(["a"]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        calibrate(np.ones(3), "kl")
    with pytest.raises(ValueError, match="percentile must be in"):
        percentile_range(np.ones(3), 30.0)
    with pytest.raises(ValueError, match="bits must be in 2..16, got 20"):
        calibrate(np.ones(3), bits=20)
    with pytest.raises(ValueError, match="grid must be a positive int"):
        mse_range(np.ones(3), grid=0)
    with pytest.raises(ValueError, match="group_size"):
        minmax_range(np.ones(3), group_size=0)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibration_near_the_float64_limit(method):
    # finite data whose spread is wider than float64's largest value: a finite quantizer that
    # covers the data (percentile: the same range as numpy computes on the data scaled by 1/4, exactly)
    x = np.r_[np.linspace(-1.0, 1.0, 1001) * 1.7e308, 0.0]
    q = calibrate(x, method, bits=8, percentile=99.0)
    assert np.isfinite(q.scale) and 0 < q.scale
    if method == "percentile":
        lo, hi = percentile_range(x, 99.0)
        assert (lo, hi) == (4 * np.percentile(x / 4, 1.0), 4 * np.percentile(x / 4, 99.0))
        assert -1.7e308 < lo < -1.6e308 and 1.6e308 < hi < 1.7e308
    levels = q.dequantize(np.array([q.qmin, q.qmax], dtype=np.int16))
    assert np.all(np.isfinite(levels))
    if method == "minmax":
        assert levels[0] <= -1.7e308 * (1 - 1e-12) and levels[1] >= 1.7e308 * (1 - 1e-2)

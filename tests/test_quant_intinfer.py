"""Integer-only inference: gemmlowp primitives against exact specs, numpy path vs pure-Python reference."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.quant.intinfer import (INT32_MAX, INT32_MIN, IntegerMLP, export_mlp, fake_quant_forward,
                                    multiply_by_quantized_multiplier, quantize_multiplier, reference_forward,
                                    ref_multiply_by_quantized_multiplier, ref_rounding_divide_by_pot, ref_srdhm,
                                    rounding_divide_by_pot, saturating_rounding_doubling_high_mul)

pytestmark = pytest.mark.usefixtures("one_numba_thread")


int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX),
                   st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX, 1 << 30, -(1 << 30)]))


def _spec_srdhm(a, b):
    """round(a*b / 2**31), ties toward +inf, i.e. floor((a*b + 2**30) / 2**31); 2**31 saturates."""
    return min((a * b + (1 << 30)) // (1 << 31), INT32_MAX)


def _spec_rdbpot(x, e):
    """x / 2**e rounded to nearest, ties away from zero (exact rational arithmetic)."""
    r = Fraction(x, 1 << e)
    m = int(abs(r) + Fraction(1, 2))  # floor for non-negative values
    return m if r >= 0 else -m


@settings(max_examples=300)
@given(int32s, int32s)
def test_srdhm_matches_its_exact_spec(a, b):
    got = int(saturating_rounding_doubling_high_mul(np.int32(a), np.int32(b)))
    assert got == _spec_srdhm(a, b) == ref_srdhm(a, b)


def test_srdhm_corner_cases():
    f = lambda a, b: int(saturating_rounding_doubling_high_mul(np.int32(a), np.int32(b)))  # noqa: E731
    assert f(INT32_MIN, INT32_MIN) == INT32_MAX  # the one overflow: 2**31 does not fit
    assert f(INT32_MIN, INT32_MAX) == -INT32_MAX  # -2**31 * (2**31-1) / 2**31 = -(2**31 - 1) exactly
    assert f(INT32_MAX, INT32_MAX) == INT32_MAX - 1  # (2**31-1)**2 / 2**31 = 2**31 - 2 + 2**-31
    assert f(INT32_MIN, 1 << 30) == -(1 << 30)
    assert f(3, 1 << 30) == 2 and f(-3, 1 << 30) == -1  # +-1.5: ties toward +inf
    assert f(5, 1 << 30) == 3 and f(-5, 1 << 30) == -2  # +-2.5
    assert f(-3, (1 << 30) + 1) == -2  # just beyond the negative tie
    assert f(0, INT32_MIN) == 0 and f(1, 1) == 0 and f(-1, 1) == 0
    assert ref_srdhm(INT32_MIN, INT32_MIN) == INT32_MAX


@settings(max_examples=300)
@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot_matches_its_exact_spec(x, e):
    got = int(rounding_divide_by_pot(np.int32(x), e))
    assert got == _spec_rdbpot(x, e) == ref_rounding_divide_by_pot(x, e)


def test_rounding_divide_by_pot_corner_cases():
    f = lambda x, e: int(rounding_divide_by_pot(np.int32(x), e))  # noqa: E731
    assert [f(v, 1) for v in (5, -5, 3, -3, 1, -1)] == [3, -3, 2, -2, 1, -1]  # ties away from zero
    assert f(INT32_MIN, 31) == -1 and f(INT32_MIN, 1) == -(1 << 30) and f(INT32_MAX, 31) == 1
    assert f(-(1 << 30), 31) == -1 and f((1 << 30) - 1, 31) == 0 and f(-(1 << 30) + 1, 31) == 0
    assert f(7, 0) == 7
    with pytest.raises(ValueError, match="exponent must be in 0..31"):
        rounding_divide_by_pot(np.int32(1), 32)


@settings(max_examples=300)
@given(st.floats(2.0 ** -32, 2.0 ** 30))
def test_quantize_multiplier(m):
    m0, shift = quantize_multiplier(m)
    assert (1 << 30) <= m0 < (1 << 31) and -31 <= shift <= 31
    approx = Fraction(m0) * Fraction(2) ** (-31 - shift)
    assert abs(approx - Fraction(m)) <= Fraction(2) ** (-32 - shift)  # half a unit of M0


def _tflite_quantize_multiplier(m: float):
    """TFLite's QuantizeMultiplier (quantization_util.cc) written from its description, with Fractions.

    q = frexp(m) (q in [0.5, 1)); q_fixed = std::round(q * 2**31), i.e. half away from zero;
    q_fixed == 2**31 becomes 2**30 with the exponent + 1. TFLite returns the exponent as a left
    shift; lowprec stores its negation.
    """
    q, e = math.frexp(m)
    v = Fraction(q) * (1 << 31)
    q_fixed = math.floor(v + Fraction(1, 2))  # v > 0: half away from zero
    if q_fixed == 1 << 31:
        q_fixed, e = q_fixed // 2, e + 1
    return q_fixed, -e


def test_quantize_multiplier_ties_round_away_from_zero_like_tflite():
    # m = 0.5 + 2**-32: q * 2**31 = 2**30 + 0.5 exactly (the issue wrote 2**-33, which gives
    # 2**30 + 0.25, no tie); TFLite rounds it up, ties-to-even would give 2**30
    assert _tflite_quantize_multiplier(0.5 + 2.0 ** -32) == (2 ** 30 + 1, 0)
    assert quantize_multiplier(0.5 + 2.0 ** -32) == (2 ** 30 + 1, 0)
    # a tie just below 1 rounds up to 2**31 and renormalises: (2**30, shift - 1)
    m = 1.0 - 2.0 ** -32
    assert quantize_multiplier(m) == _tflite_quantize_multiplier(m) == (2 ** 30, -1)


@settings(max_examples=300)
@given(st.integers(1 << 30, (1 << 31) - 1), st.integers(-31, 30), st.booleans(), st.integers(0, 2 ** 21))
def test_quantize_multiplier_matches_tflite(m0, e, tie, low):
    # m = (m0 + tie/2 + low * 2**-22... ) * 2**(e - 31): ties and near-ties in every binade
    frac = Fraction(m0) + (Fraction(1, 2) if tie else Fraction(low, 2 ** 22))
    m = float(frac * Fraction(2) ** (e - 31))
    assert Fraction(m) == frac * Fraction(2) ** (e - 31)  # exactly representable (<= 53 bits)
    want = _tflite_quantize_multiplier(m)
    if -31 <= want[1] <= 31:
        assert quantize_multiplier(m) == want


@settings(max_examples=300)
@given(int32s, st.floats(2.0 ** -32, 2.0 ** 4))
def test_multiply_by_quantized_multiplier_against_reference_and_exact(x, m):
    m0, shift = quantize_multiplier(m)
    got = int(multiply_by_quantized_multiplier(np.int32(x), np.int32(m0), np.int32(shift)))
    assert got == ref_multiply_by_quantized_multiplier(x, m0, shift)
    if shift >= 0:  # no left-shift saturation: two roundings, each within 1/2 unit
        exact = Fraction(x) * m0 * Fraction(2) ** (-31 - shift)
        assert abs(got - exact) <= 1


def _random_net(rng, sizes, w_scale=1.0):
    ws = [rng.normal(size=(a, b)) * w_scale / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=b) * 0.3 for b in sizes[1:]]
    return ws, bs


@pytest.mark.parametrize("accumulator", ["wrap", "saturate"])
@pytest.mark.parametrize("seed", range(6))
def test_integer_network_is_bit_exact_against_the_python_reference(seed, accumulator):
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(1, 9)) for _ in range(int(rng.integers(2, 5)))]
    ws, bs = _random_net(rng, sizes, w_scale=float(rng.uniform(0.2, 3)))
    x = rng.normal(size=(int(rng.integers(1, 7)), sizes[0])) * rng.uniform(0.1, 10)
    model = export_mlp(ws, bs, calib_x=x * 0.7, accumulator=accumulator)  # calibrated narrower: saturation
    q = model.quantize_input(x)
    out, accs = model.forward(q, return_accumulators=True)
    assert out.dtype == np.int8 and all(a.dtype == np.int32 for a in accs)
    assert out.tolist() == reference_forward(model, q.tolist())


def test_wrap_and_saturate_both_exercised_and_exact():
    # one layer whose accumulator leaves int32: 2000 products of 127*127 plus a huge bias
    k = 2000
    w = np.full((k, 2), 1.0)
    b = np.array([0.0, 0.0])
    scale_in = 1.0 / 127
    act = [(scale_in, 0), (1.0, 0)]
    model_w = export_mlp([w], [b], act_qparams=act, accumulator="wrap")
    model_s = export_mlp([w], [b], act_qparams=act, accumulator="saturate")
    model_w.layers[0].bias[:] = [INT32_MAX - 100, INT32_MIN + 100]
    model_s.layers[0].bias[:] = [INT32_MAX - 100, INT32_MIN + 100]
    q = np.full((1, k), 127, dtype=np.int8)
    q[0, k // 2:] = -128  # the sum goes up by 127*127*1000, then down by 128*127*1000
    acc_w = model_w.forward(q, return_accumulators=True)[1][0]
    acc_s = model_s.forward(q, return_accumulators=True)[1][0]
    total = 127 * 127 * (k // 2) - 128 * 127 * (k // 2)
    want_wrap = [((INT32_MAX - 100 + total + 2 ** 31) % 2 ** 32) - 2 ** 31,
                 ((INT32_MIN + 100 + total + 2 ** 31) % 2 ** 32) - 2 ** 31]
    assert acc_w[0].tolist() == want_wrap
    # saturating in order k = 0, 1, ...: the first channel sticks at INT32_MAX during the rising half
    assert acc_s[0, 0] == INT32_MAX - 128 * 127 * (k // 2)
    assert acc_s[0].tolist() != acc_w[0].tolist()
    for m in (model_w, model_s):
        assert m.forward(q).tolist() == reference_forward(m, q.tolist())


def test_integer_model_tracks_the_fake_quant_model():
    rng = np.random.default_rng(7)
    ws, bs = _random_net(rng, [10, 32, 16, 4])
    x = rng.normal(size=(400, 10))
    model = export_mlp(ws, bs, calib_x=x)
    fq = fake_quant_forward(ws, bs, model, x)
    got = model.dequantize_output(model.forward(model.quantize_input(x)))
    out_step = model.layers[-1].out_scale
    # hidden requantization and the int32 bias each add at most half a step; errors stay a few output steps
    assert np.max(np.abs(got - fq)) < 6 * out_step
    assert np.mean(np.argmax(got, 1) == np.argmax(fq, 1)) > 0.95


def test_export_bad_input():
    rng = np.random.default_rng(0)
    ws, bs = _random_net(rng, [3, 4, 2])
    with pytest.raises(ValueError, match="pass act_qparams or calib_x"):
        export_mlp(ws, bs)
    with pytest.raises(ValueError, match="supports ReLU"):
        export_mlp(ws, bs, calib_x=np.ones((2, 3)), activation="tanh")
    with pytest.raises(ValueError, match="accumulator must be one of"):
        export_mlp(ws, bs, calib_x=np.ones((2, 3)), accumulator="float")
    with pytest.raises(ValueError, match="do not chain"):
        export_mlp([ws[0], ws[0]], bs, calib_x=np.ones((2, 3)))
    with pytest.raises(ValueError, match="needs 3"):
        export_mlp(ws, bs, act_qparams=[(1.0, 0)])
    with pytest.raises(ValueError, match="zero points must be in -128..127"):
        export_mlp(ws, bs, act_qparams=[(1.0, 0), (1.0, 200), (1.0, 0)])
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        export_mlp(ws, bs, act_qparams=[(0.0, 0), (1.0, 0), (1.0, 0)])
    with pytest.raises(ValueError, match="multiplier must be finite and > 0"):
        quantize_multiplier(0.0)
    with pytest.raises(ValueError, match="supported are multipliers"):
        quantize_multiplier(2.0 ** -40)
    with pytest.raises(ValueError, match="accumulator must be one of"):
        IntegerMLP([], accumulator="x")
    with pytest.raises(TypeError, match="2-D integer array"):
        export_mlp(ws, bs, calib_x=np.ones((2, 3))).forward(np.ones((2, 3)))


def test_export_refuses_non_finite_weights_biases_and_calibration_data():
    rng = np.random.default_rng(0)
    ws, bs = _random_net(rng, [3, 4, 2])
    bad_w = [ws[0], ws[1].copy()]
    bad_w[1][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"^weights\[1\] must be finite, got 1 NaN and 0 infinite value\(s\)$"):
        export_mlp(bad_w, bs, calib_x=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^weights\[1\] must be finite"):  # also with explicit parameters
        export_mlp(bad_w, bs, act_qparams=[(1.0, 0)] * 3)
    bad_b = [bs[0].copy(), bs[1]]
    bad_b[0][0] = -np.inf
    with pytest.raises(ValueError, match=r"^biases\[0\] must be finite, got 0 NaN and 1 infinite"):
        export_mlp(ws, bad_b, calib_x=np.ones((2, 3)))
    with pytest.raises(ValueError, match="calib_x must be non-empty and finite"):
        export_mlp(ws, bs, calib_x=np.array([[1.0, np.inf, 0.0]]))


@settings(max_examples=50)
@given(st.floats(2.0 ** -20, 2.0 ** 3), st.lists(int32s, min_size=2, max_size=40))
def test_requantization_is_a_monotone_quantizer(m, accs):
    # requantization, as a map of int32 accumulators (held exactly as float64), checked with
    # lowprec.testing: monotone, and within one unit of the exact product acc * M0 * 2**(-31-shift)
    from lowprec import testing as lt

    m0, shift = quantize_multiplier(m)

    def requant(v):
        return multiply_by_quantized_multiplier(np.asarray(v).astype(np.int64).astype(np.int32), np.int32(m0),
                                                np.int32(shift)).astype(np.float64)

    x = np.array(accs, dtype=np.float64)
    lt.check_monotone(requant, x)
    # (two roundings of at most half a unit each; the left shift of M >= 1 may saturate: excluded)
    exact = np.array([float(Fraction(a) * m0 * Fraction(2) ** (-31 - shift)) for a in accs])
    lt.check_bounded_error(lambda v: requant(v) - exact + x, x, 1.0, where=np.abs(exact) < 2 ** 30)

"""Companding: the exact inverse against 60-digit decimals, round trips, gradients, quantizer properties."""

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowprec import testing as lt
from lowprec.quant.companding import (CompandingQuantizer, compand, compand_grad, companding_fake_quant,
                                      companding_fake_quant_backward, expand, expand_grad)

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _exact_inverse(y: float, alpha: float, beta: float) -> Decimal:
    """t = v (beta v + sqrt((beta v)^2 + 4 alpha)) / 2, v = |y|, at 60 significant digits (float inputs exact)."""
    getcontext().prec = 60
    v, a, b = abs(Decimal(y)), Decimal(alpha), Decimal(beta)
    bv = b * v
    return v * (bv + (bv * bv + 4 * a).sqrt()) / 2


positive = st.floats(1e-8, 1e8)
betas = st.one_of(st.just(0.0), positive)
ys = st.one_of(st.just(0.0), st.floats(1e-150, 1e150), st.floats(-1e150, -1e-150))


@settings(max_examples=300)
@given(ys, positive, betas)
def test_expand_is_within_5_ulp_of_the_exact_inverse(y, alpha, beta):
    # The bound, derived in lowprec/quant/companding.py: 6 roundings on non-negative terms,
    # |expand(y) - t| <= 5 u t with u = 2**-53, and 5 u t < 5 ulp(t).
    assume(beta * abs(y) < 1e150)
    t = _exact_inverse(y, alpha, beta)
    got = float(expand(y, alpha, beta))
    assert math.copysign(1.0, got) == math.copysign(1.0, y)
    err = abs(Decimal(abs(got)) - t)
    assert err <= 5 * Decimal(2.0 ** -53) * t
    assert err <= 5 * Decimal(math.ulp(float(t)))
    # it really is the root: y^2 (alpha + beta t) = t^2
    if t:
        getcontext().prec = 60
        assert abs(Decimal(y) ** 2 * (Decimal(alpha) + Decimal(beta) * t) - t * t) <= Decimal(10) ** -50 * t * t


@settings(max_examples=200)
@given(st.one_of(st.floats(1e-150, 1e150), st.floats(-1e150, -1e-150), st.just(0.0)), positive, betas)
def test_round_trip_within_11_ulp(x, alpha, beta):
    # compand costs <= 3u, the inverse amplifies relative errors by at most 2, expand adds 5u: 11u
    assume(beta * abs(x) < 1e150)
    back = float(expand(compand(x, alpha, beta), alpha, beta))
    assert abs(back - x) <= 11 * 2.0 ** -53 * abs(x) * (1 + 1e-9)


def test_the_naive_inverse_is_wrong_and_ours_is_right():
    alpha, beta, x = 0.5, 2.0, 3.0
    y = float(compand(x, alpha, beta))
    assert y == 3.0 / math.sqrt(6.5)
    naive = math.copysign(alpha + beta * abs(y), y)
    assert abs(naive - x) > 0.1
    assert float(expand(y, alpha, beta)) == pytest.approx(x, rel=1e-15)


def _fd(f, v, h):
    return (f(v + h) - f(v - h)) / (2 * h)


def test_partial_derivatives_by_finite_differences():
    x = np.array([-3.0, -0.2, 0.7, 5.0])  # |x| has a kink at 0: checked analytically below
    a, b = 0.8, 1.7
    assert compand_grad(0.0, a, b)[0] == pytest.approx(1 / math.sqrt(a), rel=1e-15)
    cx, ca, cb = compand_grad(x, a, b)
    h = 1e-6
    assert np.allclose(ca, _fd(lambda v: compand(x, v, b), a, h), rtol=1e-6, atol=1e-9)
    assert np.allclose(cb, _fd(lambda v: compand(x, a, v), b, h), rtol=1e-6, atol=1e-9)
    assert np.allclose(cx, _fd(lambda v: compand(v, a, b), x, h), rtol=1e-6, atol=1e-9)
    y = compand(x, a, b)
    ey, ea, eb = expand_grad(y, a, b)
    assert np.allclose(ea, _fd(lambda v: expand(y, v, b), a, h), rtol=1e-6, atol=1e-9)
    assert np.allclose(eb, _fd(lambda v: expand(y, a, v), b, h), rtol=1e-6, atol=1e-9)
    assert np.allclose(ey, _fd(lambda v: expand(v, a, b), y, h), rtol=1e-6, atol=1e-9)
    assert np.allclose(ey * cx, 1.0)  # inverse functions: dx/dy * dy/dx = 1


@pytest.mark.parametrize("bits", [3, 6])
def test_straight_through_gradients_of_alpha_and_beta_by_finite_differences(bits):
    # The STE gradient is the exact derivative of the surrogate in which the rounding offset
    # (q - u) (inside) or the integer q (outside) is held fixed: check it against that surrogate.
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(size=40) * 2, 9.0, -12.0]  # two values beyond x_max = 6
    a, b, xmax = 0.6, 1.3, 6.0
    g = rng.normal(size=x.size)
    qp = (1 << (bits - 1)) - 1
    y = compand(x, a, b)
    s = float(compand(xmax, a, b)) / qp
    u = y / s
    q = np.clip(np.round(u), -qp, qp)
    inside = np.abs(u) <= qp
    off = q - u

    def surrogate(alpha, beta, xv=x):
        sv = float(compand(xmax, alpha, beta)) / qp
        yq = np.where(inside, compand(xv, alpha, beta) + off * sv, q * sv)
        return float(np.sum(g * expand(yq, alpha, beta)))

    out = companding_fake_quant(x, a, b, xmax, bits)
    assert np.allclose(out, expand(q * s, a, b), rtol=0, atol=0)
    dx, da, db = companding_fake_quant_backward(x, a, b, xmax, bits, g)
    h = 1e-6
    assert da == pytest.approx(_fd(lambda v: surrogate(v, b), a, h), rel=1e-5, abs=1e-8)
    assert db == pytest.approx(_fd(lambda v: surrogate(a, v), b, h), rel=1e-5, abs=1e-8)
    # dx: the derivative of the surrogate in x, zero outside the clamp range
    ex = np.array([(surrogate(a, b, x + h * (np.arange(x.size) == i)) -
                    surrogate(a, b, x - h * (np.arange(x.size) == i))) / (2 * h) for i in range(x.size)])
    assert np.allclose(dx, np.where(inside, ex, 0.0), rtol=1e-5, atol=1e-7)
    assert dx[-1] == 0.0 and dx[-2] == 0.0


def test_quantizer_properties_with_lowprec_testing():
    for a, b, bits in [(1.0, 0.0, 4), (0.2, 5.0, 4), (1.0, 20.0, 6)]:
        cq = CompandingQuantizer(alpha=a, beta=b, x_max=3.0, bits=bits)
        levels = cq.levels()
        assert np.all(np.diff(levels) > 0) and np.allclose(levels, -levels[::-1], rtol=1e-15)
        x = np.r_[np.linspace(-4, 4, 401), levels, (levels[1:] + levels[:-1]) / 2]
        lt.check_idempotent(cq.fake_quantize, x)
        lt.check_monotone(cq.fake_quantize, x)
        lt.check_in_levels(cq.fake_quantize, x, levels)
        lt.check_neighbours(cq.fake_quantize, x, levels)
        inside = np.abs(x) <= 3.0
        lt.check_bounded_error(cq.fake_quantize, x, np.diff(levels).max(), where=inside)
    # beta > 0 puts more levels near zero than a uniform grid
    dense = CompandingQuantizer(1.0, 20.0, 3.0, 4).levels()
    assert dense[8] - dense[7] < 3.0 / 7


def test_stochastic_companding_is_unbiased_in_the_companded_domain():
    cq = CompandingQuantizer(1.0, 4.0, 2.0, bits=4, rounding="stochastic")
    x = np.array([0.05, -0.7, 1.3])
    y = compand(x, 1.0, 4.0)
    ylevels = np.arange(-7, 8) * cq.step
    # q(v): the grid value the stochastic quantizer picks for the companded value v
    lt.check_unbiased(lambda v: cq.quantize(expand(v, 1.0, 4.0), seed=5).astype(np.float64) * cq.step,
                      y, ylevels, n=3000)


def test_bad_input():
    for a, b in [(0.0, 1.0), (-1.0, 1.0), (np.nan, 1.0), (1.0, -0.5), (1.0, np.inf)]:
        with pytest.raises(ValueError, match="alpha|beta"):
            compand(np.ones(2), a, b)
        with pytest.raises(ValueError, match="alpha|beta"):
            expand(np.ones(2), a, b)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        compand(np.ones(2), "1", 1.0)
    with pytest.raises(ValueError, match="x_max must be finite and > 0"):
        CompandingQuantizer(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        CompandingQuantizer(1.0, 1.0, 1.0, bits=1)
    with pytest.raises(ValueError, match="NaN"):
        CompandingQuantizer(1.0, 1.0, 1.0).quantize(np.array([np.nan]))


def _exact_compand(x: float, alpha: float, beta: float) -> Decimal:
    getcontext().prec = 60
    t = abs(Decimal(x))
    return t / (Decimal(alpha) + Decimal(beta) * t).sqrt()


_F64_MAX = np.finfo(np.float64).max
anywhere = st.floats(0.0, _F64_MAX, allow_subnormal=False)
any_alpha = st.floats(1e-300, _F64_MAX)
any_beta = st.one_of(st.just(0.0), st.floats(1e-300, _F64_MAX))


@settings(max_examples=400)
@given(anywhere, any_alpha, any_beta)
def test_compand_and_expand_hold_their_bounds_up_to_the_float64_limit(x, alpha, beta):
    # No intermediate overflow: compand within 3u of the 60-digit value, expand within 5u of the
    # exact inverse of its (float64) input, wherever those values are normal float64 numbers.
    u = Decimal(2.0 ** -53)
    c = _exact_compand(x, alpha, beta)
    y = float(compand(x, alpha, beta))
    if Decimal(2.0 ** -1000) < c < Decimal(_F64_MAX) * (1 - 4 * u):
        assert abs(Decimal(y) - c) <= 3 * u * c * (1 + Decimal(10) ** -9)
        t = _exact_inverse(y, alpha, beta)
        if Decimal(2.0 ** -1000) < t < Decimal(_F64_MAX) * (1 - 6 * u):
            got = float(expand(y, alpha, beta))
            assert abs(Decimal(got) - t) <= 5 * u * t * (1 + Decimal(10) ** -9)
    elif c >= Decimal(_F64_MAX) * (1 + 4 * u):
        assert y == np.inf


def test_compand_does_not_overflow_and_saturates_infinities():
    # the case: b t = 4e308 overflows, the compander does not (1e308 / sqrt(1 + 4e308) = 5e153)
    assert float(compand(1e308, 1.0, 4.0)) == float(_exact_compand(1e308, 1.0, 4.0))
    assert float(expand(compand(1e308, 1.0, 4.0), 1.0, 4.0)) == pytest.approx(1e308, rel=1e-15)
    # (beta v)**2 overflows inside expand although the result (about beta v**2 = 1.44e308) does not
    assert float(expand(6e153, 1.0, 4.0)) == float(_exact_inverse(6e153, 1.0, 4.0))
    assert compand(np.array([np.inf, -np.inf]), 1.0, 4.0).tolist() == [np.inf, -np.inf]
    assert expand(np.array([np.inf, -np.inf]), 1.0, 0.0).tolist() == [np.inf, -np.inf]
    # +-Inf and the largest finite values saturate to the end codes, as in the affine quantizer
    from lowprec.quant.affine import quantize
    assert quantize(np.array([np.inf, -np.inf]), 0.5, 0, bits=4, narrow_range=True).tolist() == [7, -7]
    cq = CompandingQuantizer(alpha=1.0, beta=4.0, x_max=1.0, bits=4)
    x = np.array([np.inf, -np.inf, 1e308, -_F64_MAX])
    assert cq.quantize(x).tolist() == [7, -7, 7, -7]
    assert cq.fake_quantize(x).tolist() == [cq.levels()[-1], cq.levels()[0]] * 2
    # the straight-through backward: outside the clamp range dx is 0 and the end levels do not move
    # with alpha or beta (the end level is x_max), so infinities add nothing and no NaN appears
    dx, da, db = companding_fake_quant_backward(np.r_[0.3, x], 1.0, 4.0, 1.0, 4, np.ones(5))
    assert dx.tolist()[1:] == [0.0] * 4 and np.isfinite(dx[0])
    da1, db1 = companding_fake_quant_backward(np.r_[0.3], 1.0, 4.0, 1.0, 4, np.ones(1))[1:]
    assert da == pytest.approx(da1, rel=1e-12, abs=1e-15) and db == pytest.approx(db1, rel=1e-12, abs=1e-15)

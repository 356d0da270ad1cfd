"""LSQ: forward properties, the STE step gradient and its 1/sqrt(N Q_p) scale, through numpy and the autograd."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import testing as lt
from lowprec.autograd import Tensor
from lowprec.quant.affine import fake_quantize
from lowprec.quant.fake_quant import LSQQuantizer, lsq_fake_quant
from lowprec.quant.lsq import lsq_backward, lsq_forward, lsq_grad_scale, lsq_init_step, lsq_qrange

pytestmark = pytest.mark.usefixtures("one_numba_thread")


dyadic = st.builds(lambda m, e: m * 2.0 ** e, st.integers(1, 2 ** 16), st.integers(-20, 2))


@settings(max_examples=50)
@given(dyadic, st.integers(2, 8), st.booleans(), st.data())
def test_forward_is_the_clamped_grid_and_has_quantizer_properties(s, bits, signed, data):
    qn, qp = lsq_qrange(bits, signed)
    levels = np.arange(-qn, qp + 1) * s
    x = data.draw(lt.arrays(levels, shape=st.integers(1, 25)))
    q = lambda v: lsq_forward(v, s, bits=bits, signed=signed)  # noqa: E731
    assert np.array_equal(q(x), fake_quantize(x, s, 0, bits=bits, signed=signed))
    lt.check_idempotent(q, x)
    lt.check_monotone(q, x)
    lt.check_in_levels(q, x, levels)
    lt.check_neighbours(q, x, levels)
    lt.check_bounded_error(q, x, s / 2, where=(x >= levels[0]) & (x <= levels[-1]))


def _surrogate_grad(x, s, g, qn, qp, axis=None):
    """d/ds of sum(g * xq(s)) where round(x/s) - x/s (inside) or the clamped integer (outside) is frozen,
    by central finite differences: the exact meaning of the straight-through estimator."""
    se = s if axis is None else np.expand_dims(s, tuple(i for i in range(x.ndim) if i != axis % x.ndim))
    v = x / se
    q = np.clip(np.round(v), -qn, qp)
    inside = (v >= -qn) & (v <= qp)
    off = q - v

    def f(sv):
        sve = sv if axis is None else np.expand_dims(sv, tuple(i for i in range(x.ndim) if i != axis % x.ndim))
        return g * np.where(inside, x + off * sve, q * sve)

    h = 1e-6
    if axis is None:
        return np.sum(f(s + h) - f(s - h)) / (2 * h)
    out = np.zeros_like(s)
    for c in range(s.size):
        e = np.zeros_like(s)
        e[c] = h
        out[c] = np.sum(f(s + e) - f(s - e)) / (2 * h)
    return out


def test_step_gradient_by_finite_differences_and_gradient_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500) * 2
    g = rng.normal(size=500)
    s = 0.37
    for bits, signed in [(3, True), (4, False), (8, True)]:
        qn, qp = lsq_qrange(bits, signed)
        dx, ds = lsq_backward(x, s, g, bits=bits, signed=signed)
        gs = 1 / np.sqrt(x.size * qp)
        assert lsq_grad_scale(x.size, qp) == pytest.approx(gs, rel=1e-15)
        assert float(ds) == pytest.approx(gs * _surrogate_grad(x, s, g, qn, qp), rel=1e-6)
        v = x / s
        assert np.array_equal(dx, g * ((v >= -qn) & (v <= qp)))
        _, ds1 = lsq_backward(x, s, g, bits=bits, signed=signed, grad_scale=1.0)
        assert float(ds1) == pytest.approx(float(ds) / gs, rel=1e-12)


def test_per_channel_step_uses_elements_per_channel():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(20, 3)) * np.array([0.1, 1.0, 5.0])  # (in, out): channels along axis 1, N = 20
    g = rng.normal(size=w.shape)
    s = lsq_init_step(w, bits=4, axis=1)
    assert s.shape == (3,)
    assert np.allclose(s, 2 * np.abs(w).mean(axis=0) / np.sqrt(7))
    qn, qp = lsq_qrange(4)
    _, ds = lsq_backward(w, s, g, bits=4, axis=1)
    want = _surrogate_grad(w, s, g, qn, qp, axis=1) / np.sqrt(20 * qp)
    assert np.allclose(ds, want, rtol=1e-6)
    # per channel equals a per-tensor LSQ on each column with N = 20
    for c in range(3):
        _, dc = lsq_backward(w[:, c], s[c], g[:, c], bits=4)
        assert float(dc) == pytest.approx(ds[c], rel=1e-12)
        assert np.array_equal(lsq_forward(w, s, bits=4, axis=1)[:, c], lsq_forward(w[:, c], s[c], bits=4))


def test_autograd_op_matches_numpy_and_finite_differences():
    rng = np.random.default_rng(2)
    xv = rng.normal(size=(6, 4)) * 3
    target = rng.normal(size=(6, 4))
    s0 = np.array([0.2, 0.5, 1.0, 0.05])
    x = Tensor(xv, requires_grad=True)
    step = Tensor(s0.copy(), requires_grad=True, is_param=True)
    y = lsq_fake_quant(x, step, bits=4, axis=1)
    loss = ((y - target) * (y - target)).sum()
    loss.backward()
    g = 2 * (y.data - target)
    dx, ds = lsq_backward(xv, s0, g, bits=4, axis=1)
    assert np.allclose(step.grad, ds, rtol=1e-12) and np.allclose(x.grad, dx)
    qn, qp = lsq_qrange(4)
    # the loss's own finite difference, with the rounding decisions frozen (STE surrogate)
    v = xv / s0
    q = np.clip(np.round(v), -qn, qp)
    inside = (v >= -qn) & (v <= qp)

    def surrogate_loss(sv):
        yq = np.where(inside, xv + (q - v) * sv, q * sv)
        return np.sum((yq - target) ** 2)

    h = 1e-6
    for c in range(4):
        e = np.zeros(4)
        e[c] = h
        fd = (surrogate_loss(s0 + e) - surrogate_loss(s0 - e)) / (2 * h) / np.sqrt(6 * qp)
        assert step.grad[c] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_lsq_quantizer_module_initialises_once_from_data():
    q = LSQQuantizer(bits=8, signed="auto")
    assert not q.initialized and np.isnan(q.step.data).all()
    x = Tensor(np.array([0.0, 1.0, 3.0]))
    q(x)
    assert q.initialized and q.signed is False
    assert q.step.data[0] == pytest.approx(2 * np.mean([0.0, 1.0, 3.0]) / np.sqrt(255))
    q.step.data[:] = 0.5  # e.g. loaded from a checkpoint: never re-initialised
    q(Tensor(np.array([10.0])))
    assert q.step.data[0] == 0.5
    w = LSQQuantizer(bits=4, signed=True, channels=3, narrow_range=True)
    out = w(Tensor(np.array([[1.0, -2.0, 30.0], [0.1, 0.2, -30.0]])))
    k = np.round(out.data / w.step.data)
    assert k.min() >= -7 and k.max() <= 7  # symmetric range


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        lsq_qrange(1)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        lsq_forward(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="empty"):
        lsq_init_step(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        lsq_init_step(np.array([np.nan]))
    with pytest.raises(ValueError, match="per-channel step along axis 1 needs shape"):
        lsq_fake_quant(Tensor(np.ones((2, 3))), Tensor(np.ones(2)), axis=1)
    with pytest.raises(TypeError, match="must be a lowprec.autograd.Tensor"):
        lsq_fake_quant(np.ones(3), Tensor(np.ones(1)))
    with pytest.raises(ValueError, match="signed must be True, False or 'auto'"):
        LSQQuantizer(signed="yes")


def test_init_step_near_the_float64_limit_and_with_infinities():
    from fractions import Fraction
    # finite data whose sum overflows: the step is 2 mean|x| / sqrt(Q_p), the mean taken exactly
    x = np.r_[np.full(8, 1.5e308), np.full(8, -1.0e308), np.zeros(1008)]  # the sum 2e309 overflows
    exact = 2 * sum(Fraction(abs(v)) for v in x.tolist()) / len(x)
    for bits in (4, 8):
        step = float(lsq_init_step(x, bits=bits))
        want = exact / Fraction(np.sqrt(lsq_qrange(bits)[1]))
        assert abs(Fraction(step) - want) <= want * Fraction(2) ** -50
    # ... and the same per channel
    per = lsq_init_step(np.stack([x, x / 2 ** 900]), bits=8, axis=0)
    assert per[0] == lsq_init_step(x, bits=8) and per[1] == lsq_init_step(x / 2 ** 900, bits=8)
    # a step whose largest level is no float64: refused with the limit on mean|x|
    with pytest.raises(ValueError, match=r"x is too large for an LSQ step: mean\|x\| = 1\.7e\+308.*<= 7\.9"):
        lsq_init_step(np.full(4, 1.7e308), bits=8)
    with pytest.raises(ValueError, match="x contains 1 infinite value"):
        lsq_init_step(np.array([1.0, np.inf]))


def test_backward_on_empty_input():
    # nothing shares the step: its gradient is 0 (an empty sum), dx is empty
    dx, ds = lsq_backward(np.zeros(0), 0.5, np.zeros(0), bits=3)
    assert dx.shape == (0,) and float(ds) == 0.0
    dx, ds = lsq_backward(np.zeros((0, 3)), np.ones(3), np.zeros((0, 3)), bits=3, axis=1)
    assert dx.shape == (0, 3) and ds.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="n_per_scale must be a positive int, got 0"):
        lsq_grad_scale(0, 7)

"""Autograd ops: gradients against central finite differences in float64, rounding by role."""

import numpy as np
import pytest

from lowprec import round_to
from lowprec.amp import Precision
from lowprec.autograd import Tensor, add_bias, matmul, no_grad, softmax_cross_entropy
from lowprec.telemetry import Telemetry


def _fd_check(f, arrays, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Compare backward() of the scalar f(*tensors) with central differences for every input entry."""
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = f(*tensors)
    assert out.data.shape == ()
    out.backward()
    for t, a in zip(tensors, arrays):
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = [x.copy() for x in arrays], [x.copy() for x in arrays]
            k = [i for i, x in enumerate(arrays) if x is a][0]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            fp = float(f(*[Tensor(x) for x in plus]).data)
            fm = float(f(*[Tensor(x) for x in minus]).data)
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(t.grad, num, rtol=rtol, atol=atol)


rng = np.random.default_rng(1)
A = rng.standard_normal((3, 4))
B = rng.standard_normal((4, 5))
W = rng.standard_normal((3, 5))  # a fixed weighting so that every output entry matters
V = rng.standard_normal(5)


def test_matmul_grad():
    _fd_check(lambda a, b: ((a @ b) * Tensor(W)).sum(), [A, B])


def test_add_broadcast_grad():
    _fd_check(lambda a, b: ((a + b) * Tensor(W)).sum(), [rng.standard_normal((3, 5)), rng.standard_normal((1, 5))])


def test_add_bias_grad():
    _fd_check(lambda x, b: (add_bias(x, b) * Tensor(W)).sum(), [rng.standard_normal((3, 5)), V])


def test_mul_grad():
    _fd_check(lambda a, b: ((a * b) * Tensor(W)).mean(), [rng.standard_normal((3, 5)), rng.standard_normal((3, 5))])


def test_relu_grad_away_from_kink():
    x = rng.standard_normal((3, 5))
    x[np.abs(x) < 1e-3] = 0.5  # finite differences are undefined at 0
    _fd_check(lambda t: (t.relu() * Tensor(W)).sum(), [x])


def test_tanh_grad():
    _fd_check(lambda t: (t.tanh() * Tensor(W)).sum(), [rng.standard_normal((3, 5))])


def test_gelu_grad():
    _fd_check(lambda t: (t.gelu() * Tensor(W)).sum(), [2 * rng.standard_normal((3, 5))])


def test_gelu_values_tanh_form():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(Tensor(x).gelu().data, ref, rtol=1e-15)


def test_mean_axis_grad():
    _fd_check(lambda t: (t.mean(axis=0) * Tensor(V)).sum(), [rng.standard_normal((3, 5))])
    _fd_check(lambda t: t.mean(), [rng.standard_normal((3, 5))])


def test_sum_axis_grad():
    u = rng.standard_normal(3)
    _fd_check(lambda t: (t.sum(axis=1) * Tensor(u)).sum(), [rng.standard_normal((3, 5))])


def test_reshape_grad():
    _fd_check(lambda t: (t.reshape(3, 5) * Tensor(W)).sum(), [rng.standard_normal((5, 3))])


def test_sub_neg_grad():
    _fd_check(lambda a, b: ((a - b) * Tensor(W)).sum(), [rng.standard_normal((3, 5)), rng.standard_normal((3, 5))])


def test_softmax_cross_entropy_grad_and_value():
    logits = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 2])
    _fd_check(lambda z: softmax_cross_entropy(z, y), [logits])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ref = -np.mean(np.log(p[np.arange(4), y]))
    assert np.isclose(float(softmax_cross_entropy(Tensor(logits), y).data), ref, rtol=1e-14)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0], [-1000.0, 1000.0]])
    loss = softmax_cross_entropy(Tensor(z, requires_grad=True), [0, 0])
    assert np.isfinite(loss.data)
    assert np.isclose(float(loss.data), 1000.0)  # (0 + 2000) / 2


def test_chain_of_ops_grad():
    def f(x, w1, b1, w2):
        h = add_bias(x @ w1, b1).tanh()
        return softmax_cross_entropy(h @ w2, [1, 0, 2])
    _fd_check(f, [rng.standard_normal((3, 4)), rng.standard_normal((4, 6)), rng.standard_normal(6),
                  rng.standard_normal((6, 3))])


def test_shared_input_accumulates():
    x = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])


def test_no_grad_builds_no_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert y._prev == () and not y.requires_grad


def test_bad_shapes_clear_messages():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 2\)"):
        matmul(Tensor(np.ones((3, 4))), Tensor(np.ones((5, 2))))
    with pytest.raises(ValueError, match="cannot add tensors of shapes"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match="bias must have shape"):
        add_bias(Tensor(np.ones((2, 3))), Tensor(np.ones(4)))
    with pytest.raises(ValueError, match="labels must be in"):
        softmax_cross_entropy(Tensor(np.ones((2, 3))), [0, 3])
    with pytest.raises(ValueError, match="labels must have shape"):
        softmax_cross_entropy(Tensor(np.ones((2, 3))), [0, 1, 2])
    with pytest.raises(TypeError, match="float32/float64"):
        Tensor(np.array(["a"]))


def test_forward_and_backward_are_rounded_to_their_roles():
    """With bf16-mixed every forward value is bf16 and every gradient too (checked against round_to)."""
    tel = Telemetry()
    ctx = Precision("bf16-mixed", seed=0, telemetry=tel)
    a = Tensor(rng.standard_normal((4, 6)).astype(np.float32), ctx=ctx, requires_grad=True)
    b = Tensor(round_to(rng.standard_normal((6, 3)).astype(np.float32), "bf16"), ctx=ctx, requires_grad=True,
               is_param=True)
    tel.begin_step(0)
    h = (a @ b).tanh()
    for t in (h,):
        np.testing.assert_array_equal(t.data, round_to(t.data, "bf16"))
    loss = softmax_cross_entropy(h, [0, 1, 2, 0])
    loss.backward(1024.0)
    tel.end_step(1024.0)
    for g in (a.grad, b.grad):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, round_to(g, "bf16"))
    names = set(tel.steps[0]["tensors"])
    assert {"matmul", "tanh", "matmul.grad", "tanh.grad"} <= names
    assert tel.steps[0]["tensors"]["matmul.grad"]["role"] == "activation_grad"

"""Linear / MLP: gradients against a hand-written numpy reference, seeded init, policy hooks."""

import numpy as np
import pytest

from lowprec import round_to
from lowprec.amp import Precision, get_policy
from lowprec.autograd import MLP, Linear, Tensor, softmax_cross_entropy


def _numpy_mlp_grads(x, y, params, activation):
    """Forward and backward of an MLP by hand, in float64."""
    ws, bs = params[0::2], params[1::2]
    hs, pre = [x], []
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = hs[-1] @ w + b
        pre.append(z)
        if i < len(ws) - 1:
            hs.append(np.maximum(z, 0) if activation == "relu" else np.tanh(z))
    z = pre[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.mean(np.log(p[np.arange(n), y]))
    g = p.copy()
    g[np.arange(n), y] -= 1
    g /= n
    grads = [None] * len(params)
    for i in reversed(range(len(ws))):
        grads[2 * i] = hs[i].T @ g
        grads[2 * i + 1] = g.sum(axis=0)
        if i:
            g = g @ ws[i].T
            g = g * (pre[i - 1] > 0) if activation == "relu" else g * (1 - hs[i] ** 2)
    return loss, grads


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fp32_policy_grads_match_numpy_reference(activation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 12)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    mlp = MLP([12, 20, 7, 5], activation=activation, seed=4, ctx=Precision("fp32"))
    loss = softmax_cross_entropy(mlp(x), y)
    loss.backward()
    ref_loss, ref_grads = _numpy_mlp_grads(x.astype(np.float64), y,
                                           [p.data.astype(np.float64) for p in mlp.parameters()], activation)
    assert np.isclose(float(loss.data), ref_loss, rtol=1e-6)
    for p, g in zip(mlp.parameters(), ref_grads):
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_float64_without_runtime_matches_reference_tightly():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 6))
    y = rng.integers(0, 3, 8)
    mlp = MLP([6, 9, 3], activation="tanh", seed=1)
    softmax_cross_entropy(mlp(x), y).backward()
    _, ref = _numpy_mlp_grads(x, y, [p.data for p in mlp.parameters()], "tanh")
    for p, g in zip(mlp.parameters(), ref):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-15)


def test_seeded_init_is_reproducible_and_bounded():
    a = MLP([10, 8, 3], seed=7)
    b = MLP([10, 8, 3], seed=7)
    c = MLP([10, 8, 3], seed=8)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert not np.array_equal(a.parameters()[0].data, c.parameters()[0].data)
    w = a.layers[0].weight.data
    assert np.abs(w).max() <= np.sqrt(6 / 10)
    np.testing.assert_array_equal(a.layers[0].bias.data, 0.0)


def test_stored_weights_are_in_the_weight_format():
    mlp = MLP([10, 8, 3], seed=0, ctx=Precision("fp8-mixed"))
    w = mlp.layers[0].weight.data
    np.testing.assert_array_equal(w, round_to(w, "bf16"))  # fp8-mixed stores bf16 weights
    used = mlp.layers[0].weight_used().data
    np.testing.assert_array_equal(used, round_to(w, "fp8_e4m3fn"))


def test_fake_quant_hooks_are_called_and_applied():
    calls = []

    class Halve:
        def __init__(self):
            self.scale = Tensor(np.float32(0.5), requires_grad=True, is_param=True)

        def __call__(self, t):
            return t * self.scale

        def parameters(self):
            return [self.scale]

    def weight_factory(layer_index, out_features):
        calls.append(("w", layer_index, out_features))
        return Halve()

    def act_factory(layer_index, out_features):
        calls.append(("a", layer_index, out_features))
        return None if layer_index == 0 else Halve()

    policy = get_policy("fp32").replace(name="halve-test", weight_fake_quant=weight_factory,
                                        act_fake_quant=act_factory)
    ctx = Precision(policy)
    mlp = MLP([4, 6, 2], seed=0, ctx=ctx)
    assert calls == [("w", 0, 6), ("a", 0, 6), ("w", 1, 2), ("a", 1, 2)]
    assert len(mlp.parameters()) == 4 + 3  # weights, biases, two weight scales, one activation scale
    x = np.ones((3, 4), dtype=np.float32)
    h = np.maximum(x @ (0.5 * mlp.layers[0].weight.data) + mlp.layers[0].bias.data, 0)
    ref = (0.5 * h) @ (0.5 * mlp.layers[1].weight.data) + mlp.layers[1].bias.data
    np.testing.assert_allclose(mlp(x).data, ref, rtol=1e-6)
    softmax_cross_entropy(mlp(x), [0, 1, 0]).backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least input and output"):
        MLP([4])
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        MLP([4, 2], activation="sigmoid")
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        Linear(0, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="expects inputs with 4 features"):
        MLP([4, 2])(np.ones((3, 5)))

"""Optimizers: update formulas, master weights, low-precision updates, state format, checkpoints."""

import numpy as np
import pytest

from lowprec import round_to
from lowprec.amp import Precision, get_policy
from lowprec.autograd import SGD, Adam, Tensor, clip_grad_norm


def _param(values, ctx=None, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True, is_param=True, ctx=ctx, name="w")


def test_sgd_momentum_weight_decay_by_hand():
    w = _param([1.0, -2.0])
    opt = SGD([w], lr=0.5, momentum=0.5, weight_decay=0.25)
    w.grad = np.array([1.0, 1.0])
    opt.step()
    # g = 1 + 0.25 w = (1.25, 0.5); buf = g; w -= 0.5 buf -> (0.375, -2.25)
    np.testing.assert_array_equal(w.data, [0.375, -2.25])
    w.grad = np.array([1.0, 1.0])
    opt.step()
    # g = 1 + 0.25 w = (1.09375, 0.4375); buf = 0.5 (1.25, 0.5) + g = (1.71875, 0.6875)
    np.testing.assert_array_equal(w.data, [0.375 - 0.859375, -2.25 - 0.34375])


def test_adam_matches_formula():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5)
    grads = rng.standard_normal((4, 5))
    w = _param(w0)
    opt = Adam([w], lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    m = v = np.zeros(5)
    ref = w0.copy()
    for t, g in enumerate(grads, 1):
        w.grad = g.copy()
        opt.step()
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        ref = ref - 0.01 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(w.data, ref, rtol=1e-12)


def test_master_weights_keep_small_updates_that_pure_fp16_loses():
    """w = 1, update 2**-13 per step: below half an fp16 ulp (2**-12 just under 1)."""
    g = np.full(3, 2.0 ** -13, dtype=np.float32)
    pure = _param(np.ones(3), ctx=Precision("pure-fp16"), dtype=np.float32)
    mixed = _param(np.ones(3), ctx=Precision("fp16-mixed"), dtype=np.float32)
    opt_p = SGD([pure], lr=1.0)
    opt_m = SGD([mixed], lr=1.0)
    stored = []
    for _ in range(4):
        for p, o in ((pure, opt_p), (mixed, opt_m)):
            p.grad = g.copy()
            o.step()
        stored.append(float(mixed.data[0]))
    np.testing.assert_array_equal(pure.data, 1.0)  # 1 - 2**-13 rounds back to 1 every time
    np.testing.assert_array_equal(opt_m.master[0], 1 - 4 * 2.0 ** -13)
    # master 1-2**-13 -> 1; 1-2**-12 is a tie between 1-2**-11 and 1 -> even (1); 1-3*2**-13 -> 1-2**-11
    assert stored == [1.0, 1.0, 1 - 2.0 ** -11, 1 - 2.0 ** -11]


def test_stochastic_updates_are_unbiased():
    """Each of 4096 fp16 weights at 1 moves to 1 - 2**-11 with probability 1/4 (update 2**-13)."""
    pol = get_policy("pure-fp16")
    pol = pol.replace(name="pure-fp16-sr", table={**pol.table, "weight": ("fp16", "stochastic")})
    w = _param(np.ones(4096), ctx=Precision(pol, seed=3), dtype=np.float32)
    opt = SGD([w], lr=1.0)
    w.grad = np.full(4096, 2.0 ** -13, dtype=np.float32)
    opt.step()
    assert set(np.unique(w.data)) <= {1.0, np.float32(1 - 2.0 ** -11)}
    frac = np.mean(w.data != 1.0)
    sigma = np.sqrt(0.25 * 0.75 / 4096)
    assert abs(frac - 0.25) < 5 * sigma
    assert opt.update_streams[0].offset == 4096  # the stream advanced: the next step draws fresh bits


def test_optimizer_state_is_in_the_stated_format():
    rng = np.random.default_rng(2)
    ctx = Precision("pure-fp16")
    w = _param(round_to(rng.standard_normal(50).astype(np.float32), "fp16"), ctx=ctx, dtype=np.float32)
    opt = Adam([w], lr=1e-3)
    for _ in range(3):
        w.grad = round_to(rng.standard_normal(50).astype(np.float32) * 1e-2, "fp16")
        opt.step()
    for s in opt.state[0]:
        np.testing.assert_array_equal(s, round_to(s, "fp16"))
    np.testing.assert_array_equal(w.data, round_to(w.data, "fp16"))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(20).astype(np.float32) for _ in range(6)]
    pol = get_policy("bf16-mixed")
    pol = pol.replace(name="bf16-sr-test", table={**pol.table, "optimizer_state": ("bf16", "stochastic")})

    def make():
        w = _param(np.linspace(-1, 1, 20), ctx=Precision(pol, seed=9), dtype=np.float32)
        return w, SGD([w], lr=0.1, momentum=0.9)

    w1, o1 = make()
    for g in grads:
        w1.grad = g.copy()
        o1.step()
    w2, o2 = make()
    for g in grads[:3]:
        w2.grad = g.copy()
        o2.step()
    saved, data = o2.state_dict(), w2.data.copy()
    w3, o3 = make()
    w3.data = data
    o3.load_state_dict(saved)
    for g in grads[3:]:
        w3.grad = g.copy()
        o3.step()
    np.testing.assert_array_equal(w3.data, w1.data)
    np.testing.assert_array_equal(o3.master[0], o1.master[0])
    np.testing.assert_array_equal(o3.state[0][0], o1.state[0][0])


def test_clip_grad_norm():
    a, b = _param([0.0, 0.0]), _param([0.0])
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert clip_grad_norm([a, b], 10.0) == 5.0
    np.testing.assert_array_equal(a.grad, [3.0, 0.0])
    clip_grad_norm([a, b], 2.5)
    assert np.isclose(np.sqrt(np.sum(a.grad ** 2) + np.sum(b.grad ** 2)), 2.5)


def test_bad_arguments():
    w = _param([1.0])
    with pytest.raises(ValueError, match="lr must be a positive"):
        SGD([w], lr=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        SGD([w], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([], lr=0.1)
    with pytest.raises(ValueError, match="betas must be in"):
        Adam([w], betas=(0.9, 1.5))

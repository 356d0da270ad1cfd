"""Fake quantization in the autograd, QAT policies in training, export to integer-only inference."""

import numpy as np
import pytest

import lowprec.quant.qat as qat
from lowprec import amp
from lowprec.autograd import SGD, Tensor, no_grad
from lowprec.data import Dataset, load_digits
from lowprec.quant.affine import fake_quantize
from lowprec.quant.companding import companding_fake_quant_backward
from lowprec.quant.fake_quant import (CompandingFakeQuantizer, MinMaxQuantizer, companding_fake_quant,
                                      fake_quant)
from lowprec.quant.intinfer import reference_forward
from lowprec.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def test_policies_are_registered():
    names = amp.policy_names()
    for n in ("int8-qat", "int8-qat-minmax", "int4-qat"):
        assert n in names
        p = amp.get_policy(n)
        assert p.weight_fake_quant is not None and p.act_fake_quant is not None and not p.master_weights
        TrainConfig(precision=n).validate()
    wq = amp.get_policy("int8-qat").weight_fake_quant(0, 5)
    assert wq.channels == 5 and wq.narrow_range and len(wq.parameters()) == 1


def test_fake_quant_op_straight_through_masked_outside_the_range():
    xv = np.array([[-5.0, -1.0, 0.3], [0.74, 0.76, 9.0]])
    x = Tensor(xv, requires_grad=True)
    s = np.array([0.5, 0.25, 0.1])  # per channel along axis 1, 3-bit signed: range [-4 s, 3 s]
    y = fake_quant(x, s, 0, bits=3, axis=1)
    assert np.array_equal(y.data, fake_quantize(xv, s, 0, bits=3, axis=1))
    g = np.arange(1.0, 7.0).reshape(2, 3)
    (y * g).sum().backward()
    lo, hi = -4 * s, 3 * s
    assert np.array_equal(x.grad, np.where((xv >= lo) & (xv <= hi), g, 0.0))
    assert x.grad.tolist() == [[0.0, 2.0, 3.0], [4.0, 0.0, 0.0]]  # 0.76 > 3 * 0.25: outside


def test_companding_op_gradients_and_training_alpha_beta():
    rng = np.random.default_rng(0)
    data = rng.laplace(size=2000)
    xmax = float(np.abs(data).max())
    a = Tensor(np.array([1.0]), requires_grad=True, is_param=True)
    b = Tensor(np.array([0.0]), requires_grad=True, is_param=True)
    x = Tensor(data)
    y = companding_fake_quant(x, a, b, xmax, bits=4)
    loss = ((y - data) * (y - data)).mean()
    loss.backward()
    g = 2 * (y.data - data) / data.size
    _, da, db = companding_fake_quant_backward(data, 1.0, 0.0, xmax, 4, g)
    assert a.grad[0] == pytest.approx(da, rel=1e-12) and b.grad[0] == pytest.approx(db, rel=1e-12)
    # a few SGD steps on (alpha, beta) lower the quantization MSE of heavy-tailed data below uniform's
    q = CompandingFakeQuantizer(bits=4, alpha=1.0, beta=0.0, x_max=xmax)
    opt = SGD(q.parameters(), lr=0.5)
    first = None
    for _ in range(40):
        out = q(Tensor(data))
        mse = ((out - data) * (out - data)).mean()
        first = float(mse.data) if first is None else first
        opt.zero_grad()
        mse.backward()
        opt.step()
        q.alpha.data = np.maximum(q.alpha.data, 1e-3)
        q.beta.data = np.maximum(q.beta.data, 0.0)
    final = float(((q(Tensor(data)) - data) * (q(Tensor(data)) - data)).mean().data)
    assert final < 0.9 * first and q.beta.data[0] > 0


def test_minmax_activation_observer_updates_only_while_training():
    q = MinMaxQuantizer(8, "activation", averaging_constant=0.5)
    q(Tensor(np.array([-1.0, 1.0])))
    with no_grad():
        q(Tensor(np.array([-10.0, 10.0])))
    assert q.observer.range() == (-1.0, 1.0)
    q(Tensor(np.array([-3.0, 3.0])))
    assert q.observer.range() == (-2.0, 2.0)


def _small_digits(n_train=600, n_test=300):
    ds = load_digits(seed=0)
    return Dataset(ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test], ds.y_test[:n_test], "digits-small")


@pytest.mark.parametrize("policy", ["int8-qat", "int8-qat-minmax"])
def test_qat_training_then_integer_only_inference(policy):
    ds = _small_digits()
    res = train(TrainConfig(precision=policy, epochs=3, hidden=(16,), telemetry=False), dataset=ds)
    assert res.test_accuracy > 0.75
    for acc in ("wrap", "saturate"):
        im = qat.export_qat_mlp(res.model, ds.x_train[:200], accumulator=acc)
        q = im.quantize_input(ds.x_test[:30])
        assert im.forward(q).tolist() == reference_forward(im, q.tolist())
    rep = qat.compare_integer(res.model, im, ds.x_test, ds.y_test)
    assert rep["fake_quant_accuracy"] == pytest.approx(res.test_accuracy, abs=1e-12)
    assert abs(rep["integer_accuracy"] - rep["fake_quant_accuracy"]) <= 0.03 and rep["agreement"] >= 0.95


def test_exported_scales_are_the_quantizers():
    ds = _small_digits(200, 50)
    res = train(TrainConfig(precision="int8-qat", epochs=1, hidden=(8,), telemetry=False), dataset=ds)
    im = qat.export_qat_mlp(res.model, ds.x_train[:100])
    for layer, il in zip(res.model.layers, im.layers):
        s, z, signed = layer.act_quant.qparams()
        assert il.in_scale == s and il.in_zero_point == z
        assert np.array_equal(il.weight_scale, layer.weight_quant.qparams()[0])
        # the integer weights are the fake-quantized weights divided by their scale
        with no_grad():
            wq = layer.weight_quant(layer.weight).data.astype(np.float64)
        assert np.array_equal((il.weight.astype(np.float64) * il.weight_scale).astype(np.float32), wq)
    assert im.layers[0].in_zero_point == 0 and im.layers[1].in_zero_point == -128  # ReLU outputs: unsigned


def test_cli_train_with_a_qat_policy(capsys):
    from lowprec.cli import main

    assert main(["train", "--precision", "int8-qat", "--epochs", "1", "--hidden", "8", "--no-telemetry",
                 "--quiet"]) == 0
    assert "int8-qat" in capsys.readouterr().out


@pytest.mark.slow
def test_qat_accuracy_next_to_fp32_on_digits():
    ds = load_digits(seed=0)
    accs = {}
    for p in ("fp32", "int8-qat", "int8-qat-minmax", "int4-qat"):
        accs[p] = train(TrainConfig(precision=p, epochs=10, hidden=(64,), telemetry=False), dataset=ds).test_accuracy
    assert accs["int8-qat"] >= accs["fp32"] - 0.02 and accs["int8-qat-minmax"] >= accs["fp32"] - 0.02
    assert accs["int4-qat"] >= accs["fp32"] - 0.06


def test_export_bad_input():
    ds = _small_digits(100, 20)
    res = train(TrainConfig(precision="fp32", epochs=1, hidden=(4,), telemetry=False), dataset=ds)
    with pytest.raises(ValueError, match="no fake quantizer"):
        qat.export_qat_mlp(res.model, ds.x_train)
    res4 = train(TrainConfig(precision="int4-qat", epochs=1, hidden=(4,), telemetry=False), dataset=ds)
    with pytest.raises(ValueError, match="8-bit"):
        qat.export_qat_mlp(res4.model, ds.x_train)
    with pytest.raises(ValueError, match="method must be"):
        qat.qat_policy("x", method="kl")


def test_quantizer_state_round_trips_what_parameters_do_not_hold():
    """state_dict/load_state_dict: an EMA observer's range and count, LSQ signedness, companding x_max."""
    from lowprec.quant.fake_quant import LSQQuantizer

    a = MinMaxQuantizer(8, "activation", averaging_constant=0.5)
    for batch in ([-1.0, 3.0], [0.0, 5.0]):
        a(Tensor(np.array(batch)))
    b = MinMaxQuantizer(8, "activation", averaging_constant=0.5)
    b.load_state_dict(a.state_dict())
    assert b.qparams() == a.qparams() and b.observer.count == 2
    x = Tensor(np.array([-0.3, 4.0]))
    np.testing.assert_array_equal(a(x).data, b(x).data)  # the next EMA update starts from the same range
    assert a.observer.lo == b.observer.lo and a.observer.hi == b.observer.hi
    w = MinMaxQuantizer(8, "weight")
    w(Tensor(np.array([[1.0, -2.0]])))
    w2 = MinMaxQuantizer(8, "weight")
    w2.load_state_dict(w.state_dict())
    np.testing.assert_array_equal(w2.qparams()[0], w.qparams()[0])
    with pytest.raises(ValueError, match="quantizes weights"):
        w2.load_state_dict(a.state_dict())
    lsq = LSQQuantizer(4, "auto")
    lsq(Tensor(np.array([0.0, 1.0])))
    fresh = LSQQuantizer(4, "auto")
    fresh.load_state_dict(lsq.state_dict())
    assert fresh.signed is False
    c = CompandingFakeQuantizer(4)
    c(Tensor(np.array([0.5, -2.0])))
    c2 = CompandingFakeQuantizer(4)
    c2.load_state_dict(c.state_dict())
    assert c2.x_max == 2.0

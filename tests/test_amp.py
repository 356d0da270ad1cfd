"""Precision policies and loss scaling."""

import numpy as np
import pytest

from lowprec.amp import (ROLES, LossScaler, Policy, Precision, get_policy, parse_loss_scale, policy_bytes,
                         policy_names, register_policy)
from lowprec.autograd import MLP, SGD, Tensor, softmax_cross_entropy
from lowprec.formats import FP8_E4M3FN, FP8_E5M2, FP16, FP32
from lowprec.rounding import Rounding


def _table(fmt, master="fp32"):
    return {r: fmt for r in ROLES if r != "master"} | {"master": master}


def test_package_reexports_each_module_public_names():
    """lowprec.amp is a package of one concept per module; the package re-exports their public names."""
    import lowprec.amp as amp
    from lowprec.amp import blockscaled, hardware, policies, registry, runtime, scaler, scaling

    homes = {policies: ["ROLES", "Policy", "policy_bytes"],
             registry: ["register_policy", "get_policy", "policy_names"],
             runtime: ["Precision"], scaler: ["LossScaler", "parse_loss_scale"],
             scaling: ["ScalingRecipe", "TensorScaler", "scale_from_amax", "scaled_cast"],
             blockscaled: ["BlockRecipe", "block_policy"], hardware: ["resolve_hardware"]}
    for module, names in homes.items():
        assert set(names) <= set(module.__all__), module.__name__
        for name in names:
            assert getattr(amp, name) is getattr(module, name), name
    assert sorted(amp.__all__) == sorted(n for names in homes.values() for n in names)
    assert Precision.__module__ == "lowprec.amp.runtime" and Policy.__module__ == "lowprec.amp.policies"
    # importing the registry registers the built-in policies, in order
    assert policy_names()[:5] == [p.name for p in policies.PRESETS] == [
        "fp32", "fp16-mixed", "bf16-mixed", "fp8-mixed", "pure-fp16"]
    assert all(get_policy(p.name) is p for p in policies.PRESETS)


def test_presets():
    assert {"fp32", "fp16-mixed", "bf16-mixed", "fp8-mixed", "pure-fp16"} <= set(policy_names())
    fp8 = get_policy("fp8-mixed")
    assert fp8.format("weight_used") == FP8_E4M3FN and fp8.format("activation") == FP8_E4M3FN
    assert fp8.format("activation_grad") == FP8_E5M2 and fp8.format("weight_grad") == FP8_E5M2
    assert fp8.forward_accumulation == "e4m3-fp32" and fp8.backward_accumulation == "e5m2-e4m3-fp32"
    pure = get_policy("pure-fp16")
    assert not pure.master_weights and pure.format("optimizer_state") == FP16
    mixed = get_policy("fp16-mixed")
    assert mixed.master_weights and mixed.format("master") == FP32 and mixed.loss_scale == "dynamic"
    assert all(get_policy("fp32").format(r) == FP32 for r in ROLES if r != "master")


def test_every_preset_names_known_accumulations():
    from lowprec.accumulation import get_accumulation

    for name in ("fp32", "fp16-mixed", "bf16-mixed", "fp8-mixed", "pure-fp16"):
        p = get_policy(name)
        get_accumulation(p.forward_accumulation)
        get_accumulation(p.backward_accumulation)


def test_user_policy_registration_and_errors():
    p = Policy("test-user-bf16-sr", _table("bf16", master=None) | {"weight": ("bf16", "stochastic")}, "bf16-fp32",
               "bf16-fp32")
    assert p.update_rounding is Rounding.STOCHASTIC
    register_policy(p)
    assert get_policy("test-user-bf16-sr") is p
    register_policy(p)  # the same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_policy(p.replace(forward_accumulation="fp32"))
    with pytest.raises(ValueError, match="unknown precision policy 'nope'.*fp32.*bf16-mixed"):
        get_policy("nope")
    with pytest.raises(ValueError, match="unknown format 'fp13'"):
        Policy("bad", _table("fp13"))
    with pytest.raises(ValueError, match="unknown rounding"):
        Policy("bad", _table(("fp16", "sideways")))
    with pytest.raises(ValueError, match=r"misses role\(s\) \['master'\]"):
        Policy("bad", {r: "fp16" for r in ROLES if r != "master"})
    with pytest.raises(ValueError, match="unknown policy role"):
        Policy("bad", _table("fp16") | {"gradients": "fp16"})
    with pytest.raises(ValueError, match="only 'master' may be None"):
        Policy("bad", _table("fp16") | {"activation": None})
    with pytest.raises(ValueError, match="does not fit in the float32"):
        Policy("bad", _table("fp16") | {"activation": "int32"})
    with pytest.raises(TypeError, match="weight_fake_quant must be None or a factory"):
        Policy("bad", _table("fp16"), weight_fake_quant=3)


def test_precision_round_by_role():
    ctx = Precision("fp16-mixed")
    x = np.array([1 + 2.0 ** -12, 70000.0, 1e-9], dtype=np.float32)
    np.testing.assert_array_equal(ctx.round(x, "activation"), np.float32([1.0, np.inf, 0.0]))
    assert ctx.round(x, "master") is x  # fp32 role on float32 data: identity


def test_policy_bytes_by_hand():
    # fp16-mixed, SGD momentum: 1000 params: fp16 weights 2000 B, fp32 master 4000 B, fp16 grads 2000 B,
    # fp32 momentum 4000 B; 500 activations: 1000 B each for values and gradients.
    b = policy_bytes("fp16-mixed", 1000, 500, 1)
    assert b == {"weight": 2000, "master": 4000, "weight_grad": 2000, "optimizer_state": 4000,
                 "activation": 1000, "activation_grad": 1000, "total": 14000}
    assert policy_bytes("fp8-mixed", 10, 10, 0)["activation"] == 10
    assert policy_bytes("pure-fp16", 10, 0, 2)["master"] == 0


def test_parse_loss_scale():
    assert parse_loss_scale("none") == ("none", None)
    assert parse_loss_scale("static:128") == ("static", 128.0)
    for bad in ("static:-1", "static:x", "static:inf", "auto"):
        with pytest.raises(ValueError):
            parse_loss_scale(bad)


def test_dynamic_scaler_state_sequence():
    """init 1024, growth 2, backoff 0.5, interval 3; the expected states were derived by hand:

    step  inf?  scale after  tracker after  stepped
      1    no      1024           1           yes
      2    no      1024           2           yes
      3    no      2048           0           yes   (3 clean steps: grow)
      4    yes     1024           0           no    (back off, reset)
      5    no      1024           1           yes
      6    yes      512           0           no
      7    yes      256           0           no
      8    no       256           1           yes
      9    no       256           2           yes
     10    no       512           0           yes
     11    no       512           1           yes
    """
    pattern = [False, False, False, True, False, True, True, False, False, False, False]
    expected = [(1024, 1, True), (1024, 2, True), (2048, 0, True), (1024, 0, False), (1024, 1, True),
                (512, 0, False), (256, 0, False), (256, 1, True), (256, 2, True), (512, 0, True), (512, 1, True)]
    w = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True, is_param=True, name="w",
               ctx=Precision("fp32"))
    opt = SGD([w], lr=1.0, momentum=0.5)
    scaler = LossScaler("dynamic", init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    got = []
    for found_inf in pattern:
        before_w, before_state = w.data.copy(), [None if s is None else s.copy() for s in opt.state[0]]
        g = np.array([scaler.scale * 2.0 ** -10, np.inf if found_inf else scaler.scale * 2.0 ** -9], np.float32)
        w.grad = g
        assert scaler.unscale_(opt) == found_inf
        stepped = scaler.step(opt)
        scaler.update()
        got.append((scaler.scale, scaler.growth_tracker, stepped))
        if not stepped:  # skipped: weights and optimizer state bit-for-bit untouched
            np.testing.assert_array_equal(w.data.view(np.uint32), before_w.view(np.uint32))
            for a, b in zip(opt.state[0], before_state):
                assert (a is None and b is None) or np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert got == expected
    assert opt.steps == 8  # only the 8 clean steps reached the optimizer


def test_growth_only_to_a_finite_scale():
    s = LossScaler("dynamic", init_scale=2.0 ** 127, growth_interval=1)
    s.update()
    assert s.scale == 2.0 ** 127 and s.growth_tracker == 0  # 2**128 overflows float32: not taken
    s = LossScaler("dynamic", init_scale=2.0 ** 126, growth_interval=1)
    s.update()
    assert s.scale == 2.0 ** 127


def _gradscaler_reference(init_scale, growth_factor, backoff_factor, growth_interval, pattern):
    """torch's GradScaler written from aten's _amp_update_scale_cpu_kernel with numpy scalars.

    The scale is a float32 tensor (``torch.full((), init_scale, dtype=float32)``); the factors are
    C++ doubles; ``*scale = *scale * backoff`` and ``new = static_cast<float>(*scale * growth)``
    multiply in double and store to float; growth is taken only when the float32 result is finite.
    """
    scale, tracker, out = np.float32(init_scale), 0, []
    for found_inf in pattern:
        if found_inf:
            scale, tracker = np.float32(np.float64(scale) * np.float64(backoff_factor)), 0
        elif tracker + 1 == growth_interval:
            with np.errstate(over="ignore"):
                new = np.float32(np.float64(scale) * np.float64(growth_factor))
            scale, tracker = (new if np.isfinite(new) else scale), 0
        else:
            tracker += 1
        out.append((float(scale), tracker))
    return out


def _drive(scaler, pattern):
    out = []
    for found_inf in pattern:
        scaler._found_inf = found_inf
        scaler.update()
        out.append((scaler.scale, scaler.growth_tracker))
    return out


def test_scale_is_float32_like_gradscaler():
    # one overflow with backoff 0.7: torch's float32 scale is 45875.19921875, not 65536 * 0.7 = 45875.2
    s = LossScaler("dynamic", backoff_factor=0.7)
    assert _drive(s, [True]) == [(45875.19921875, 0)]
    # growth 1.5 every step, with occasional overflows: float32 rounding at every update, for 400 steps
    rng = np.random.default_rng(3)
    pattern = list(rng.random(400) < 0.3)
    for kw in ({"growth_factor": 1.5, "backoff_factor": 0.7, "growth_interval": 1},
               {"growth_factor": 1.1, "backoff_factor": 0.3, "growth_interval": 2},
               {"growth_factor": 3.0, "backoff_factor": 0.9, "growth_interval": 1, "init_scale": 0.1}):
        want = _gradscaler_reference(kw.get("init_scale", 2.0 ** 16), kw["growth_factor"], kw["backoff_factor"],
                                     kw["growth_interval"], pattern)
        assert _drive(LossScaler("dynamic", **kw), pattern) == want
    # init_scale itself is rounded to float32
    assert LossScaler("dynamic", init_scale=0.1).scale == float(np.float32(0.1))
    # growth whose float32 product overflows is refused even when the float64 product is below 2^128
    top = float(np.finfo(np.float32).max)
    s = LossScaler("dynamic", init_scale=top, growth_factor=1.0 + 2.0 ** -30, growth_interval=1)
    assert _drive(s, [False]) == [(top, 0)]  # the float64 product rounds to float32 max: finite, taken


def test_scale_underflows_to_zero_like_gradscaler():
    s = LossScaler("dynamic", init_scale=2.0 ** -148)
    assert _drive(s, [True, True, True]) == [(2.0 ** -149, 0), (0.0, 0), (0.0, 0)]
    assert _drive(s, [False] * 3) == _gradscaler_reference(0.0, 2.0, 0.5, 2000, [False] * 3)
    # a zero scale unscales by Inf (float32(1 / 0.0)): every gradient is non-finite and the step skipped
    w = Tensor(np.ones(2, dtype=np.float32), requires_grad=True, is_param=True, ctx=Precision("fp32"))
    opt = SGD([w], lr=1.0)
    w.grad = np.array([0.0, 1.0], dtype=np.float32)
    assert s.unscale_(opt) and not s.step(opt)
    np.testing.assert_array_equal(w.data, [1.0, 1.0])
    s.update()
    assert s.scale == 0.0
    with pytest.raises(ValueError, match="init_scale must be positive and finite in float32"):
        LossScaler("dynamic", init_scale=1e39)
    with pytest.raises(ValueError, match="init_scale"):
        LossScaler("dynamic", init_scale=1e-50)


def test_state_dict_scale_is_float32():
    s = LossScaler("dynamic")
    s.load_state_dict({**s.state_dict(), "scale": 45875.2})  # a float64 scale saved by an older lowprec
    assert s.scale == 45875.19921875


def test_static_and_none_modes():
    s = LossScaler.from_spec("static:64")
    s._found_inf = True
    s.update()
    assert s.scale == 64.0 and s.mode == "static"
    n = LossScaler.from_spec("none")
    assert n.scale == 1.0
    w = Tensor(np.ones(1, dtype=np.float32), requires_grad=True, is_param=True, ctx=Precision("fp32"))
    opt = SGD([w], lr=1.0)
    w.grad = np.array([np.nan], dtype=np.float32)
    assert n.step(opt)  # without loss scaling nothing protects the weights
    assert np.isnan(w.data[0])


def test_scaler_defaults_are_gradscaler_defaults():
    s = LossScaler()
    assert (s.scale, s.growth_factor, s.backoff_factor, s.growth_interval) == (65536.0, 2.0, 0.5, 2000)
    with pytest.raises(ValueError, match="growth_interval"):
        LossScaler(growth_interval=0)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(backoff_factor=1.5)


def test_overflowing_scale_backs_off_in_a_real_fp16_model():
    """Scale 2**30 makes fp16 gradients overflow: the step is skipped and the scale halves."""
    ctx = Precision("fp16-mixed", seed=0)
    mlp = MLP([8, 16, 3], seed=0, ctx=ctx)
    opt = SGD(mlp.parameters(), lr=0.1)
    scaler = LossScaler("dynamic", init_scale=2.0 ** 30)
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    y = np.arange(32) % 3
    before = [p.data.copy() for p in mlp.parameters()]
    loss = softmax_cross_entropy(mlp(x), y)
    loss.backward(scaler.scale)
    scaler.unscale_(opt)
    assert scaler.found_inf
    assert not scaler.step(opt)
    scaler.update()
    assert scaler.scale == 2.0 ** 29
    for p, b in zip(mlp.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
    for _ in range(40):  # keep stepping: the scale comes down until the gradients are finite
        opt.zero_grad()
        softmax_cross_entropy(mlp(x), y).backward(scaler.scale)
        scaler.unscale_(opt)
        stepped = scaler.step(opt)
        scaler.update()
        if stepped:
            break
    assert stepped and scaler.scale < 2.0 ** 29
    assert np.log2(scaler.scale) == int(np.log2(scaler.scale))  # halvings of a power of two
    assert any(not np.array_equal(p.data, b) for p, b in zip(mlp.parameters(), before))

"""Tensor scaling (lowprec.amp.scaling): delayed/current/rowwise scales, scaled casts, the fp8 policies."""

from fractions import Fraction

import numpy as np
import pytest

from lowprec import round_to
from lowprec.amp import Precision, ScalingRecipe, TensorScaler, get_policy, policy_names, scale_from_amax, scaled_cast
from lowprec.amp import scaling as S
from lowprec.autograd import MLP, softmax_cross_entropy
from lowprec.formats import FP8_E4M3FN, FP8_E5M2, FP32
from lowprec.linalg import matmul as lmatmul

INF = float("inf")
#: scripted amaxes: zero first, growth, an Inf, decay, a zero in between
AMAXES = [0.0, 2.0, INF, 4.0, 1.0, 8.0, 0.0, 0.5]


def _run(history_len, algo, margin):
    t = TensorScaler(ScalingRecipe("delayed", history_len=history_len, amax_compute=algo, margin=margin),
                     "fp8_e4m3fn")
    used, after, hist = [], [], []
    for a in AMAXES:
        used.append(float(t.scale))  # the scale a step casts with: computed from earlier steps only
        after.append(float(t.observe(np.float32(a))))
        hist.append(t.history.tolist())
    return used, after, hist


# Hand-computed with max(e4m3) = 448: scale = 448 / amax / 2**margin, the previous scale kept when the
# reduced amax is 0 or not finite; the first step casts with 1.
HAND = {
    (1, "max", 0): [1, 224, 224, 112, 448, 56, 56, 896],
    (1, "most_recent", 0): [1, 224, 224, 112, 448, 56, 56, 896],
    (1, "max", 2): [1, 56, 56, 28, 112, 14, 14, 224],
    (16, "most_recent", 0): [1, 224, 224, 112, 448, 56, 56, 896],
    (16, "most_recent", 2): [1, 56, 56, 28, 112, 14, 14, 224],
    # the Inf stays in a 16-long window: the scale is frozen at its last finite value
    (16, "max", 0): [1, 224, 224, 224, 224, 224, 224, 224],
    (16, "max", 2): [1, 56, 56, 56, 56, 56, 56, 56],
    # a 2-long window: [0,0] [0,2] [2,inf] [inf,4] [4,1] [1,8] [8,0] [0,.5]
    (2, "max", 0): [1, 224, 224, 224, 112, 56, 56, 896],
}


@pytest.mark.parametrize("key", sorted(HAND, key=str))
def test_delayed_scale_sequence_matches_hand_computed(key):
    used, after, hist = _run(*key)
    assert after == HAND[key]
    assert used == [1.0] + HAND[key][:-1]  # a step uses the scale of the previous steps' amaxes
    n = key[0]
    for i, h in enumerate(hist):  # the history: the last n amaxes, oldest first, zeros before the first
        seen = [0.0] * n + AMAXES[:i + 1]
        assert h == seen[-n:]


def _f32_nearest(fr: Fraction) -> np.float32:
    """The float32 nearest to a positive Fraction (ties to even), checked against its neighbours."""
    c = np.float32(float(fr))
    cands = [np.nextafter(c, np.float32(0)), c, np.nextafter(c, np.float32(INF))]
    best = min(cands, key=lambda v: (abs(Fraction(float(v)) - fr), int(np.float32(v).view(np.uint32)) & 1))
    return np.float32(best)


@pytest.mark.parametrize("margin", [0, 2])
def test_scale_is_the_correctly_rounded_float32_quotient(margin):
    rng = np.random.default_rng(0)
    amaxes = np.float32(np.exp(rng.uniform(-20, 10, size=200)))
    for fmt in (FP8_E4M3FN, FP8_E5M2):
        got = scale_from_amax(amaxes, fmt.max, margin)
        for a, s in zip(amaxes, got):
            ref = _f32_nearest(Fraction(fmt.max) / Fraction(float(a)) / 2 ** margin)
            assert s == ref
            assert scale_from_amax(a, fmt.max, margin) == ref  # the scalar path too
            p2s = scale_from_amax(a, fmt.max, margin, power_of_two=True)
            assert p2s <= ref < 2 * p2s and np.frexp(p2s)[0] == 0.5
        p2 = scale_from_amax(amaxes, fmt.max, margin, power_of_two=True)
        assert np.all(p2 <= got) and np.all(p2 > got / 2)
        assert np.all(np.frexp(p2)[0] == 0.5)  # powers of two
        assert np.all(amaxes.astype(np.float64) * p2 <= fmt.max)  # rounded down: the amax never clips
    assert scale_from_amax(np.float32(1e-45), 448.0) == np.finfo(np.float32).max  # 448 / tiny: float32 max


def test_the_scalar_scale_path_equals_the_array_path_at_the_range_ends():
    """One amax (the per-tensor path, in Python floats) gives the bits the array path's float32 numpy arithmetic
    gives: subnormal and huge amaxes (quotients that overflow to FLT_MAX), zero/Inf/NaN (the previous scale kept),
    margins whose 2**margin overflows float32, power-of-two rounding."""
    rng = np.random.default_rng(3)
    with np.errstate(over="ignore"):
        amaxes = np.concatenate([np.float32(rng.uniform(1, 2, 60)) * np.float32(2.0) ** rng.integers(-149, 128, 60),
                                 np.float32([0.0, INF, np.nan, 1e-45, 3e-45, 1e-38, 3.4028235e38, 448.0, 2.0 ** -126])])
    for fmax in (448.0, 57344.0, 6.0):
        for margin in (0, 3, 127, 128, 140):
            for p2 in (False, True):
                arr = scale_from_amax(amaxes, fmax, margin, p2, np.float32(5.0))
                for a, s in zip(amaxes, arr):
                    one = scale_from_amax(a, fmax, margin, p2, np.float32(5.0))
                    assert one.shape == () and one.tobytes() == s.tobytes(), (fmax, margin, p2, a, one, s)


def test_current_scaling_cast_equals_the_explicit_composition():
    rng = np.random.default_rng(1)
    x = np.float32(rng.standard_normal((32, 48)) * 1e-3)
    x[0, 0] = 0
    t = TensorScaler(ScalingRecipe("current", margin=1), "fp8_e4m3fn")
    out = t.cast(x)
    s = _f32_nearest(Fraction(448) / Fraction(float(np.abs(x).max())) / 2)
    q = round_to(np.float32(x * s), FP8_E4M3FN)
    np.testing.assert_array_equal(out, np.float32(q / s))
    # rowwise: one scale per row (axis -1), power of two
    t = TensorScaler(ScalingRecipe("current", granularity="rowwise", power_of_two=True), "fp8_e4m3fn", axis=-1)
    out = t.cast(x)
    s = scale_from_amax(np.abs(x).max(axis=1, keepdims=True), 448.0, power_of_two=True)
    assert s.shape == (32, 1) and len(set(s.ravel().tolist())) > 1
    np.testing.assert_array_equal(out, np.float32(round_to(np.float32(x * s), FP8_E4M3FN) / s))


def test_overflow_saturates_or_follows_the_format():
    x = np.float32([1.0, -1000.0, INF, np.nan, 1e-9])
    s = np.float32(4.0)
    deq, q, _ = scaled_cast(x, s, "fp8_e4m3fn", saturate=True)
    assert q[:3].tolist() == [4.0, -448.0, 448.0] and np.isnan(q[3]) and q[4] == 0
    assert deq[:3].tolist() == [1.0, -112.0, 112.0]
    _, q, _ = scaled_cast(x, s, "fp8_e4m3fn", saturate=False)
    assert q[0] == 4.0 and np.isnan(q[1]) and np.isnan(q[2])  # e4m3fn has no Inf: overflow is NaN
    _, q, _ = scaled_cast(np.float32([1e6, -1e6]), s, "fp8_e5m2", saturate=False)
    assert q.tolist() == [INF, -INF]
    _, q, _ = scaled_cast(np.float32([1e6, -1e6]), s, "fp8_e5m2", saturate=True)
    assert q.tolist() == [57344.0, -57344.0]


def test_the_policies_are_registered_and_documented():
    for name in ("fp8-current", "fp8-delayed", "fp8-rowwise"):
        assert name in policy_names()
        p = get_policy(name)
        assert p.description and p.loss_scale == "none"
        assert p.format("weight") == p.format("weight_used") == p.format("optimizer_state") == FP32
        assert p.forward_accumulation == p.backward_accumulation == "fp32"
    assert get_policy("fp8-delayed").weight_fake_quant.recipe.history_len == 1024


@pytest.mark.parametrize("name", ["fp8-current", "fp8-rowwise", "fp8-delayed"])
def test_policy_matmul_operands_are_the_explicit_composition(name, monkeypatch):
    """Forward: y = fl32(matmul_fp32(q(x*sx)/sx, q(W*sw)/sw) + b); backward: both gradient matmuls take
    q(dY*sg)/sg with e5m2; nothing else rounds (every other role is fp32)."""
    recipe = get_policy(name).weight_fake_quant.recipe
    casts = []
    orig = S.ScaledInputCast.grad_cast

    def spy(self, ctx, g):
        out = orig(self, ctx, g)
        casts.append((self.index, np.array(g), out))
        return out
    monkeypatch.setattr(S.ScaledInputCast, "grad_cast", spy)
    ctx = Precision(name, seed=0)
    mlp = MLP([12, 8, 5], seed=3, ctx=ctx)
    rng = np.random.default_rng(2)
    x = np.float32(rng.standard_normal((6, 12)) * 3)
    y = rng.integers(0, 5, size=6)

    def ref_cast(v, fmt, axis, scaler):
        if recipe.mode == "delayed":
            s = np.float32(scaler.scale)  # state before this step (1.0 at the first step)
        else:
            amax = np.abs(v).max() if recipe.granularity == "tensor" else np.abs(v).max(axis=axis, keepdims=True)
            s = scale_from_amax(amax, fmt.max, recipe.margin, recipe.power_of_two)
        return np.float32(round_to(np.clip(np.float32(v * s), -fmt.max, fmt.max), fmt) / s)

    for step in range(2):  # the second step uses delayed scales from the first one
        for layer in mlp.layers:
            layer.weight.zero_grad(), layer.bias.zero_grad()
        before = [(L.act_quant.scaler.scale, L.weight_quant.scaler.scale) for L in mlp.layers]
        h = mlp.input(x)
        acts = []
        for i, layer in enumerate(mlp.layers):
            sx, sw = before[i]
            xq = ref_cast(h.data, FP8_E4M3FN, -1, type("s", (), {"scale": sx}))
            wq = ref_cast(layer.weight.data, FP8_E4M3FN, 0, type("s", (), {"scale": sw}))
            acts.append((xq, wq, h.data))
            out = layer(h)
            np.testing.assert_array_equal(out.data, np.float32(lmatmul(xq, wq, "fp32") + layer.bias.data))
            h = out.relu() if i < len(mlp.layers) - 1 else out
        casts.clear()
        grad_scales = [L.act_quant.grad_scaler.scale for L in mlp.layers]
        softmax_cross_entropy(h, y).backward()
        assert sorted(c[0] for c in casts) == [0, 1]  # each output gradient cast once
        by = {c[0]: c for c in casts}
        # dX of layer 1 = q(dY1) @ q(W1).T (fp32 accumulation); layer 0's dY = its ReLU mask times that
        dx1 = lmatmul(by[1][2], np.ascontiguousarray(acts[1][1].T), "fp32")
        np.testing.assert_array_equal(by[0][1], np.where(acts[1][2] > 0, dx1, np.float32(0)))
        for idx, g, gq in casts:
            ref = ref_cast(g, FP8_E5M2, -1, type("s", (), {"scale": grad_scales[idx]}))
            np.testing.assert_array_equal(gq, ref)
            xq = acts[idx][0]
            dw = np.float32(lmatmul(np.ascontiguousarray(gq.T), xq, "fp32").T)
            w = mlp.layers[idx].weight
            np.testing.assert_array_equal(w.grad, dw)


def test_stochastic_rounding_uses_the_policy_streams():
    from lowprec.amp.scaling import scaled_policy

    p = scaled_policy("test-fp8-sr", ScalingRecipe("current", rounding="stochastic"))
    x = np.float32(np.random.default_rng(0).standard_normal((64, 64)))
    a = TensorScaler(p.act_fake_quant.recipe, "fp8_e4m3fn").cast(x, Precision(p, seed=5), "activation")
    b = TensorScaler(p.act_fake_quant.recipe, "fp8_e4m3fn").cast(x, Precision(p, seed=5), "activation")
    c = TensorScaler(p.act_fake_quant.recipe, "fp8_e4m3fn").cast(x, Precision(p, seed=6), "activation")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ctx = Precision(p, seed=5)
    TensorScaler(p.act_fake_quant.recipe, "fp8_e4m3fn").cast(x, ctx, "activation")
    assert ctx.stream_state()["activation"] == x.size


def test_short_runs_are_finite_and_record_scales(tmp_path):
    from lowprec.data import Dataset
    from lowprec.train import loop as T
    from lowprec.train.report import write_run

    rng = np.random.default_rng(0)
    xs = np.float32(rng.standard_normal((96, 16)))
    ys = (xs[:, 0] > 0).astype(np.int64)
    ds = Dataset(xs[:64], ys[:64], xs[64:], ys[64:], name="tiny")
    for name in ("fp8-current", "fp8-delayed", "fp8-rowwise"):
        r = T.train(T.TrainConfig(precision=name, epochs=2, hidden=(8,), batch_size=32, seed=0), dataset=ds,
                    warm_up=False)
        assert all(np.isfinite(w).all() for w in r.weights())
        rows = r.telemetry.scales
        assert len(rows) == 4 * 6  # 4 steps x (2 inputs + 2 weights + 2 output gradients)
        assert all(np.isfinite(row[4]) and row[4] > 0 and 0 <= row[6] <= 1 and 0 <= row[7] <= 1 for row in rows)
        if name == "fp8-delayed":
            first = [row for row in rows if row[0] == 0]
            assert all(row[4] == 1.0 for row in first)  # no history yet
            later = [row for row in rows if row[0] == 1 and row[1] == "layer0.weight_fp8"]
            assert later[0][4] == float(scale_from_amax(np.float32(first[1][5]), 448.0))
    write_run(str(tmp_path), r, plots=False)  # (scales.png: tests/test_amp_block.py)
    assert (tmp_path / "scales.csv").read_text().startswith("step,tensor,role,format,scale,amax")


def test_a_lagging_delayed_scale_saturates_and_telemetry_says_so():
    from lowprec.telemetry import Telemetry

    tel = Telemetry()
    ctx = Precision("fp8-delayed", seed=0, telemetry=tel)
    t = TensorScaler(ScalingRecipe("delayed", history_len=4), "fp8_e4m3fn")
    outs = []
    for step, a in enumerate([1.0, 1.0, 8.0, 1e-9]):
        tel.begin_step(step)
        outs.append(t.cast(np.float32([a, -a, a / 2, 0.0]), ctx, "activation", "x"))
        tel.end_step()
    assert outs[2].tolist() == [1.0, -1.0, 1.0, 0.0]  # scale 448 from steps 0-1: 8 * 448 saturates to 448
    assert outs[3].tolist() == [0.0, 0.0, 0.0, 0.0]   # 1e-9 * 56 is below e4m3's smallest subnormal
    rows = tel.scales
    assert [r[4] for r in rows] == [1.0, 448.0, 448.0, 56.0]
    assert [r[5] for r in rows] == [1.0, 1.0, 8.0, np.float32(1e-9)]
    assert [r[6] for r in rows] == [0.0, 0.0, 0.75, 0.0]  # 8, -8 and 4 times 448 are beyond 448
    assert [r[7] for r in rows] == [0.0, 0.0, 0.0, 0.75]
    assert tel.steps[2]["tensors"]["x"]["overflow"] == 3
    assert t.state_dict()["history"] == [1.0, 1.0, 8.0, float(np.float32(1e-9))]


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_every_output_gradient_is_cast_once_with_other_activations(activation, monkeypatch):
    seen = []
    orig = S.ScaledInputCast.grad_cast
    monkeypatch.setattr(S.ScaledInputCast, "grad_cast",
                        lambda self, ctx, g: seen.append(self.index) or orig(self, ctx, g))
    ctx = Precision("fp8-current", seed=0)
    mlp = MLP([6, 5, 4, 3], activation=activation, seed=0, ctx=ctx)
    x = np.float32(np.random.default_rng(0).standard_normal((4, 6)))
    softmax_cross_entropy(mlp(x), [0, 1, 2, 0]).backward()
    assert sorted(seen) == [0, 1, 2]
    assert all(np.isfinite(p.grad).all() for p in mlp.parameters())

"""Block- and tile-scaled policies (lowprec.amp.blockscaled) and --hardware (lowprec.amp.hardware).

The references are explicit compositions of lowprec.block.quantize, lowprec.amp.scaling's pieces and
lowprec.linalg.matmul with a named preset; the Hadamard transform against Fraction arithmetic; the fp32
FMA of DeepSeek's promotion against Fraction arithmetic.
"""

from fractions import Fraction

import numpy as np
import pytest

import lowprec.block as lb
from lowprec import RandomStream, round_to
from lowprec import decode as lp_decode
from lowprec.amp import Precision, get_policy, policy_names
from lowprec.amp import blockscaled as B
from lowprec.amp import hardware as H
from lowprec.autograd import MLP, softmax_cross_entropy
from lowprec.data import Dataset
from lowprec.formats import FP8_E4M3FN, FP8_E5M2, FP32
from lowprec.linalg import matmul as lmatmul

NEW = ("fp8-deepseek", "mxfp8", "nvfp4", "mxfp4")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def test_the_block_policies_are_registered_with_their_recipes():
    for name in NEW:
        assert name in policy_names()
        p = get_policy(name)
        assert p.description and p.loss_scale == "none" and p.matmul_quant is not None
        assert all(p.format(r) == FP32 for r in ("weight", "weight_used", "activation", "optimizer_state"))
        assert "block formats" in p.describe()
    r = B.get_recipe("fp8-deepseek")
    assert (r.x.block, r.w.block, r.g.block) == ((128,), (128, 128), (128,))
    assert r.x.element == r.w.element == r.g.element == FP8_E4M3FN  # e4m3 for gradients too (sec. 3.3.2)
    assert r.x.scale == FP32 and r.x.scale_rule == "amax"
    r = B.get_recipe("nvfp4")
    assert (r.x.block, r.w.block, r.g.block) == ((16,), (16, 16), (16,)) and r.w.tensor_scale
    assert r.grad_rounding == "stochastic" and r.hadamard == 16 and r.last_layer == "bf16"
    r = B.get_recipe("mxfp8")
    assert r.x.block == r.w.block == (32,) and r.x.scale_rule == "floor"
    assert B.get_recipe("mxfp4").x.block == (32,)
    with pytest.raises(ValueError, match="hadamard"):
        B.get_recipe("nvfp4").replace(hadamard=12)
    with pytest.raises(ValueError, match="grad_rounding"):
        B.get_recipe("nvfp4").replace(grad_rounding="up")


def _spy(monkeypatch):
    """Record each layer's forward operands, output gradient, stream offset and results."""
    seen = {"fwd": {}, "bwd": {}}
    fwd, bwd = B.BlockScaledMatmul.forward, B.BlockScaledMatmul.backward

    def f(self, ctx, a, b):
        out = fwd(self, ctx, a, b)
        seen["fwd"][self.index] = (a.data.copy(), b.data.copy(), out)
        return out

    def g(self, ctx, grad, a, b, na, nb):
        off = ctx.streams["activation_grad"].offset
        out = bwd(self, ctx, grad, a, b, na, nb)
        seen["bwd"][self.index] = (np.array(grad), off, out)
        return out
    monkeypatch.setattr(B.BlockScaledMatmul, "forward", f)
    monkeypatch.setattr(B.BlockScaledMatmul, "backward", g)
    return seen


def _ref_products(name, recipe, x, w, g, seed, offset, last, need_x=True):
    """The three products, composed from lowprec.block.quantize and lowprec.linalg.matmul."""
    if last and recipe.last_layer is not None:
        acc = "bf16-fp32"
        return (lmatmul(x, w, acc), lmatmul(g, np.ascontiguousarray(w.T), acc),
                np.ascontiguousarray(lmatmul(np.ascontiguousarray(g.T), x, acc).T))
    sr = recipe.grad_rounding == "stochastic"
    stream = RandomStream(seed, 3, offset)  # the runtime's activation_grad stream (ROLES index 3)
    kw = dict(rounding="stochastic", seed=stream) if sr else {}
    tiles = len(recipe.w.block) == 2
    wf = lb.quantize(w, recipe.w, axis=(-2, -1)) if tiles else lb.quantize(w, recipe.w, axis=0)
    wd = wf if tiles else lb.quantize(w, recipe.w, axis=-1)
    fwd = lmatmul(lb.quantize(x, recipe.x, axis=-1), wf, "fp32")
    dx = lmatmul(lb.quantize(g, recipe.g, axis=-1, **kw), np.ascontiguousarray(wd.T), "fp32") if need_x else None
    gk, xk = g, x
    if recipe.hadamard:
        s = B.hadamard_signs(seed, recipe.hadamard)
        gk, xk = B.hadamard_transform(g, s), B.hadamard_transform(x, s)
    gq = lb.quantize(gk, recipe.g, axis=0, **kw)
    dw = lmatmul(np.ascontiguousarray(gq.T), lb.quantize(xk, recipe.x, axis=0), "fp32").T
    return fwd, dx, np.ascontiguousarray(dw)


@pytest.mark.parametrize("name", NEW)
def test_products_are_the_explicit_composition(name, monkeypatch):
    """Forward and both gradient products of every layer = quantize along each product's K + fp32 matmul;
    the weight gradient the optimizer reads is that product unchanged (no hidden rounding)."""
    seen = _spy(monkeypatch)
    recipe = B.get_recipe(name)
    ctx = Precision(name, seed=4)
    sizes = [150, 140, 6] if name == "fp8-deepseek" else [48, 40, 6]  # deepseek: two 128-tiles along K
    mlp = MLP(sizes, seed=3, ctx=ctx)
    rng = np.random.default_rng(2)
    x = np.float32(rng.standard_normal((20, sizes[0])) * 3)
    y = rng.integers(0, sizes[-1], size=20)
    logits = mlp(x)
    softmax_cross_entropy(logits, y).backward()
    for i, layer in enumerate(mlp.layers):
        xi, wi, out = seen["fwd"][i]
        g, off, (dx, dw) = seen["bwd"][i]
        rf, rdx, rdw = _ref_products(name, recipe, xi, wi, g, 4, off, i == len(mlp.layers) - 1, need_x=i > 0)
        np.testing.assert_array_equal(out, rf)
        np.testing.assert_array_equal(dw, rdw)
        np.testing.assert_array_equal(layer.weight.grad, rdw)
        if i:
            np.testing.assert_array_equal(dx, rdx)
        else:
            assert dx is None  # the input needs no gradient
    np.testing.assert_array_equal(logits.data, seen["fwd"][1][2] + mlp.layers[1].bias.data)


def test_the_hadamard_transform_against_its_matrix():
    h = B.hadamard_matrix(16)
    np.testing.assert_array_equal(h @ h.T, 16 * np.eye(16))
    s = B.hadamard_signs(7)
    np.testing.assert_array_equal(s, B.hadamard_signs(7))  # the same seed, the same transform
    assert not np.array_equal(s, B.hadamard_signs(8)) and set(s.tolist()) <= {-1.0, 1.0}
    t = h * s[None, :] / 4
    np.testing.assert_array_equal(t.T @ t, np.eye(16))  # orthogonal (exactly: entries +-1/4)
    rng = np.random.default_rng(0)
    x = np.float32(rng.standard_normal((21, 3)))  # K = 21: padded with zeros to 32
    got = B.hadamard_transform(x, s)
    assert got.shape == (32, 3) and got.dtype == np.float32
    xp = np.zeros((32, 3), dtype=object)
    xp[:21] = [[Fraction(float(v)) for v in row] for row in x]
    tf = [[Fraction(int(h[i, j] * s[j]), 4) for j in range(16)] for i in range(16)]
    for blk in range(2):
        for i in range(16):
            for c in range(3):
                exact = sum(tf[i][j] * xp[16 * blk + j, c] for j in range(16))
                assert got[16 * blk + i, c] == np.float32(float(exact))  # one rounding (exact has < 53 bits)
    g = np.float32(rng.standard_normal((21, 4)))
    ref = x.astype(np.float64).T @ g
    np.testing.assert_allclose(got.astype(np.float64).T @ B.hadamard_transform(g, s), ref, rtol=1e-5, atol=1e-5)


def _tiny_ds(n=64, f=16, c=3, seed=0):
    rng = np.random.default_rng(seed)
    xs = np.float32(rng.standard_normal((n + 32, f)))
    ys = (xs[:, 0] > 0).astype(np.int64) + (xs[:, 1] > 0.5)
    return Dataset(xs[:n], ys[:n], xs[n:], ys[n:], name="tiny")


def test_stochastic_rounding_of_gradients_is_reproducible():
    from lowprec.train import loop as T

    ds = _tiny_ds()
    cfg = dict(precision="nvfp4", epochs=1, hidden=(16, 16), batch_size=32)
    a = T.train(T.TrainConfig(seed=1, **cfg), dataset=ds, warm_up=False)
    b = T.train(T.TrainConfig(seed=1, **cfg), dataset=ds, warm_up=False)
    c = T.train(T.TrainConfig(seed=2, **cfg), dataset=ds, warm_up=False)
    for wa, wb in zip(a.weights(), b.weights()):
        np.testing.assert_array_equal(wa.view(np.uint32), wb.view(np.uint32))
    assert not all(np.array_equal(wa, wc) for wa, wc in zip(a.weights(), c.weights()))
    # per step, SR quantizations of dY (32 x 16): layer 1 for dgrad and wgrad, layer 0 for wgrad only (its
    # input needs no gradient), the last layer none (bf16)
    assert a.model.ctx.stream_state()["activation_grad"] == 2 * (2 + 1) * 32 * 16
    assert a.telemetry.scales == b.telemetry.scales


def test_an_overflowed_step_is_skipped_with_dynamic_loss_scaling():
    """An Inf in a block gives that block the NaN scale (on_inf 'nan'): the gradients are NaN, the dynamic
    loss scaler skips the step and halves its scale, the weights are untouched; elements beyond a block's
    range cannot occur (the scale comes from the block's own amax), so nothing saturates silently."""
    from lowprec.amp import LossScaler
    from lowprec.autograd import SGD

    ctx = Precision("mxfp8", seed=0)
    mlp = MLP([32, 32, 4], seed=0, ctx=ctx)
    opt = SGD(mlp.parameters(), lr=0.1, ctx=ctx)
    scaler = LossScaler.from_spec("dynamic")
    before = [p.data.copy() for p in mlp.parameters()]
    x = np.float32(np.random.default_rng(0).standard_normal((8, 32)))
    x[3, 5] = np.inf
    loss = softmax_cross_entropy(mlp(x), [0, 1, 2, 3] * 2)
    opt.zero_grad()
    loss.backward(scaler.scale)
    scaler.unscale_(opt)
    assert not scaler.step(opt)
    for p, b in zip(mlp.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
    x[3, 5] = 1e30  # finite but huge: its block's scale grows, other blocks keep theirs
    q = lb.quantize(x, B.get_recipe("mxfp8").x, axis=-1)
    assert np.isfinite(q).all() and q[3, 5] == np.float32(lb.quantize(np.float32([1e30]), "mxfp8_e4m3")[0])
    np.testing.assert_array_equal(q[:3], lb.quantize(x[:3], "mxfp8_e4m3"))


def test_short_training_runs_record_block_telemetry(tmp_path):
    from lowprec.train import loop as T
    from lowprec.train.report import write_run

    ds = _tiny_ds()
    for name in NEW:
        r = T.train(T.TrainConfig(precision=name, epochs=2, hidden=(16,), batch_size=32, seed=0), dataset=ds,
                    warm_up=False)
        assert all(np.isfinite(w).all() for w in r.weights())
        rows = r.telemetry.scales
        assert len(rows) > 0 and len({row[0] for row in rows}) == 4  # 4 steps
        assert all(0 <= row[6] <= 1 and 0 <= row[7] <= 1 and row[4] > 0 for row in rows)
        names = {row[1] for row in rows}
        if name == "mxfp8":
            assert names == {f"layer{i}.{t}" for i in (0, 1) for t in
                             ("fwd.x", "fwd.w", "dgrad.dy", "dgrad.w", "wgrad.dy", "wgrad.x")} - {"layer0.dgrad.dy",
                                                                                                  "layer0.dgrad.w"}
        elif name == "fp8-deepseek":
            assert "layer1.fwd.w" in names and "layer1.dgrad.w" not in names  # one tile quantization per step
        else:
            assert {n.split(".")[0] for n in names} == {"layer0"}  # the last layer computes in bf16
    write_run(str(tmp_path), r)
    assert (tmp_path / "scales.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "scales.csv").read_text().count("layer0.wgrad.dy") == 4


@pytest.mark.parametrize("precision,hardware", [pytest.param("nvfp4", None, marks=pytest.mark.slow),
                                                ("fp8-delayed", "nv-hopper")])
def test_resume_reproduces_a_block_scaled_run_and_its_scale_telemetry(tmp_path, precision, hardware):
    """Stream offsets, Hadamard signs (from the seed), delayed-scaling histories and the hardware setting
    survive a checkpoint: the resumed run has the same bits and the same scale telemetry."""
    from lowprec.train import loop as T

    ds = _tiny_ds()
    cfg = dict(precision=precision, seed=3, hidden=(16,), batch_size=32, hardware=hardware)
    full = T.train(T.TrainConfig(epochs=2, **cfg), dataset=ds, warm_up=False)  # (plots: not what is tested)
    T.train(T.TrainConfig(epochs=1, **cfg), str(tmp_path / "part"), dataset=ds, warm_up=False, plots=False)
    res = T.train(T.TrainConfig(epochs=2, **cfg), resume=str(tmp_path / "part"), dataset=ds, warm_up=False)
    assert not (tmp_path / "part" / "loss.png").exists()
    for a, b in zip(full.weights(), res.weights()):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert full.telemetry.scales == res.telemetry.scales
    assert full.model.ctx.stream_state() == res.model.ctx.stream_state()


# ------------------------------------------------------------------------------------------- --hardware
RESOLVE = [
    ("fp8-current", "nv-hopper", "nv-hopper-fp8", "tensor",
     {"forward": ("fp8_e4m3fn", "fp8_e4m3fn"), "dgrad": ("fp8_e5m2", "fp8_e4m3fn")}),
    ("fp8-delayed", "nv-ada", "nv-ada-fp8", "tensor", {"wgrad": ("fp8_e5m2", "fp8_e4m3fn")}),
    ("fp8-deepseek", "nv-hopper", "nv-hopper-fp8-promote128", "deepseek", {"dgrad": ("fp8_e4m3fn", "fp8_e4m3fn")}),
    ("fp8-deepseek", "nv-hopper-fp8-promote128", "nv-hopper-fp8-promote128", "deepseek", {}),
    ("bf16-mixed", "nv-hopper", "nv-hopper-bf16", "plain", {"forward": ("bf16", "bf16")}),
    ("fp16-mixed", "nv-volta", "nv-volta-fp16", "plain", {}),
    ("fp8-mixed", "nv-hopper", "nv-hopper-fp8", "plain", {"dgrad": ("fp8_e5m2", "fp8_e4m3fn")}),
    ("mxfp8", "nv-blackwell", "nv-blackwell-mxfp8", "block", {}),
    ("mxfp4", "nv-blackwell", "nv-blackwell-mxfp4", "block", {}),
    ("nvfp4", "nv-blackwell-nvfp4", "nv-blackwell-nvfp4", "block", {}),
]


@pytest.mark.parametrize("policy,spec,name,route,formats", RESOLVE)
def test_hardware_resolves_to_the_preset_of_the_operand_formats(policy, spec, name, route, formats):
    hw = H.resolve_hardware(get_policy(policy), spec)
    assert hw.name == name and hw.route == route
    for product, (a, b) in formats.items():
        assert (hw.units[product].a_format.name, hw.units[product].b_format.name) == (a, b)
    assert H.resolve_hardware(get_policy(policy), "ideal") is None
    assert H.resolve_hardware(get_policy(policy), None) is None


@pytest.mark.parametrize("policy,spec,words", [
    ("fp8-current", "nv-ampere", "needs a fp8 matrix unit, which nv-ampere does not have"),
    ("mxfp8", "nv-hopper", "only nv-blackwell has"),
    ("fp32", "nv-hopper", "fp32 operands"),
    ("fp8-rowwise", "nv-hopper", "contraction axis"),
    ("fp8-deepseek", "nv-hopper-fp8", "promote128"),
    ("bf16-mixed", "nv-hopper-fp8", "multiplies bf16 x bf16"),
    ("mxfp8", "nv-blackwell-nvfp4", "needs the nv-blackwell-mxfp8 unit"),
    ("bf16-mixed", "nv-tpu", "unknown --hardware"),
])
def test_hardware_errors_are_one_line(policy, spec, words):
    with pytest.raises(ValueError, match=words) as e:
        H.resolve_hardware(get_policy(policy), spec)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_unit_the_hardware_lacks(capsys):
    from lowprec import cli

    assert cli.main(["train", "--precision", "fp8-current", "--hardware", "nv-ampere", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nv-ampere" in err and "fp8" in err


def test_compare_entries_and_hardware_lists():
    from lowprec.train.loop import compare_runs

    assert compare_runs(["fp8-delayed", "fp8-delayed@nv-hopper"]) == [
        ("fp8-delayed", "fp8-delayed", None), ("fp8-delayed@nv-hopper", "fp8-delayed", "nv-hopper")]
    assert compare_runs(["bf16-mixed"], ["ideal", "nv-ampere"]) == [
        ("bf16-mixed", "bf16-mixed", None), ("bf16-mixed@nv-ampere", "bf16-mixed", "nv-ampere")]
    with pytest.raises(ValueError, match="twice"):
        compare_runs(["mxfp8", "mxfp8@ideal"])
    with pytest.raises(ValueError, match="POLICY@HARDWARE"):
        compare_runs(["mxfp8@"])


def _fraction_fma(s, p, a) -> np.float32:
    exact = Fraction(float(s)) * Fraction(float(p)) + Fraction(float(a))
    c = np.float32(float(exact))
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.float32(v).view(np.uint32)) & 1))


def test_the_promotion_fma_rounds_once():
    rng = np.random.default_rng(5)
    s = np.float32(np.exp(rng.uniform(-8, 8, 400)))
    p = round_to(np.float32(rng.standard_normal(400) * 2.0 ** rng.integers(-20, 20, 400)), "bf16")
    a = np.float32(rng.standard_normal(400) * 2.0 ** rng.integers(-30, 30, 400))
    # a float64 sum lands on an fp32 tie the exact value misses: a = 1 + 2**-23, s * p = 2**-24 (1 - 2**-46)
    s = np.append(s, np.float32(2.0 ** -24 * (1 + 2.0 ** -23)))
    p = np.append(p, np.float32(1 - 2.0 ** -23))
    a = np.append(a, np.float32(1 + 2.0 ** -23))
    got = H._fma32(s, p, a)
    for i in range(len(s)):
        assert got[i] == _fraction_fma(s[i], p[i], a[i]), i
    naive = np.float32(np.float64(s[-1]) * np.float64(p[-1]) + np.float64(a[-1]))  # double rounding: the tie
    assert got[-1] == np.float32(1 + 2.0 ** -23) != naive


def test_deepseek_promotion_with_unit_scales_is_the_promote128_preset():
    rng = np.random.default_rng(1)
    a = round_to(np.float32(rng.standard_normal((5, 300))), FP8_E4M3FN)
    b = round_to(np.float32(rng.standard_normal((300, 4))), FP8_E4M3FN)
    unit = H.resolve_hardware(get_policy("fp8-deepseek"), "nv-hopper").units["forward"]
    got = H.promoted_block_matmul(a, np.ones((5, 3)), b, np.ones((3, 4)), unit)
    np.testing.assert_array_equal(got, lmatmul(a, b, "nv-hopper-fp8-promote128"))


def test_tensor_scaled_fp8_on_hardware_is_the_scaled_unit_product():
    """fp8-current on nv-hopper: Y = fl32(P * fl32(d_x * d_w)), P = nv-hopper-fp8 on the scaled fp8 values,
    d = fl32(1 / s); the gradient products use e5m2 x e4m3 units."""
    from lowprec.amp import scale_from_amax

    ctx = Precision("fp8-current", seed=0, hardware="nv-hopper")
    mlp = MLP([40, 8], seed=1, ctx=ctx)
    layer = mlp.layers[0]
    x = np.float32(np.random.default_rng(3).standard_normal((6, 40)))
    out = mlp(x)
    w = layer.weight.data

    def q(v, fmt):
        s = scale_from_amax(np.abs(v).max(), fmt.max)
        return round_to(np.clip(np.float32(v * s), -fmt.max, fmt.max), fmt), np.float32(1) / s

    qx, dx = q(x, FP8_E4M3FN)
    qw, dw = q(w, FP8_E4M3FN)
    p = lmatmul(qx, qw, "nv-hopper-fp8")
    ref = np.float32(p * np.float32(dx * dw)) + layer.bias.data
    np.testing.assert_array_equal(out.data, ref)
    g = np.float32(np.random.default_rng(4).standard_normal(out.shape))
    out.backward(g)
    qg, dg = q(g, FP8_E5M2)
    unit = H.resolve_hardware(get_policy("fp8-current"), "nv-hopper").units["wgrad"]
    pw = lmatmul(np.ascontiguousarray(qg.T), qx, unit)
    np.testing.assert_array_equal(layer.weight.grad, np.float32(pw * np.float32(dg * dx)).T)


def test_mxfp8_forward_on_blackwell_is_the_unit_quantizing_its_operands():
    """lowprec.matmul with nv-blackwell-mxfp8 quantizes a along its last axis and b along axis 0 with the
    mxfp8 blocks: exactly what the mxfp8 policy's forward product gives the unit."""
    ctx = Precision("mxfp8", seed=0, hardware="nv-blackwell")
    mlp = MLP([64, 8], seed=2, ctx=ctx)
    x = np.float32(np.random.default_rng(0).standard_normal((5, 64)) * 10)
    out = mlp(x)
    ref = lmatmul(x, mlp.layers[0].weight.data, "nv-blackwell-mxfp8") + mlp.layers[0].bias.data
    np.testing.assert_array_equal(out.data, np.float32(ref))


def test_a_run_on_hardware_and_its_comparison():
    """The same casts and scales, another product: the runs differ, the delayed-scale telemetry has the
    same tensors. (The files of a comparison: tests/test_train.py.)"""
    from lowprec.train import loop as T
    from lowprec.train.report import format_table

    ds = _tiny_ds()
    base = T.TrainConfig(epochs=1, hidden=(16,), batch_size=32, seed=0)
    rows = T.compare(["fp8-delayed", "fp8-delayed@nv-hopper"], base, dataset=ds, warm_up=False)
    assert [r["policy"] for r in rows] == ["fp8-delayed", "fp8-delayed@nv-hopper"]
    assert "fp8-delayed@nv-hopper" in format_table(rows)
    ideal = T.train(base.__class__(**{**base.__dict__, "precision": "fp8-delayed"}), dataset=ds, warm_up=False)
    hw = T.train(base.__class__(**{**base.__dict__, "precision": "fp8-delayed", "hardware": "nv-hopper"}),
                 dataset=ds, warm_up=False)
    assert hw.record["policy"]["hardware"].startswith("nv-hopper-fp8 (")
    assert [r[1] for r in ideal.telemetry.scales] == [r[1] for r in hw.telemetry.scales]
    assert not all(np.array_equal(a, b) for a, b in zip(ideal.weights(), hw.weights()))


def test_a_policy_names_its_hardware_and_the_runtime_overrides_it():
    p = get_policy("bf16-mixed").replace(name="bf16-on-hopper", hardware="nv-hopper")
    assert Precision(p).hardware.name == "nv-hopper-bf16"
    assert Precision(p).accumulation("backward").name == "nv-hopper-bf16"
    assert Precision(p, hardware="nv-ampere").hardware.name == "nv-ampere-bf16"
    assert Precision(p, hardware="ideal").hardware is None
    with pytest.raises(TypeError, match="hardware"):
        get_policy("bf16-mixed").replace(hardware=3)


def _values_of(ops, fmt, axis, shape):
    """fl32(element x block scale x tensor scale), the product in float64 (lowprec.block.decode's arithmetic)."""
    el, sc, ts = ops
    full = sc.astype(np.float64)
    blk = fmt.block
    if len(blk) == 2:
        full = np.repeat(np.repeat(full, blk[0], axis=0), blk[1], axis=1)
    else:
        full = np.repeat(full, blk[0], axis=1 if axis == -1 else 0)
    full = full[:shape[0], :shape[1]] * (1.0 if ts is None else float(ts))
    return (el.astype(np.float64) * full).astype(np.float32)


def test_the_hardware_route_quantizes_to_the_same_values():
    """With a unit the operands are encoded (elements, scales, tensor scale) instead of quantized: their values
    are lowprec.block.quantize's, stochastic ones included (the same counters). The values themselves are
    computed on that route only for telemetry."""
    from lowprec.telemetry import Telemetry

    x = np.float32(np.random.default_rng(6).standard_normal((40, 48)) * 5)
    for name in ("nvfp4", "mxfp4", "fp8-deepseek"):
        r = B.get_recipe(name)
        m = B.BlockScaledMatmul(r, 0)
        unit = "nv-blackwell" if name != "fp8-deepseek" else "nv-hopper"
        hw, ideal = Precision(name, seed=1, hardware=unit), Precision(name, seed=1)
        tel = Telemetry()
        hw_tel = Precision(name, seed=1, hardware=unit, telemetry=tel)
        tel.begin_step(0)
        for fmt, axis, sr in ((r.x, -1, False), (r.x, 0, False), (r.g, 0, True), (r.w, (-2, -1) if len(r.w.block) == 2
                                                                                  else 0, False)):
            q1, ops = m._q(hw, x, fmt, axis, "activation_grad", "t", sr)
            q3, _ = m._q(hw_tel, x, fmt, axis, "activation_grad", "t", sr)
            q2, none = m._q(ideal, x, fmt, axis, "activation_grad", "t", sr)
            assert none is None and ops is not None and q1 is None
            np.testing.assert_array_equal(_values_of(ops, fmt, axis, x.shape), q2)
            np.testing.assert_array_equal(q3, q2)
            if not sr:
                np.testing.assert_array_equal(q2, lb.quantize(x, fmt, axis=axis))
                # the elements and scales themselves: lowprec.block.encode's patterns, decoded
                enc = lb.encode(x, fmt, axis=axis, packed=False)
                el, sc, ts = ops
                np.testing.assert_array_equal(el, np.float32(lp_decode(enc.elements, fmt.element)))
                want = (np.ldexp(1.0, enc.scales.astype(np.int64) - 127) if fmt.scale.name == "e8m0" else
                        enc.scales if fmt.scale == FP32 else lp_decode(enc.scales, fmt.scale))
                np.testing.assert_array_equal(sc, np.float32(want))
                assert (ts is None and enc.tensor_scale is None) or ts == enc.tensor_scale


def test_nvfp4_forward_on_blackwell_is_the_unit_with_its_epilogue():
    """nvfp4 with 1-D weight blocks: the forward product equals lowprec.matmul with nv-blackwell-nvfp4, which
    quantizes both operands along K and scales D by fl32(s_a * s_b) in its epilogue."""
    p = B.block_policy("test-nvfp4-1d", B.get_recipe("nvfp4").replace(w="nvfp4"))
    ctx = Precision(p, seed=0, hardware="nv-blackwell")
    mlp = MLP([64, 8, 3], seed=2, ctx=ctx)
    x = np.float32(np.random.default_rng(1).standard_normal((5, 64)) * 3)
    h = mlp.layers[0](mlp.input(x))
    w = mlp.layers[0].weight.data
    np.testing.assert_array_equal(h.data, np.float32(lmatmul(x, w, "nv-blackwell-nvfp4") + mlp.layers[0].bias.data))


@pytest.mark.slow
def test_block_policies_learn_digits_about_as_well_as_bf16():
    """Eight epochs on digits (64-64-10): the fp8 recipes within 2 points of bf16-mixed, the fp4 ones within 6."""
    from lowprec.train import loop as T

    acc = {}
    for name in ("bf16-mixed",) + NEW:
        r = T.train(T.TrainConfig(precision=name, epochs=8, hidden=(64,), batch_size=64, seed=0), warm_up=False)
        acc[name] = r.test_accuracy
    for name in ("fp8-deepseek", "mxfp8"):
        assert acc[name] >= acc["bf16-mixed"] - 0.02, acc
    for name in ("nvfp4", "mxfp4"):
        assert acc[name] >= acc["bf16-mixed"] - 0.06, acc

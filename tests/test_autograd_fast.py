"""The training fast paths give the bits of the public API they stand in for."""

import numpy as np
import pytest

from lowprec import RandomStream, round_to
from lowprec.accumulation import Accumulation, get_accumulation
from lowprec.linalg import matmul, prepare_matmul

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _bits(x):
    x = np.ascontiguousarray(x)
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)


def _same_bits(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(_bits(x), _bits(y))


def _operands(rng, M, K, N, acc, special=False):
    a = (rng.standard_normal((M, K)) * 2.0 ** rng.integers(-12, 12, (M, K))).astype(np.float32)
    b = (rng.standard_normal((K, N)) * 2.0 ** rng.integers(-12, 6, (K, N))).astype(np.float32)
    a[rng.random((M, K)) < 0.1] = 0.0
    if special:
        a[0, 1], a[1, 2], b[2, 0] = np.nan, np.inf, -np.inf
        a[2, :] = 2.0 ** -130  # products below float32's subnormals: the fused kernel is needed
    return round_to(a, acc.a_format), round_to(b, acc.b_format)


# ----------------------------------------------------------------------------
# linalg.prepare_matmul: the prepared product equals linalg.matmul
# ----------------------------------------------------------------------------
ACCS = ["fp32", "bf16-fp32", "fp16-fp32", "e4m3-fp32", "e5m2-e4m3-fp32", "fp16", "bf16-sr", "e4m3-chunk128",
        Accumulation(a_format="bf16", out_format="bf16"), Accumulation(fused=False)]


@pytest.mark.parametrize("acc", ACCS, ids=lambda a: a if isinstance(a, str) else repr(a)[:40])
@pytest.mark.parametrize("shape", [(3, 5, 4), (64, 64, 40), (37, 45, 10)])
@pytest.mark.parametrize("special", [False, True])
def test_prepared_matmul_equals_matmul(acc, shape, special):
    acc = get_accumulation(acc)
    rng = np.random.default_rng(11)
    M, K, N = shape
    a, b = _operands(rng, M, K, N, acc, special and M > 2)
    s1 = RandomStream(5, 101)
    want = matmul(a, b, acc, seed=s1, backend="cpu")
    mm = prepare_matmul(acc, "cpu")
    assert prepare_matmul(acc, "cpu") is mm
    at, bt = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T  # the layouts of x.T and w.T
    for x, y in ((a, b), (at, bt)):
        for inputs_rounded in (False, True):
            s2 = RandomStream(5, 101)
            got = mm(x, y, seed=s2, inputs_rounded=inputs_rounded)
            assert got.flags.c_contiguous
            assert _same_bits(got, want)
            assert s2.offset == s1.offset


def test_prepared_matmul_rounds_unrounded_inputs_and_checks_its_arguments():
    mm = prepare_matmul("bf16-fp32", "cpu")
    a = np.full((2, 3), 1 + 2.0 ** -10, np.float32)  # not a bf16 value: rounds to 1
    assert mm(a, np.ones((3, 2), np.float32)).tolist() == [[3.0, 3.0], [3.0, 3.0]]
    with pytest.raises(TypeError, match="a must be a 2-D float32 ndarray"):
        mm(a.astype(np.float64), np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="shape mismatch"):
        mm(a, np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="unknown accumulation"):
        prepare_matmul("nope")


# ----------------------------------------------------------------------------
# Precision.rounding_of (core.prepare_rounding): round_to without round_to's per-call checks
# ----------------------------------------------------------------------------
from lowprec.amp import Policy, Precision, get_policy, register_policy  # noqa: E402
from lowprec.autograd import MLP, SGD, Tensor, softmax_cross_entropy  # noqa: E402
from lowprec.formats import FloatFormat, get_format  # noqa: E402
from lowprec.rounding import Rounding  # noqa: E402
from lowprec.telemetry import Telemetry, _count, count_events  # noqa: E402

FORMATS = ["fp16", "bf16", "fp8_e4m3fn", "int8", "fp8_e5m2",
           FloatFormat(4, 3, has_inf=False, nan="all_ones", saturate=True, name="e4m3_sat"),
           FloatFormat(5, 2, has_subnormals=False, name="e5m2_ftz")]


def _values(rng, shape):
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-30, 20, shape)).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size >= 12:
        flat[:12] = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0 ** -149, 65504.0, 65520.0, 448.0, 500.0,
                     -2.0 ** -20]
    return x


@pytest.mark.parametrize("fmt,mode", [(f, m) for f in ("fp16", "bf16", "fp8_e4m3fn", "int8") for m in Rounding]
                         + [(f, Rounding.NEAREST_EVEN) for f in FORMATS[4:]], ids=str)
def test_prepared_rounding_equals_round_to(fmt, mode):
    fmt = get_format(fmt)
    rng = np.random.default_rng(4)
    ctx = Precision("bf16-mixed", seed=9)
    big = fmt.name in ("bf16", "fp16") and mode in (Rounding.NEAREST_EVEN, Rounding.STOCHASTIC)  # parallel loops
    for x in (_values(rng, (5, 7)), _values(rng, (64, 40)).T, _values(rng, 40000 if big else 3000),
              np.float32(rng.random((0, 3))), np.asarray(np.float32(1.0 + 2.0 ** -9))):
        s1, s2 = RandomStream(9, 3, 17), RandomStream(9, 3, 17)
        want = round_to(x, fmt, mode, seed=s1)
        got = ctx.rounding_of(fmt, mode)(x, seed=s2)
        assert _same_bits(got, want)
        assert s2.offset == s1.offset
        out = np.full_like(x, np.nan)
        assert ctx.rounding_of(fmt, mode)(x, seed=RandomStream(9, 3, 17), out=out) is out
        assert _same_bits(out, want)


def test_prepared_rounding_checks_its_arguments():
    from lowprec.core import prepare_rounding

    r = prepare_rounding("bf16", "stochastic", np.float32)
    assert prepare_rounding("bf16", "stochastic", np.float32) is r
    with pytest.raises(TypeError, match="x must be a numpy ndarray of dtype float32, got float64"):
        r(np.zeros(3))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        prepare_rounding("bf16", "nearest_even", np.float16)
    with pytest.raises(ValueError, match="float32 cannot hold"):
        prepare_rounding("int32", "nearest_even", np.float32)
    with pytest.raises(ValueError, match="out must have the result's shape"):
        r(np.zeros(3, np.float32), seed=1, out=np.zeros(4, np.float32))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_a_rounded_array_is_in_its_format_for_every_mode(fmt):
    """What skipping relies on: rounding the output of a rounding to the same format changes no bit,
    whatever the two modes (stochastic included, whatever its random bits)."""
    fmt = get_format(fmt)
    rng = np.random.default_rng(5)
    x = _values(rng, 5000)
    for first in Rounding:
        y = round_to(x, fmt, first, seed=1)
        for again in Rounding:
            for seed in (2, 3):
                assert _same_bits(round_to(y, fmt, again, seed=seed), y), (first.label, again.label)


def test_precision_skips_a_tagged_rounding_but_not_its_stream_or_its_counts():
    pol = get_policy("bf16-mixed").replace(name="bf16-sr-test",
                                          table={**get_policy("bf16-mixed").table, "activation": ("bf16", "stochastic")})
    rng = np.random.default_rng(6)
    x = _values(rng, (16, 9))
    x[3, :4] = [2.0 ** -130, -2.0 ** -127, 2.0 ** -140, 1e-30]  # bf16 subnormals and an underflow
    y = round_to(x, "bf16")
    counts = []
    for tag in (None, get_format("bf16")):
        tel = Telemetry()
        ctx = Precision(pol, seed=4, telemetry=tel)
        tel.begin_step(0)
        out, out_tag = ctx._round(y, "activation", "y", tag)
        tel.end_step()
        assert _same_bits(out, y) and out_tag is get_format("bf16")
        assert (out is y) == (tag is not None)
        assert ctx.streams["activation"].offset == y.size
        counts.append(tel.steps[0]["tensors"]["y"])
    assert counts[0] == counts[1] and counts[0]["subnormal"] > 0 and counts[0]["nan"] == 2


def test_a_tag_belongs_to_one_array():
    ctx = Precision("bf16-mixed")
    t = Tensor(np.float32([1.0, 2.0 ** -9 + 1]), ctx=ctx)._round_forward()
    assert t._data_fmt() is get_format("bf16")
    t.data = np.float32([1.0, 2.0 ** -9 + 1])  # a new array: the tag is gone
    assert t._data_fmt() is None
    assert (t.reshape(2, 1)._data_fmt() is None) and (t.relu()._data_fmt() is get_format("bf16"))


# ----------------------------------------------------------------------------
# tags are true, and skipping changes no bit of a training run
# ----------------------------------------------------------------------------
def _sr_policy():
    return register_policy(Policy("test-fast-bf16-sr", {
        "weight": ("bf16", "stochastic"), "weight_used": "fp8_e5m2", "activation": ("bf16", "stochastic"),
        "activation_grad": ("bf16", "stochastic"), "weight_grad": "bf16", "optimizer_state": ("bf16", "stochastic"),
        "master": None}, "bf16-sr", "bf16-fp32", "none"), overwrite=True)


@pytest.mark.parametrize("policy", ["fp32", "bf16-mixed", "fp16-mixed", "fp8-mixed", "pure-fp16", "sr"])
def test_every_tag_is_true_after_a_training_step(policy):
    from lowprec.autograd import SGD

    name = _sr_policy().name if policy == "sr" else policy
    ctx = Precision(name, seed=2)
    model = MLP([8, 32, 5], activation="relu", seed=1, ctx=ctx)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(2):
        loss = softmax_cross_entropy(model(rng.standard_normal((64, 8)).astype(np.float32)),
                                     rng.integers(0, 5, 64))
        opt.zero_grad()
        loss.backward(256.0)
        nodes, stack = [], [loss]
        while stack:
            n = stack.pop()
            if all(n is not m for m in nodes):
                nodes.append(n)
                stack.extend(n._prev)
        for n in nodes:
            for arr, tag in ((n.data, n._data_fmt()), (n.grad, n._grad_fmt())):
                if tag is not None:
                    assert _same_bits(round_to(arr, tag), arr)
                    checked += 1
        opt.step()
        for p in model.parameters():
            if p._data_fmt() is not None:
                assert _same_bits(round_to(p.data, p._data_fmt()), p.data)
    assert checked >= (0 if policy == "fp32" else 10)


def _forced_round(self, x, role, name, tag, fmt=None, rounding=None, stream=None):
    """Precision.round as it was before tags: always round_to, whatever the caller knows."""
    pfmt, prnd = self.policy.table[role]
    fmt = pfmt if fmt is None else fmt
    rnd = prnd if rounding is None else rounding
    if fmt is None:
        return x, None
    if fmt is get_format("fp32") and x.dtype == np.float32:
        out = x
    elif rnd is Rounding.STOCHASTIC:
        out = round_to(x, fmt, rnd, seed=stream if stream is not None else self.streams[role])
    else:
        out = round_to(x, fmt, rnd)
    if self.telemetry is not None and name is not None:
        self.telemetry.record(name, role, x, out, fmt)
    return out, None


def _run_summary(policy, **kw):
    from lowprec.data import load_digits
    from lowprec.train import TrainConfig, train

    ds = load_digits(seed=0)
    ds.x_train, ds.y_train = ds.x_train[:320], ds.y_train[:320]
    res = train(TrainConfig(precision=policy, epochs=2, seed=5, **kw), dataset=ds)
    opt = res.optimizer.state_dict()
    return (res.weights(), [s for st in opt["state"] for s in st if s is not None],
            [{k: v for k, v in r.items()} for r in res.step_rows], res.telemetry.events,
            res.telemetry.tensor_totals, res.model.ctx.stream_state(), opt["update_offsets"], opt["state_offsets"])


@pytest.mark.parametrize("policy,kw", [
    ("fp32", {}), ("bf16-mixed", {"hidden": (8,)}), ("fp16-mixed", {"loss_weight": 2.0 ** 10}),
    ("bf16-mixed", {"momentum": 0.0, "weight_decay": 1e-3}), ("fp16-mixed", {"weight_decay": 1e-60}),
    ("fp16-mixed", {"loss_scale": "none", "loss_weight": 2.0 ** -16}), ("pure-fp16", {}),
    ("fp8-mixed", {"activation": "gelu", "optimizer": "adam", "lr": 0.003}), ("sr", {}),
    ("sr", {"optimizer": "adam", "lr": 0.003, "activation": "tanh"})])
def test_training_with_skips_equals_training_with_every_rounding(policy, kw, monkeypatch):
    if policy == "sr":
        policy = _sr_policy().name
    fast = _run_summary(policy, **kw)
    monkeypatch.setattr(Precision, "_round", _forced_round)
    monkeypatch.setattr(Precision, "matmul_of", lambda self, which: None)  # linalg.matmul, inputs rounded
    monkeypatch.setattr(SGD, "_fused_ok", lambda self: False)  # the numpy optimizer step
    slow = _run_summary(policy, **kw)
    for a, b in zip(fast[:2], slow[:2]):
        assert len(a) == len(b) and all(_same_bits(x, y) for x, y in zip(a, b))
    assert fast[2:] == slow[2:]
    assert any(r["skipped"] for r in fast[2]) == (kw.get("loss_weight") == 2.0 ** 10)


# ----------------------------------------------------------------------------
# telemetry's compiled count and the operand ranges, against independent numpy
# ----------------------------------------------------------------------------
def _count_by_definition(before, after, fmt):
    """The module docstring's definitions, written out with numpy."""
    fmt = get_format(fmt)
    tiny = float(fmt.tiny) if isinstance(fmt, FloatFormat) else 0.0
    fmax = float(fmt.max)
    has_inf = isinstance(fmt, FloatFormat) and fmt.has_inf
    b = before.astype(np.float64)
    a = after.astype(np.float64)
    fin = np.isfinite(b)
    with np.errstate(invalid="ignore"):
        over = fin & (np.isinf(a) | ((np.abs(a) == fmax) & (np.abs(b) > fmax)) | (np.isnan(a) & (not has_inf)))
    return (int(np.count_nonzero((b != 0) & (a == 0))),
            int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))),
            int(np.count_nonzero(over)), int(np.count_nonzero(np.isnan(a))))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_compiled_counts_equal_numpy_counts(fmt):
    rng = np.random.default_rng(7)
    x = _values(rng, 30000)
    x[100:140] = [2.0 ** -140, -2.0 ** -135, 1e30, -1e38, 3e38, 2.0 ** -25, 127.6, -128.4, 70000, 60000] * 4
    for mode in (Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO, Rounding.UP, Rounding.STOCHASTIC):
        y = round_to(x, fmt, mode, seed=3)
        want = tuple(count_events(x.astype(np.float64), y.astype(np.float64), fmt).values())  # the numpy path
        assert _count(x, y, fmt) == want
        if isinstance(get_format(fmt), FloatFormat):  # (for int8 count_events also calls -127.6 -> -128 overflow)
            assert want == _count_by_definition(x, y, fmt)
        same = _count_by_definition(y, y, fmt)
        assert _count(y, y, fmt) == (0, same[1], 0, same[3])
        assert count_events(y, y, fmt) == dict(zip(("underflow", "subnormal", "overflow", "nan"), _count(y, y, fmt)))
    assert sum(want) > 0


def test_relu_compiled_equals_numpy():
    from lowprec.kernels.activations import relu_f32 as _relu_f32, relu_grad_f32 as _relu_grad_f32

    rng = np.random.default_rng(7)
    x = _values(rng, 3000)
    g = _values(rng, 3000)
    r = np.empty_like(x)
    _relu_f32(x, r)
    assert _same_bits(r, np.where(x > 0, x, np.float32(0)))
    gx = np.empty_like(g)
    _relu_grad_f32(r, g, gx)
    assert _same_bits(gx, np.where(x > 0, g, np.float32(0)))


def _sgd_by_numpy(g, w, buf, mu, lr, wd, decay, momentum):
    """Optimizer._step / SGD._update's numpy float32 expressions, written out."""
    f = np.float32
    if decay:
        g = g + f(wd) * w
    if momentum:
        buf = g.copy() if buf is None else f(mu) * buf + g
        upd = buf
    else:
        upd = g
    return buf, w - f(lr) * upd


@pytest.mark.parametrize("momentum,decay,first", [(0.9, False, True), (0.9, False, False), (0.9, True, False),
                                                  (0.0, True, False), (0.0, False, False), (0.5, True, True)])
def test_compiled_sgd_update_equals_numpy(momentum, decay, first):
    """kernels/optim_cpu.sgd_f32: numpy's float32 results bit for bit (subnormals, overflow, Inf, NaN), and the
    subnormal and NaN counts of the state and of the new weights."""
    from lowprec.kernels.optim_cpu import sgd_f32

    rng = np.random.default_rng(13)
    n = 5000
    g = _values(rng, n)
    w = _values(rng, n)
    buf = None if first else _values(rng, n)
    g[:8] = [np.nan, np.inf, -np.inf, 2.0 ** -149, -2.0 ** -140, 3e38, -0.0, 0.0]
    w[:8] = [1.0, np.inf, np.inf, 2.0 ** -126, 2.0 ** -130, 3e38, -0.0, np.nan]
    nans = np.array([0x7FC00001, 0xFFC00002, 0x7FC00003], np.uint32).view(np.float32)  # distinct payloads
    g[8:10], w[8:10] = nans[0], nans[1]  # NaN meets NaN: which payload survives must agree too
    if buf is not None:
        buf[8:11] = nans[2]
    wd = 1e-50 if decay else 0.0  # float32(1e-50) == 0: still added, as numpy adds it
    with np.errstate(all="ignore"):
        want_buf, want_new = _sgd_by_numpy(g, w, buf, momentum, 0.1, wd, decay, bool(momentum))
    kbuf = np.empty(n, np.float32) if buf is None else buf.copy()
    new = np.empty(n, np.float32)
    s_sub, s_nan, w_sub, w_nan = sgd_f32(g, w, kbuf, new, np.float32(momentum), np.float32(0.1), np.float32(wd),
                                         decay, bool(momentum), first)
    assert _same_bits(new, want_new)
    tiny = np.float32(2.0 ** -126)
    if momentum:
        assert _same_bits(kbuf, want_buf)
        assert (s_sub, s_nan) == (np.count_nonzero((want_buf != 0) & (np.abs(want_buf) < tiny)),
                                  np.count_nonzero(np.isnan(want_buf)))
    assert (w_sub, w_nan) == (np.count_nonzero((want_new != 0) & (np.abs(want_new) < tiny)),
                              np.count_nonzero(np.isnan(want_new)))
    assert w_nan > 0 and w_sub > 0

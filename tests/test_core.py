"""round_to / encode / decode against independent references (numpy float16, ml_dtypes, Fractions)."""

import math
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lowprec
from lowprec.formats import FixedFormat, FloatFormat, get_format

from reference import ML_DTYPES, round_fraction

ML = dict(ML_DTYPES)
SMALL = sorted(ML)
MODES = ["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd"]


def _patterns(fmt):
    return np.arange(1 << fmt.bits, dtype=np.uint8 if fmt.bits <= 8 else np.uint16)


def _ml_decode(name, pats):
    t = ML[name]
    fmt = get_format(name)
    with np.errstate(invalid="ignore"):
        if fmt.bits in (8, 16):
            return pats.view(t).astype(np.float64)
        return np.array([np.uint8(p).view(t) for p in pats]).astype(np.float64)


def _same_bits(a, b):
    """Equal values with equal signs of zero; NaN equals NaN."""
    with np.errstate(invalid="ignore"):  # signalling NaN payloads warn when widened
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) & (np.signbit(a) == np.signbit(b))
    return same | both_nan


def _ml_round(x32, name):
    """ml_dtypes' nearest-even cast of float32 input, back to float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x32.astype(ML[name]).astype(np.float32)


# ---------------------------------------------------------------------------
# decode / encode: every bit pattern
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALL, ids=str)
def test_decode_every_pattern(name):
    fmt = get_format(name)
    pats = _patterns(fmt)
    ours = lowprec.decode(pats, fmt)
    assert _same_bits(ours, _ml_decode(name, pats)).all()
    if fmt.fits_in(np.float32):
        assert _same_bits(lowprec.decode(pats, fmt, dtype=np.float32), ours).all()


@pytest.mark.parametrize("name", SMALL + ["int8", "uint8", "int4"], ids=str)
def test_encode_decode_round_trip_every_pattern(name):
    fmt = get_format(name)
    pats = _patterns(fmt)
    vals = lowprec.decode(pats, fmt)
    keep = ~np.isnan(vals)
    for dtype in (np.float64, np.float32):
        back = lowprec.encode(vals[keep].astype(dtype), fmt)
        np.testing.assert_array_equal(back, pats[keep])
        assert back.dtype == (np.uint8 if fmt.bits <= 8 else np.uint16)


_PEER_FLOATS = ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz"]


@pytest.mark.parametrize("name", _PEER_FLOATS, ids=str)
def test_encode_of_many_float32_equals_the_peer_cast(name):
    """encode of 2**20 random float32 bit patterns (every exponent, NaN and Inf; large enough for the specialised
    loops and their fast element steps) gives the peer's patterns (numpy float16, ml_dtypes; nearest-even, the same
    overflow) wherever the peer's value is not NaN, and a NaN pattern where it is; stochastic encoding gives the
    patterns of round_to's values under the same seed."""
    fmt = get_format(name)
    u = np.random.default_rng(fmt.bits + fmt.man_bits).integers(0, 2 ** 32, 1 << 20, dtype=np.uint64)
    x = u.astype(np.uint32).view(np.float32)
    ours = lowprec.encode(x, fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        peer = x.astype(ML[name])
        nan = np.isnan(peer.astype(np.float32))
    assert ours.dtype == (np.uint8 if fmt.bits <= 8 else np.uint16)
    np.testing.assert_array_equal(ours[~nan], peer.view(ours.dtype)[~nan])
    assert np.isnan(lowprec.decode(ours[nan], fmt)).all()
    sr = lowprec.encode(x, fmt, "stochastic", seed=7)
    want = lowprec.round_to(x, fmt, "stochastic", seed=7)
    assert _same_bits(lowprec.decode(sr, fmt, np.float32), want).all()


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp4_e2m1fn", "int8", "int4", "fp16", "bf16"], ids=str)
def test_decode_through_the_table_equals_small_calls(name):
    """Many patterns decode through a table of every pattern's value (at least 2**12 patterns of a format of at
    most 16 bits): the same bits as calls small enough to run the decode loops, for every integer dtype of the
    patterns (big-endian too), float32 and float64."""
    fmt = get_format(name)
    rng = np.random.default_rng(fmt.bits)
    pats = rng.permutation(np.resize(np.arange(1 << fmt.bits), max(5000, 1 << fmt.bits)))
    for dtype in (np.float64, np.float32):
        small = np.concatenate([lowprec.decode(pats[i:i + 200].astype(np.int64), fmt, dtype)
                                for i in range(0, pats.size, 200)])
        for idt in (np.uint16, np.int32, np.int64, np.dtype(">u2"), np.uint64):
            big = lowprec.decode(pats.astype(idt), fmt, dtype)
            assert big.dtype == dtype and np.array_equal(big.view(f"u{big.itemsize}"),
                                                         small.view(f"u{small.itemsize}")), (idt, dtype)
    with pytest.raises(ValueError, match="below 2"):
        lowprec.decode(np.full(5000, 1 << fmt.bits, np.int64), fmt)


def test_integer_patterns_match_numpy():
    pats = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(lowprec.decode(pats, "int8"), pats.view(np.int8).astype(np.float64))
    np.testing.assert_array_equal(lowprec.decode(pats, "uint8"), pats.astype(np.float64))
    p4 = np.arange(16, dtype=np.uint8)
    ref = p4.view(ml_dtypes.int4).astype(np.float64)
    np.testing.assert_array_equal(lowprec.decode(p4, "int4"), ref)


# ---------------------------------------------------------------------------
# nearest-even from float32 against numpy float16 / ml_dtypes
# ---------------------------------------------------------------------------
def _interesting_float32(name):
    """Every representable value, every midpoint and the float32 neighbours of both,
    overflow thresholds, subnormal boundaries, zeros, infinities, NaN."""
    fmt = get_format(name)
    vals = lowprec.decode(_patterns(fmt), fmt)
    vals = np.unique(vals[np.isfinite(vals)])
    mids = (vals[:-1] + vals[1:]) / 2  # exact in float64, and in float32 for these formats
    top = float(Fraction(fmt.max_exact) + Fraction(2) ** (fmt.emax - fmt.man_bits) / 2)
    pts = np.concatenate([vals, mids, [top, 2 * fmt.max, fmt.tiny, fmt.smallest_subnormal / 2,
                                       fmt.smallest_subnormal, 0.75 * fmt.smallest_subnormal]])
    with np.errstate(over="ignore"):  # 2*max is Inf in float32 for bf16: intended
        pts = np.concatenate([pts, -pts]).astype(np.float32)
    up = np.nextafter(pts, np.float32(np.inf))
    down = np.nextafter(pts, np.float32(-np.inf))
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4028235e38, -3.4028235e38, 1e-45], np.float32)
    return np.concatenate([pts, up, down, special])


@pytest.mark.parametrize("name", SMALL, ids=str)
def test_nearest_even_boundaries_match_reference(name):
    fmt = get_format(name)
    x = _interesting_float32(name)
    ours = lowprec.round_to(x, fmt)
    ref = _ml_round(x, name)
    if not fmt.has_nan:  # ml_dtypes turns NaN into -0 for fp6/fp4; the contract keeps NaN
        assert np.isnan(ours[np.isnan(x)]).all()
        keep = ~np.isnan(x)
        x, ours, ref = x[keep], ours[keep], ref[keep]
    bad = ~_same_bits(ours, ref)
    assert not bad.any(), (x[bad][:5], ours[bad][:5], ref[bad][:5])


@pytest.mark.parametrize("name", SMALL, ids=str)
def test_nearest_even_million_random_float32(name):
    rng = np.random.default_rng(abs(hash(name)) % 2 ** 32)
    x = rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    fmt = get_format(name)
    if not fmt.has_nan:
        x = x[~np.isnan(x)]
    ours = lowprec.round_to(x, fmt)
    bad = ~_same_bits(ours, _ml_round(x, name))
    assert int(bad.sum()) == 0, x[bad][:5]


def test_repeated_small_calls_take_the_compiled_entry_and_keep_the_bits():
    """After its first call, a small round_to calls the loop's compiled entry directly (kernels/jit.py's
    entry_point: the float32 array itself in place of its int32 carrier view, no type dispatch). The bits stay
    ml_dtypes' for every layout, including those the entry was not compiled for (read-only, unaligned, strided,
    2-D input; unaligned out=), and stochastic rounding draws the same bits through the entry as through
    the dispatcher."""
    from lowprec import core

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(40) * 30).astype(np.float32)
    x[:3] = [np.nan, -0.0, 1e-30]

    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(np.float32)
        u[:] = a
        assert not u.flags.aligned
        return u

    from lowprec.kernels import dispatch

    for name in ("bf16", "fp8_e4m3fn", "fp8_e5m2"):
        want = _ml_round(x, name)
        lowprec.round_to(np.zeros(dispatch.INTERPRET_UPTO + 1, np.float32), name)  # a compiled loop from here on
        for _ in range(3):
            assert _same_bits(lowprec.round_to(x, name), want).all(), name
        entries = core.prepare_rounding(name, dtype=np.float32)._entries
        assert any(e is not None for e in entries.values()), name  # the entry path ran
        ro = x.copy()
        ro.flags.writeable = False
        strided = np.repeat(x, 2)[::2]
        for arr in (ro, unaligned(x), strided, x.reshape(5, 8), x.reshape(8, 5).T):
            got = lowprec.round_to(arr, name)
            assert got.shape == arr.shape and _same_bits(got, _ml_round(np.array(arr), name)).all(), name
        for out in (np.empty_like(x), unaligned(np.zeros_like(x))):
            assert lowprec.round_to(x, name, out=out) is out and _same_bits(out, want).all(), name
    fresh = core.PreparedRounding("bf16", "stochastic", np.float32, 32, None, "auto")
    first = fresh(x, seed=11)  # the dispatcher (no entry yet)
    assert fresh(x, seed=11).tobytes() == first.tobytes()  # the entry
    assert any(e is not None for e in fresh._entries.values())
    assert _same_bits(first, _ml_round(first, "bf16")).all()  # bf16 values
    assert not _same_bits(first, _ml_round(x, "bf16")).all()  # and stochastic ones


def test_nearest_even_fp16_matches_numpy_astype():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    assert _same_bits(lowprec.round_to(x, "fp16"), ref).all()


# ---------------------------------------------------------------------------
# float64 input: exact Fraction reference (ml_dtypes double-rounds float64 via float32)
# ---------------------------------------------------------------------------
FLOAT64S = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
FORMATS_ANY = st.sampled_from([get_format(n) for n in SMALL] + [
    lowprec.TF32, FloatFormat(3, 4, has_subnormals=False), FloatFormat(5, 10, saturate=True),
    FloatFormat(6, 0), FloatFormat(4, 2, bias=4), FloatFormat(11, 30), lowprec.FP32])


def _check(x, fmt, mode, dtype=np.float64):
    got = float(lowprec.round_to(dtype(x), fmt, mode))
    want = round_fraction(float(dtype(x)), fmt, mode)
    assert _same_bits(got, want), (x, fmt.name, mode, got, want)


@given(x=FLOAT64S, fmt=FORMATS_ANY, mode=st.sampled_from(MODES))
def test_float64_every_mode_matches_fraction_reference(x, fmt, mode):
    _check(x, fmt, mode)


@given(x=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
       fmt=FORMATS_ANY, mode=st.sampled_from(MODES))
def test_float32_every_mode_matches_fraction_reference(x, fmt, mode):
    if not fmt.fits_in(np.float32):
        return
    _check(x, fmt, mode, np.float32)


def _near_boundaries(fmt):
    """Values at and one float64 ulp around ties, the overflow threshold and subnormal boundaries."""
    q_sub = Fraction(2) ** (fmt.emin - fmt.man_bits)
    q_top = Fraction(2) ** (fmt.emax - fmt.man_bits)
    base = [fmt.max_exact + q_top / 2, fmt.max_exact, fmt.max_exact + q_top, Fraction(fmt.tiny),
            Fraction(fmt.tiny) - q_sub / 2, q_sub / 2, q_sub, 3 * q_sub / 2, Fraction(1) + Fraction(2) ** -(fmt.man_bits + 1),
            Fraction(3) * Fraction(2) ** -(fmt.man_bits + 1) + 1]
    out = []
    for b in base:
        f = float(b)
        out += [f, math.nextafter(f, math.inf), math.nextafter(f, 0.0)]
    return out


@pytest.mark.parametrize("fmt", [get_format(n) for n in SMALL] + [lowprec.TF32, FloatFormat(3, 4, has_subnormals=False)],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("mode", MODES)
def test_boundaries_every_mode_float64(fmt, mode):
    xs = _near_boundaries(fmt)
    xs = np.array(xs + [-v for v in xs])
    got = lowprec.round_to(xs, fmt, mode)
    want = np.array([round_fraction(float(v), fmt, mode) for v in xs])
    bad = ~_same_bits(got, want)
    assert not bad.any(), (xs[bad], got[bad], want[bad])


# ---------------------------------------------------------------------------
# fixed point
# ---------------------------------------------------------------------------
FIXED = [lowprec.INT8, lowprec.UINT8, lowprec.INT4, FixedFormat(16, 8), FixedFormat(8, 3, overflow="wrap"),
         FixedFormat(6, -2), FixedFormat(8, 0, signed=False, overflow="wrap"), FixedFormat(32, 0)]


@given(x=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, min_value=-1e12, max_value=1e12)
       | st.integers(-300, 300).map(lambda k: k / 8) | st.sampled_from([math.inf, -math.inf]),
       fmt=st.sampled_from(FIXED), mode=st.sampled_from(MODES))
def test_fixed_point_matches_fraction_reference(x, fmt, mode):
    got = float(lowprec.round_to(float(x), fmt, mode))
    want = round_fraction(float(x), fmt, mode)
    assert got == want, (x, fmt.name, mode, got, want)


def test_fixed_point_encode_is_twos_complement():
    x = np.array([-128.0, -1.0, 0.0, 1.0, 127.0, 300.0, -300.0])
    np.testing.assert_array_equal(lowprec.encode(x, "int8"), np.array([-128, -1, 0, 1, 127, 127, -128], np.int8).view(np.uint8))
    w = FixedFormat(8, 0, overflow="wrap")
    np.testing.assert_array_equal(lowprec.round_to(np.array([128.0, 300.0, -129.0]), w),
                                  np.array([128, 300, -129]).astype(np.int8).astype(np.float64))


# ---------------------------------------------------------------------------
# Hypothesis properties
# ---------------------------------------------------------------------------
PROP_FORMATS = st.sampled_from([lowprec.FP16, lowprec.BF16, lowprec.FP8_E4M3FN, lowprec.FP8_E5M2,
                                lowprec.FP4_E2M1FN, lowprec.TF32, lowprec.INT8, FixedFormat(12, 4)])
FINITE = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@given(x=FINITE, fmt=PROP_FORMATS, mode=st.sampled_from(MODES))
def test_idempotent(x, fmt, mode):
    once = lowprec.round_to(x, fmt, mode)
    assert _same_bits(lowprec.round_to(once, fmt, mode), once)


@given(x=FINITE, y=FINITE, fmt=PROP_FORMATS, mode=st.sampled_from(MODES))
def test_monotone(x, y, fmt, mode):
    x, y = min(x, y), max(x, y)
    rx, ry = lowprec.round_to(np.array([x, y]), fmt, mode)
    if not (np.isnan(rx) or np.isnan(ry)):
        assert rx <= ry


@given(x=FINITE, fmt=PROP_FORMATS, mode=st.sampled_from(MODES + ["stochastic"]))
def test_output_representable(x, fmt, mode):
    r = lowprec.round_to(x, fmt, mode, seed=1)
    if np.isfinite(r):
        assert lowprec.decode(lowprec.encode(r, fmt), fmt) == r


@given(x=FINITE, fmt=PROP_FORMATS)
def test_nearest_error_at_most_half_ulp(x, fmt):
    r = float(lowprec.round_to(x, fmt))
    if not math.isfinite(r) or abs(x) > fmt.max:
        return
    if isinstance(fmt, FixedFormat):
        if not fmt.min <= x <= fmt.max:
            return
        q = Fraction(fmt.eps)
    else:
        e = math.floor(math.log2(abs(x))) if x != 0 else fmt.emin
        q = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits)
    assert abs(Fraction(r) - Fraction(x)) <= q / 2


@given(x=FINITE, fmt=PROP_FORMATS)
def test_odd_symmetry(x, fmt):
    if isinstance(fmt, FixedFormat) and fmt.signed and x < fmt.min:  # two's complement is asymmetric
        return
    for mode in ("nearest_even", "nearest_away", "toward_zero", "odd"):
        a, b = lowprec.round_to(np.array([x, -x]), fmt, mode)
        if not isinstance(fmt, FixedFormat) or -fmt.max <= x <= fmt.max:
            assert _same_bits(b, -a) or (a == 0 and b == 0)
    up, down = lowprec.round_to(x, fmt, "up"), lowprec.round_to(-x, fmt, "down")
    assert _same_bits(up, -down) or (up == 0 and down == 0) or isinstance(fmt, FixedFormat)


# ---------------------------------------------------------------------------
# the documented failures of other tools, as named regressions
# ---------------------------------------------------------------------------
def test_regression_nearest_is_ties_to_even_not_away():
    # 1 + 2**-11 is halfway between fp16 1.0 and 1 + 2**-10: even is 1.0
    assert lowprec.round_to(1 + 2 ** -11, "fp16") == 1.0
    assert lowprec.round_to(1 + 3 * 2 ** -11, "fp16") == 1 + 2 ** -9
    assert lowprec.round_to(1 + 2 ** -11, "fp16", "nearest_away") == 1 + 2 ** -10


def test_regression_fp16_overflow_thresholds():
    assert lowprec.round_to(65519.0, "fp16") == 65504.0
    assert lowprec.round_to(65520.0, "fp16") == np.inf  # max + ulp/2 rounds to Inf, not 65536
    assert lowprec.round_to(70000.0, "fp16") == np.inf  # not 0
    assert lowprec.round_to(-70000.0, "fp16") == -np.inf
    assert lowprec.round_to(70000.0, "fp16", "toward_zero") == 65504.0
    assert lowprec.round_to(70000.0, "fp16", saturate=True) == 65504.0


def test_regression_float64_is_not_rounded_through_float32():
    assert lowprec.round_to(1 + 2 ** -8 + 2 ** -40, "bf16") == 1.0078125
    assert lowprec.round_to(-431.99999999999994, "fp8_e4m3fn") == -416.0
    # the double-rounded answers other tools give:
    assert float(np.float32(1 + 2 ** -8 + 2 ** -40).astype(ml_dtypes.bfloat16)) == 1.0
    assert float(np.float32(-431.99999999999994).astype(ml_dtypes.float8_e4m3fn)) == -448.0


def test_regression_e4m3fn_max_is_448():
    f = lowprec.FP8_E4M3FN
    assert f.max == 448
    assert lowprec.round_to(448.0, f) == 448 and lowprec.round_to(464.0, f) == 448  # tie: 448 is even
    assert np.isnan(lowprec.round_to(465.0, f)) and np.isnan(lowprec.round_to(np.inf, f))
    assert lowprec.round_to(1e6, f, saturate=True) == 448
    assert lowprec.round_to(-1e6, f, saturate=True) == -448


@pytest.mark.parametrize("name", sorted(lowprec.PRESETS), ids=str)
@pytest.mark.parametrize("mode", MODES + ["stochastic"])
def test_regression_nan_stays_nan(name, mode):
    assert np.isnan(lowprec.round_to(np.array([np.nan, -np.nan]), name, mode, seed=0)).all()
    if get_format(name).fits_in(np.float32):
        assert np.isnan(lowprec.round_to(np.float32(np.nan), name, mode, seed=0))


def test_encode_rejects_nan_without_encoding():
    with pytest.raises(ValueError, match="has no NaN encoding"):
        lowprec.encode([1.0, np.nan], "fp4_e2m1fn")
    with pytest.raises(ValueError, match="has no NaN encoding"):
        lowprec.encode(np.nan, "int8")
    assert lowprec.encode(np.nan, "fp8_e4m3fn") == 0x7F


# ---------------------------------------------------------------------------
# shapes, layouts, dtypes
# ---------------------------------------------------------------------------
def test_layouts_and_dtypes():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 8)) * 1000
    ref = lowprec.round_to(base.copy(), "fp8_e5m2")
    for arr in (np.asfortranarray(base), base[:, ::2].copy(), base.astype(">f8")):
        out = lowprec.round_to(arr, "fp8_e5m2")
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, ref if arr.shape == ref.shape else ref[:, ::2])
    strided = base[:, ::2]
    np.testing.assert_array_equal(lowprec.round_to(strided, "fp8_e5m2"), ref[:, ::2])
    f32 = base.astype(np.float32)
    assert lowprec.round_to(f32, "bf16").dtype == np.float32
    empty = lowprec.round_to(np.zeros((0, 3), np.float32), "fp16")
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    zero_d = lowprec.round_to(np.array(0.1), "bf16")
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == ()
    s = lowprec.round_to(0.1, "bf16")
    assert isinstance(s, np.float64) and s == float(np.float32(0.1).astype(ml_dtypes.bfloat16))
    assert lowprec.round_to([0.1, 1e10], "fp16").dtype == np.float64
    np.testing.assert_array_equal(lowprec.round_to(np.array([3, -2**20], np.int64), "fp16"), [3.0, -np.inf])


def test_stochastic_independent_of_layout():
    x = np.random.default_rng(1).standard_normal((16, 9))
    a = lowprec.round_to(x, "bf16", "stochastic", seed=4)
    b = lowprec.round_to(np.asfortranarray(x), "bf16", "stochastic", seed=4)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,exc,msg", [
    (np.array([1 + 2j]), TypeError, "real float array"),
    (np.array(["a"]), TypeError, "real float array"),
    ("1.0", TypeError, "x must be a float array or number, got str"),
    (np.array([object()]), TypeError, "dtype object"),
    (np.array([1.0], np.float16), TypeError, "float32 or float64"),
])
def test_bad_x(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        lowprec.round_to(bad, "fp16")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown rounding 'nearest_odd'; expected one of"):
        lowprec.round_to(1.0, "fp16", "nearest_odd")
    with pytest.raises(TypeError, match="rounding must be"):
        lowprec.round_to(1.0, "fp16", 3.5)
    with pytest.raises(ValueError, match="unknown format"):
        lowprec.round_to(1.0, "fp12")
    with pytest.raises(ValueError, match="random_bits must be in 1..64, got 0"):
        lowprec.round_to(1.0, "fp16", "stochastic", seed=1, random_bits=0)
    with pytest.raises(ValueError, match="seed must be in 0..2\\*\\*64-1, got -1"):
        lowprec.round_to(1.0, "fp16", "stochastic", seed=-1)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        lowprec.round_to(1.0, "fp16", "stochastic", seed=1.5)
    with pytest.raises(ValueError, match="float32 cannot hold exactly; pass float64"):
        lowprec.round_to(np.float32(1), FloatFormat(11, 10))
    with pytest.raises(ValueError, match="backend must be one of"):
        lowprec.round_to(1.0, "fp16", backend="tpu")
    with pytest.raises(ValueError, match="can only saturate"):
        lowprec.round_to(1.0, "fp4_e2m1fn", saturate=False)
    with pytest.raises(ValueError, match="bits must be below 2\\*\\*8"):
        lowprec.decode(np.array([256]), "fp8_e5m2")
    with pytest.raises(TypeError, match="bits must be an integer array"):
        lowprec.decode(np.array([1.0]), "fp8_e5m2")


def test_python_scalars_and_lists_are_float64():
    assert lowprec.round_to([1, 2.5], "int8").dtype == np.float64
    assert lowprec.round_to(2.5, "int8") == 2.0 and lowprec.round_to(3.5, "int8") == 4.0


def test_module_is_imported_once():
    assert "lowprec.kernels.cpu" in sys.modules


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["nearest_even", "stochastic"])
def test_round_to_out_gives_the_same_bits(dtype, mode):
    x = (np.random.default_rng(8).standard_normal((40, 30)) * 1000).astype(dtype)
    want = lowprec.round_to(x, "fp16", mode, seed=3)
    buf = np.full_like(x, np.nan)
    got = lowprec.round_to(x, "fp16", mode, seed=3, out=buf)
    assert got is buf and _same_bits(buf, want).all()
    # Fortran-order and strided outputs
    f = np.asfortranarray(np.full_like(x, np.nan))
    lowprec.round_to(x, "fp16", mode, seed=3, out=f)
    assert _same_bits(f, want).all()
    big = np.full((40, 60), np.nan, dtype)
    lowprec.round_to(x, "fp16", mode, seed=3, out=big[:, ::2])
    assert _same_bits(big[:, ::2], want).all() and np.isnan(big[:, 1::2]).all()
    # in place
    y = x.copy()
    assert lowprec.round_to(y, "fp16", mode, seed=3, out=y) is y
    assert _same_bits(y, want).all()


def test_round_to_out_rejects_bad_arrays():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="out must have the result's dtype float32, got float64"):
        lowprec.round_to(x, "bf16", out=np.empty((3, 4)))
    with pytest.raises(ValueError, match=r"out must have the result's shape \(3, 4\), got \(4, 3\)"):
        lowprec.round_to(x, "bf16", out=np.empty((4, 3), np.float32))
    ro = np.empty((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        lowprec.round_to(x, "bf16", out=ro)
    with pytest.raises(TypeError, match="out must be a numpy ndarray, got list"):
        lowprec.round_to(x, "bf16", out=[0.0] * 12)


# ----------------------------------------------------------------------------
# edges: overlapping out=, failed calls leave the random stream, Python ints
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [10, 1 << 20])
def test_out_overlapping_the_input_gives_the_values_of_a_separate_output(n):
    """out=buf[1:] for x=buf[:-1] (and the reverse): the result is what a separate output receives, for the
    runtime-argument, interpreted and parallel loops alike."""
    rng = np.random.default_rng(n)
    for lo, hi in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
        buf = (rng.standard_normal(n + 1) * 1000).astype(np.float32)
        want = lowprec.round_to(buf[lo].copy(), "bf16")
        got = lowprec.round_to(buf[lo], "bf16", out=buf[hi])
        assert got is not None and np.array_equal(buf[hi], want)
        buf = (rng.standard_normal(n + 1) * 1000).astype(np.float32)
        want = lowprec.prepare_rounding("fp8_e4m3fn")(buf[lo].copy())
        lowprec.prepare_rounding("fp8_e4m3fn")(buf[lo], out=buf[hi])
        assert np.array_equal(buf[hi], want, equal_nan=True)
    x = (rng.standard_normal(n) * 1000).astype(np.float32)
    want = lowprec.round_to(x, "fp16")
    assert lowprec.round_to(x, "fp16", out=x) is x and np.array_equal(x, want)  # in place still works


def test_a_failed_call_leaves_the_random_stream_where_it_was():
    from lowprec import linalg, ops
    from lowprec.rng import RandomStream

    x = np.linspace(-3, 3, 10, dtype=np.float32)
    s = RandomStream(7)
    with pytest.raises(ValueError, match="shape"):
        lowprec.round_to(x, "fp16", "stochastic", seed=s, out=np.empty(9, np.float32))
    with pytest.raises(TypeError, match="out must have"):
        lowprec.round_to(x, "fp16", "stochastic", seed=s, out=np.empty(10, np.float64))
    with pytest.raises(ValueError, match="NaN"):
        lowprec.encode(np.float32([1.0, np.nan]), "fp4_e2m1fn", "stochastic", seed=s)
    with pytest.raises(ValueError, match="backend"):
        lowprec.encode(x, "fp16", "stochastic", seed=s, backend="tpu")
    with pytest.raises(ValueError, match="backend"):
        ops.add(x, x, "fp16", "stochastic", seed=s, backend="tpu")
    with pytest.raises(ValueError, match="broadcast"):
        ops.add(x, x[:3], "fp16", "stochastic", seed=s)
    with pytest.raises(ValueError, match="shape mismatch"):
        linalg.matmul(np.ones((2, 3)), np.ones((2, 3)), "bf16-sr", seed=s)
    assert s.offset == 0
    lowprec.round_to(x, "fp16", "stochastic", seed=s)
    assert s.offset == 10  # and a call that succeeds moves it by its size


def test_python_ints_of_any_size():
    assert float(lowprec.round_to(2 ** 70, "fp16")) == np.inf
    assert float(lowprec.round_to(2 ** 70, "fp32")) == 2.0 ** 70
    assert lowprec.round_to([2 ** 64, 3], "bf16").tolist() == [2.0 ** 64, 3.0]
    assert int(lowprec.encode(2 ** 70, "bf16")) == int(lowprec.encode(2.0 ** 70, "bf16"))
    with pytest.raises(ValueError, match=r"x holds the integer 1180591620717411303425, which float64 cannot"):
        lowprec.round_to(2 ** 70 + 1, "fp32")
    with pytest.raises(ValueError, match="x holds the integer 1000.*beyond float64's range"):
        lowprec.round_to(10 ** 400, "fp32")
    with pytest.raises(TypeError, match="x must be .* type str"):
        lowprec.round_to([2 ** 70, "a"], "fp32")

"""lowprec.block and the scale formats E8M0 / UE4M3, against ml_dtypes and the Fraction reference."""

import math

import ml_dtypes
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lowprec
import lowprec.block as lb
from block_reference import draws, pow2_scale_exponent, quantize_block, round_e8m0, round_ue4m3
from lowprec.formats import E8M0, FP32, UE4M3, FixedFormat, FloatFormat, get_format
from lowprec.rng import derive_key
from reference import round_fraction

RULES = ["floor", "ceil", "even", "rceil"]
MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]


def _bits(a):
    a = np.asarray(a)
    if a.dtype.kind in "ui":  # element codes (encode)
        return a
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _same(a, b):
    """Equal bit for bit, any NaN equal to any NaN."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b)), (a[nan != np.isnan(b)], b[nan != np.isnan(b)])
    bad = (_bits(a) != _bits(b)) & ~nan
    assert not bad.any(), (np.flatnonzero(bad)[:5], a[bad][:5], b[bad][:5])


# ---------------------------------------------------------------------------------------------------
# scale formats
# ---------------------------------------------------------------------------------------------------
def test_scale_formats_facts():
    assert get_format("e8m0") is E8M0 and get_format("float8_e8m0fnu") is E8M0 and get_format("UE4M3") is UE4M3
    assert (E8M0.bits, E8M0.emin, E8M0.emax, E8M0.tiny, E8M0.max) == (8, -127, 127, 2.0 ** -127, 2.0 ** 127)
    assert (UE4M3.bits, UE4M3.max, UE4M3.smallest_subnormal) == (7, 448.0, 2.0 ** -9)
    for f in (E8M0, UE4M3):
        assert eval(repr(f), {"FloatFormat": FloatFormat}) == f
    assert "e8m0" not in lowprec.PRESETS  # PRESETS lists the signed element formats
    with pytest.raises(ValueError, match="unsigned format needs nan"):
        FloatFormat(5, 2, signed=False)
    with pytest.raises(ValueError, match="pass has_subnormals=False"):
        FloatFormat(8, 0, has_inf=False, nan="all_ones", has_zero=False)
    assert not E8M0.fits_in(np.float32) and E8M0.fits_in(np.float64) and UE4M3.fits_in(np.float32)


def test_e8m0_decode_all_patterns_matches_ml_dtypes():
    pats = np.arange(256, dtype=np.uint8)
    ours = lowprec.decode(pats, "e8m0")
    ref = pats.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    _same(ours, ref)
    assert lowprec.encode(ours[:255], "e8m0").tolist() == list(range(255))


def test_ue4m3_is_the_non_negative_half_of_e4m3fn():
    pats = np.arange(128, dtype=np.uint8)
    ours = lowprec.decode(pats, "ue4m3")
    _same(ours, lowprec.decode(pats, "fp8_e4m3fn"))
    assert lowprec.encode(ours[:127], "ue4m3").tolist() == list(range(127))
    assert lowprec.encode(np.nan, "ue4m3") == 0x7F
    with pytest.raises(ValueError, match="below 2\\*\\*7"):
        lowprec.decode(np.array([0x80], dtype=np.uint8), "ue4m3")


_E8M0_EDGES = [0.0, -0.0, -1.0, -2.0 ** -130, 1.0, 1.5, 3.0, 6.0, 0.75, 1.25, 2.0 ** -127, 2.0 ** -128, 1e-300,
               1.5 * 2.0 ** -127, 1.4 * 2.0 ** -127, 1.5 * 2.0 ** -126, 2.0 ** 127, 1.5 * 2.0 ** 127,
               1.49 * 2.0 ** 127, 2.0 ** 128, 1e300, math.inf, -math.inf, math.nan]


@pytest.mark.parametrize("mode", ["nearest_even", "nearest_away", "up", "down", "toward_zero"])
@pytest.mark.parametrize("saturate", [False, True])
def test_e8m0_round_matches_the_reference(mode, saturate):
    rng = np.random.default_rng(5)
    x = np.concatenate([_E8M0_EDGES, np.ldexp(rng.uniform(1, 2, 400), rng.integers(-140, 140, 400)),
                        np.ldexp(1.5, np.arange(-130, 130))])
    ours = lowprec.round_to(x, "e8m0", mode, saturate=saturate)
    ref = np.array([round_e8m0(float(v), mode, saturate) for v in x])
    _same(ours, ref)


def test_e8m0_nearest_away_matches_ml_dtypes():
    """ml_dtypes' float8_e8m0fnu rounds ties away from zero (3 -> 4), and 0 and negatives to NaN."""
    rng = np.random.default_rng(1)
    with np.errstate(over="ignore"):
        edges = np.array(_E8M0_EDGES, dtype=np.float64).astype(np.float32)
    x32 = np.concatenate([edges, rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    with np.errstate(all="ignore"):
        ref = x32.astype(ml_dtypes.float8_e8m0fnu).astype(np.float64)
        x64 = x32.astype(np.float64)
    _same(lowprec.round_to(x64, "e8m0", "nearest_away"), ref)
    # nearest-even differs exactly at ties between codes: 3 = (2 + 4) / 2 goes to 2 (code 128, even)
    assert lowprec.round_to(3.0, "e8m0") == 2.0 and lowprec.round_to(6.0, "e8m0") == 8.0


def test_e8m0_of_float32_input_matches_ml_dtypes_and_float64():
    """float32 holds every E8M0 value (2**-127 as a subnormal): float32 input rounds like its float64 copy and
    stays float32; nearest_away is ml_dtypes' own float32 -> float8_e8m0fnu cast."""
    rng = np.random.default_rng(12)
    with np.errstate(over="ignore"):
        edges = np.array(_E8M0_EDGES, dtype=np.float64).astype(np.float32)
    x32 = np.concatenate([edges, np.float32([2.0 ** -127, 1.5 * 2.0 ** -127, 1.4 * 2.0 ** -127, 2.0 ** -149]),
                          rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    with np.errstate(all="ignore"):
        ref = x32.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    ours = lowprec.round_to(x32, "e8m0", "nearest_away")
    assert ours.dtype == np.float32
    _same(ours, ref)
    with np.errstate(invalid="ignore"):  # (signalling NaNs among the random patterns)
        x64 = x32.astype(np.float64)
    for mode in ("nearest_even", "up", "down"):
        _same(lowprec.round_to(x32, "e8m0", mode), lowprec.round_to(x64, "e8m0", mode).astype(np.float32))
    assert lowprec.round_to(np.float32(1.4 * 2.0 ** -127), "e8m0") == np.float32(2.0 ** -127)
    assert lowprec.round_to(np.float32(1.6 * 2.0 ** -127), "e8m0") == np.float32(2.0 ** -126)
    codes = lowprec.encode(x32, "e8m0", "nearest_away")
    ok = ~np.isnan(ref)
    assert np.array_equal(codes[ok], ref[ok].astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    _same(lowprec.decode(np.arange(256, dtype=np.uint8), "e8m0", np.float32),
          np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32))


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("mode", ["nearest_even", "up", "down"])
def test_ue4m3_round_matches_the_reference(mode, saturate):
    rng = np.random.default_rng(2)
    x = np.concatenate([[0.0, -0.0, -1.0, -1e-30, 448.0, 464.0, 465.0, 1e9, math.inf, -math.inf, math.nan,
                         2.0 ** -9, 2.0 ** -10, 1.01 * 2.0 ** -10],
                        rng.standard_normal(300) * np.exp2(rng.integers(-12, 10, 300))]).astype(np.float32)
    ours = lowprec.round_to(x, "ue4m3", mode, saturate=saturate)
    ref = np.array([round_ue4m3(float(v), mode, saturate) for v in x], dtype=np.float32)
    _same(ours, ref)


# ---------------------------------------------------------------------------------------------------
# block formats: descriptors and errors
# ---------------------------------------------------------------------------------------------------
def test_presets_and_descriptors():
    assert lb.block_preset_names() == MX + ["nvfp4", "fp8_1x128", "fp8_128x128"]
    for name in lb.block_preset_names():
        bf = lb.get_block_format(name)
        assert bf.name == name and bf.source and lb.get_block_format(bf) is bf
    assert lb.get_block_format("MXFP4").block == (32,) and lb.get_block_format("nvfp4").block == (16,)
    assert lb.get_block_format("fp8_128x128").default_axis == (-2, -1)
    assert [lb.get_block_format(n).emax_elem for n in MX] == [8, 15, 4, 2, 2, 0]
    bf = lb.BlockFormat("fp8_e4m3fn", "e8m0", 32, "rceil")
    assert bf == lb.get_block_format("mxfp8_e4m3").replace(scale_rule="rceil")


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(element="fp8_e4m3fn", scale="e8m0", block=32, scale_rule="round"), ValueError, "unknown scale_rule 'round'"),
    (dict(element="fp8_e4m3fn", scale="ue4m3", block=32, scale_rule="floor"), ValueError, "must be e8m0"),
    (dict(element="fp8_e4m3fn", scale="e8m0", block=32, scale_rule="amax"), ValueError, "not powers of two"),
    (dict(element="fp8_e4m3fn", scale="e8m0", block=0, scale_rule="floor"), ValueError, "block must be"),
    (dict(element="fp8_e4m3fn", scale="e8m0", block=32, scale_rule="floor", on_inf="clip"), ValueError, "on_inf"),
    (dict(element="fp8_e4m3fn", scale="e8m0", block=32, scale_rule="floor", tensor_scale=True), ValueError,
     "tensor_scale=True needs"),
    (dict(element="e8m0", scale="e8m0", block=32, scale_rule="floor"), ValueError, "must be signed"),
    (dict(element="fp4", scale="e8m0", block=32, scale_rule="floor", saturate=False), ValueError, "only saturate"),
])
def test_bad_block_format(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        lb.BlockFormat(**kwargs)


def test_bad_calls_name_the_argument():
    x = np.ones((4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown block format 'mxfp9'"):
        lb.quantize(x, "mxfp9")
    with pytest.raises(TypeError, match="fmt must be a BlockFormat"):
        lb.quantize(x, 32)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        lb.quantize(x, "mxfp4", axis=2)
    with pytest.raises(ValueError, match="axis must be \\(-2, -1\\)"):
        lb.quantize(x, "fp8_128x128", axis=-1)
    with pytest.raises(TypeError, match="float32 or float64"):
        lb.quantize(x.astype(np.float16), "mxfp4")
    with pytest.raises(ValueError, match="must be e8m0"):
        lb.quantize(x, "nvfp4", scale_rule="floor")
    with pytest.raises(ValueError, match="Inf in 1 block"):
        lb.quantize(np.array([1.0, np.inf] + [0.0] * 30), "mxfp8_e4m3")
    with pytest.raises(ValueError, match="tensor_scale="):
        enc = lb.encode(np.ones(16), "nvfp4")
        lb.decode(enc.elements, enc.scales, "nvfp4")
    with pytest.raises(ValueError, match="multiple of 2"):
        lb.encode(np.ones(33), "mxfp4")


# ---------------------------------------------------------------------------------------------------
# the worked examples
# ---------------------------------------------------------------------------------------------------
def test_microxcaling_issue_4_example():
    """Block maximum 960, e4m3 elements: floor gives X = 2 and 957 -> 896; rceil gives X = 4, no clipping."""
    x = np.array([960.0, 957.0, -3.0, 0.0] + [1.0] * 28, dtype=np.float32)
    q = lb.quantize(x, "mxfp8_e4m3")
    assert q[:3].tolist() == [896.0, 896.0, -3.0]
    enc = lb.encode(x, "mxfp8_e4m3")
    assert enc.scales.tolist() == [128] and enc.elements[:2].tolist() == [0x7E, 0x7E]  # X = 2, 448
    r = lb.quantize(x, "mxfp8_e4m3", scale_rule="rceil")
    assert r[:2].tolist() == [960.0, 960.0] and lb.encode(x, "mxfp8_e4m3", scale_rule="rceil").scales.tolist() == [129]
    assert lb.quantize(x, "mxfp8_e4m3", scale_rule="ceil")[:2].tolist() == [960.0, 960.0]
    assert lb.quantize(x, "mxfp8_e4m3", scale_rule="even")[:2].tolist() == [896.0, 896.0]  # 1.875 needs 3 bits: still clips
    # e5m2's largest significand is 1.75: 960 = 1.875 * 512 rounds up to 2**10 under even
    assert lb.encode(x, "mxfp8_e5m2", scale_rule="even").scales.tolist() == [127 + 10 - 15]


def test_all_zero_and_nan_blocks():
    x = np.zeros(64, dtype=np.float32)
    x[40] = np.nan
    enc = lb.encode(x, "mxfp8_e4m3")
    assert enc.scales.tolist() == [0, 255]  # an all-zero block: 2**-127; a NaN block: the NaN scale
    q = lb.quantize(x, "mxfp8_e4m3")
    assert (q[:32] == 0).all() and np.isnan(q[32:]).all()
    inf = np.array([1.0, np.inf] + [0.0] * 30)
    bf = lb.get_block_format("mxfp8_e4m3").replace(on_inf="nan")
    assert np.isnan(lb.quantize(inf, bf)).all() and lb.encode(inf, bf).scales.tolist() == [255]


def test_nvfp4_two_levels():
    x = np.array([6.5, 1.0, -0.25, 0.0] * 4 + [100.0] + [0.5] * 15, dtype=np.float32)
    enc = lb.encode(x, "nvfp4")
    s_t = np.float32(100.0 / 2688)
    assert enc.tensor_scale == s_t
    ref0, sb0 = quantize_block(x[:16], get_format("fp4"), "amax", scale_fmt=UE4M3, s_t=float(s_t))
    ref1, sb1 = quantize_block(x[16:], get_format("fp4"), "amax", scale_fmt=UE4M3, s_t=float(s_t))
    _same(lb.quantize(x, "nvfp4"), np.array(ref0 + ref1, dtype=np.float32))
    assert lowprec.decode(enc.scales, "ue4m3").tolist() == [sb0, sb1] and sb1 == 448.0
    dec = lb.decode(enc.elements, enc.scales, "nvfp4", tensor_scale=enc.tensor_scale)
    _same(dec.astype(np.float32), lb.quantize(x, "nvfp4"))


def test_nvfp4_tensor_scale_beyond_fp32_is_an_error():
    """float64 input whose fp32 tensor scale amax / 2688 overflows: a clear error (it quantized every value to
    2688 x the block scale's limit, with an overflow warning); the largest amax whose scale is finite works."""
    top = float(np.finfo(np.float32).max) * 2688
    x = np.zeros(16)
    for f in (lb.quantize, lb.encode):
        with pytest.raises(ValueError, match="x's largest finite magnitude .* tensor scale"):
            f(np.where(np.arange(16) == 0, 1e45, x), "nvfp4")
    x[0] = 0.99 * top
    assert lb.quantize(x, "nvfp4")[0] == pytest.approx(x[0], rel=0.2)


# ---------------------------------------------------------------------------------------------------
# every element format x scale rule x block size against the Fraction reference
# ---------------------------------------------------------------------------------------------------
def _blocks_strategy(n):
    finite = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
    scaled = st.builds(lambda m, e: float(np.float32(math.ldexp(m, e))), st.floats(-1.75, 1.75, width=32),
                       st.integers(-149, 127))
    special = st.sampled_from([0.0, -0.0, 960.0, 957.0, 2.0 ** -149, 2.0 ** -127, 2.0 ** 127, 3.0e38, -448.0,
                               2.0 ** -126, 6.0, 7.0, 1.75 * 2.0 ** 127])
    elem = st.one_of(finite, scaled, special)
    shapes = st.sampled_from(["any", "zero", "one_huge", "subnormal", "pow2"])
    return st.tuples(shapes, st.lists(elem, min_size=n, max_size=n), st.integers(-149, 127))


def _shape_block(kind, vals, k):
    vals = np.array(vals, dtype=np.float32)
    if kind == "zero":
        vals[:] = 0.0
    elif kind == "one_huge":
        vals[:] = np.float32(1e-3)
        vals[len(vals) // 2] = np.float32(3.0e38)
    elif kind == "subnormal":
        vals = (vals.view(np.uint32) & np.uint32(0x807FFFFF)).view(np.float32)  # exponent field 0
    elif kind == "pow2":
        with np.errstate(over="ignore"):
            vals = (vals / np.float32(4.0)).astype(np.float32)
        vals[0] = np.float32(math.ldexp(1.0, max(min(k, 127), -149)))
        vals = np.where(np.abs(vals) > np.abs(vals[0]), vals[0], vals).astype(np.float32)
    return vals


def _ci(name, rule):
    """CI runs every element format under the OCP rule and every rule on fp8 e4m3 and fp4 (each pair
    compiles its own kernels); ``slow`` runs the whole matrix."""
    ci = rule == "floor" or name in ("mxfp8_e4m3", "mxfp4")
    return pytest.param(name, rule, marks=() if ci else pytest.mark.slow, id=f"{rule}-{name}")


@pytest.mark.parametrize("name,rule", [_ci(n, r) for r in RULES for n in MX])
@settings(max_examples=25, deadline=None)
@given(data=_blocks_strategy(32))
def test_mx_blocks_match_the_fraction_reference(name, rule, data):
    kind, vals, k = data
    x = _shape_block(kind, vals, k)
    bf = lb.get_block_format(name)
    ref, e = quantize_block(x, bf.element, rule, symmetric=bf.symmetric)
    _same(lb.quantize(x, name, scale_rule=rule), np.array(ref, dtype=np.float32))
    assert lb.encode(x, name, scale_rule=rule, packed=False).scales.tolist() == [e + 127]


@pytest.mark.parametrize("name,rule,block", [
    pytest.param(n, r, b, marks=() if (r == "floor" or b == 32) and n != "mxint8" else pytest.mark.slow,
                 id=f"{b}-{n}-{r}")
    for r in RULES for n in ["mxfp8_e4m3", "mxfp4", "mxint8"] for b in [1, 16, 32, 128]])
def test_block_sizes_match_the_reference_float64(name, rule, block):
    rng = np.random.default_rng(block)
    x = rng.standard_normal((3, 256)) * np.exp2(rng.integers(-200, 200, (3, 1)))
    x[0, :block] = 0.0
    bf = lb.get_block_format(name).replace(block=block, scale_rule=rule)
    ours = lb.quantize(x, bf)
    for r in range(3):
        for b0 in range(0, 256, block):
            ref, _ = quantize_block(x[r, b0:b0 + block], bf.element, rule, dtype=np.float64, symmetric=bf.symmetric)
            _same(ours[r, b0:b0 + block], np.array(ref))


def test_scale_exponent_extremes():
    """Scale exponents at -127 (clamped) and +127 (float64 values beyond float32's range)."""
    tiny = np.array([2.0 ** -140, 2.0 ** -130, -(2.0 ** -136), 3 * 2.0 ** -134] * 8)
    enc = lb.encode(tiny, "mxfp8_e4m3")
    assert enc.scales.tolist() == [0]  # floor(log2 amax) - 8 = -138, clamped: X = 2**-127
    # x / X = 2**-13 (below e4m3's smallest 2**-9: 0), 2**-3, -2**-9, 3 * 2**-7: exact
    assert lb.quantize(tiny, "mxfp8_e4m3")[:4].tolist() == [0.0, 2.0 ** -130, -(2.0 ** -136), 3 * 2.0 ** -134]
    t32 = tiny.astype(np.float32)  # the same in float32, where 2**-130 .. 2**-136 are subnormals
    assert lb.quantize(t32, "mxfp8_e4m3")[:4].tolist() == [0.0, 2.0 ** -130, -(2.0 ** -136), 3 * 2.0 ** -134]
    big = np.full(32, 2.0 ** 300)
    assert lb.encode(big, "mxfp8_e4m3").scales.tolist() == [254]
    assert (lb.quantize(big, "mxfp8_e4m3") == 448.0 * 2.0 ** 127).all()  # clamped scale: elements saturate
    top = np.full(32, np.float32(2.0 ** 127))
    assert lb.encode(top, "mxfp4").scales.tolist() == [127 + 125]
    assert pow2_scale_exponent(2.0 ** -149, "floor", get_format("fp8_e4m3fn")) == -127


@pytest.mark.parametrize("name", ["nvfp4", "fp8_1x128"])
@settings(max_examples=20, deadline=None)
@given(data=_blocks_strategy(128))
def test_amax_scales_match_the_reference(name, data):
    kind, vals, k = data
    x = _shape_block(kind, vals, k)
    bf = lb.get_block_format(name)
    enc = lb.encode(x, name, packed=False)
    s_t = float(enc.tensor_scale) if bf.tensor_scale else 1.0
    B = bf.block[0]
    ref = []
    for b0 in range(0, 128, B):
        r, _ = quantize_block(x[b0:b0 + B], bf.element, "amax", scale_fmt=bf.scale, s_t=s_t)
        ref += r
    _same(lb.quantize(x, name), np.array(ref, dtype=np.float32))


def test_fp8_128x128_tiles():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 192, 150)) * 10).astype(np.float32)  # (below dispatch.BLOCK_SPECIALISE_FROM)
    x[1, :128, :128] *= 1000
    ours = lb.quantize(x, "fp8_128x128")
    enc = lb.encode(x, "fp8_128x128")
    assert enc.scales.shape == (2, 2, 2) and enc.scales.dtype == np.float32
    el = get_format("fp8_e4m3fn")
    for p in range(2):
        for i in range(2):
            for j in range(2):
                tile = x[p, 128 * i:128 * (i + 1), 128 * j:128 * (j + 1)]  # the last tiles are 64 x 22
                ref, s = quantize_block(tile.ravel(), el, "amax", scale_fmt=FP32)
                _same(ours[p, 128 * i:128 * (i + 1), 128 * j:128 * (j + 1)].ravel(), np.array(ref, dtype=np.float32))
                assert enc.scales[p, i, j] == s
    _same(lb.decode(enc.elements, enc.scales, "fp8_128x128").astype(np.float32), ours)


def test_blocks_along_another_axis_equal_blocks_of_the_moved_array():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 64, 5)).astype(np.float32)
    moved = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    for rule in RULES:
        a = lb.quantize(x, "mxfp6_e2m3", axis=1, scale_rule=rule)
        _same(np.moveaxis(a, 1, -1), lb.quantize(moved, "mxfp6_e2m3", scale_rule=rule))
        enc = lb.encode(x, "mxfp8_e5m2", axis=1, scale_rule=rule)
        assert enc.scales.shape == (3, 2, 5)
        _same(lb.decode(enc.elements, enc.scales, "mxfp8_e5m2", axis=1).astype(np.float32),
              lb.quantize(x, "mxfp8_e5m2", axis=1, scale_rule=rule))


def test_a_short_last_block_is_padded_with_zeros():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(50).astype(np.float32)
    padded = np.concatenate([x, np.zeros(14, dtype=np.float32)])
    _same(lb.quantize(x, "mxfp8_e4m3"), lb.quantize(padded, "mxfp8_e4m3")[:50])
    assert lb.encode(x, "mxfp8_e4m3").scales.shape == (2,)


# ---------------------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MX + ["nvfp4", "fp8_1x128"])
def test_encode_decode_round_trip(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 256)) * np.exp2(rng.integers(-30, 30, (4, 1)))
    enc = lb.encode(x, name)
    dec = lb.decode(enc.elements, enc.scales, name, tensor_scale=enc.tensor_scale)
    _same(dec, lb.quantize(x, name))
    # every representable input comes back unchanged (mxint8 too: its elements stop at -127 * 2**-6, so no
    # element lands in the binade above the block's)
    enc2 = lb.encode(dec, name)
    _same(lb.decode(enc2.elements, enc2.scales, name, tensor_scale=enc2.tensor_scale), dec)
    if lb.get_block_format(name).scale == E8M0:
        assert np.array_equal(enc2.scales, enc.scales) and np.array_equal(enc2.elements, enc.elements)


def test_packed_bytes_by_hand():
    # fp4 (e2m1): 1.0 = 0b0010, -6.0 = 0b1111, 0.5 = 0b0001, -0.0 = 0b1000; element 2j in the low nibble
    x = np.array([1.0, -6.0, 0.5, -0.0] + [0.0] * 28)
    enc = lb.encode(x, "mxfp4")
    assert enc.scales.tolist() == [127] and enc.elements[:2].tolist() == [0xF2, 0x81]
    assert enc.elements.shape == (16,)
    # fp6 e2m3: 1.0 = 0b001000, 7.5 = 0b011111, -1.0 = 0b101000, 0.125 = 0b000001
    # word = 0x08 | 0x1F << 6 | 0x28 << 12 | 0x01 << 18 = 0x0687C8 -> bytes C8 87 06
    y = np.array([1.0, 7.5, -1.0, 0.125] + [0.0] * 28)
    enc6 = lb.encode(y, "mxfp6_e2m3")
    assert enc6.scales.tolist() == [127] and enc6.elements[:3].tolist() == [0xC8, 0x87, 0x06]
    assert enc6.elements.shape == (24,)
    _same(lb.decode(enc6.elements, enc6.scales, "mxfp6_e2m3"), y)
    codes = lb.encode(y, "mxfp6_e2m3", packed=False).elements
    assert codes[:4].tolist() == [0x08, 0x1F, 0x28, 0x01]
    # mxint8: 1.0 = 64 = 0x40, -2.0 = -128 = 0x80 at X = 1 (amax 2: floor(log2 2) - 0 = 1, so X = 2 here)
    z = np.array([1.0, -2.0] + [0.0] * 30)
    encz = lb.encode(z, "mxint8")
    assert encz.scales.tolist() == [128] and encz.elements[:2].tolist() == [0x20, 0xC0]


# ---------------------------------------------------------------------------------------------------
# threads and the counter stream
# ---------------------------------------------------------------------------------------------------
def _large_calls(x, calls):
    return [lb.encode(x, n, scale_rule="rceil").elements if m == "encode" else lb.quantize(x, n, rounding=m, seed=3)
            for n, m in calls]


@pytest.mark.parametrize("calls", [
    # CI: one loop per kind of scale (lowprec warm compiles them); slow: stochastic and encode
    pytest.param([("mxfp8_e4m3", "nearest_even"), ("nvfp4", "nearest_even")], id="pow2-amax"),
    pytest.param([("mxfp4", "stochastic"), ("mxfp8_e4m3", "encode")], id="stochastic-encode", marks=pytest.mark.slow)])
def test_one_and_two_threads_and_both_loops_give_the_same_bits(calls, monkeypatch):
    """The specialised loops (from dispatch.BLOCK_SPECIALISE_FROM elements) on 1 and 2 threads, and the
    runtime-argument loop: the same bits."""
    from lowprec.kernels import block_cpu, dispatch

    rng = np.random.default_rng(8)
    x = (rng.standard_normal(dispatch.BLOCK_SPECIALISE_FROM) * 3).astype(np.float32)
    x[100] = np.nan
    old = numba.get_num_threads()
    try:
        res = []
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            res.append(_large_calls(x, calls))
    finally:
        numba.set_num_threads(old)
    monkeypatch.setattr(block_cpu, "block_loop", lambda spec: block_cpu.block_any())
    res.append(_large_calls(x, calls))
    for r in res[1:]:
        for a, b in zip(res[0], r):
            _same(a, b)


def _row_and_runtime_loops(monkeypatch, call):
    """``call()`` on the specialised loops, whatever the size (kernels/dispatch.py would otherwise run small arrays
    on the runtime-argument loop until the specialised one is cached), then on the runtime-argument loop."""
    from lowprec.kernels import block_cpu, dispatch

    with monkeypatch.context() as m:
        m.setattr(dispatch, "BLOCK_SPECIALISE_FROM", 0)
        rows = call()
    with monkeypatch.context() as m:
        m.setattr(block_cpu, "block_loop", lambda spec: block_cpu.block_any())
        runtime = call()
    return rows, runtime


@pytest.mark.parametrize("name,kw", [
    # CI: the loops lowprec warm compiles (nearest-even E8M0 and UE4M3 scales, stochastic fp4)
    ("mxfp8_e4m3", {}), ("nvfp4", {}),
    ("mxfp4", {"rounding": "stochastic", "seed": 4, "offset": 2 ** 32 - 3000}),
    pytest.param("mxfp8_e4m3", {"scale_rule": "rceil", "encode": True}, marks=pytest.mark.slow),
    pytest.param("fp8_1x128", {"encode": True}, marks=pytest.mark.slow)])
def test_row_loops_on_short_blocks_chunks_and_counters(name, kw, monkeypatch):
    """The row loops (blocks along the last axis: kernels/block_cpu._build_rows) against the runtime-argument
    loop: rows of 100 (every row's last block short: 4 elements of 32, 4 of 16), 268-1072 blocks (chunks of
    4096 / B blocks start mid-row and inside a short block's row), a NaN and an Inf in short blocks, a NaN in a
    full one, and stochastic counters that cross 2**32 inside the array (their high word changes)."""
    kw = dict(kw)
    encode = kw.pop("encode", False)
    rng = np.random.default_rng(16)
    x = (rng.standard_normal((67, 100)) * np.exp2(rng.integers(-8, 8, (67, 1)))).astype(np.float32)
    x[3, 97], x[5, 98], x[9, 10] = np.nan, np.inf, np.nan
    bf = lb.get_block_format(name).replace(on_inf="nan")

    def call():
        if encode:
            e = lb.encode(x, bf, packed=False, **kw)
            return [e.elements, e.scales]
        return [lb.quantize(x, bf, **kw), lb.quantize(x[:, :64], bf, **kw)]

    rows, runtime = _row_and_runtime_loops(monkeypatch, call)
    for a, b in zip(rows, runtime):
        if encode:  # element codes and scales (fp32 scales of the 1x128 tiles: NaN for the NaN blocks)
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))
        else:
            _same(a, b)
    if not encode:  # the short blocks' NaN and Inf spoil their own block only
        assert np.isnan(rows[0][3, 96:]).all() and not np.isnan(rows[0][3, :96]).any()
        B = bf.block[0]
        assert np.isnan(rows[0][5, 96:]).all() and np.isnan(rows[0][9, :B]).all() and not np.isnan(rows[0][9, B:]).any()


def test_nvfp4_element_rounding_at_midpoints(monkeypatch):
    """NVFP4 on float32 rounds each element in 32-bit lanes (the float64 quotient x / S rounded to float32 to odd
    first, kernels/block_cpu._quotient_ro32): quotients exactly at E2M1 midpoints (0.25, 0.75, ..., 5) and one
    float32 step either side, under a power-of-two scale (448) and a scale that is not (352), against the
    Fraction reference."""
    el = get_format("fp4")
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    blocks = []
    for S in (448.0, 352.0):
        q = (mids * np.float32(S)).astype(np.float32)
        vals = np.concatenate([q, np.nextafter(q, np.float32(0)), np.nextafter(q, np.float32(np.inf))])
        vals = np.concatenate([vals, -vals])  # 42: three blocks of the scale's amax 6 * S, 14 values and a zero
        blocks += [np.concatenate([[6 * S], vals[k:k + 14], [0.0]]).astype(np.float32) for k in range(0, 42, 14)]
    x = np.concatenate(blocks + [np.array([2688.0] + [0.0] * 15, dtype=np.float32)])  # tensor scale 2688/2688 = 1
    rows, runtime = _row_and_runtime_loops(monkeypatch, lambda: [lb.quantize(x, "nvfp4")])
    ref = []
    for b0 in range(0, x.size, 16):
        r, _ = quantize_block(x[b0:b0 + 16], el, "amax", scale_fmt=UE4M3, s_t=1.0)
        ref += r
    _same(rows[0], np.array(ref, dtype=np.float32))
    _same(runtime[0], rows[0])


def _pow2_edge_rows():
    """float32 blocks of 32 for mxfp8_e4m3: the microxcaling block (clips under floor and even), amax exactly 256
    with elements at e4m3 midpoints (normal and subnormal ones, both signs, ties to even, to -0), float32
    subnormals (the scale exponent clamped at -127), values near float32's max, zeros, random blocks over a wide
    range of exponents, and blocks holding NaN and Inf."""
    mids = [1.0625, 1.1875, 17.0, 19.0, 2.0 ** -10, 3 * 2.0 ** -10, 5 * 2.0 ** -10, 1.0625 + 2.0 ** -20, 2.0 ** -9]
    tie_block = [256.0] + mids + [-v for v in mids] + [-(2.0 ** -11), 0.0, -0.0, 2.0 ** -30, 255.9, 240.0, 232.0]
    rng = np.random.default_rng(21)
    rows = [[960.0, 957.0] + [1.0] * 30, tie_block[:32],
            [2.0 ** -149 * k for k in range(1, 33)], [-(2.0 ** -140), 2.0 ** -133] + [2.0 ** -149] * 30,
            [3.4e38, -3.0e38, 1e38, 2.0 ** 127] + [1e30] * 28, [0.0] * 31 + [-0.0]]
    rows += list(rng.standard_normal((6, 32)) * np.exp2(rng.integers(-60, 60, (6, 1))))
    rows += [[1.0] * 5 + [np.nan] + [2.0] * 26, [np.inf] + [1.0] * 31]
    return np.array([np.resize(np.array(r, dtype=np.float64), 32) for r in rows], dtype=np.float32)


@pytest.mark.parametrize("rule", RULES)
def test_row_loop_pow2_rules_match_the_fraction_reference(rule, monkeypatch):
    """mxfp8_e4m3's row loop (float32, nearest-even: elements by scalar.round_grid_f32, the pass of scales
    compiled once per rule inside one loop) against the Fraction reference, block by block, on edge blocks
    (:func:`_pow2_edge_rows`), whatever the array size (dispatch.BLOCK_SPECIALISE_FROM set to 0)."""
    from lowprec.kernels import dispatch

    x = _pow2_edge_rows()
    bf = lb.get_block_format("mxfp8_e4m3").replace(on_inf="nan")
    monkeypatch.setattr(dispatch, "BLOCK_SPECIALISE_FROM", 0)
    ours = lb.quantize(x, bf, scale_rule=rule)
    for r in range(x.shape[0]):
        ref, _ = quantize_block(x[r], bf.element, rule)
        _same(ours[r], np.array(ref, dtype=np.float32))


def _scale_runner(step):
    """A compiled loop of the amax scale step ``step`` (block_cpu._fast_scale_amax) over float32 amax bits."""
    assert step is not None

    @numba.njit
    def run(amax, max_elem, s_t, out):
        for i in range(amax.size):
            out[i] = step(np.int64(amax[i]), 32, 23, 127, 4, 0, 0, max_elem, (0,) * 9, s_t)[1]
    return run


@pytest.mark.parametrize("name,rules", [
    ("mxfp4", RULES),  # CI: the float64 loop `lowprec warm` compiles (analyze); slow: amax scales on float64
    pytest.param("nvfp4", ["amax"], marks=pytest.mark.slow)])
def test_float64_row_loops_match_the_fraction_reference(name, rules, monkeypatch):
    """The float64 row loops (elements by scalar.round_grid_f64) against the Fraction reference, block by block:
    exponents over float64's range (blocks near 1e300 saturate through the clamped scale exponent 127, float64
    subnormals, an exact E2M1 midpoint and its float64 neighbours), every power-of-two rule."""
    from lowprec.kernels import dispatch

    bf = lb.get_block_format(name)
    B = bf.block[0]
    rng = np.random.default_rng(22)
    rows = [rng.standard_normal(B) * 2.0 ** k for k in (-1060, -500, -20, 0, 30, 600, 1000)]
    rows += [np.resize([1e300, -1.7e308, 3.0], B), np.resize([5e-324, -1e-310, 0.0], B),
             np.resize([6.0, 1.25, np.nextafter(1.25, 0), np.nextafter(1.25, 2), -2.5, 0.25, -0.25], B)]
    x = np.array(rows)
    if bf.tensor_scale:  # (a tensor amax beyond float32's range has no fp32 tensor scale)
        x = np.clip(x, -1e38, 1e38)
    monkeypatch.setattr(dispatch, "BLOCK_SPECIALISE_FROM", 0)
    for rule in rules:
        ours = lb.quantize(x, bf, scale_rule=rule)
        s_t = 1.0
        if bf.tensor_scale:
            amax_t = float(np.abs(x).max())
            s_t = float(np.float32(amax_t / (float(bf.scale.max) * bf.max_elem)))
        for r in range(x.shape[0]):
            ref, _ = quantize_block(x[r], bf.element, rule, dtype=np.float64, scale_fmt=bf.scale, s_t=s_t)
            _same(ours[r], np.array(ref))


def test_fast_amax_scales_match_the_reference():
    """The row loops' amax scale steps without a call per block (kernels/block_cpu._fast_scale_amax): UE4M3 (NVFP4)
    and fp32 (the DeepSeek tiles) scales of ratios amax / (max_elem * s_t) at UE4M3 midpoints and one float32 step
    either side, in UE4M3's subnormal range, below float32's smallest normal, beyond UE4M3's max and float32's max
    (saturation), against the Fraction reference (block_reference.round_ue4m3, fractions for fp32)."""
    from lowprec.kernels import block_cpu

    ue_vals = np.array([float(v) for v in lowprec.decode(np.arange(127, dtype=np.uint8), "ue4m3")])
    mids = (ue_vals[:-1] + ue_vals[1:]) / 2  # every midpoint between neighbouring UE4M3 values
    ratios = np.concatenate([mids, ue_vals, [500.0, 464.0, 1e30, 2.0 ** -12, 2.0 ** -130, 1e-45, 0.0]])
    cases = []
    for s_t in (1.0, float(np.float32(0.7)), 2.0 ** -140):
        for max_elem in (6.0, 448.0, 2.0 ** -60):
            amax = (ratios * (max_elem * s_t)).astype(np.float32)
            amax = np.concatenate([amax, np.nextafter(amax, np.float32(0)), np.nextafter(amax, np.float32(np.inf))])
            amax = amax[np.isfinite(amax)]
            cases.append((amax, max_elem, s_t))
    for scale_fmt in (UE4M3, FP32):
        run = _scale_runner(block_cpu._fast_scale_amax(scale_fmt.replace(saturate=True, name=scale_fmt.name)
                                                       ._kernel_params()))
        for amax, max_elem, s_t in cases:
            got = np.empty(amax.size)
            run(amax.view(np.int32), max_elem, s_t, got)
            for a, g in zip(amax.tolist(), got.tolist()):
                ratio = a / (max_elem * s_t)
                if scale_fmt == UE4M3:
                    want = round_ue4m3(ratio, "nearest_even", saturate=True)
                else:  # nearest-even onto float32's grid from the exact float64 ratio, saturating at its max
                    want = round_fraction(ratio, FP32.replace(saturate=True, name="fp32"), "nearest_even")
                assert g == want, (scale_fmt.name, a, max_elem, s_t, ratio, g, want)


def test_stochastic_rounding_follows_the_counter_stream():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(96) * 5).astype(np.float32)
    k0, k1 = derive_key(11, 0)
    ours = lb.quantize(x, "mxfp4", rounding="stochastic", seed=11, offset=5)
    us = draws(k0, k1, 5, 96)
    el = get_format("fp4")
    ref = []
    for b0 in range(0, 96, 32):
        r, _ = quantize_block(x[b0:b0 + 32], el, "floor", mode="stochastic", us=us[b0:b0 + 32])
        ref += r
    _same(ours, np.array(ref, dtype=np.float32))
    # chunking: the second half with its offset gives the same bits
    _same(lb.quantize(x[32:], "mxfp4", rounding="stochastic", seed=11, offset=5 + 32), ours[32:])
    s = lowprec.RandomStream(11, offset=5)
    _same(lb.quantize(x, "mxfp4", rounding="stochastic", seed=s), ours)
    assert s.offset == 5 + 96


# ---------------------------------------------------------------------------------------------------
# MXINT8's symmetric range, ml_dtypes arrays, lowprec.analysis, CUDA
# ---------------------------------------------------------------------------------------------------
def test_mxint8_is_symmetric():
    """OCP MX v1.0 section 5.3.4: two's complement elements with the most negative code (-2) left unused,
    as microxcaling does: -1.999 (X = 1) saturates at -127/64, code 0x81; the asymmetric variant gives -2."""
    x = np.array([-1.999, 1.999, -1.0, 1 / 64] + [0.0] * 28)
    assert lb.get_block_format("mxint8").symmetric
    assert lb.quantize(x, "mxint8")[:4].tolist() == [-127 / 64, 127 / 64, -1.0, 1 / 64]
    enc = lb.encode(x, "mxint8")
    assert enc.scales.tolist() == [127] and enc.elements[:4].tolist() == [0x81, 0x7F, 0xC0, 0x01]
    full = lb.get_block_format("mxint8").replace(symmetric=False)
    assert lb.quantize(x, full)[0] == -2.0 and lb.encode(x, full).elements[0] == 0x80
    assert lb.decode(np.array([0x80] + [0] * 31, dtype=np.uint8), np.array([127], dtype=np.uint8), "mxint8")[0] == -2.0
    with pytest.raises(ValueError, match="symmetric=True is for signed"):
        lb.BlockFormat("fp8_e4m3fn", "e8m0", 32, "floor", symmetric=True)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp6_e2m3", "nvfp4", "mxint8"])
def test_ml_dtypes_arrays_match_ml_dtypes_casts(name):
    """encode(as_ml_dtypes=True): ml_dtypes' own casts of the arrays give the block values, and ml_dtypes'
    cast of x / X to the element type gives the same element bytes; decode takes the arrays back."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((4, 64)) * np.exp2(rng.integers(-20, 20, (4, 1)))).astype(np.float32)
    bf = lb.get_block_format(name)
    enc = lb.encode(x, name, as_ml_dtypes=True)
    B = bf.block[0]
    scale = enc.scales.astype(np.float64)  # ml_dtypes' decoding of the E8M0 / UE4M3 (as e4m3fn) bytes
    if bf.tensor_scale:
        scale = scale * float(enc.tensor_scale)
    X = np.repeat(scale, B, axis=-1)
    assert enc.elements.shape == x.shape and enc.elements.dtype.itemsize == 1
    quantum = bf.element.eps if isinstance(bf.element, FixedFormat) else 1.0  # MXINT8: int8 codes * 2**-6
    _same(enc.elements.astype(np.float64) * quantum * X, lb.quantize(x.astype(np.float64), name) if not bf.tensor_scale
          else lb.decode(enc.elements, enc.scales, name, tensor_scale=enc.tensor_scale))
    _same(lb.decode(enc.elements, enc.scales, name, tensor_scale=enc.tensor_scale).astype(np.float32),
          lb.quantize(x, name))
    if name != "mxint8":  # ml_dtypes rounds nearest-even; clip first (its fn types give NaN beyond max)
        m = bf.max_elem
        with np.errstate(divide="ignore"):  # (an nvfp4 block scale can underflow to 0: its elements are +-0)
            y = np.where(X == 0, x * 0.0, x.astype(np.float64) / X)
        ref = np.clip(y, -m, m).astype(enc.elements.dtype)
        assert np.array_equal(ref.view(np.uint8), enc.elements.view(np.uint8))
    packed = lb.encode(x, name)
    assert np.array_equal(lb.decode(packed.elements, packed.scales, name, tensor_scale=packed.tensor_scale),
                          lb.decode(enc.elements, enc.scales, name, tensor_scale=enc.tensor_scale))
    with pytest.raises(TypeError, match="do not hold"):
        lb.decode(enc.elements.view(np.uint8).view(ml_dtypes.float8_e5m2), enc.scales, "mxfp4")


def test_compare_scale_rules_in_analysis():
    """lowprec.analysis.compare_scale_rules is block.analyze per rule; the microxcaling block clips under
    floor and even (2 elements, the maximum among them), never under ceil and rceil."""
    from lowprec.analysis import compare_scale_rules

    x = np.array([960.0, 957.0, 0.001] + [1.0] * 29)
    st = compare_scale_rules(x, "mxfp8_e4m3")
    assert list(st) == RULES
    assert [int(st[r].clipped.sum()) for r in RULES] == [2, 0, 2, 0]
    assert [bool(st[r].max_clipped[0]) for r in RULES] == [True, False, True, False]
    assert st["floor"].max_abs_error[0] == 64.0 and st["floor"].scale[0] == 2.0 and st["ceil"].scale[0] == 4.0
    assert int(st["ceil"].underflow[0]) == 1  # 0.001 / 4 is below half e4m3's smallest 2**-9: zero
    direct = lb.analyze(x, "mxfp8_e4m3", scale_rule="even")
    assert np.array_equal(direct.sum_sq_error, st["even"].sum_sq_error)
    assert list(compare_scale_rules(x[:16], "nvfp4")) == ["amax"]


def test_cpu_equals_cuda_simulator():
    """The CUDA block kernel (one thread per block; run by numba's simulator in CI) gives the CPU's bits:
    values, element codes, scales, the stochastic stream (counter = flat index, whatever the grid), NaN blocks."""
    from lowprec.kernels import cuda as kcuda

    if not kcuda.is_available():
        pytest.skip("no CUDA target (neither a GPU nor the simulator)")
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((2, 80)) * 7).astype(np.float32)
    x[1, 40] = np.nan
    x[0, 5] = 960.0
    for name, kw in [("mxfp8_e4m3", dict(scale_rule="rceil")), ("mxfp4", dict(rounding="stochastic", seed=5, offset=7)),
                     ("nvfp4", {})]:
        _same(lb.quantize(x, name, backend="cuda", **kw), lb.quantize(x, name, backend="cpu", **kw))
        g, c = lb.encode(x[:, :64], name, backend="cuda", **kw), lb.encode(x[:, :64], name, backend="cpu", **kw)
        assert np.array_equal(g.elements, c.elements) and np.array_equal(g.scales, c.scales)
        assert g.tensor_scale == c.tensor_scale
        _same(lb.decode(g.elements, g.scales, name, tensor_scale=g.tensor_scale, backend="cuda"),
              lb.decode(c.elements, c.scales, name, tensor_scale=c.tensor_scale, backend="cpu"))


def test_quantize_into_out():
    rng = np.random.default_rng(15)
    x = (rng.standard_normal((3, 64)) * 5).astype(np.float32)
    want = lb.quantize(x, "mxfp8_e4m3")
    out = np.empty_like(x)
    assert lb.quantize(x, "mxfp8_e4m3", out=out) is out
    _same(out, want)
    y = x.copy()
    lb.quantize(y, "mxfp8_e4m3", out=y)  # in place
    _same(y, want)
    buf = np.concatenate([x.reshape(-1), np.zeros(32, np.float32)])
    lb.quantize(buf[:192].reshape(3, 64), "mxfp8_e4m3", out=buf[32:].reshape(3, 64))  # overlapping: read from a copy
    _same(buf[32:].reshape(3, 64), want)
    with pytest.raises(ValueError, match="out must be a writable, C-contiguous float32 array of shape \\(3, 64\\)"):
        lb.quantize(x, "mxfp8_e4m3", out=np.empty((3, 64)))
    with pytest.raises(TypeError, match="out must be a numpy ndarray"):
        lb.quantize(x, "mxfp8_e4m3", out=[0.0])


@pytest.mark.parametrize("name,dtype", [
    ("mxfp8_e4m3", np.float32),  # CI; slow: fp4 with E8M0 and UE4M3 (amax) scales, float64 input
    pytest.param("mxfp4", np.float32, marks=pytest.mark.slow), pytest.param("nvfp4", np.float32, marks=pytest.mark.slow),
    pytest.param("mxfp4", np.float64, marks=pytest.mark.slow)])
def test_row_loop_encode_equals_the_general_step(name, dtype, monkeypatch):
    """The row loops encode nearest-even elements through the grid step (scalar.float_pattern_of of
    round_grid_f32/_f64's value): the runtime-argument loop's patterns (encode_bits of the definition's rounding)
    and scales, on the edge blocks (ties, subnormals, saturation, NaN and Inf blocks)."""
    x = _pow2_edge_rows().astype(dtype)
    bf = lb.get_block_format(name).replace(on_inf="nan")
    rows, runtime = _row_and_runtime_loops(monkeypatch, lambda: lb.encode(x, bf, packed=False))
    assert rows.elements.dtype == np.uint8
    np.testing.assert_array_equal(rows.elements, runtime.elements)
    np.testing.assert_array_equal(rows.scales, runtime.scales)

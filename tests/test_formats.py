"""Formats: derived constants against numpy/ml_dtypes, look-up, validation, enumeration."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import lowprec
from lowprec.formats import FixedFormat, FloatFormat, all_values, get_format

from reference import ML_DTYPES

ML = dict(ML_DTYPES, fp32=np.float32)


@pytest.mark.parametrize("name", sorted(ML), ids=str)
def test_constants_match_finfo(name):
    fmt = get_format(name)
    fi = ml_dtypes.finfo(ML[name])
    assert fmt.max == float(fi.max)
    assert fmt.tiny == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.eps == float(fi.eps)
    assert fmt.bits == fi.bits
    assert fmt.man_bits == fi.nmant
    assert fmt.emin == fi.minexp
    assert fmt.emax == fi.maxexp - 1


def test_tf32_constants_by_hand():
    # tf32: 8 exponent bits like fp32, 10 mantissa bits like fp16
    f = lowprec.TF32
    assert f.bits == 19
    assert f.max == float((2 - Fraction(1, 2 ** 10)) * Fraction(2) ** 127)
    assert f.tiny == 2.0 ** -126 and f.smallest_subnormal == 2.0 ** -136
    assert f.unit_roundoff == 2.0 ** -11


def test_contract_table():
    # NUMERICS.md section 1, written out
    assert lowprec.FP16.max == 65504 and lowprec.FP8_E5M2.max == 57344 and lowprec.FP8_E4M3FN.max == 448
    assert lowprec.FP8_E4M3FN.smallest_subnormal == 2.0 ** -9 and lowprec.FP8_E5M2.smallest_subnormal == 2.0 ** -16
    assert lowprec.BF16.smallest_subnormal == 2.0 ** -133
    assert not lowprec.FP8_E4M3FN.has_inf and lowprec.FP8_E5M2.has_inf
    assert lowprec.FP16.unit_roundoff == 2.0 ** -11 == lowprec.FP16.eps / 2


@pytest.mark.parametrize("fmt,kmin,kmax", [(lowprec.INT8, -128, 127), (lowprec.UINT8, 0, 255),
                                           (lowprec.INT4, -8, 7)], ids=lambda v: getattr(v, "name", str(v)))
def test_integer_presets(fmt, kmin, kmax):
    assert (fmt.kmin, fmt.kmax) == (kmin, kmax)
    assert (fmt.min, fmt.max) == (float(kmin), float(kmax))
    info = np.iinfo({8: np.int8 if fmt.signed else np.uint8}.get(fmt.bits, np.int8))
    if fmt.bits == 8:
        assert (fmt.kmin, fmt.kmax) == (info.min, info.max)


def test_fixed_point_constants():
    f = FixedFormat(16, 8)
    assert f.eps == 2.0 ** -8 and f.max == 127 + 255 / 256 and f.min == -128.0
    assert f.name == "fixed16_8"


@pytest.mark.parametrize("name", ["fp16", "FP16", "half", "bfloat16", "e4m3", "float8_e5m2", "int8", "fp8-e4m3fn"])
def test_lookup_by_name(name):
    assert isinstance(get_format(name), (FloatFormat, FixedFormat))


def test_lookup_errors():
    with pytest.raises(ValueError, match="unknown format 'fp7'.*fp16"):
        get_format("fp7")
    with pytest.raises(TypeError, match="fmt must be"):
        get_format(16)


def test_repr_reads_like_the_constructor():
    for fmt in list(lowprec.PRESETS.values()) + [FloatFormat(3, 4, has_subnormals=False, saturate=True)]:
        rebuilt = eval(repr(fmt), {"FloatFormat": FloatFormat, "FixedFormat": FixedFormat})
        assert rebuilt == fmt and rebuilt.name == fmt.name


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(exp_bits=0, man_bits=3), ValueError, "exp_bits must be in 1..11, got 0"),
    (dict(exp_bits=12, man_bits=3), ValueError, "exp_bits must be in 1..11, got 12"),
    (dict(exp_bits=5, man_bits=53), ValueError, "man_bits must be in 0..52, got 53"),
    (dict(exp_bits=5, man_bits=-1), ValueError, "man_bits"),
    (dict(exp_bits=5.0, man_bits=2), TypeError, "exp_bits must be an int, got float"),
    (dict(exp_bits=4, man_bits=3, nan="weird"), ValueError, "nan must be one of"),
    (dict(exp_bits=4, man_bits=3, nan="all_ones"), ValueError, "has_inf=True needs nan='ieee'"),
    (dict(exp_bits=4, man_bits=3, has_inf=False), ValueError, "with has_inf=False use"),
    (dict(exp_bits=8, man_bits=3, bias=-2000), ValueError, "bias must be in"),
    (dict(exp_bits=4, man_bits=3, saturate="yes"), TypeError, "saturate must be a bool"),
])
def test_bad_float_format(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        FloatFormat(**kwargs)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(bits=1), ValueError, "bits must be in 2..32, got 1"),
    (dict(bits=33), ValueError, "bits must be in 2..32"),
    (dict(bits=8, overflow="clip"), ValueError, "overflow must be 'saturate' or 'wrap'"),
    (dict(bits=8, signed=1), TypeError, "signed must be a bool"),
])
def test_bad_fixed_format(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        FixedFormat(**kwargs)


def test_no_nan_formats_always_saturate():
    assert lowprec.FP4_E2M1FN.saturate and lowprec.FP6_E2M3FN.saturate


@pytest.mark.parametrize("name", [n for n in ML if n != "fp32"], ids=str)
def test_all_values_matches_ml_dtypes(name):
    fmt = get_format(name)
    ours = all_values(fmt)
    width = 8 if fmt.bits <= 8 else 16
    pats = np.arange(1 << fmt.bits, dtype=np.uint8 if width == 8 else np.uint16)
    with np.errstate(invalid="ignore"):
        ref = pats.view(ML[name]).astype(np.float64) if fmt.bits == width else \
            np.array([np.uint8(p).view(ML[name]) for p in pats]).astype(np.float64)
    ref = ref[~np.isnan(ref)]
    np.testing.assert_array_equal(ours, ref)
    finite = np.unique(ours[np.isfinite(ours)])
    assert finite.max() == fmt.max and finite[finite > 0].min() == fmt.smallest_subnormal


def test_all_values_rejects_wide_formats():
    with pytest.raises(ValueError, match="at most 16 bits"):
        all_values("fp32")


def test_fits_in():
    assert lowprec.BF16.fits_in(np.float32) and lowprec.FP16.fits_in(np.float32)
    assert not FloatFormat(11, 10).fits_in(np.float32)
    assert not FloatFormat(8, 30).fits_in(np.float32) and FloatFormat(8, 30).fits_in(np.float64)
    assert lowprec.INT8.fits_in(np.float32) and not lowprec.formats.INT32.fits_in(np.float32)

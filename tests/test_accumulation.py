"""The accumulation description: normalisation, presets, validation."""

import pytest

from lowprec import BF16, FP8_E4M3FN, FP8_E5M2, FP16, FP32, FixedFormat, FloatFormat, Rounding
from lowprec.accumulation import LIMITED_FP8_ACC, PRESETS, Accumulation, get_accumulation, preset_names

REQUIRED = ["fp32", "fp16-fp32", "bf16-fp32", "fp16", "bf16", "e4m3-fp32", "e5m2-e4m3-fp32", "e4m3-chunk128"]


def test_required_presets_exist_and_say_what_they_are():
    for name in REQUIRED:
        assert name in PRESETS and get_accumulation(name).name == name
    assert preset_names() == list(PRESETS)
    p = PRESETS
    assert (p["fp32"].a_format, p["fp32"].acc_format, p["fp32"].fused) == (FP32, FP32, True)
    assert (p["fp16-fp32"].a_format, p["fp16-fp32"].b_format, p["fp16-fp32"].acc_format) == (FP16, FP16, FP32)
    assert p["fp16-fp32"].product_format is None
    assert (p["bf16-fp32"].a_format, p["bf16-fp32"].acc_format) == (BF16, FP32)
    assert (p["fp16"].acc_format, p["bf16"].acc_format) == (FP16, BF16)
    assert (p["e4m3-fp32"].a_format, p["e4m3-fp32"].b_format) == (FP8_E4M3FN, FP8_E4M3FN)
    assert (p["e5m2-e4m3-fp32"].a_format, p["e5m2-e4m3-fp32"].b_format) == (FP8_E5M2, FP8_E4M3FN)
    c = p["e4m3-chunk128"]
    assert (c.order, c.chunk, c.chunk_format, c.out_format) == ("blocked", 128, FP32, FP32)
    assert c.acc_format == LIMITED_FP8_ACC and LIMITED_FP8_ACC.precision == 14
    assert c.acc_rounding is Rounding.TOWARD_ZERO


def test_defaults_and_normalisation():
    acc = Accumulation()
    assert acc.a_format == FP32 and acc.b_format == FP32 and acc.out_format == FP32
    assert acc.product_format is None and acc.chunk is None and acc.chunk_format is None
    assert acc.acc_rounding is Rounding.NEAREST_EVEN
    # names and objects give equal descriptions; b_format=None means a_format
    assert Accumulation(a_format="half", acc_format="float32") == Accumulation(a_format=FP16, b_format="fp16")
    blocked = Accumulation(order="blocked", chunk=4, acc_format="bf16")
    assert blocked.chunk_format == BF16  # chunks combined in the accumulator unless told
    assert hash(acc) == hash(Accumulation(name="other"))  # the name is a label, not part of equality


def test_frozen_and_replace():
    acc = get_accumulation("fp16")
    with pytest.raises(Exception):
        acc.fused = False  # type: ignore[misc]
    changed = acc.replace(fused=False)
    assert changed.fused is False and changed.name is None and acc.fused is True


def test_repr_is_readable():
    r = repr(PRESETS["e4m3-chunk128"])
    assert r.startswith("Accumulation(name='e4m3-chunk128'")
    for piece in ("a_format='fp8_e4m3fn'", "acc_format='e8m13'", "acc_rounding='toward_zero'",
                  "order='blocked'", "chunk=128", "chunk_format='fp32'"):
        assert piece in r
    assert "chunk" not in repr(Accumulation())  # only blocked shows chunk fields


def test_random_bits_keep_stochastic_rounding_exact():
    assert Accumulation(acc_format="bf16", acc_rounding="sr").random_bits == 32
    assert Accumulation(acc_format="fp32", acc_rounding="sr").random_bits == 28  # 24 + 28 = 52
    # chunk sums are promoted with nearest-even: only the accumulator's precision counts
    assert Accumulation(acc_format="fp16", order="blocked", chunk=2, chunk_format="fp32").random_bits == 32


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(order="blocked", chunk=0), ValueError, "chunk must be an int >= 1"),
    (dict(order="blocked", chunk=-3), ValueError, "got -3"),
    (dict(order="blocked"), ValueError, "got None"),
    (dict(order="blocked", chunk=2.0), ValueError, "chunk must be an int"),
    (dict(chunk=8), ValueError, "order='blocked' only"),
    (dict(order="diagonal"), ValueError, "order must be one of"),
    (dict(order="pairwise", compensated=True), ValueError, "compensated"),
    (dict(fused=1), TypeError, "fused must be a bool"),
    (dict(acc_format="fp99"), ValueError, "unknown format"),
    (dict(acc_rounding="sideways"), ValueError, "unknown rounding"),
    (dict(acc_format=FloatFormat(11, 52)), ValueError, "at most 51"),
    (dict(acc_format=FixedFormat(32), acc_rounding="stochastic"), ValueError, "floating-point"),
    (dict(a_format=FloatFormat(8, 30)), ValueError, "62 significant bits"),
    (dict(a_format=FloatFormat(11, 10)), ValueError, "float64"),
])
def test_bad_descriptions_are_rejected_clearly(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        Accumulation(**kwargs)


def test_products_that_float64_cannot_hold_are_rejected():
    # fp32 x fp32 (48 bits) fits; a 27-bit x 27-bit product does not
    Accumulation(a_format="fp32")
    with pytest.raises(ValueError, match="54 significant bits"):
        Accumulation(a_format=FloatFormat(8, 26), acc_format="fp32")


def test_get_accumulation_errors():
    with pytest.raises(ValueError, match="unknown accumulation 'fp7'.*fp16-fp32"):
        get_accumulation("fp7")
    with pytest.raises(TypeError, match="Accumulation or a preset name, got int"):
        get_accumulation(3)

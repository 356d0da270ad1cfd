"""The `lowprec formats` and `lowprec explain` commands."""

import math
import re
import subprocess
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import lowprec
from lowprec.cli import main
from lowprec.explain import explain, format_table
from lowprec.formats import FixedFormat


def test_formats_table_lists_every_preset(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    for name, fmt in lowprec.PRESETS.items():
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {fmt.bits} |" in row
    assert "| fp16 | 16 | e5m10 bias 15 | 65504 | 2^-14 | 2^-24 | 2^-10 |" in out
    assert "| fp8_e4m3fn | 8 | e4m3 bias 7 | 448 |" in out


def test_format_table_subset():
    t = format_table(["bf16"])
    assert len(t.splitlines()) == 3 and "| bf16 | 16 |" in t


def test_explain_shows_fields_neighbours_and_error():
    text = explain("0.1", "bf16")
    assert "0.1000000000000000055511151231257827021181583404541015625" in text
    assert "0.099609375 < x < 0.10009765625" in text  # 0x3DCC and 0x3DCD
    assert "0x3DCD = sign 0 | exponent 01111011 | mantissa 1001101" in text
    assert "x lies 0.8 of the way" in text
    assert "+0.2 ulp" in text


def test_explain_overflow_and_tie():
    assert "nearest_even -> inf" in explain("65520", "fp16")
    tie = explain("2.5", "int8")
    assert "nearest_even -> 2" in tie and "0.5 of the way" in tie
    assert "toward_zero -> 65504" in explain("1e6", "fp16", "toward_zero")


def test_explain_stochastic_probabilities():
    text = explain("0.3", "fp8_e4m3fn", "stochastic", seed=1)
    assert "P(round to 0.3125) = 0.6" in text


def test_explain_errors_are_clear(capsys):
    assert main(["explain", "abc", "--format", "fp16"]) == 2
    assert "VALUE must be a number" in capsys.readouterr().err
    assert main(["explain", "1", "--format", "fp99"]) == 2
    assert "unknown format 'fp99'" in capsys.readouterr().err
    assert main(["explain", "1", "--format", "fp16", "--rounding", "sideways"]) == 2


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lowprec.cli", "explain", "0x1.8p-3", "-f", "fp8_e5m2"],
                         capture_output=True, text=True, check=True).stdout
    assert "value        0x1.8p-3 = 0.1875 (as float64)" in out and "exponent 01100 | mantissa 10" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["--version"])


# ---------------------------------------------------------------- the range's edges (references: ml_dtypes, numpy)
_ML = {"fp8_e4m3fn": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
       "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "fp6_e3m2fn": ml_dtypes.float6_e3m2fn,
       "fp4_e2m1fn": ml_dtypes.float4_e2m1fn}


def _line(text, key):
    return next((line for line in text.splitlines() if line.startswith(key)), "")


def _ulp_in_error(text):
    return re.search(r"[-+][\d.e+-]+ ulp", _line(text, "error")) is not None


@pytest.mark.parametrize("value, fmt, edge", [
    ("130.7", "int8", int(np.iinfo(np.int8).max)), ("-200", "int8", int(np.iinfo(np.int8).min)),
    ("40", "fp6_e3m2fn", float(ml_dtypes.finfo(ml_dtypes.float6_e3m2fn).max)),
    ("7", "fp4_e2m1fn", float(ml_dtypes.finfo(ml_dtypes.float4_e2m1fn).max))])
def test_explain_says_saturation_not_representable(value, fmt, edge):
    text = explain(value, fmt)
    assert "exactly representable" not in text
    assert "saturat" in _line(text, "saturation") and f"-> {edge:g}" in _line(text, "rounding")
    assert not _ulp_in_error(text) and "not a rounding error" in _line(text, "error")
    where = "above the largest" if float(value) > 0 else "below the lowest"
    assert where in _line(text, "range")


def test_explain_at_the_top_of_a_range():
    # 7 in fp4_e2m1fn lies halfway between 6 and 8 (= 6 + ulp, not a value): nearest-even picks 8
    # (significand 1.0 x 2^3, even) and the format saturates it to 6
    spacing = float(ml_dtypes.finfo(ml_dtypes.float4_e2m1fn).max) - 4.0
    text = explain("7", "fp4_e2m1fn")
    assert _line(text, "neighbours").startswith(f"neighbours   6 < x < {6 + spacing:g} ")
    assert "picks 8" in _line(text, "saturation")
    # 450 in e4m3fn: between 448 and 448 + 32 = 480 (not a value); nearest gives 448, a rounding error in ulps
    values = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    top = np.sort(values[np.isfinite(values)])[-2:]
    text = explain("450", "fp8_e4m3fn")
    assert f"{top[1]:g} < x < {2 * top[1] - top[0]:g}" in _line(text, "neighbours")
    assert "nan" not in _line(text, "neighbours") and "-> 448" in text and _ulp_in_error(text)
    # 65520 = 65504 + ulp/2 in fp16 overflows to Inf; numpy agrees
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(65520.0))
    assert "overflows to inf" in explain("65520", "fp16")
    for fmt in lowprec.PRESETS:  # no neighbour is ever printed as nan or inf
        f = lowprec.get_format(fmt)
        for v in (f.max * 1.01, f.max * 3, -f.max * 1.01):
            assert not re.search(r"nan|inf", _line(explain(repr(v), fmt), "neighbours")), (fmt, v)


def test_explain_names_nan_encodings_and_reads_every_pattern_right():
    line = _line(explain("nan", "fp8_e4m3fn"), "bits")
    assert int(np.array(np.nan, ml_dtypes.float8_e4m3fn).view(np.uint8)) == 0x7F
    assert line.startswith("bits         0x7F") and "NaN" in line and "15 - bias" not in line
    assert "NaN" in _line(explain("nan", "fp8_e4m3fnuz"), "bits")
    # every finite pattern: the fields explain reads back are the value ml_dtypes decodes
    for name in ("fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz"):
        vals = np.arange(256, dtype=np.uint8).view(_ML[name]).astype(np.float64)
        for b, v in enumerate(vals.tolist()):
            if not math.isfinite(v) or (v == 0 and b):
                continue
            line = _line(explain(repr(v), name), "bits")
            assert line.startswith(f"bits         0x{b:02X}") and "NaN" not in line, (name, b, line)
            m = re.search(r"1\.([01]+) x 2\^(-?\d+)\)|subnormal: 0\.([01]+) x 2\^(-?\d+)|\(zero\)", line)
            if m.group(1):
                got = (1 + Fraction(int(m.group(1), 2), 2 ** len(m.group(1)))) * Fraction(2) ** int(m.group(2))
            elif m.group(3):
                got = Fraction(int(m.group(3), 2), 2 ** len(m.group(3))) * Fraction(2) ** int(m.group(4))
            else:
                got = Fraction(0)
            assert got == abs(Fraction(v)), (name, b, line)


def test_explain_nan_into_a_format_without_nan():
    for fmt in ("int8", "fp4_e2m1fn", "fp6_e3m2fn"):
        text = explain("nan", fmt)
        assert f"{fmt} has no NaN" in _line(text, "special") and not _line(text, "bits")
    assert "NaN in gives NaN out" in explain("nan", "fp16")


def test_explain_keeps_the_sign_of_zero():
    text = explain("-0.0", "fp16")
    assert "-0.0 (negative zero" in _line(text, "value") and "-> -0" in _line(text, "rounding")
    assert int(np.float16(-0.0).view(np.uint16)) == 0x8000 and "0x8000 = sign 1" in _line(text, "bits")
    assert "no negative zero" in explain("-0.0", "int8") and "-> 0" in explain("-0.0", "int8")
    fnuz = explain("-0.0", "fp8_e4m3fnuz")
    assert int(np.array(-0.0, ml_dtypes.float8_e4m3fnuz).view(np.uint8)) == 0
    assert "no negative zero" in fnuz and "0x00" in _line(fnuz, "bits")


def test_explain_is_readable_for_huge_and_tiny_values():
    text = explain("1e300", "fp16")
    assert max(len(line) for line in text.splitlines()) < 160
    assert f"{str(int(1e300))[0]}.{str(int(1e300))[1:21]}...e+300" in _line(text, "value")
    assert "exact decimal has 301 significant digits" in _line(text, "value")
    assert max(len(line) for line in explain("1e-300", "bf16").splitlines()) < 160
    # short exact expansions are still shown in full
    assert "0.1000000000000000055511151231257827021181583404541015625" in explain("0.1", "bf16")


def test_explain_wrapping_fixed_point():
    wrap = FixedFormat(8, 0, overflow="wrap")
    text = explain("130.7", wrap)
    assert f"-> {((131 + 128) % 256) - 128}" in _line(text, "rounding") and "wraps" in _line(text, "overflow")
    assert not _ulp_in_error(text)


def test_an_error_in_ulps_is_always_a_rounding_error():
    # Whenever explain gives the error in ulps, it is within the mode's bound (half an ulp for the
    # nearest modes, one ulp for the others); clamps and wraps beyond the range are never in ulps.
    modes = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "stochastic")
    for name in lowprec.PRESETS:
        f = lowprec.get_format(name)
        for v in (f.max * 1.01, f.max * 1.06, f.max * 3, -f.max * 1.4, 0.3, -1.7, f.tiny / 3, 100.7):
            for mode in modes:
                m = re.search(r"= ([-+][\d.e+-]+) ulp", _line(explain(repr(v), name, mode), "error"))
                if m:
                    assert abs(float(m.group(1))) <= (0.5 if mode.startswith("nearest") else 1.0) + 1e-9, \
                        (name, v, mode)

"""The `lowprec formats` and `lowprec explain` commands."""

import subprocess
import sys

import pytest

import lowprec
from lowprec.cli import main
from lowprec.explain import explain, format_table


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

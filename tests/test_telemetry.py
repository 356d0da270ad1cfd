"""Telemetry: rounding event counts per tensor and step, and the loss-scale trace."""

import numpy as np
import pytest

from lowprec.amp import Precision
from lowprec.formats import FloatFormat
from lowprec.telemetry import EVENTS, Telemetry, count_events


def test_count_events_fp16_by_hand():
    # fp16: smallest subnormal 2**-24, smallest normal 2**-14, max 65504
    x = np.array([2.0 ** -26, -2.0 ** -26, 2.0 ** -20, 2.0 ** -14, 1.0, 65520.0, -1e6, np.nan, 0.0], np.float32)
    y = np.array([0.0, -0.0, 2.0 ** -20, 2.0 ** -14, 1.0, np.inf, -np.inf, np.nan, 0.0], np.float32)
    # underflow: the two 2**-26 (the 0.0 input does not count); subnormal: 2**-20 only (2**-14 is normal);
    # overflow: 65520 -> inf and -1e6 -> -inf; nan: one
    assert count_events(x, y, "fp16") == {"underflow": 2, "subnormal": 1, "overflow": 2, "nan": 1}


def test_count_events_e4m3fn_overflow_is_nan_and_saturation_counts():
    x = np.array([500.0, 448.0, 1.0], np.float32)
    assert count_events(x, np.array([np.nan, 448.0, 1.0], np.float32), "fp8_e4m3fn") == \
        {"underflow": 0, "subnormal": 0, "overflow": 1, "nan": 1}
    sat = FloatFormat(4, 3, has_inf=False, nan="all_ones", saturate=True, name="e4m3_sat")
    assert count_events(x, np.array([448.0, 448.0, 1.0], np.float32), sat)["overflow"] == 1


def test_count_events_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        count_events(np.zeros(2), np.zeros(3), "fp16")


def test_precision_reports_counts_that_match_a_direct_count():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 10.0 ** rng.uniform(-12, 6, 10000)).astype(np.float32)
    tel = Telemetry()
    ctx = Precision("fp16-mixed", telemetry=tel)
    tel.begin_step(0)
    y = ctx.round(x, "activation_grad", "g")
    tel.end_step(loss_scale=8.0)
    e = tel.steps[0]["tensors"]["g"]
    assert e["role"] == "activation_grad" and e["format"] == "fp16" and e["size"] == 10000
    assert e["underflow"] == np.count_nonzero((x != 0) & (y == 0))
    assert e["subnormal"] == np.count_nonzero((y != 0) & (np.abs(y) < 2.0 ** -14))
    assert e["overflow"] == np.count_nonzero(np.abs(x) >= 65520)
    assert e["underflow"] > 0 and e["subnormal"] > 0 and e["overflow"] > 0
    assert tel.loss_scale_trace == [8.0]


def test_steps_accumulate_per_tensor_and_role():
    tel = Telemetry()
    one = (np.float32([1e-9, 1.0]), np.float32([0.0, 1.0]))
    tel.record("ignored", "weight_grad", *one, "fp16")  # outside a step: not counted
    for step in range(3):
        tel.begin_step(step)
        tel.record("a.grad", "weight_grad", *one, "fp16")
        tel.record("a.grad", "weight_grad", *one, "fp16")  # twice in a step: added
        tel.record("h.grad", "activation_grad", *one, "fp16")
        tel.end_step(loss_scale=2.0 ** step, skipped=step == 1)
    assert [s["tensors"]["a.grad"]["underflow"] for s in tel.steps] == [2, 2, 2]
    tot = tel.totals()
    assert tot["weight_grad"]["underflow"] == 6 and tot["activation_grad"]["underflow"] == 3
    assert tel.loss_scale_trace == [1.0, 2.0, 4.0]
    assert [s["skipped"] for s in tel.steps] == [False, True, False]
    assert set(tot["weight_grad"]) == set(EVENTS)
    copy = Telemetry()
    copy.load_state_dict(tel.state_dict())
    assert copy.totals() == tot and copy.steps == tel.steps


def test_disabled_and_not_kept():
    tel = Telemetry(enabled=False)
    tel.begin_step(0)
    tel.record("x", "activation", np.float32([1e-9]), np.float32([0.0]), "fp16")
    tel.end_step()
    assert tel.steps[0]["tensors"] == {}
    lean = Telemetry(keep_steps=False)
    lean.begin_step(0)
    lean.record("x", "activation", np.float32([1e-9]), np.float32([0.0]), "fp16")
    lean.end_step()
    assert lean.steps == [] and lean.last_step["tensors"]["x"]["underflow"] == 1
    assert lean.totals()["activation"]["underflow"] == 1

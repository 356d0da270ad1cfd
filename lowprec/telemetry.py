"""Training telemetry: what each rounding did to each tensor, step by step.

Every time the precision runtime (:class:`lowprec.amp.Precision`) rounds a
tensor to the format its policy names for a role, it can report the values
before and after to a :class:`Telemetry` object, which counts, per tensor
name and per step:

``underflow``
    non-zero finite values that became (signed) zero;
``subnormal``
    results that are non-zero but smaller in magnitude than the format's
    smallest normal number (``fmt.tiny``): values that kept only part of
    their precision;
``overflow``
    finite values that became +-Inf, were saturated to +-max (|x| > max
    and the result is +-max), or became NaN in a format without Inf
    (fp8 e4m3fn without saturation);
``nan``
    NaN values in the rounded tensor (new or propagated from the input).

It also keeps the loss-scale trace (scale per step and whether the step was
skipped). Counts are plain ints so that the record is JSON-serialisable.

Examples
--------
>>> import numpy as np
>>> from lowprec.telemetry import count_events
>>> x = np.array([1e-9, 3e-6, 1.0, 7e4, np.nan], dtype=np.float32)
>>> y = np.array([0.0, 2.980232238769531e-06, 1.0, np.inf, np.nan], dtype=np.float32)
>>> count_events(x, y, "fp16")
{'underflow': 1, 'subnormal': 1, 'overflow': 1, 'nan': 1}
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Optional

import numpy as np

from .formats import FixedFormat, FloatFormat, get_format
from .kernels.events import count_bits

__all__ = ["EVENTS", "count_events", "Telemetry"]

#: The event kinds counted, in the order used by the CSV columns.
EVENTS = ("underflow", "subnormal", "overflow", "nan")


def count_events(before, after, fmt) -> dict:
    """Count underflow, subnormal, overflow and NaN events of one rounding.

    Parameters
    ----------
    before, after : ndarray
        The values before and after rounding to ``fmt`` (same shape).
    fmt : format or name
        The format ``after`` was rounded to.

    Returns
    -------
    dict
        ``{"underflow": int, "subnormal": int, "overflow": int, "nan": int}``
        as defined in the module docstring.
    """
    return dict(zip(EVENTS, _count(before, after, fmt)))


def _count(before, after, fmt) -> tuple:
    """count_events as a tuple in :data:`EVENTS` order."""
    lim = _limits32(fmt)
    if (lim is not None and type(after) is np.ndarray and type(before) is np.ndarray and after.dtype == _F32
            and before.dtype == _F32 and after.shape == before.shape):  # the training case, one compiled pass
        return count_bits(before.reshape(-1).view(np.uint32), after.reshape(-1).view(np.uint32), *lim,
                          before is after)  # (reshape copies a non-contiguous array: same values)
    before = np.asarray(before)
    after = np.asarray(after)
    same = before is after  # nothing was rounded: only the state of the values is counted
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {before.shape} and {after.shape}")
    tiny, fmax, has_inf = _limits(fmt)
    # a few whole-array passes; the exact tests run only on the (usually few) flagged elements
    a_abs = np.abs(after)
    zero_after = a_abs == 0
    n_zero = int(np.count_nonzero(zero_after))
    n_nan = int(np.count_nonzero(np.isnan(after)))
    underflow = 0
    if n_zero and not same:
        underflow = int(np.count_nonzero(before[zero_after] != 0))
    subnormal = int(np.count_nonzero(a_abs < tiny)) - n_zero if tiny > 0 else 0
    overflow = 0
    if not same:
        big = a_abs >= fmax  # Inf and +-max (NaN compares False)
        if not has_inf and n_nan:
            big |= np.isnan(after)
        if big.any():
            b, a = before[big], a_abs[big]
            hit = np.isinf(a) | (np.abs(b) > fmax) | np.isnan(a)
            overflow = int(np.count_nonzero(hit & np.isfinite(b)))
    nan = n_nan
    return underflow, subnormal, overflow, nan


_F32 = np.dtype(np.float32)


@lru_cache(maxsize=256)
def _limits32(fmt):
    """count_bits's thresholds (uint32 bits of tiny and max, and top) when tiny and max are float32
    numbers, else None."""
    tiny, fmax, has_inf = _limits(fmt)
    exact = all(abs(v) <= 3.4028234663852886e38 and float(np.float32(v)) == v for v in (tiny, fmax))
    top = 0x7F800000 if has_inf else 0xFFFFFFFF
    return tuple(np.uint32(v) for v in (np.float32(tiny).view(np.uint32), np.float32(fmax).view(np.uint32), top)) \
        if exact else None




@lru_cache(maxsize=256)
def _limits(fmt) -> tuple:
    """(smallest normal, max finite, has Inf) of a format (the properties use Fractions)."""
    f = get_format(fmt)
    if isinstance(f, FloatFormat):
        return float(f.tiny), float(f.max), bool(f.has_inf)
    return 0.0, float(f.max), False


class Telemetry:
    """Per-step, per-tensor counts of rounding events, and the loss-scale trace.

    Use :meth:`begin_step` before a training step and :meth:`end_step` after
    it; :meth:`record` is called by the precision runtime for each rounded
    tensor in between. Records made outside a step (evaluation) are ignored.

    Attributes
    ----------
    steps : list of dict
        One entry per finished step: ``{"step": int, "loss_scale": float,
        "skipped": bool, "tensors": {name: {"role": str, "format": str,
        "size": int, "underflow": int, ...}}}``.

    Examples
    --------
    >>> import numpy as np
    >>> t = Telemetry()
    >>> t.begin_step(0)
    >>> t.record("layer0.grad", "weight_grad", np.float32([1e-9, 1.0]), np.float32([0.0, 1.0]), "fp16")
    >>> t.end_step(loss_scale=1.0, skipped=False)
    >>> t.totals()["weight_grad"]["underflow"]
    1
    """

    def __init__(self, enabled: bool = True, keep_steps: bool = True):
        self.enabled = bool(enabled)
        self.keep_steps = bool(keep_steps)
        self.steps: list = []
        self.last_step: Optional[dict] = None
        self.tensor_totals: dict = {}
        #: ``[step, tensor, role, format, underflow, subnormal, overflow, nan]`` for every tensor and step
        #: with a non-zero count (kept even when ``keep_steps`` is False; ``lowprec train`` writes them
        #: to telemetry.csv)
        self.events: list = []
        #: ``[step, tensor, role, format, scale, amax, clipped fraction, underflow fraction]`` for every
        #: scaled cast (:mod:`lowprec.amp.scaling`) in a step; rowwise scales give the smallest scale
        #: and the largest amax (``lowprec train`` writes them to scales.csv)
        self.scales: list = []
        self._current = None

    def begin_step(self, step: int) -> None:
        """Start collecting counts for training step ``step``."""
        self._current = {"step": int(step), "loss_scale": None, "skipped": False, "tensors": {}}

    def record(self, name: str, role: str, before, after, fmt) -> None:
        """Count the events of one rounding of tensor ``name`` (role ``role``)."""
        if not self.enabled or self._current is None:
            return
        u, s, o, n = _count(before, after, fmt)
        self._add(name, role, fmt, np.size(after), u, s, o, n)

    def record_counts(self, name: str, role: str, before, after, fmt) -> tuple:
        """:meth:`record`, returning the counts ``(underflow, subnormal, overflow, nan)`` (zeros when
        nothing is kept: disabled or outside a step)."""
        if not self.enabled or self._current is None:
            return 0, 0, 0, 0
        u, s, o, n = _count(before, after, fmt)
        self._add(name, role, fmt, np.size(after), u, s, o, n)
        return u, s, o, n

    def record_scale(self, name: str, role: str, fmt: str, scale: float, amax: float, clipped: float,
                     underflow: float) -> None:
        """Record the scale, amax and clipped / underflowed-to-zero fractions of one scaled cast."""
        if not self.enabled or self._current is None:
            return
        self.scales.append([self._current["step"], name, role, fmt, float(scale), float(amax), float(clipped),
                            float(underflow)])

    @property
    def active(self) -> bool:
        """Whether a record made now would be kept (enabled, inside a step)."""
        return self.enabled and self._current is not None

    def _add(self, name: str, role: str, fmt, size: int, u: int, s: int, o: int, n: int) -> None:
        """Add counts computed elsewhere (the fused round-and-count loop) for tensor ``name``."""
        tensors = self._current["tensors"]
        entry = tensors.get(name)
        if entry is None:
            fname = fmt.name if isinstance(fmt, (FloatFormat, FixedFormat)) else get_format(fmt).name
            tensors[name] = {"role": role, "format": fname, "size": int(size),
                             "underflow": u, "subnormal": s, "overflow": o, "nan": n}
        else:  # the same tensor rounded twice in a step (e.g. gradient accumulation): add up
            entry["underflow"] += u
            entry["subnormal"] += s
            entry["overflow"] += o
            entry["nan"] += n

    def end_step(self, loss_scale: float = 1.0, skipped: bool = False) -> None:
        """Finish the current step, recording its loss scale and whether it was skipped."""
        if self._current is None:
            return
        self._current["loss_scale"] = float(loss_scale)
        self._current["skipped"] = bool(skipped)
        step = self._current["step"]
        totals = self.tensor_totals
        for name, entry in self._current["tensors"].items():
            tot = totals.get(name)
            if tot is None:
                tot = totals[name] = {"role": entry["role"], "format": entry["format"],
                                      "underflow": 0, "subnormal": 0, "overflow": 0, "nan": 0}
            u, s, o, n = entry["underflow"], entry["subnormal"], entry["overflow"], entry["nan"]
            if u or s or o or n:
                tot["underflow"] += u
                tot["subnormal"] += s
                tot["overflow"] += o
                tot["nan"] += n
                self.events.append([step, name, entry["role"], entry["format"], u, s, o, n])
        self.last_step = self._current
        if self.keep_steps:
            self.steps.append(self._current)
        self._current = None

    @property
    def loss_scale_trace(self) -> list:
        """The loss scale used at each finished step."""
        return [s["loss_scale"] for s in self.steps]

    def step_totals(self, step_record: dict) -> dict:
        """Sum one step's counts per role: ``{role: {event: int}}``."""
        out: dict = defaultdict(lambda: dict.fromkeys(EVENTS, 0))
        for entry in step_record["tensors"].values():
            acc = out[entry["role"]]
            for k in EVENTS:
                acc[k] += entry[k]
        return dict(out)

    def totals(self) -> dict:
        """Counts summed over all finished steps, per role: ``{role: {event: int}}``."""
        return self.step_totals({"tensors": self.tensor_totals})

    def state_dict(self) -> dict:
        """A JSON-serialisable copy of the record (for checkpoints)."""
        return {"enabled": self.enabled, "keep_steps": self.keep_steps, "steps": self.steps,
                "tensor_totals": self.tensor_totals, "events": self.events, "scales": self.scales}

    def load_state_dict(self, state: dict) -> None:
        """Restore a record written by :meth:`state_dict`."""
        self.enabled = bool(state["enabled"])
        self.keep_steps = bool(state["keep_steps"])
        self.steps = list(state["steps"])
        self.tensor_totals = {k: dict(v) for k, v in state["tensor_totals"].items()}
        self.events = [list(e) for e in state["events"]]
        self.scales = [list(e) for e in state.get("scales", [])]
        self.last_step = self.steps[-1] if self.steps else None
        self._current = None

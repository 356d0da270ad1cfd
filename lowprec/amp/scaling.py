"""Tensor scaling between a float32 tensor and a low-precision format: current, delayed, rowwise.

A scaled cast of a float32 tensor ``x`` to a format ``fmt`` (e4m3, e5m2) is

    s  = the scale (float32; per tensor, or one per row / column)
    q  = round(sat(fl32(x * s)), fmt)     (the policy's rounding: nearest-even or stochastic)
    x' = fl32(q / s)                      (dequantized: what the float32 matmul sees)

``sat`` clips to ``[-fmt.max, fmt.max]`` when ``saturate`` is True (Transformer
Engine's casts saturate: "values exceeding FP8 range are clipped"; +-Inf
becomes +-max, NaN stays NaN); with ``saturate=False`` an out-of-range value is
rounded by :func:`lowprec.round_to` as the format says (e4m3fn: NaN, e5m2: Inf).
With a power-of-two scale ``x * s`` and ``q / s`` are exact (barring float32
under/overflow); otherwise each is one float32 rounding, as in a cast kernel
that multiplies in float32.

The scale from an amax ``a`` (float32) with margin ``m`` (:func:`scale_from_amax`)::

    s = fl32(fl32(fmt.max) / a) / 2**m     (float32 division, correctly rounded; / 2**m is exact)
    s = FLT_MAX  where that is +Inf (a tiny)
    s = 2**floor(log2 s)  when power_of_two (rounded down, so |x| <= a never clips)
    s = previous scale  where a == 0 or a is not finite

* ``current`` scaling: ``a = max|x|`` of this tensor; the previous scale is 1.
* ``delayed`` scaling (Transformer Engine ``DelayedScaling``): the tensor is
  cast with the scale computed after the previous step; then ``max|x|`` is
  appended to an amax history of the last ``history_len`` steps (zeros
  before the first), the history is reduced with ``max`` or ``most_recent``
  and the new scale computed from it, keeping the old scale where the reduced
  amax is 0 or not finite. The first step uses scale 1. This is TE's
  rotate-then-zero history window seen from outside: the scale used at step
  ``t`` depends on the amaxes of steps ``t-N .. t-1`` (TE's ``interval`` is 1;
  amax reduction across devices does not apply).

Granularity ``tensor`` (one scale) or ``rowwise`` (one scale per row of a
left operand / per column of a weight, i.e. along the contraction axis, as
torchao's float8 rowwise recipe; current scaling only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core import round_to
from ..formats import get_format
from ..rounding import Rounding, get_rounding

__all__ = ["ScalingRecipe", "TensorScaler", "scale_from_amax", "scaled_cast", "ScaledWeightCast",
           "ScaledInputCast", "scaled_policy", "SCALED_PRESETS"]

_FLT_MAX = np.float32(np.finfo(np.float32).max)


def scale_from_amax(amax, fmt_max, margin: int = 0, power_of_two: bool = False, previous=1.0) -> np.ndarray:
    """The float32 scale(s) for amax value(s) ``amax`` (see the module docstring for the formula).

    Examples
    --------
    >>> float(scale_from_amax(np.float32(2.0), 448.0))
    224.0
    >>> float(scale_from_amax(np.float32(3.0), 448.0, power_of_two=True))
    128.0
    >>> float(scale_from_amax(np.float32(0.0), 448.0, previous=8.0))
    8.0
    """
    a = np.asarray(amax, dtype=np.float32)
    if a.ndim == 0 and np.ndim(previous) == 0:  # the per-tensor case, in Python floats
        return np.asarray(_scale_scalar(float(a), float(np.float32(fmt_max)), int(margin), power_of_two, previous),
                          dtype=np.float32)
    prev = np.broadcast_to(np.asarray(previous, dtype=np.float32), a.shape)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s = np.float32(fmt_max) / a
        s = s / np.float32(2.0 ** int(margin))
        s = np.where(np.isposinf(s), _FLT_MAX, s).astype(np.float32)
        if power_of_two:
            _, e = np.frexp(s)
            s = np.ldexp(np.float32(1.0), e - 1).astype(np.float32)
    keep = ~(a > 0) | ~np.isfinite(a)
    return np.where(keep, prev, s).astype(np.float32)


_F32_INF_FROM = 2.0 ** 128 - 2.0 ** 103  # float64 values from here up round to float32 +Inf (ties to even)
with np.errstate(invalid="ignore"):
    _INF_OVER_INF = np.float32(np.inf) / np.float32(np.inf)  # (the machine's default NaN, as the array path gives)


def _scale_scalar(a: float, fmax32: float, margin: int, power_of_two: bool, previous) -> np.float32:
    """:func:`scale_from_amax` of one float32 amax ``a`` (as a float) and ``fmax32 = fl32(fmt_max)``: the float64
    quotient rounded to float32 is the correctly rounded float32 quotient (53 >= 2 * 24 + 2 bits: double rounding
    is innocuous for a division), and dividing by ``2**margin`` is one more rounding of an exact quotient."""
    if not a > 0.0 or a == math.inf:  # (NaN fails a > 0)
        return np.float32(previous)
    t = fmax32 / a
    d = 2.0 ** margin
    if t >= _F32_INF_FROM:  # fl32(fmax / a) is +Inf: Inf / fl32(2**margin) is Inf (-> FLT_MAX), or NaN
        s = _FLT_MAX if d < _F32_INF_FROM else _INF_OVER_INF
    elif d >= _F32_INF_FROM:
        s = np.float32(0.0)  # a finite quotient over fl32(2**margin) = +Inf
    else:
        s = np.float32(float(np.float32(t)) / d)
    if power_of_two:
        s = np.float32(math.ldexp(1.0, math.frexp(float(s))[1] - 1))
    return s


@dataclass(frozen=True)
class ScalingRecipe:
    """How the matmul operands of a layer are scaled and cast (see the module docstring).

    Parameters
    ----------
    mode : {"current", "delayed"}
    granularity : {"tensor", "rowwise"}
    history_len : int
        Delayed scaling: amaxes kept (TE's ``amax_history_len``).
    amax_compute : {"max", "most_recent"}
        Delayed scaling: reduction of the history (TE's ``amax_compute_algo``).
    margin : int
        The scale is divided by ``2**margin``.
    power_of_two : bool
        Round each scale down to a power of two.
    saturate : bool
        Clip ``x * s`` to the format's range before rounding (True, as TE) or not.
    forward_format, grad_format : str
        Format of weights and activations, and of the output gradients.
    rounding : str
        Rounding of the casts (``nearest_even`` or ``stochastic``: the policy's streams
        ``activation``, ``weight_used`` and ``activation_grad``).
    """

    mode: str = "delayed"
    granularity: str = "tensor"
    history_len: int = 1024
    amax_compute: str = "max"
    margin: int = 0
    power_of_two: bool = False
    saturate: bool = True
    forward_format: str = "fp8_e4m3fn"
    grad_format: str = "fp8_e5m2"
    rounding: str = "nearest_even"

    def __post_init__(self):
        if self.mode not in ("current", "delayed"):
            raise ValueError(f"scaling mode must be 'current' or 'delayed', got {self.mode!r}")
        if self.granularity not in ("tensor", "rowwise"):
            raise ValueError(f"granularity must be 'tensor' or 'rowwise', got {self.granularity!r}")
        if self.granularity == "rowwise" and self.mode != "current":
            raise ValueError("rowwise scaling is current scaling only (as torchao's rowwise recipe)")
        if self.amax_compute not in ("max", "most_recent"):
            raise ValueError(f"amax_compute must be 'max' or 'most_recent', got {self.amax_compute!r}")
        for field in ("history_len", "margin"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if field == "history_len" else 0):
                raise ValueError(f"{field} must be an int >= {1 if field == 'history_len' else 0}, got {v!r}")
        get_format(self.forward_format), get_format(self.grad_format), get_rounding(self.rounding)


def _amax(x: np.ndarray, axis) -> np.ndarray:
    """max|x| (NaN if any NaN) over all of x (axis None) or along ``axis`` (kept as a broadcastable dim)."""
    if x.size == 0:
        return np.float32(0.0) if axis is None else np.zeros([1 if i == axis % x.ndim else n
                                                              for i, n in enumerate(x.shape)], np.float32)
    if axis is None:
        return np.abs(x).max().astype(np.float32)
    return np.max(np.abs(x), axis=axis, keepdims=True).astype(np.float32)


def scaled_cast(x: np.ndarray, scale, fmt, rounding="nearest_even", saturate: bool = True, seed=None,
                rounder=None) -> tuple:
    """``(fl32(q / scale), q, fl32(x * scale))`` with ``q = round(sat(fl32(x * scale)), fmt)``.

    ``rounder``: a prepared rounding ``f(x, seed=...)`` to use instead of :func:`lowprec.round_to`
    (same values).

    Examples
    --------
    >>> x = np.float32([1.0, 1000.0, 1e-6])
    >>> deq, q, xs = scaled_cast(x, np.float32(0.25), "fp8_e4m3fn")
    >>> q.tolist(), deq.tolist()  # 250 lies between the e4m3 values 240 and 256; 2.5e-7 is below 2**-9
    ([0.25, 256.0, 0.0], [1.0, 1024.0, 0.0])
    """
    fmt = get_format(fmt)
    rnd = get_rounding(rounding)
    s = np.asarray(scale, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        xs = (np.asarray(x, dtype=np.float32) * s).astype(np.float32, copy=False)
        src = np.clip(xs, np.float32(-fmt.max), np.float32(fmt.max)) if saturate else xs
        if rounder is not None:
            q = rounder(np.ascontiguousarray(src, dtype=np.float32), seed=seed)
        elif rnd is Rounding.STOCHASTIC:
            q = round_to(src, fmt, rnd, seed=seed)
        else:
            q = round_to(src, fmt, rnd)
        q = np.asarray(q, dtype=np.float32)
        deq = (q / s).astype(np.float32, copy=False)
    return deq, q, xs


class TensorScaler:
    """The scale (and, for delayed scaling, the amax history) of one tensor.

    Parameters
    ----------
    recipe : ScalingRecipe
    fmt : format name or object
    axis : int or None
        None: one scale; else the axis reduced for rowwise amaxes (-1: one scale per row, 0: per column).

    Examples
    --------
    >>> t = TensorScaler(ScalingRecipe("delayed", history_len=2), "fp8_e4m3fn")
    >>> [float(t.observe(np.float32(a))) for a in (2.0, 4.0, 1.0, 1.0)]
    [224.0, 112.0, 112.0, 448.0]
    """

    def __init__(self, recipe: ScalingRecipe, fmt, axis: Optional[int] = None):
        self.recipe = recipe
        self.fmt = get_format(fmt)
        self._max = float(self.fmt.max)  # (the format's properties are Fractions: slow in a loop)
        self._max32 = float(np.float32(self._max))
        self._rnd = get_rounding(recipe.rounding)
        self._rounder = None  # (runtime, its prepared rounding to fmt): looked up once per runtime
        self.axis = axis if recipe.granularity == "rowwise" else None
        self.scale = np.float32(1.0)
        self.history = np.zeros(int(recipe.history_len), dtype=np.float32)

    def current_scale(self, x: np.ndarray) -> tuple:
        """(scale, amax) to cast ``x`` with now (delayed: from the history; current: from ``x``)."""
        amax = _amax(x, self.axis)
        rec = self.recipe
        if rec.mode == "current":
            if self.axis is None:  # (scale_from_amax's per-tensor case)
                return np.asarray(_scale_scalar(float(amax), self._max32, int(rec.margin), rec.power_of_two, 1.0),
                                  dtype=np.float32), amax
            return scale_from_amax(amax, self._max, rec.margin, rec.power_of_two, 1.0), amax
        return self.scale, amax

    def observe(self, amax) -> np.ndarray:
        """Delayed scaling, after a step: append ``amax`` to the history and recompute the scale
        (returned). Current scaling: nothing (returns the last scale)."""
        if self.recipe.mode != "delayed":
            return self.scale
        h = self.history
        h[:-1] = h[1:].copy()
        h[-1] = np.float32(amax)
        red = h.max() if self.recipe.amax_compute == "max" else h[-1]
        # np.max propagates NaN; an Inf or NaN in the window keeps the previous scale (TE's rule)
        # (scale_from_amax(red, ...)[()] of the per-tensor case)
        self.scale = _scale_scalar(float(red), self._max32, int(self.recipe.margin), self.recipe.power_of_two,
                                   np.float32(self.scale))
        return self.scale

    def state_dict(self) -> dict:
        return {"scale": np.asarray(self.scale, np.float32).tolist(), "history": self.history.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.scale = np.float32(state["scale"])
        self.history = np.asarray(state["history"], dtype=np.float32)

    def cast(self, x: np.ndarray, ctx=None, role: str = "activation", name: Optional[str] = None,
             update: bool = True, full: bool = False):
        """The dequantized scaled cast of ``x`` (the values of :func:`scaled_cast`), with telemetry and,
        when ``update``, the delayed-scaling history step.

        Telemetry (``ctx.telemetry``, under ``name``): the rounding events of ``fl32(x * s) -> q`` (as
        any rounding), and :meth:`~lowprec.telemetry.Telemetry.record_scale` with the scale, the amax,
        the clipped fraction (finite ``x * s`` beyond the format's max, saturated or overflowed, plus
        infinite ones) and the underflowed fraction (``x * s`` nonzero, ``q`` zero).

        ``full=True`` returns ``(deq, q, scale)`` (what a matrix unit multiplies, :mod:`lowprec.amp.hardware`).
        """
        x = np.asarray(x, dtype=np.float32)
        scale, amax = self.current_scale(x)
        fmt, rec, fmax = self.fmt, self.recipe, self._max
        rnd = self._rnd
        with np.errstate(over="ignore", invalid="ignore"):
            xs = np.ascontiguousarray(x * scale, dtype=np.float32)
            # the clip is the identity when every |x| * s is within the range (no pass over x needed)
            if np.ndim(amax) == 0 and np.ndim(scale) == 0:
                in_range = float(amax) * float(scale) <= fmax  # (False for a NaN or Inf amax)
            else:
                in_range = bool(np.all(np.asarray(amax, np.float64) * np.asarray(scale, np.float64) <= fmax))
            src = xs if (in_range or not rec.saturate) else np.clip(xs, np.float32(-fmax), np.float32(fmax))
            if ctx is not None:
                memo = self._rounder
                if memo is None or memo[0] is not ctx:
                    memo = self._rounder = (ctx, ctx.rounding_of(fmt, rnd))
                q = memo[1](src, seed=ctx.streams[role])
            else:
                q = round_to(src, fmt, rnd) if rnd is not Rounding.STOCHASTIC else round_to(src, fmt, rnd, seed=0)
            deq = (q / scale).astype(np.float32, copy=False)
        tel = ctx.telemetry if ctx is not None else None
        if tel is not None and name is not None and tel.active:
            u, _, o, _ = tel.record_counts(name, role, xs, q, fmt)
            if not in_range and not np.all(np.isfinite(amax)):
                o += int(np.count_nonzero(np.isinf(xs)))
            size = max(int(x.size), 1)
            tel.record_scale(name, role, fmt.name, float(np.min(scale)), float(np.max(amax)), o / size, u / size)
        if update and rec.mode == "delayed":
            self.observe(amax)
        return (deq, q, scale) if full else deq


def _training() -> bool:
    from ..autograd import tensor

    return tensor._GRAD_ENABLED[0]  # (is_grad_enabled())


class ScaledWeightCast:
    """A layer's weight quantizer: the weight as used, scaled-cast to the forward format.

    The gradient passes straight through. State: the weight's :class:`TensorScaler`.
    """

    def __init__(self, recipe: ScalingRecipe, layer_index: int):
        self.recipe = recipe
        self.name = f"layer{layer_index}.weight_fp8"
        self.scaler = TensorScaler(recipe, recipe.forward_format, axis=0)  # rowwise: one scale per column
        self.last_cast = None  # (values, q, scale) of the last cast, for a matrix unit

    def __call__(self, w):
        from ..autograd.tensor import Tensor

        ctx = w.ctx
        self.last_cast = self.scaler.cast(w.data, ctx, "weight_used", self.name, update=_training(), full=True)
        data = self.last_cast[0]
        out = Tensor(data, (w,), "fp8_cast", name=self.name, ctx=ctx)
        out._backward = lambda s=w, t=out: s._add_grad(t.grad, exact_from=t)
        return out

    def state_dict(self) -> dict:
        return {"weight": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["weight"])


class ScaledInputCast:
    """A layer's activation quantizer: its input scaled-cast to the forward format, and the cast of the
    gradient of its output (``dY``) to the gradient format.

    ``dY`` is the left operand of both gradient matmuls (``dX = dY @ W.T``, ``dW = (dY.T @ X).T``); the
    layer (autograd's ``Linear``) applies :meth:`grad_cast` to it once per step, after the next
    activation's backward (``lowprec.autograd.cast_grad``).
    """

    def __init__(self, recipe: ScalingRecipe, layer_index: int):
        self.recipe = recipe
        self.index = int(layer_index)
        self.name = f"layer{layer_index}.input_fp8"
        self.grad_name = f"layer{layer_index}.preact.grad"
        self.scaler = TensorScaler(recipe, recipe.forward_format, axis=-1)  # rowwise: one scale per row
        self.grad_scaler = TensorScaler(recipe, recipe.grad_format, axis=-1)
        self.last_cast = self.last_grad = None  # (values, q, scale) of the last casts, for a matrix unit

    def grad_cast(self, ctx, g: np.ndarray) -> np.ndarray:
        """The scaled cast of the layer's output gradient ``g`` (the role ``activation_grad``)."""
        self.last_grad = self.grad_scaler.cast(np.asarray(g, dtype=np.float32), ctx, "activation_grad",
                                               self.grad_name, full=True)
        return self.last_grad[0]

    def __call__(self, x):
        from ..autograd.tensor import Tensor

        ctx = x.ctx
        self.last_cast = self.scaler.cast(x.data, ctx, "activation", self.name, update=_training(), full=True)
        data = self.last_cast[0]
        out = Tensor(data, (x,), "fp8_cast", name=self.name, ctx=ctx)
        out._backward = lambda s=x, t=out: s._add_grad(t.grad, exact_from=t)  # straight through
        return out

    def state_dict(self) -> dict:
        return {"input": self.scaler.state_dict(), "grad": self.grad_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["input"])
        self.grad_scaler.load_state_dict(state["grad"])


@dataclass(frozen=True)
class _Factory:
    recipe: ScalingRecipe
    kind: str

    def __call__(self, layer_index, out_features):
        cls = ScaledWeightCast if self.kind == "weight" else ScaledInputCast
        return cls(self.recipe, layer_index)


def scaled_policy(name: str, recipe: ScalingRecipe, description: str = ""):
    """A :class:`~lowprec.amp.Policy` whose matmul operands are scaled casts by ``recipe``: fp32 for every
    other tensor, ideal fp32 accumulation, no loss scaling. The weights are stored in fp32 and cast to
    fp8 at each use, so they are the fp32 master weights (no second copy: ``master`` is None, which
    gives the same bits as an fp32 master copy of fp32 weights)."""
    from .policies import Policy

    table = {"weight": "fp32", "weight_used": "fp32", "activation": "fp32", "activation_grad": "fp32",
             "weight_grad": "fp32", "optimizer_state": "fp32", "master": None}
    return Policy(name, table, "fp32", "fp32", "none", weight_fake_quant=_Factory(recipe, "weight"),
                  act_fake_quant=_Factory(recipe, "act"), description=description)


#: The scaled fp8 recipes (registered by :mod:`lowprec.amp.registry`).
SCALED_PRESETS = (
    scaled_policy("fp8-current", ScalingRecipe("current"),
                  "fp8 matmul operands with per-tensor current scaling (Transformer Engine Float8CurrentScaling): "
                  "e4m3 weights/activations, e5m2 output gradients, fp32 master weights"),
    scaled_policy("fp8-delayed", ScalingRecipe("delayed", history_len=1024, amax_compute="max"),
                  "fp8 matmul operands with per-tensor delayed scaling (Transformer Engine DelayedScaling, "
                  "HYBRID, history 1024, max): e4m3 forward, e5m2 output gradients, fp32 master weights"),
    scaled_policy("fp8-rowwise", ScalingRecipe("current", granularity="rowwise", power_of_two=True),
                  "fp8 matmul operands with rowwise current power-of-two scales (torchao float8 rowwise): "
                  "e4m3 forward, e5m2 output gradients, fp32 master weights"),
)

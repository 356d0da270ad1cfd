"""Loss scaling: :class:`LossScaler` (PyTorch GradScaler semantics) and :func:`parse_loss_scale`."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LossScaler", "parse_loss_scale"]

_F32_MAX = float(np.finfo(np.float32).max)


def _to_float32(value: float) -> float:
    """``value`` rounded once to float32 (nearest-even, overflow to Inf, 2^-150 and below to 0).

    This is C++'s ``float f = double_value`` in GradScaler's update kernel:
    the scale is a float32 tensor, the factors are doubles, so every update
    is a double product stored back into float32.
    """
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def parse_loss_scale(spec) -> tuple:
    """Parse ``"none"``, ``"static:VALUE"`` or ``"dynamic"`` into (mode, value or None).

    Examples
    --------
    >>> parse_loss_scale("static:1024"), parse_loss_scale("dynamic")
    (('static', 1024.0), ('dynamic', None))
    """
    if not isinstance(spec, str):
        raise TypeError(f"loss scale must be a string, got {type(spec).__name__}")
    s = spec.strip().lower()
    if s in ("none", "dynamic"):
        return s, None
    if s.startswith("static:"):
        try:
            value = float(s.split(":", 1)[1])
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"static loss scale must be a positive finite number, got {spec!r}")
        return "static", value
    raise ValueError(f"unknown loss scale {spec!r}; expected 'none', 'static:VALUE' or 'dynamic'")


class LossScaler:
    """Loss scaling with PyTorch GradScaler semantics.

    ``mode="none"``: scale 1, never skips (Inf/NaN gradients reach the weights).
    ``mode="static"``: a constant scale; steps with Inf/NaN gradients are skipped.
    ``mode="dynamic"``: start at ``init_scale``; after each step, if any
    gradient was Inf/NaN the step is skipped (weights and optimizer state are
    untouched), ``scale *= backoff_factor`` and the growth counter resets to
    0; otherwise the counter increases and when it reaches
    ``growth_interval`` the scale is multiplied by ``growth_factor`` (only if
    the result is finite) and the counter resets to 0.

    The scale is kept in float32, as GradScaler keeps it in a float32 tensor:
    ``init_scale`` is rounded to float32, and every update is the product
    ``scale * factor`` computed in float64 and rounded once to float32
    (nearest-even), as ``torch._amp_update_scale_`` does. So with
    ``backoff_factor=0.7`` one overflow takes 65536 to 45875.19921875, a
    growth whose float32 result is Inf is not taken, and a backoff below
    float32's smallest subnormal 2^-149 gives a scale of exactly 0 (which then
    stays 0: every later step is skipped). :attr:`scale` is a Python float
    holding that float32 value. The unscale factor is ``float32(1 / scale)``
    with the reciprocal taken in float64 (GradScaler's
    ``scale.double().reciprocal().float()``).

    Use: ``loss.backward(scaler.scale)``; ``scaler.unscale_(optimizer)``
    (gradients become float32 ``grad / scale`` and are checked for Inf/NaN;
    clip after this); ``scaler.step(optimizer)`` (steps unless Inf/NaN was
    found); ``scaler.update()``.

    Examples
    --------
    >>> s = LossScaler("dynamic", init_scale=8.0, growth_interval=2)
    >>> for found_inf in (False, False, True):
    ...     s._found_inf = found_inf; s.update()
    >>> s.scale, s.growth_tracker
    (8.0, 0)
    """

    def __init__(self, mode: str = "dynamic", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        if mode not in ("none", "static", "dynamic"):
            raise ValueError(f"loss scaler mode must be 'none', 'static' or 'dynamic', got {mode!r}")
        if not (isinstance(init_scale, (int, float, np.integer, np.floating)) and not isinstance(init_scale, bool)):
            raise TypeError(f"init_scale must be a real number, got {type(init_scale).__name__}")
        try:
            init_f32 = _to_float32(float(init_scale))
        except OverflowError:  # an int beyond float64
            init_f32 = math.inf
        if not 0 < init_f32 <= _F32_MAX:  # also refuses NaN, Inf and values that round to 0 or Inf
            raise ValueError(f"init_scale must be positive and finite in float32 (2^-149 .. {_F32_MAX:.8g}), "
                             f"got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self.mode = mode
        self.scale = 1.0 if mode == "none" else init_f32
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0
        self._found_inf = False
        self._unscaled = False

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "LossScaler":
        """Build from ``"none"``, ``"static:VALUE"`` or ``"dynamic"``."""
        mode, value = parse_loss_scale(spec)
        if mode == "static":
            kwargs["init_scale"] = value
        return cls(mode, **kwargs)

    def unscale_(self, optimizer) -> bool:
        """Divide every gradient by the scale (into float32) and look for Inf/NaN; returns found_inf."""
        if self._unscaled:
            return self._found_inf
        with np.errstate(divide="ignore"):  # a scale that underflowed to 0 unscales by Inf, as in torch
            inv = np.float32(np.float64(1.0) / np.float64(self.scale))
        found = False
        for p in optimizer.params:
            if p.grad is None:
                continue
            g = p.grad.astype(np.float32, copy=True)
            if self.scale != 1.0:
                with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                    g *= inv
            p.grad = g
            if not found and not np.isfinite(g).all():
                found = True
        self._found_inf = found
        self._unscaled = True
        return found

    def step(self, optimizer) -> bool:
        """Step the optimizer unless Inf/NaN gradients were found; returns whether it stepped."""
        if not self._unscaled:
            self.unscale_(optimizer)
        if self._found_inf and self.mode != "none":
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Update the scale after a step (dynamic mode) and reset the per-step flags."""
        if self.mode == "dynamic":
            # torch._amp_update_scale_: float32 scale times a double factor, stored back to float32
            if self._found_inf:
                self.scale = _to_float32(self.scale * self.backoff_factor)
                self.growth_tracker = 0
            else:
                successful = self.growth_tracker + 1
                if successful == self.growth_interval:
                    new_scale = _to_float32(self.scale * self.growth_factor)
                    if math.isfinite(new_scale):
                        self.scale = new_scale
                    self.growth_tracker = 0
                else:
                    self.growth_tracker = successful
        self._found_inf = False
        self._unscaled = False

    @property
    def found_inf(self) -> bool:
        """Whether the last unscale found Inf/NaN gradients."""
        return self._found_inf

    def state_dict(self) -> dict:
        """The scaler's state (JSON-serialisable)."""
        return {"mode": self.mode, "scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.mode = state["mode"]
        self.scale = _to_float32(float(state["scale"]))  # as GradScaler's scale.fill_(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.growth_tracker = int(state["growth_tracker"])
        self._found_inf = False
        self._unscaled = False

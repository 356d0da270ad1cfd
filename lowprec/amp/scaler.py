"""Loss scaling: :class:`LossScaler` (PyTorch GradScaler semantics) and :func:`parse_loss_scale`."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LossScaler", "parse_loss_scale"]


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
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self.mode = mode
        self.scale = 1.0 if mode == "none" else float(init_scale)
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
        inv = np.float32(1.0 / self.scale)
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
            if self._found_inf:
                self.scale *= self.backoff_factor
                self.growth_tracker = 0
            else:
                successful = self.growth_tracker + 1
                if successful == self.growth_interval:
                    new_scale = self.scale * self.growth_factor
                    if math.isfinite(new_scale) and new_scale <= float(np.finfo(np.float32).max):
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
        self.scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.growth_tracker = int(state["growth_tracker"])
        self._found_inf = False
        self._unscaled = False

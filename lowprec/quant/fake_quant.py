"""Fake quantization in the autograd: straight-through ops and trainable quantizer modules.

Ops (each a :class:`lowprec.autograd.Tensor` -> Tensor function with its
backward next to its forward):

* :func:`fake_quant`: ``(clamp(round(x/s) + z) - z) * s`` with fixed
  parameters; gradient: straight through inside the clamp range
  ``(qmin - z) s <= x <= (qmax - z) s``, zero outside;
* :func:`lsq_fake_quant`: LSQ with a trainable step Tensor (gradient scale
  ``1/sqrt(N Q_p)``, see :mod:`lowprec.quant.lsq`);
* :func:`companding_fake_quant`: the companding quantizer with trainable
  ``alpha`` and ``beta`` Tensors (see :mod:`lowprec.quant.companding`).

Modules (callables ``Tensor -> Tensor`` with ``parameters()``, what the
policy factories of :mod:`lowprec.amp` return):

* :class:`LSQQuantizer`: the step is a parameter created at construction
  (so that optimizers built before the first forward pass see it) holding
  NaN until the first call, which initialises it from the data
  (``2 mean|x| / sqrt(Q_p)``); a loaded checkpoint is never re-initialised;
* :class:`MinMaxQuantizer`: weights get per-channel symmetric scales from
  their current min/max, activations an asymmetric range from an
  :class:`~lowprec.quant.calibration.EMAObserver` updated while training;
* :class:`CompandingFakeQuantizer`: trainable alpha, beta.

``signed="auto"`` (activations) picks unsigned codes when the first batch
is non-negative (after a ReLU) and signed codes otherwise.

State: each module's ``state_dict()`` holds what its parameters do not (the
signedness an LSQ quantizer chose, an EMA observer's range and count, a
companding ``x_max``) and ``load_state_dict()`` restores it, so that
``lowprec train`` checkpoints them and a resumed run continues bit for bit.

Numeric model: forward values are computed by the numpy quantizers in
float64 from the tensor's values (float32 under a precision runtime) and
stored in the tensor's dtype; gradients are computed in float64 and handed
to ``Tensor._add_grad``, which applies the policy's gradient rounding.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..autograd.tensor import Tensor, is_grad_enabled
from .affine import choose_qparams, fake_quantize, qrange
from .calibration import EMAObserver
from .companding import companding_fake_quant as _cfq
from .companding import companding_fake_quant_backward as _cfq_backward
from .lsq import lsq_backward, lsq_forward, lsq_init_step, lsq_qrange

__all__ = ["fake_quant", "lsq_fake_quant", "companding_fake_quant", "LSQQuantizer", "MinMaxQuantizer",
           "CompandingFakeQuantizer"]

_MIN_STEP = 1e-8  # a step pushed to <= 0 by the optimizer is used as this (its gradient still flows)


def _check_tensor(x, name="x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a lowprec.autograd.Tensor, got {type(x).__name__}")
    return x


def _expand_axis(p: np.ndarray, shape, axis):
    if axis is None:
        return p.reshape(())
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return p.reshape(view)


def fake_quant(x: Tensor, scale, zero_point=0, *, bits: int = 8, signed: bool = True, narrow_range: bool = False,
               axis: Optional[int] = None, rounding="nearest_even", seed=None, name: Optional[str] = None) -> Tensor:
    """Fake-quantize a Tensor with fixed parameters; straight-through gradient masked to the clamp range.

    Examples
    --------
    >>> x = Tensor(np.array([-3.0, 0.26, 0.9]), requires_grad=True)
    >>> y = fake_quant(x, 0.5, 0, bits=2)        # range [-1.0, 0.5]
    >>> y.data.tolist()
    [-1.0, 0.5, 0.5]
    >>> y.sum().backward(); x.grad.tolist()
    [0.0, 1.0, 0.0]
    """
    _check_tensor(x)
    qmin, qmax = qrange(bits, signed, narrow_range)
    out_data = fake_quantize(x.data, scale, zero_point, bits=bits, signed=signed, narrow_range=narrow_range,
                             axis=axis, rounding=rounding, seed=seed)
    s = _expand_axis(np.asarray(scale, dtype=np.float64), x.shape, axis)
    z = _expand_axis(np.asarray(zero_point, dtype=np.float64), x.shape, axis) if np.ndim(zero_point) else \
        np.float64(zero_point)
    xd = x.data.astype(np.float64)
    inside = (xd >= (qmin - z) * s) & (xd <= (qmax - z) * s)
    out = Tensor(out_data.astype(x.dtype), (x,), "fake_quant", name=name)

    def _backward():
        x._add_grad(np.where(inside, out.grad, 0).astype(out.grad.dtype))
    out._backward = _backward
    return out


def lsq_fake_quant(x: Tensor, step: Tensor, *, bits: int = 8, signed: bool = True, narrow_range: bool = False,
                   axis: Optional[int] = None, grad_scale: Optional[float] = None,
                   name: Optional[str] = None) -> Tensor:
    """LSQ fake quantization with a trainable step (shape (1,) per tensor, (C,) per channel along ``axis``).

    ``narrow_range`` makes the signed range symmetric (``-Q_p..Q_p``).

    Examples
    --------
    >>> x = Tensor(np.array([0.3, 9.0]), requires_grad=True)
    >>> s = Tensor(np.array([0.5]), requires_grad=True, is_param=True)
    >>> y = lsq_fake_quant(x, s, bits=3, grad_scale=1.0)
    >>> y.data.tolist()
    [0.5, 1.5]
    >>> y.sum().backward(); x.grad.tolist(), round(float(s.grad[0]), 6)
    ([1.0, 0.0], 3.4)
    """
    _check_tensor(x)
    _check_tensor(step, "step")
    if axis is None and step.size != 1:
        raise ValueError(f"a per-tensor step must have one element, got shape {step.shape}")
    if axis is not None and (step.data.ndim != 1 or step.shape[0] != x.shape[axis]):
        raise ValueError(f"a per-channel step along axis {axis} needs shape ({x.shape[axis]},), got {step.shape}")
    s = np.maximum(step.data.astype(np.float64), _MIN_STEP)
    s_arg = s.reshape(()) if axis is None else s
    kw = dict(bits=bits, signed=signed, axis=axis, narrow_range=narrow_range)
    xd = x.data.astype(np.float64)
    out = Tensor(lsq_forward(xd, s_arg, **kw).astype(x.dtype), (x, step), "lsq_fake_quant", name=name)

    def _backward():
        dx, ds = lsq_backward(xd, s_arg, out.grad.astype(np.float64), grad_scale=grad_scale, **kw)
        x._add_grad(dx.astype(out.grad.dtype))
        step._add_grad(np.asarray(ds, dtype=np.float64).reshape(step.shape).astype(step.dtype))
    out._backward = _backward
    return out


def companding_fake_quant(x: Tensor, alpha: Tensor, beta: Tensor, x_max: float, *, bits: int = 8,
                          name: Optional[str] = None) -> Tensor:
    """Companding fake quantization with trainable ``alpha`` and ``beta`` (one-element Tensors).

    Examples
    --------
    >>> x = Tensor(np.array([0.1, -0.5, 2.0]), requires_grad=True)
    >>> a = Tensor(np.array([1.0]), requires_grad=True, is_param=True)
    >>> b = Tensor(np.array([4.0]), requires_grad=True, is_param=True)
    >>> y = companding_fake_quant(x, a, b, 1.0, bits=4)
    >>> y.sum().backward(); x.grad.tolist()[2], a.grad.shape
    (0.0, (1,))
    """
    for t, nm in ((x, "x"), (alpha, "alpha"), (beta, "beta")):
        _check_tensor(t, nm)
    a = max(float(alpha.data.reshape(-1)[0]), _MIN_STEP)
    b = max(float(beta.data.reshape(-1)[0]), 0.0)
    xd = x.data.astype(np.float64)
    out = Tensor(_cfq(xd, a, b, x_max, bits).astype(x.dtype), (x, alpha, beta), "companding_fake_quant", name=name)

    def _backward():
        dx, da, db = _cfq_backward(xd, a, b, x_max, bits, out.grad.astype(np.float64))
        x._add_grad(dx.astype(out.grad.dtype))
        alpha._add_grad(np.full(alpha.shape, da, dtype=alpha.dtype))
        beta._add_grad(np.full(beta.shape, db, dtype=beta.dtype))
    out._backward = _backward
    return out


# ----------------------------------------------------------------------------- modules
class LSQQuantizer:
    """A trainable LSQ fake quantizer (see the module docstring).

    Parameters
    ----------
    bits : int
    signed : bool or "auto"
    channels : int, optional
        Per-channel steps along ``axis`` (weights: ``channels=out_features, axis=-1``).
    axis : int
    narrow_range : bool
        Symmetric signed range (weights, so that integer export uses zero point 0 and -127..127).
    ctx : lowprec.amp.Precision, optional
        Runtime of the step parameter (float32 carrier); taken from the first input otherwise.

    Examples
    --------
    >>> q = LSQQuantizer(bits=4, signed="auto")
    >>> y = q(Tensor(np.array([0.0, 0.5, 1.0, 2.0])))
    >>> q.signed, float(q.step.data[0]) > 0
    (False, True)
    """

    def __init__(self, bits: int = 8, signed="auto", *, channels: Optional[int] = None, axis: int = -1,
                 narrow_range: bool = False, ctx=None, name: str = "lsq"):
        lsq_qrange(bits, True)
        if signed not in (True, False, "auto"):
            raise ValueError(f"signed must be True, False or 'auto', got {signed!r}")
        self.bits, self.signed, self.narrow_range = int(bits), signed, bool(narrow_range)
        self.channels, self.axis = channels, (axis if channels is not None else None)
        n = 1 if channels is None else int(channels)
        dtype = np.float32 if ctx is not None else np.float64
        self.step = Tensor(np.full(n, np.nan, dtype=dtype), requires_grad=True, is_param=True, ctx=ctx,
                           name=f"{name}.step")
        self.name = name

    def parameters(self) -> list:
        return [self.step]

    @property
    def initialized(self) -> bool:
        return bool(np.all(np.isfinite(self.step.data)))

    def __call__(self, x: Tensor) -> Tensor:
        _check_tensor(x)
        if self.step.ctx is None and x.ctx is not None:  # adopt the runtime (float32 carrier) of the data
            self.step.ctx = x.ctx
            self.step.data = self.step.data.astype(np.float32)
        if self.signed == "auto":
            self.signed = bool(np.min(x.data) < 0)
        if not self.initialized:
            signed = True if self.narrow_range else self.signed
            init = lsq_init_step(x.data, self.bits, signed, self.axis)
            self.step.data = np.asarray(init, dtype=self.step.dtype).reshape(self.step.shape)
        return lsq_fake_quant(x, self.step, bits=self.bits, signed=True if self.narrow_range else self.signed,
                              narrow_range=self.narrow_range, axis=self.axis, name=self.name)

    def state_dict(self) -> dict:
        """What the parameters do not hold: the signedness chosen on the first batch."""
        return {"signed": self.signed}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (the step is restored with the parameters)."""
        signed = state["signed"]
        if signed not in (True, False, "auto"):
            raise ValueError(f"LSQ quantizer state: signed must be True, False or 'auto', got {signed!r}")
        self.signed = signed

    def qparams(self):
        """(scale, zero point, signed) for integer export.

        The zero point is 0 for a signed range and -2**(b-1) for an unsigned
        one (its codes 0..2**b-1 become signed codes shifted by -2**(b-1)).
        """
        s = np.maximum(self.step.data.astype(np.float64), _MIN_STEP)
        signed = True if self.narrow_range else bool(self.signed)
        return (s if self.channels is not None else float(s[0])), (0 if signed else -(1 << (self.bits - 1))), signed


class MinMaxQuantizer:
    """Min-max fake quantizer: per-channel symmetric for weights, EMA-observed asymmetric for activations.

    Examples
    --------
    >>> q = MinMaxQuantizer(bits=8, kind="activation")
    >>> _ = q(Tensor(np.array([-1.0, 3.0])))
    >>> q.qparams()[:2]
    (0.01568627450980392, -64)
    """

    def __init__(self, bits: int = 8, kind: str = "activation", *, axis: int = -1, averaging_constant: float = 0.01,
                 name: str = "minmax"):
        qrange(bits)
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
        self.bits, self.kind, self.axis, self.name = int(bits), kind, axis, name
        self.observer = EMAObserver(averaging_constant) if kind == "activation" else None
        self.training = True
        self._last_weight_scale = None

    def parameters(self) -> list:
        return []

    def __call__(self, x: Tensor) -> Tensor:
        _check_tensor(x)
        if self.kind == "weight":
            amax = np.max(np.abs(x.data.astype(np.float64)), axis=tuple(i for i in range(x.data.ndim)
                                                                          if i != self.axis % x.data.ndim))
            scale = np.where(amax > 0, amax / ((1 << (self.bits - 1)) - 1), 1.0)
            self._last_weight_scale = scale
            return fake_quant(x, scale, 0, bits=self.bits, narrow_range=True, axis=self.axis, name=self.name)
        if self.training and is_grad_enabled() or self.observer.lo is None:
            self.observer.update(x.data)
        s, z = self.qparams()[:2]
        return fake_quant(x, s, z, bits=self.bits, name=self.name)

    def state_dict(self) -> dict:
        """The EMA observer's range and count, the training flag and the last weight scale."""
        obs = self.observer
        return {"training": bool(self.training),
                "observer": None if obs is None or obs.lo is None else
                {"lo": np.array(obs.lo), "hi": np.array(obs.hi), "count": int(obs.count)},
                "last_weight_scale": None if self._last_weight_scale is None else np.array(self._last_weight_scale)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.training = bool(state["training"])
        o = state["observer"]
        if o is not None:
            if self.observer is None:
                raise ValueError(f"min-max quantizer state holds an activation range, but {self.name} "
                                 "quantizes weights")
            self.observer.lo, self.observer.hi = np.array(o["lo"]), np.array(o["hi"])
            self.observer.count = int(o["count"])
        elif self.observer is not None:
            self.observer.lo = self.observer.hi = None
            self.observer.count = 0
        w = state["last_weight_scale"]
        self._last_weight_scale = None if w is None else np.array(w)

    def qparams(self):
        """(scale, zero point, signed=True) of the activation range (int8 codes)."""
        if self.kind == "weight":
            return self._last_weight_scale, 0, True
        lo, hi = self.observer.range()
        s, z = choose_qparams(lo, hi, bits=self.bits, signed=True)
        return float(s), int(z), True


class CompandingFakeQuantizer:
    """Companding fake quantizer with trainable alpha and beta; ``x_max`` from the first batch (or given).

    Examples
    --------
    >>> q = CompandingFakeQuantizer(bits=4, alpha=1.0, beta=4.0)
    >>> y = q(Tensor(np.array([0.0, 0.3, -2.0])))
    >>> q.x_max, len(q.parameters())
    (2.0, 2)
    """

    def __init__(self, bits: int = 8, *, alpha: float = 1.0, beta: float = 1.0, x_max: Optional[float] = None,
                 ctx=None, name: str = "companding"):
        dtype = np.float32 if ctx is not None else np.float64
        self.bits, self.x_max, self.name = int(bits), x_max, name
        self.alpha = Tensor(np.array([alpha], dtype=dtype), requires_grad=True, is_param=True, ctx=ctx,
                            name=f"{name}.alpha")
        self.beta = Tensor(np.array([beta], dtype=dtype), requires_grad=True, is_param=True, ctx=ctx,
                           name=f"{name}.beta")

    def parameters(self) -> list:
        return [self.alpha, self.beta]

    def state_dict(self) -> dict:
        """``x_max`` (set from the first batch unless given); alpha and beta are parameters."""
        return {"x_max": self.x_max}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.x_max = None if state["x_max"] is None else float(state["x_max"])

    def __call__(self, x: Tensor) -> Tensor:
        _check_tensor(x)
        for p in (self.alpha, self.beta):
            if p.ctx is None and x.ctx is not None:
                p.ctx, p.data = x.ctx, p.data.astype(np.float32)
        if self.x_max is None:
            m = float(np.max(np.abs(x.data)))
            self.x_max = m if m > 0 else 1.0
        return companding_fake_quant(x, self.alpha, self.beta, self.x_max, bits=self.bits, name=self.name)

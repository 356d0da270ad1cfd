"""Optimizers: SGD (momentum, weight decay) and Adam, with optional master weights.

Numeric model of one step, for parameter ``p`` with gradient ``g`` (float32,
after loss-scale unscaling):

1. ``w`` is the master copy (float32 values rounded to the policy's
   ``master`` format) when the policy has master weights, else the stored
   weights ``p.data``;
2. the update is computed in float32 arithmetic; each optimizer state
   tensor (momentum buffer, Adam's m and v) is rounded to the
   ``optimizer_state`` format after it is updated;
3. ``w - lr * update`` is rounded once to ``master`` (with master weights)
   or to ``weight`` (without), with that role's rounding: ``nearest_even``
   or ``stochastic`` (parameter ``i`` draws from stream ``1000 + i`` of the
   runtime's seed; its state from stream ``2000 + i``);
4. with master weights, ``p.data`` is refreshed as the master rounded to
   ``weight``.

The master copy starts as the stored initial weights (already rounded to
``weight``), so that master and stored copies agree at step 0.

Without a runtime (``ctx=None``) everything is plain numpy in the
parameters' dtype. A step the loss scaler skips never calls
:meth:`Optimizer.step`, so weights and state stay bit-for-bit unchanged.

Examples
--------
>>> import numpy as np
>>> from lowprec.autograd import Tensor
>>> w = Tensor(np.array([1.0]), requires_grad=True, is_param=True)
>>> opt = SGD([w], lr=0.25, momentum=0.5)
>>> w.grad = np.array([1.0]); opt.step(); w.grad = np.array([1.0]); opt.step()
>>> w.data.tolist()   # 1 - 0.25*1 - 0.25*(0.5*1 + 1)
[0.375]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..formats import FP32
from ..rng import RandomStream

__all__ = ["Optimizer", "SGD", "Adam", "clip_grad_norm"]


class Optimizer:
    """Base class: parameters, master weights, rounded state; subclasses define ``_update``."""

    n_state = 0

    def __init__(self, params: Sequence, lr: float, weight_decay: float = 0.0, ctx=None):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.ctx = ctx if ctx is not None else params[0].ctx
        self.steps = 0
        policy = self.ctx.policy if self.ctx is not None else None
        self.master = None
        if policy is not None and policy.master_weights:
            self.master = [self.ctx.round(p.data.astype(np.float32, copy=True), "master") for p in params]
        self.state = [[None] * self.n_state for _ in params]
        seed = self.ctx.seed if self.ctx is not None else 0
        self.update_streams = [RandomStream(seed).spawn(1000 + i) for i in range(len(params))]
        self.state_streams = [RandomStream(seed).spawn(2000 + i) for i in range(len(params))]

    def zero_grad(self) -> None:
        """Forget all parameter gradients."""
        for p in self.params:
            p.zero_grad()

    def _round_state(self, x: np.ndarray, i: int) -> np.ndarray:
        if self.ctx is None:
            return x
        return self.ctx.round(x, "optimizer_state", self._pname(i, "state"), stream=self.state_streams[i])

    def _pname(self, i: int, what: str) -> str:
        return f"{self.params[i].name or f'param{i}'}.{what}"

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            self._step()

    def _step(self) -> None:
        self.steps += 1
        fused = self._fused_ok()
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            dtype = np.dtype(p.data.dtype if self.ctx is None else np.float32)
            g = np.asarray(p.grad, dtype=dtype)
            w = self.master[i] if self.master is not None else p.data
            if fused and self._fused_update(i, p, g, w):
                continue
            if self.weight_decay:
                g = g + dtype.type(self.weight_decay) * w
            new = w - np.asarray(self.lr, dtype=dtype) * self._update(i, g, dtype)
            if self.ctx is None:
                p.data = new.astype(p.data.dtype)
            elif self.master is not None:
                self.master[i] = self.ctx.round(new, "master", self._pname(i, "master"),
                                                stream=self.update_streams[i])
                p.data, tag = self.ctx._round(self.master[i], "weight", self._pname(i, "stored"), None)
                p._set_fmt(tag)
            else:
                p.data, tag = self.ctx._round(new, "weight", self._pname(i, "stored"), None,
                                              stream=self.update_streams[i])
                p._set_fmt(tag)

    def _update(self, i: int, g: np.ndarray, dtype) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fused_ok(self) -> bool:
        """Whether :meth:`_fused_update` may run this step (subclasses that have one say when)."""
        return False

    def _fused_update(self, i: int, p, g: np.ndarray, w: np.ndarray) -> bool:  # pragma: no cover - abstract
        return False

    # ----- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: master copy, state, step count, stream offsets."""
        return {
            "steps": self.steps,
            "master": None if self.master is None else [m.copy() for m in self.master],
            "state": [[None if s is None else s.copy() for s in st] for st in self.state],
            "update_offsets": [s.offset for s in self.update_streams],
            "state_offsets": [s.offset for s in self.state_streams],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (arrays are copied)."""
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['state'])} parameters, this optimizer "
                             f"{len(self.params)}")
        self.steps = int(state["steps"])
        if (state["master"] is None) != (self.master is None):
            raise ValueError("optimizer state and policy disagree on master weights")
        if self.master is not None:
            self.master = [np.array(m, dtype=np.float32) for m in state["master"]]
        self.state = [[None if s is None else np.array(s) for s in st] for st in state["state"]]
        for s, off in zip(self.update_streams, state["update_offsets"]):
            s.offset = int(off)
        for s, off in zip(self.state_streams, state["state_offsets"]):
            s.offset = int(off)

    def state_values(self) -> int:
        """Number of optimizer state values per parameter value (for memory accounting)."""
        return self.n_state


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay.

    ``buf = momentum * buf + g`` (``buf = g`` on the first step, as PyTorch),
    ``w -= lr * buf``; without momentum ``w -= lr * g``.

    Parameters
    ----------
    params : list of Tensor
    lr : float
    momentum : float in [0, 1)
    weight_decay : float
        L2 penalty added to the gradient: ``g + weight_decay * w``.
    ctx : lowprec.amp.Precision, optional
        Runtime (default: the first parameter's).
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0, ctx=None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.n_state = 1 if momentum else 0
        super().__init__(params, lr, weight_decay, ctx)

    def _fused_ok(self) -> bool:
        # the case of the mixed-precision policies: float32 master weights and state, whose roundings are
        # identities (Precision._round returns the float32 array itself and only counts it)
        # and of the scaled and block-scaled policies: no master copy, float32 weights and state (the weights are
        # the master weights; their rounding to fp32 is an identity too)
        if type(self) is not SGD or self.ctx is None:
            return False
        table = self.ctx.policy.table
        kept = table["master"][0] if self.master is not None else table["weight"][0]
        return kept is FP32 and (not self.momentum or table["optimizer_state"][0] is FP32)

    def _fused_update(self, i, p, g, w) -> bool:
        """The step of parameter i in one compiled pass (kernels/optim_cpu.py: the same float32 operations as
        the numpy code of _step and _update, and the counts its two identity roundings would record); then
        the stored weights are rounded as in _step. False (nothing done) for arrays it does not take."""
        buf = self.state[i][0] if self.momentum else None
        if not (g.dtype == np.float32 and w.dtype == np.float32 and g.shape == w.shape and w.flags.c_contiguous
                and (buf is None or (buf.dtype == np.float32 and buf.shape == g.shape and buf.flags.c_contiguous
                                     and buf.flags.writeable))):
            return False
        from ..kernels.optim_cpu import sgd_f32

        first = buf is None
        if first:  # (without momentum the kernel never touches it)
            buf = np.empty(g.shape if self.momentum else 0, dtype=np.float32)
        new = np.empty(w.shape, dtype=np.float32)
        s_sub, s_nan, w_sub, w_nan = sgd_f32(
            np.ascontiguousarray(g).reshape(-1), w.reshape(-1), buf.reshape(-1), new.reshape(-1),
            np.float32(self.momentum), np.float32(self.lr), np.float32(self.weight_decay), bool(self.weight_decay),
            bool(self.momentum), first)
        tel = self.ctx.telemetry
        n = new.size
        if self.momentum:
            self.state[i][0] = buf
            if tel is not None and tel.active:
                tel._add(self._pname(i, "state"), "optimizer_state", FP32, n, 0, int(s_sub), 0, int(s_nan))
        if self.master is not None:
            if tel is not None and tel.active:
                tel._add(self._pname(i, "master"), "master", FP32, n, 0, int(w_sub), 0, int(w_nan))
            self.master[i] = new
        p.data, tag = self.ctx._round(new, "weight", self._pname(i, "stored"), None)
        p._set_fmt(tag)
        return True

    def _update(self, i, g, dtype):
        if not self.momentum:
            return g
        buf = self.state[i][0]
        buf = g.copy() if buf is None else np.asarray(self.momentum, dtype=dtype) * buf + g
        buf = self._round_state(buf, i)
        self.state[i][0] = buf
        return buf


class Adam(Optimizer):
    """Adam (Kingma and Ba) with L2 weight decay added to the gradient.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g**2`` (both rounded to
    ``optimizer_state``), ``w -= lr * (m / (1-b1**t)) / (sqrt(v / (1-b2**t)) + eps)``.

    Note that ``v`` holds squared gradients: in fp16 state they underflow
    for gradients below about 2**-12, which the telemetry of the state
    rounding does not count (use fp32 state for the moments).
    """

    n_state = 2

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, ctx=None):
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        super().__init__(params, lr, weight_decay, ctx)

    def _update(self, i, g, dtype):
        b1, b2 = self.betas
        m, v = self.state[i]
        t = self.steps
        m = np.zeros_like(g) if m is None else m
        v = np.zeros_like(g) if v is None else v
        m = self._round_state(np.asarray(b1, dtype=dtype) * m + np.asarray(1 - b1, dtype=dtype) * g, i)
        v = self._round_state(np.asarray(b2, dtype=dtype) * v + np.asarray(1 - b2, dtype=dtype) * (g * g), i)
        self.state[i] = [m, v]
        mhat = m / np.asarray(1 - b1 ** t, dtype=dtype)
        vhat = v / np.asarray(1 - b2 ** t, dtype=dtype)
        return mhat / (np.sqrt(vhat) + np.asarray(self.eps, dtype=dtype))


def clip_grad_norm(params: Sequence, max_norm: float) -> float:
    """Scale gradients so that their global L2 norm is at most ``max_norm``; return the norm before.

    Call it after :meth:`lowprec.amp.LossScaler.unscale_` so that the norm is
    that of the true gradients. The norm is computed in float64; a
    non-finite norm leaves the gradients alone (the scaler skips that step).

    Examples
    --------
    >>> import numpy as np
    >>> from lowprec.autograd import Tensor
    >>> p = Tensor([0.0, 0.0], requires_grad=True); p.grad = np.array([3.0, 4.0])
    >>> clip_grad_norm([p], 1.0), [round(float(g), 6) for g in p.grad]
    (5.0, [0.6, 0.8])
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    grads = [p.grad for p in params if p.grad is not None]
    total = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads)))
    if np.isfinite(total) and total > max_norm:
        for p in params:
            if p.grad is not None:
                p.grad = (p.grad * p.grad.dtype.type(max_norm / (total + 1e-6))).astype(p.grad.dtype)
    return total

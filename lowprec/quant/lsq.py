"""Learned step size quantization (LSQ, Esser et al., ICLR 2020), numpy level.

Forward: ``xq = s * clamp(round(x / s), -Q_n, Q_p)`` (zero point 0; signed:
``Q_n = 2**(b-1)``, ``Q_p = 2**(b-1) - 1``; unsigned: ``Q_n = 0``,
``Q_p = 2**b - 1``), rounded by any lowprec mode through
:func:`lowprec.quant.affine.quantize` (exact quotient).

Backward (straight-through estimator for round, paper eq. 3):

* ``d xq / d x = 1`` if ``-Q_n <= x/s <= Q_p`` else 0;
* ``d xq / d s = round(x/s) - x/s`` inside, ``-Q_n`` below, ``Q_p`` above;
* the step's gradient is multiplied by the gradient scale
  ``g = 1 / sqrt(N * Q_p)`` with ``N`` the number of elements sharing the step
  (all of them per tensor, one channel's per channel).

The step starts at ``2 mean(|x|) / sqrt(Q_p)`` (the paper's initialisation).
:mod:`lowprec.quant.fake_quant` wraps these in an autograd op.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .affine import _check_scale, _norm_axis, check_bits, expand_param, quantize

__all__ = ["lsq_qrange", "lsq_init_step", "lsq_grad_scale", "lsq_forward", "lsq_backward"]


def lsq_qrange(bits: int, signed: bool = True, narrow_range: bool = False):
    """``(Q_n, Q_p)``: the clamp is ``[-Q_n, Q_p]`` (``narrow_range``: signed with ``Q_n = Q_p``).

    Examples
    --------
    >>> lsq_qrange(8), lsq_qrange(4, signed=False)
    ((128, 127), (0, 15))
    """
    b = check_bits(bits)
    if narrow_range:
        return (1 << (b - 1)) - 1, (1 << (b - 1)) - 1
    return ((1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)


def _per_scale(x: np.ndarray, axis):
    """(reduction axes, N elements per scale)."""
    if axis is None:
        return None, x.size
    ax = _norm_axis(axis, x.ndim)
    red = tuple(i for i in range(x.ndim) if i != ax)
    return red, x.size // max(x.shape[ax], 1)


def _mean_abs(xf: np.ndarray, red) -> np.ndarray:
    """``mean|x|`` over ``red``; where the float64 sum overflows, the mean of ``|x| 2**-k`` times ``2**k``."""
    a = np.abs(xf)
    with np.errstate(over="ignore"):
        m = np.mean(a, axis=red)
    if np.all(np.isfinite(m)):
        return m
    k = np.frexp(np.max(a, axis=red, keepdims=True))[1]  # scaling by a power of two is exact
    with np.errstate(under="ignore"):
        return np.ldexp(np.mean(np.ldexp(a, -k), axis=red), k.reshape(np.shape(m)))


def lsq_init_step(x, bits: int = 8, signed: bool = True, axis: Optional[int] = None) -> np.ndarray:
    """``2 mean|x| / sqrt(Q_p)`` per tensor or per channel (a floor of 1e-8 keeps it positive).

    ``x`` must be finite and non-empty. The mean is taken without overflow, so
    finite data give a finite step, provided its largest level
    ``step * max(Q_n, Q_p)`` is a finite float64 too; data whose ``mean|x|``
    puts that level beyond float64's largest value (about 1.8e308) are refused
    with a ValueError that gives the limit.

    Examples
    --------
    >>> float(lsq_init_step(np.array([-1.0, 1.0]), bits=3))   # 2 * 1 / sqrt(3)
    1.1547005383792517
    """
    xf = np.asarray(x, dtype=np.float64)
    if xf.size == 0:
        raise ValueError("x is empty; cannot initialise a step from empty data")
    if np.isnan(xf).any():
        raise ValueError(f"x contains {int(np.isnan(xf).sum())} NaN value(s); lsq_init_step needs finite data")
    if np.isinf(xf).any():
        raise ValueError(f"x contains {int(np.isinf(xf).sum())} infinite value(s); "
                         "lsq_init_step needs finite data")
    qn, qp = lsq_qrange(bits, signed)
    red, _ = _per_scale(xf, axis)
    m = _mean_abs(xf, red)
    # 2 * (m / sqrt) rounds exactly as (2 m) / sqrt but cannot overflow in 2 m
    with np.errstate(over="ignore"):
        step = 2.0 * (m / np.sqrt(qp))
        top = step * max(qn, qp)
    if not np.all(np.isfinite(top)):
        big = float(np.max(m))
        limit = np.finfo(np.float64).max / (2.0 * max(qn, qp) / np.sqrt(qp))
        raise ValueError(f"x is too large for an LSQ step: mean|x| = {big:.6g}, but the largest level "
                         f"2 mean|x| max(Q_n, Q_p) / sqrt(Q_p) must stay below float64's largest value "
                         f"{np.finfo(np.float64).max:.6g}, i.e. mean|x| <= {limit:.6g} at {bits} bits")
    return np.maximum(step, 1e-8)


def lsq_grad_scale(n_per_scale: int, qp: int) -> float:
    """The paper's gradient scale ``1 / sqrt(N * Q_p)`` (``N`` and ``Q_p`` positive)."""
    for name, v in (("n_per_scale", n_per_scale), ("qp", qp)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return 1.0 / float(np.sqrt(float(n_per_scale) * float(qp)))


def lsq_forward(x, step, *, bits: int = 8, signed: bool = True, axis: Optional[int] = None,
                rounding="nearest_even", seed=None, narrow_range: bool = False) -> np.ndarray:
    """``s * clamp(round(x/s), -Q_n, Q_p)`` in float64.

    Examples
    --------
    >>> lsq_forward(np.array([0.26, -9.0, 9.0]), 0.5, bits=3)
    array([ 0.5, -2. ,  1.5])
    """
    xf = np.asarray(x, dtype=np.float64)
    s = expand_param(_check_scale(step), xf.shape, axis, None, "step")
    q = quantize(xf, step, 0, bits=bits, signed=signed or narrow_range, narrow_range=narrow_range, axis=axis,
                 rounding=rounding, seed=seed)
    return q.astype(np.float64) * s


def lsq_backward(x, step, grad_out, *, bits: int = 8, signed: bool = True, axis: Optional[int] = None,
                 grad_scale: Optional[float] = None, rounding="nearest_even", seed=None,
                 narrow_range: bool = False):
    """``(dx, dstep)`` of :func:`lsq_forward` by the straight-through estimator.

    ``dstep`` has the shape of ``step`` and already includes the gradient
    scale (default ``1/sqrt(N Q_p)``; pass ``grad_scale=1.0`` for none).
    For stochastic rounding pass the forward pass's ``seed`` so that the
    same integers are used. Empty ``x`` gives an empty ``dx`` and a zero
    ``dstep`` (no element contributes; the gradient scale is not needed).

    Examples
    --------
    >>> dx, ds = lsq_backward(np.array([0.3, 9.0]), 0.5, np.ones(2), bits=3, grad_scale=1.0)
    >>> dx.tolist(), round(float(ds), 6)     # (round(0.6) - 0.6) + Q_p = 0.4 + 3
    ([1.0, 0.0], 3.4)
    """
    xf = np.asarray(x, dtype=np.float64)
    g = np.broadcast_to(np.asarray(grad_out, dtype=np.float64), xf.shape)
    qn, qp = lsq_qrange(bits, signed, narrow_range)
    s = expand_param(_check_scale(step), xf.shape, axis, None, "step")
    q = quantize(xf, step, 0, bits=bits, signed=signed or narrow_range, narrow_range=narrow_range, axis=axis,
                 rounding=rounding, seed=seed).astype(np.float64)
    v = xf / s
    below, above = v < -qn, v > qp
    inside = ~(below | above)
    dx = g * inside
    d = np.where(inside, q - v, np.where(below, -float(qn), float(qp)))
    red, n = _per_scale(xf, axis)
    if n == 0:  # nothing shares the step: its gradient is an empty sum
        return dx, np.zeros(np.shape(np.sum(d, axis=red)))
    gs = lsq_grad_scale(n, qp) if grad_scale is None else float(grad_scale)
    dstep = np.sum(g * d, axis=red) * gs
    return dx, np.asarray(dstep)

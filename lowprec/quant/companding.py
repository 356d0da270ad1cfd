"""Companding quantization: compress, quantize uniformly, expand exactly.

The compressor (alpha > 0, beta >= 0) is

    y = c(x) = sign(x) |x| / sqrt(alpha + beta |x|),

odd and strictly increasing (``d|y|/d|x| = (alpha + beta|x|/2) / (alpha +
beta|x|)**1.5 > 0``), so it has an inverse. With ``t = |x|`` and ``v = |y|``,
``v**2 (alpha + beta t) = t**2`` is a quadratic in ``t`` whose non-negative
root is

    t = (beta v**2 + sqrt(beta**2 v**4 + 4 alpha v**2)) / 2
      = v (beta v + R) / 2,   R = sqrt((beta v)**2 + 4 alpha).

(The "naive inverse" ``sign(y) (alpha + beta |y|)`` is not an inverse.)
:func:`expand` evaluates the second form: every operation adds or
multiplies non-negative numbers, so nothing cancels. Counting one rounding
(relative error u = 2**-53) per operation: ``beta v`` (1u), its square (3u),
``+ 4 alpha`` (4u: a sum of non-negative terms keeps the larger relative
error, plus its own rounding), ``sqrt`` (4u/2 + 1u = 3u), ``beta v + R``
(4u), ``* v`` (5u), ``/ 2`` (exact). Hence, to first order,

    |expand(y) - t_exact| <= 5 u t_exact < 5 ulp(t_exact)

where ``t_exact`` is the exact inverse of the float64 ``y`` (no overflow of
``(beta v)**2`` and no underflow assumed: ``beta |y| < 1e150`` and
``|y| = 0`` or ``> 1e-150``). :func:`compand` costs at most 3u
(``beta t``, ``+ alpha``, ``sqrt`` halves, ``/``), and the inverse
amplifies a relative error of ``y`` by ``d ln t / d ln v = 1 / (1 -
beta t / (2 (alpha + beta t))) in [1, 2]``, so the round trip
``expand(compand(x))`` is within ``2*3u + 5u = 11u`` of ``x``.

Range: both functions are defined for every float64 input. Where a
float64 intermediate (``alpha + beta t``, ``(beta v)**2``, ``v (beta v +
R)``) would overflow although the result does not (``compand(1e308, 1,
4)`` is about 5e153), the same operations are done on the significands,
with the powers of two carried apart (``frexp``/``ldexp``, exact), so the
bounds above hold up to float64's largest value. A result beyond float64's
range is +-Inf. ``compand(+-Inf) = +-Inf`` and ``expand(+-Inf) = +-Inf``
(the limits), so the quantizer saturates +-Inf to its end codes as the
affine quantizer does; NaN is rejected by the quantizer.

The quantizer (:class:`CompandingQuantizer`) maps ``[-x_max, x_max]`` to
``y`` in ``[-c(x_max), c(x_max)]``, quantizes ``y`` with the symmetric
signed ``bits``-wide grid ``s_y = c(x_max) / (2**(bits-1) - 1)`` (any lowprec
rounding) and expands the dequantized value. alpha and beta are trainable:
:func:`companding_fake_quant_backward` gives the straight-through gradients
(round treated as the identity, masked outside the clamp range); note that
scaling (alpha, beta) by the same factor leaves the levels in x unchanged,
so only beta/alpha shapes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .affine import check_bits, quantize

__all__ = ["compand", "expand", "compand_grad", "expand_grad", "CompandingQuantizer",
           "companding_fake_quant", "companding_fake_quant_backward"]


def _check_ab(alpha, beta):
    for nm, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.floating, np.integer, np.ndarray)):
            raise TypeError(f"{nm} must be a real number, got {type(v).__name__}")
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim or b.ndim:
        raise ValueError(f"alpha and beta must be scalars, got shapes {a.shape} and {b.shape}")
    a, b = float(a), float(b)
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    if not (np.isfinite(b) and b >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    return a, b


def _f64(x, name="x"):
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _compand_scaled(t, a, b):
    """``t / sqrt(a + b t)`` for finite ``t >= 0`` without overflow of ``a + b t`` (module docstring).

    With ``t = mt 2**et``, ``b = mb 2**eb`` (``frexp``) and an even ``E`` at or above
    the exponents of ``b t`` and ``a``: ``a + b t = 2**E (a 2**-E + mb mt 2**(eb+et-E))``,
    every term at most 1, and ``y = mt / sqrt(...) * 2**(et - E/2)``. The scalings
    are exact; a term that underflows is below 2**-1022 next to one of at least 1/4.
    """
    mt, et = np.frexp(t)
    mb, eb = np.frexp(b)
    ea = np.frexp(a)[1]
    e = np.maximum(eb + et, ea) if b else ea
    e = e + (e & 1)
    with np.errstate(under="ignore"):
        d = np.ldexp(a, -e) + np.ldexp(mb * mt, eb + et - e)
    with np.errstate(over="ignore"):
        return np.ldexp(mt / np.sqrt(d), et - e // 2)


def compand(x, alpha: float, beta: float) -> np.ndarray:
    """``sign(x) |x| / sqrt(alpha + beta |x|)`` in float64, for every input (``+-Inf`` gives ``+-Inf``).

    Examples
    --------
    >>> compand(np.array([-8.0, 0.0, 8.0]), 1.0, 1.0)
    array([-2.66666667,  0.        ,  2.66666667])
    >>> compand(np.array([1e308, -np.inf]), 1.0, 4.0)          # no overflow inside; Inf is the limit
    array([5.e+153,    -inf])
    """
    a, b = _check_ab(alpha, beta)
    xf = _f64(x)
    t = np.abs(xf)
    with np.errstate(over="ignore", invalid="ignore"):
        d = a + b * t
        y = t / np.sqrt(d)
    redo = np.isinf(d) & np.isfinite(t)
    if np.any(redo):
        y = np.where(redo, _compand_scaled(np.where(redo, t, 1.0), a, b), y)
    y = np.where(np.isinf(t), np.inf, y)
    return np.copysign(y, xf)


def _expand_scaled(v, a, b):
    """``v (b v + sqrt((b v)**2 + 4 a)) / 2`` for finite ``v >= 0`` without intermediate overflow.

    With ``v = mv 2**ev``, ``b = mb 2**eb`` and ``E`` the larger of the exponents of
    ``b v`` and ``2 sqrt(a)``, everything is computed scaled by ``2**-E`` (exact), where
    ``b v`` and ``2 sqrt(a)`` are at most 2 and the larger at least 1/8.
    """
    mv, ev = np.frexp(v)
    mb, eb = np.frexp(b)
    ea = np.frexp(a)[1] // 2 + 1
    e = np.maximum(eb + ev, ea) if b else ea  # b = 0: frexp gives exponent 0, not that of b v = 0
    with np.errstate(under="ignore"):
        bv = np.ldexp(mb * mv, eb + ev - e)
        r = np.sqrt(bv * bv + np.ldexp(a, 2 - 2 * e))  # 4 a 2**-2E, never 4 a (it can overflow)
    with np.errstate(over="ignore"):
        return np.ldexp(mv * ((bv + r) / 2.0), ev + e)


def expand(y, alpha: float, beta: float) -> np.ndarray:
    """The exact inverse of :func:`compand`, cancellation-free (module docstring: error < 5 ulp).

    Examples
    --------
    >>> x = np.array([-8.0, 0.5, 1e6])
    >>> bool(np.allclose(expand(compand(x, 0.3, 2.0), 0.3, 2.0), x, rtol=1e-15))
    True
    """
    a, b = _check_ab(alpha, beta)
    yf = _f64(y, "y")
    v = np.abs(yf)
    with np.errstate(over="ignore", invalid="ignore"):
        bv = b * v
        r = np.sqrt(bv * bv + 4.0 * a)
        t = v * (bv + r) / 2.0
    redo = ~np.isfinite(t) & np.isfinite(v)
    if np.any(redo):
        t = np.where(redo, _expand_scaled(np.where(redo, v, 1.0), a, b), t)
    t = np.where(np.isinf(v), np.inf, t)
    return np.copysign(t, yf)


def compand_grad(x, alpha: float, beta: float):
    """Partial derivatives ``(dy/dx, dy/dalpha, dy/dbeta)`` of :func:`compand`.

    With ``t = |x|`` and ``D = alpha + beta t``: ``dy/dx = (alpha + beta t/2) / D**1.5``,
    ``dy/dalpha = -sign(x) t / (2 D**1.5)``, ``dy/dbeta = -sign(x) t**2 / (2 D**1.5)``.
    """
    a, b = _check_ab(alpha, beta)
    xf = _f64(x)
    t = np.abs(xf)
    d = a + b * t
    d15 = d * np.sqrt(d)
    return (a + b * t / 2) / d15, -xf / (2 * d15), -xf * t / (2 * d15)


def expand_grad(y, alpha: float, beta: float):
    """Partial derivatives ``(dx/dy, dx/dalpha, dx/dbeta)`` of :func:`expand`.

    Differentiating ``t**2 = v**2 (alpha + beta t)`` implicitly, and using
    ``2t - beta v**2 = v R``: ``dx/dy = 2 (alpha + beta t) / R``,
    ``dx/dalpha = y / R``, ``dx/dbeta = y t / R`` with ``R = sqrt((beta v)**2 + 4 alpha)``.
    """
    a, b = _check_ab(alpha, beta)
    yf = _f64(y, "y")
    v = np.abs(yf)
    bv = b * v
    r = np.sqrt(bv * bv + 4.0 * a)
    t = v * (bv + r) / 2.0
    return 2 * (a + b * t) / r, yf / r, yf * t / r


def _grid(alpha, beta, x_max, bits):
    qp = (1 << (check_bits(bits) - 1)) - 1
    if not (np.isfinite(x_max) and x_max > 0):
        raise ValueError(f"x_max must be finite and > 0, got {x_max}")
    return qp, float(compand(float(x_max), alpha, beta)) / qp


def companding_fake_quant(x, alpha: float, beta: float, x_max: float, bits: int = 8,
                          rounding="nearest_even", seed=None) -> np.ndarray:
    """``expand(s_y * clamp(round(compand(x) / s_y)))`` with ``s_y = compand(x_max) / (2**(bits-1)-1)``.

    Examples
    --------
    >>> companding_fake_quant(np.array([0.0, 0.01, 1.0, 5.0]), 1.0, 4.0, 1.0, bits=3)
    array([0., 0., 1., 1.])
    """
    qp, s = _grid(alpha, beta, x_max, bits)
    q = quantize(compand(x, alpha, beta), s, 0, bits=bits, narrow_range=True, rounding=rounding, seed=seed)
    return expand(q.astype(np.float64) * s, alpha, beta)


def companding_fake_quant_backward(x, alpha: float, beta: float, x_max: float, bits: int, grad_out,
                                   rounding="nearest_even", seed=None):
    """Straight-through gradients of :func:`companding_fake_quant`: ``(dx, dalpha, dbeta)``.

    With ``y = c(x)``, ``u = y / s_y``, ``q = clamp(round(u), -Qp, Qp)`` and
    ``yq = q s_y`` (``s_y = c(x_max)/Qp`` depends on alpha and beta), round is
    taken as the identity inside the range ``|u| <= Qp``:

    * inside: ``d yq = c_theta(x) + (q - u) s_theta``, ``d yq / dx = c_x(x)``;
    * outside: ``d yq = q s_theta``, ``d yq / dx = 0``;

    and ``d out = e_y(yq) d yq + e_theta(yq)`` (``e`` = :func:`expand`).
    ``dalpha`` and ``dbeta`` are summed over all elements against ``grad_out``.
    The same ``rounding``/``seed`` as the forward pass must be given for stochastic rounding.
    """
    a, b = _check_ab(alpha, beta)
    qp, s = _grid(a, b, x_max, bits)
    xf = _f64(x)
    g = np.broadcast_to(_f64(grad_out, "grad_out"), xf.shape)
    y = compand(xf, a, b)
    q = quantize(y, s, 0, bits=bits, narrow_range=True, rounding=rounding, seed=seed).astype(np.float64)
    u = y / s
    inside = np.abs(u) <= qp
    yq = q * s
    _, sa, sb = compand_grad(float(x_max), a, b)
    sa, sb = float(sa) / qp, float(sb) / qp
    # the derivatives of c are used inside the clamp range only; outside (+-Inf, huge x) evaluate them at 0
    cx, ca, cb = compand_grad(np.where(inside, xf, 0.0), a, b)
    ey, ea, eb = expand_grad(yq, a, b)
    dyq_a = np.where(inside, ca + (q - u) * sa, q * sa)
    dyq_b = np.where(inside, cb + (q - u) * sb, q * sb)
    dx = g * np.where(inside, ey * cx, 0.0)
    dalpha = float(np.sum(g * (ey * dyq_a + ea)))
    dbeta = float(np.sum(g * (ey * dyq_b + eb)))
    return dx, dalpha, dbeta


@dataclass(frozen=True)
class CompandingQuantizer:
    """Companding quantizer with fixed parameters (see the module docstring).

    Examples
    --------
    >>> q = CompandingQuantizer(alpha=1.0, beta=8.0, x_max=4.0, bits=4)
    >>> codes = q.quantize(np.array([-4.0, 0.0, 0.1, 4.0]))
    >>> codes
    array([-7,  0,  1,  7], dtype=int8)
    >>> bool(np.all(np.diff(q.levels()) > 0)), q.levels().size
    (True, 15)
    """

    alpha: float
    beta: float
    x_max: float
    bits: int = 8
    rounding: str = "nearest_even"

    def __post_init__(self):
        _check_ab(self.alpha, self.beta)
        _grid(self.alpha, self.beta, self.x_max, self.bits)

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def step(self) -> float:
        """The step of the uniform grid on the companded values."""
        return _grid(self.alpha, self.beta, self.x_max, self.bits)[1]

    def quantize(self, x, seed=None) -> np.ndarray:
        """Codes in ``[-Qp, Qp]`` (int8/int16)."""
        return quantize(compand(x, self.alpha, self.beta), self.step, 0, bits=self.bits, narrow_range=True,
                        rounding=self.rounding, seed=seed)

    def dequantize(self, q) -> np.ndarray:
        return expand(np.asarray(q).astype(np.float64) * self.step, self.alpha, self.beta)

    def fake_quantize(self, x, seed=None) -> np.ndarray:
        return self.dequantize(self.quantize(x, seed=seed))

    __call__ = fake_quantize

    def levels(self) -> np.ndarray:
        """All reconstruction values, increasing."""
        return self.dequantize(np.arange(-self.qmax, self.qmax + 1))

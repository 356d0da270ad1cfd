"""Error measures and rounding error bounds for sums, dot products and matmul.

Measures (against exact ``fractions.Fraction`` references):

* :func:`exact_dot`, :func:`exact_sum` -- the exact value of the inputs as stored;
* :func:`relative_error` -- ``|computed - exact| / |exact|``;
* :func:`backward_error` -- ``|computed - exact| / sum_i |a_i b_i|``, the
  smallest ``eps`` with ``computed = sum_i a_i b_i (1 + d_i)``, ``|d_i| <= eps``
  (the componentwise backward error of a dot product or sum; Higham, *Accuracy
  and Stability of Numerical Algorithms*, 2nd ed., 2002, section 3.1).

Bounds, all of the form ``|computed - exact| <= c * sum_i |a_i b_i|``:

* deterministic: ``gamma_n = n u / (1 - n u)`` (Higham 2002, Lemma 3.1,
  eq. (3.4)): for recursive summation/dot products with ``n`` roundings per
  term; mixed formats give ``sum_i k_i u_i / (1 - sum_i k_i u_i)``.
* probabilistic (Higham and Mary, "A new approach to probabilistic rounding
  error analysis", SIAM J. Sci. Comput. 41(5), A2815-A2835, 2019, Theorems
  2.4 and 3.1): if the rounding errors are independent, mean-zero random
  variables with ``|d| <= u``, then for any ``lambda > 0``
  ``gamma~_n(lambda) = exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1``
  (= ``lambda sqrt(n) u + O(u^2)``) bounds the error of a dot product with
  probability at least ``Q(lambda, n) = 1 - n (1 - P(lambda))``,
  ``P(lambda) = 1 - 2 exp(-lambda^2 (1 - u)^2 / 2)``. For round-to-nearest
  the independence is a model, not a fact.
* stochastic rounding (Connolly, Higham and Mary, "Stochastic rounding and
  its probabilistic backward error analysis", SIAM J. Sci. Comput. 43(1),
  A566-A585, 2021): stochastic rounding's errors are mean-zero and *mean
  independent* (proved, Lemma 5.2), which is enough for the same
  Azuma-Hoeffding argument, so the bound above holds without any model
  assumption. A stochastic rounding error can reach one ulp, so
  :func:`stochastic_rounding_bound` uses ``|d| <= 2u`` in the formula.

All bounds assume no underflow or overflow and values already in their
input formats (the reference is the exact product of the rounded inputs).

Block scaling: :func:`compare_scale_rules` runs :func:`lowprec.block.analyze` under each scale rule
(per-block clipped elements, blocks whose maximum clipped, underflow to zero, block errors).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .accumulation import Accumulation, get_accumulation
from .formats import FixedFormat, get_format
from .rounding import get_rounding

__all__ = ["exact_dot", "exact_sum", "relative_error", "backward_error", "unit_roundoff", "gamma",
           "gamma_tilde", "hm2019_probability", "probabilistic_bound", "stochastic_rounding_bound",
           "accumulation_bound", "compare_scale_rules"]


def _vector(x, name):
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64).reshape(-1)


def exact_dot(a, b) -> Fraction:
    """The exact ``sum_i a_i b_i`` of two vectors (as stored), a Fraction.

    Examples
    --------
    >>> exact_dot([1e16, 1.0, -1e16], [1.0, 1.0, 1.0])
    Fraction(1, 1)
    """
    av, bv = _vector(a, "a"), _vector(b, "b")
    if av.shape != bv.shape:
        raise ValueError(f"a and b must have the same length, got shapes {av.shape} and {bv.shape}")
    return sum((Fraction(x) * Fraction(y) for x, y in zip(av.tolist(), bv.tolist())), Fraction(0))


def exact_sum(x) -> Fraction:
    """The exact sum of the elements of ``x`` (as stored), a Fraction."""
    return sum((Fraction(v) for v in _vector(x, "x").tolist()), Fraction(0))


def relative_error(computed, exact) -> float:
    """``|computed - exact| / |exact|`` in exact arithmetic (inf if exact is 0 and computed is not)."""
    c, e = Fraction(float(computed)), Fraction(exact)
    if e == 0:
        return 0.0 if c == 0 else math.inf
    return float(abs(c - e) / abs(e))


def backward_error(computed, a, b=None) -> float:
    """Componentwise backward error ``|computed - s| / sum_i |a_i b_i|`` (``b=None``: a sum of ``a``).

    Examples
    --------
    >>> backward_error(1.0, [1.0, 2.0**-11])  # fp16 sum that lost the small term
    0.0004880429477794046
    """
    av = _vector(a, "a")
    bv = np.ones_like(av) if b is None else _vector(b, "b")
    if av.shape != bv.shape:
        raise ValueError(f"a and b must have the same length, got shapes {av.shape} and {bv.shape}")
    s = exact_dot(av, bv)
    mag = sum((abs(Fraction(x) * Fraction(y)) for x, y in zip(av.tolist(), bv.tolist())), Fraction(0))
    c = Fraction(float(computed))
    if mag == 0:
        return 0.0 if c == 0 else math.inf
    return float(abs(c - s) / mag)


def unit_roundoff(fmt, rounding="nearest_even") -> float:
    """The bound u on |d| in ``fl(x) = x (1 + d)``: 2**-p for nearest modes, 2**(1-p) otherwise.

    Directed, odd and stochastic rounding can move a value by up to one ulp.
    """
    fmt = get_format(fmt)
    if isinstance(fmt, FixedFormat):
        raise ValueError(f"a relative error bound needs a floating-point format, got {fmt.name}")
    u = 2.0 ** -fmt.precision
    return u if get_rounding(rounding).is_nearest else 2 * u


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return int(n)


def gamma(n: int, u: float) -> float:
    """``gamma_n = n u / (1 - n u)`` (Higham 2002, eq. (3.4)); requires ``n u < 1``.

    Examples
    --------
    >>> gamma(2, 2.0**-11) == 2 * 2.0**-11 / (1 - 2 * 2.0**-11)
    True
    """
    n = _check_n(n)
    if n * u >= 1:
        raise ValueError(f"gamma_n needs n*u < 1, got n={n}, u={u}")
    return n * u / (1 - n * u)


def gamma_tilde(n: int, u: float, lam: float) -> float:
    """``gamma~_n(lambda) = exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1`` (Higham and Mary 2019, Thm 2.4)."""
    n = _check_n(n)
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))


def hm2019_probability(n: int, lam: float, u: float) -> float:
    """``Q(lambda, n) = 1 - 2 n exp(-lambda^2 (1 - u)^2 / 2)`` (at least this probability; clipped at 0)."""
    n = _check_n(n)
    return max(0.0, 1.0 - 2 * n * math.exp(-lam * lam * (1 - u) ** 2 / 2))


def _lam_for(n: int, u: float, probability: float) -> float:
    """The lambda at which Q(lambda, n) equals ``probability``."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    return math.sqrt(2 * math.log(2 * max(n, 1) / (1 - probability))) / (1 - u)


def probabilistic_bound(n: int, u: float, probability: float = 0.99) -> tuple:
    """Higham-Mary (2019) bound for ``n`` roundings per term: ``(gamma~_n(lambda), Q)``.

    ``lambda`` is chosen so that the bound holds with probability at least
    ``probability`` under the model of independent mean-zero rounding errors.

    Examples
    --------
    >>> c, q = probabilistic_bound(1000, 2.0**-11, 0.99)
    >>> round(q, 6), c < gamma(1000, 2.0**-11) / 5
    (0.99, True)
    """
    lam = _lam_for(n, u, probability)
    return gamma_tilde(n, u, lam), hm2019_probability(n, lam, u)


def stochastic_rounding_bound(n: int, u: float, probability: float = 0.99) -> tuple:
    """Connolly-Higham-Mary (2021) bound for stochastic rounding: ``(gamma~_n(lambda) with 2u, Q)``.

    ``u`` is the format's unit roundoff 2**-p; stochastic rounding errors are
    bounded by 2u and mean independent (proved), so the bound needs no model."""
    return probabilistic_bound(n, 2 * u, probability)


def _roundings(acc: Accumulation, n: int) -> list:
    """[(k, u)]: each term suffers at most k roundings of unit roundoff u."""
    if acc.compensated:
        raise ValueError("no bound is implemented for compensated (Kahan) accumulation")
    mode = acc.acc_rounding
    out = []
    if acc.product_format is not None:
        out.append((1, unit_roundoff(acc.product_format)))
    if not acc.fused:
        out.append((1, unit_roundoff(acc.acc_format)))
    ua = unit_roundoff(acc.acc_format, mode)
    if acc.order == "sequential":
        out.append((n, ua))
    elif acc.order == "pairwise":
        out.append((max(1, math.ceil(math.log2(max(n, 1)))), ua))
    else:
        out.append((min(acc.chunk, n), ua))
        out.append((math.ceil(n / acc.chunk), unit_roundoff(acc.chunk_format)))  # promotion: nearest
    return out


def accumulation_bound(accumulation, n: int, kind: str = "deterministic", probability: float = 0.99) -> tuple:
    """A coefficient c with ``|computed - exact| <= c sum_i |a_i b_i|`` for an n-term accumulation.

    Parameters
    ----------
    accumulation : Accumulation or str
    n : int
        Number of terms (K).
    kind : {"deterministic", "probabilistic"}
        ``deterministic``: ``sum k_i u_i / (1 - sum k_i u_i)`` over the
        roundings each term can suffer (gamma_n for one format), always valid.
        ``probabilistic``: Higham-Mary 2019 for deterministic modes (a model),
        Connolly-Higham-Mary 2021 for stochastic accumulation (proved), with
        ``n`` replaced by the total rounding count and ``u`` by the largest.

    Returns
    -------
    (c, probability)
        ``probability`` is 1.0 for the deterministic bound.

    Examples
    --------
    >>> c, p = accumulation_bound("fp16", 100)
    >>> c == gamma(100, 2.0**-11), p
    (True, 1.0)
    """
    acc = get_accumulation(accumulation)
    n = _check_n(n)
    parts = _roundings(acc, n)
    if kind == "deterministic":
        t = sum(k * u for k, u in parts)
        if t >= 1:
            raise ValueError(f"the deterministic bound needs sum k*u < 1, got {t} for n={n}")
        return t / (1 - t), 1.0
    if kind == "probabilistic":
        k = sum(k for k, _ in parts)
        u = max(u for _, u in parts)
        # for stochastic accumulation unit_roundoff already gave 2u: the Connolly-Higham-Mary form
        return probabilistic_bound(k, u, probability)
    raise ValueError(f"kind must be 'deterministic' or 'probabilistic', got {kind!r}")


def compare_scale_rules(x, fmt, rules=None, *, axis=None, rounding=None, seed=None) -> dict:
    """What block quantization of ``x`` in ``fmt`` does under each scale rule: ``{rule: BlockStats}``.

    Each value is :func:`lowprec.block.analyze`'s :class:`~lowprec.block.BlockStats` (per block: amax, scale,
    clipped elements, whether the maximum clipped, elements that underflowed to zero, max |error|, sums of
    squared error and of x**2; and the fractions and the relative rms error over the tensor), so a study
    compares rules on its own data.

    Parameters
    ----------
    x : array_like
        float32 or float64 values.
    fmt : BlockFormat or str
        A block format or preset name.
    rules : list of str, optional
        Scale rules; default: the four power-of-two rules for E8M0 formats, the format's own rule otherwise.
    axis, rounding, seed
        As :func:`lowprec.block.quantize`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((256, 32))
    >>> st = compare_scale_rules(x, "mxfp4", ["floor", "rceil"])
    >>> bool(st["floor"].fraction_blocks_max_clipped > 0), st["rceil"].fraction_blocks_max_clipped
    (True, 0.0)
    """
    from . import block

    bf = block.get_block_format(fmt)
    if rules is None:
        rules = ["floor", "ceil", "even", "rceil"] if bf.scale_rule != "amax" else [bf.scale_rule]
    if isinstance(rules, str) or not all(isinstance(r, str) for r in rules):
        raise TypeError(f"rules must be a list of scale rule names, got {rules!r}")
    return {r: block.analyze(x, bf, axis=axis, scale_rule=r, rounding=rounding, seed=seed) for r in rules}

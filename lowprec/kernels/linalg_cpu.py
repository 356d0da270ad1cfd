"""The CPU narrow-accumulator matmul: the predicates its preconditions read, and running one kernel.

kernels/dispatch.py chooses the kernel (its table ``NARROW_KERNELS``; the preconditions' proofs are in
docs/kernels.md). Here: :func:`matmul_narrow` runs one kind on 2-D operands (packs them with
operands.pack and calls its kernel: narrow.py, the 4 x 64 tile kernels; linalg_narrow.py, the register-tiled
ones), and the predicates the table's entries call (:func:`float_fields`, :func:`holds`,
:func:`sr32_floor`, :func:`f32_exact`).
"""

import math

import numpy as np

from . import linalg_narrow, narrow, rules, scalar
from .operands import pack, stats

NARROW_R = narrow.NARROW_R
NARROW_N = narrow.NARROW_N

def matmul_narrow(a, b, kind, m, emin, emax, key0=0, key1=0, offset=0, obase=0, elo=None):
    """C = A @ B for 2-D float64 A (M, K), B (K, N) with a narrow accumulator (m, emin, emax) (see narrow.py).

    ``kind``: "direct", "twosum", "twosum32" (nearest-even), "sr" or "sr32" (stochastic, 32 random bits); obase
    is the flat index of C[0, 0] in the whole output (it keys the random counters); ``elo``: for "sr32", the
    lowest exponent of its quantum computation (sr32_exponent_floor; None: from a and b); for "direct", whether
    linalg_narrow.direct_no_overflow holds (None: from a and b). "direct" and "twosum32" run the register-tiled
    kernels of linalg_narrow.py (same bits as narrow.py's, tests/test_linalg_narrow.py). Returns float64 (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    Ap, Bp = pack(a, b.T, np.float32 if kind in ("twosum32", "sr32") else np.float64)
    out = np.empty((Ap.shape[0] * NARROW_R, Bp.shape[0] * NARROW_N))
    cadd, minc, up, down = rules.nearest_even_params(m, emin, emax)
    if kind == "sr32":
        if elo is None:
            elo = sr32_exponent_floor(a, b.T, m, emin, emax)
        if elo is None:
            raise ValueError("the sr32 kernel's preconditions do not hold for these operands")
        narrow.KERNELS["sr32"](Ap, Bp, out, np.int64(K), np.int64(N), np.int32(elo + 127), np.int32(m + 254),
                               np.int32(m), np.float32((2.0 - 2.0 ** -m) * 2.0 ** emax), np.uint32(key0),
                               np.uint32(key1), np.int64(offset), np.int64(obase))
    elif kind == "twosum32":
        linalg_narrow.run(kind, Ap, Bp, out, K, m, emin, emax)
    elif kind == "direct":
        if elo is None:  # (the proof that no sum overflows: see linalg_narrow.direct_no_overflow)
            elo = linalg_narrow.direct_no_overflow(stats(a), stats(b.T), K, m, emin, emax)
        linalg_narrow.run(kind, Ap, Bp, out, K, m, emin, emax, no_overflow=bool(elo))
    elif kind == "sr":
        narrow.KERNELS["sr"](Ap, Bp, out, np.int64(K), np.int64(N), *rules.stochastic_params(m, emin, emax),
                             np.uint32(key0), np.uint32(key1), np.int64(offset), np.int64(obase))
    elif kind == "unfused":
        narrow.KERNELS[kind](Ap, Bp, out, np.int64(K), cadd, minc, up, down, emax - (emin - m) <= 51)
    else:
        narrow.KERNELS[kind](Ap, Bp, out, np.int64(K), cadd, minc, up, down)
    return out[:M, :N]


_FLT_MAX = float(np.finfo(np.float32).max)


def float_fields(p):
    """(m, emin, emax) of a float format's kernel tuple that the fast kernels support, else None."""
    kind, m, emin, bias, tmax, nan_code, subn, sat, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE or subn != 1 or sat != 0:
        return None
    emax = (tmax >> m) - bias
    if m > 20 or not 0 <= emax <= 1000 or emin - m < -1000:
        return None
    return m, emin, emax


def holds(p, m, emin, emax) -> bool:
    """True when format p (a kernel tuple) holds every value of the IEEE format (m, emin, emax), Inf included."""
    kind, pm, pemin, bias, tmax, nan_code, subn, _, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE:
        return False
    smallest = pemin - pm if subn == 1 else pemin
    return pm >= m and (tmax >> pm) - bias >= emax and smallest <= emin - m and (subn == 1 or pemin <= emin - m)


def sr32_exponent_floor(a, bt, m, emin, emax):
    """The exponent floor ``elo`` of the "sr32" kernel (rules.sum_stochastic32) for these finite operands
    (a (M, K), bt (N, K)), or None when it does not apply (see sr32_floor)."""
    return sr32_floor(stats(a), stats(bt), a.shape[1], m, emin, emax)


def sr32_floor(sa, sb, K, m, emin, emax):
    """sr32_exponent_floor from the operands' statistics (operands.stats): the sr32 kernel applies when
    float32 holds every value and product exactly (f32_exact) and rules.sum_stochastic32_floor accepts the
    lowest bit g of every product and a bound top > every |s + t|. Proof: docs/kernels.md, section "sr32"."""
    if m > 22 or emin - m < -149 or emax > 127 or not f32_exact(sa, sb):
        return None
    hi_t = sa.hi * sb.hi
    fmax = (2.0 - 2.0 ** -m) * 2.0 ** emax
    growth = K * (hi_t + 2.0 ** (emin - m)) * math.exp(min(K * math.log1p(2.0 ** -m), 700.0))
    top = min(fmax, growth) + hi_t  # > every |s + t|
    if top > _FLT_MAX * (1.0 - 2.0 ** -30):
        return None
    if sa.lo == np.inf or sb.lo == np.inf:
        return emin  # no non-zero product: every sum is zero
    g = sa.lowexp + sb.lowexp  # lowbit(a*b) = lowbit(a) * lowbit(b)
    return rules.sum_stochastic32_floor(g, top, m, emin, emax)


def float32_exact(a, bt) -> bool:
    """True when every value of a and bt and every product a*b is exactly a float32 (finite values)."""
    return f32_exact(stats(a), stats(bt))


def f32_exact(sa, sb) -> bool:
    """float32_exact from the operands' statistics (operands.stats). Proof: docs/kernels.md, "twosum32"."""
    if sa.bits + sb.bits > 24 or sa.hi * sb.hi > _FLT_MAX or max(sa.hi, sb.hi) > _FLT_MAX:
        return False
    if sa.lo == np.inf or sb.lo == np.inf:
        return True  # no non-zero value in one operand: every product is zero
    # every value is a multiple of its lowest set bit, every product of lowbit(a) * lowbit(b)
    return min(sa.lowexp, sb.lowexp) >= -149 and sa.lowexp + sb.lowexp >= -149

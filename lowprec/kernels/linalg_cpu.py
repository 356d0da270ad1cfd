"""The CPU matmul (sum, dot) dispatcher: which kernel computes an accumulation, and running it.

:func:`_matmul_cpu` (what lowprec.linalg calls) runs a fast narrow-accumulator kernel where one gives the
bits of the general per-element kernel (accumulate_cpu.matmul_general), else the general kernel. The plan
(:func:`narrow_kind`) decides from the accumulation and the operands' statistics (operands.stats) which
fast kernel applies (the steps and their preconditions: the comment at the top of narrow.py; the
proofs of the operand conditions: :func:`_sr32_floor`, :func:`_f32_exact` here,
linalg_narrow.direct_no_overflow). :func:`_matmul_narrow`
runs one kind on 2-D operands: packs them (operands.pack) and calls its kernel (narrow.py, the
4 x 64 tile kernels; linalg_narrow.py, the register-tiled ones). The fp32-accumulator tile kernel
lives in linalg_fp32.py (lowprec.linalg chooses it). lowprec.ops' loop is accumulate_cpu.ops_elementwise
(``_ops_cpu`` here).
"""

import math

import numpy as np

from . import accum, accumulate_cpu, linalg_narrow, narrow, rules, scalar
from .operands import pack, stats

NARROW_R = narrow.NARROW_R
NARROW_N = narrow.NARROW_N

_ops_cpu = accumulate_cpu.ops_elementwise  # lowprec.ops calls it by this name


def _matmul_narrow(a, b, kind, m, emin, emax, key0=0, key1=0, offset=0, obase=0, elo=None):
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
_NARROW_MIN_WORK = 1 << 15  # multiply-adds below which the general kernel is as fast
_NARROW_MIN_N = NARROW_N // 4  # narrower outputs would mostly compute padding


def _float_fields(p):
    """(m, emin, emax) of a float format's kernel tuple that the fast kernels support, else None."""
    kind, m, emin, bias, tmax, nan_code, subn, sat, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE or subn != 1 or sat != 0:
        return None
    emax = (tmax >> m) - bias
    if m > 20 or not 0 <= emax <= 1000 or emin - m < -1000:
        return None
    return m, emin, emax


def _holds(p, m, emin, emax) -> bool:
    """True when format p (a kernel tuple) holds every value of the IEEE format (m, emin, emax), Inf included."""
    kind, pm, pemin, bias, tmax, nan_code, subn, _, _ = p
    if kind != scalar.KIND_FLOAT or nan_code != scalar.NAN_IEEE:
        return False
    smallest = pemin - pm if subn == 1 else pemin
    return pm >= m and (tmax >> pm) - bias >= emax and smallest <= emin - m and (subn == 1 or pemin <= emin - m)


def narrow_kind(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                rbits):
    """"direct", "twosum", "twosum32", "sr" or "sr32" when a fast narrow-accumulator kernel gives this
    accumulation's bits (see the comment at the top of narrow.py), else None."""
    return _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits)[0]


def _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits):
    """(narrow_kind, the sr32 kernel's exponent floor or None; for "direct": whether no sum can overflow)."""
    if (has_prod or order != accum.SEQUENTIAL or compensated
            or ia.size * M * N * K < _NARROW_MIN_WORK or N < _NARROW_MIN_N):
        return None, None
    acc = _float_fields(pacc)
    if acc is None:
        return None, None
    m, emin, emax = acc
    if mode == scalar.STOCHASTIC:
        if rbits != 32:
            return None, None
    elif mode != scalar.NEAREST_EVEN:
        return None, None
    if tuple(pout) != tuple(pacc) and not _holds(pout, m, emin, emax):
        return None, None  # the final rounding must change nothing
    sa, sb = stats(a), stats(bt)
    if not (sa.finite and sb.finite):
        return None, None  # NaN/Inf inputs: the general kernel
    if not fused:  # nearest-even only; the float64 product must be exact
        ok = (mode == scalar.NEAREST_EVEN and sa.bits + sb.bits <= 53 and sa.hi * sb.hi < 2.0 ** 1000
              and (sa.lo == np.inf or sb.lo == np.inf or sa.lowexp + sb.lowexp >= -1074))
        return ("unfused", None) if ok else (None, None)
    if mode == scalar.STOCHASTIC:
        elo = _sr32_floor(sa, sb, int(K), m, emin, emax)
        return ("sr", None) if elo is None else ("sr32", elo)
    if m + 1 + sa.bits + sb.bits <= 50 and emax - (emin - m) <= 50:
        return "direct", linalg_narrow.direct_no_overflow(sa, sb, int(K), m, emin, emax)
    if emin == -126 and emax == 127 and _f32_exact(sa, sb):
        return "twosum32", None  # bf16 and the like: float32 holds the values, the products and exact TwoSums
    return "twosum", None


def sr32_exponent_floor(a, bt, m, emin, emax):
    """The exponent floor ``elo`` of the "sr32" kernel (rules.sum_stochastic32) for these finite operands
    (a (M, K), bt (N, K)), or None when it does not apply (see _sr32_floor)."""
    return _sr32_floor(stats(a), stats(bt), a.shape[1], m, emin, emax)


def _sr32_floor(sa, sb, K, m, emin, emax):
    """sr32_exponent_floor from the operands' statistics (operands.stats).

    sr32 applies when float32 holds every value and product exactly (_f32_exact) and the conditions of
    rules.sum_stochastic32_floor hold for g and top. Here 2**g = the lowest set bit of the product of a's
    and b's lowest set bits, which divides every product, so every accumulator value, sum and TwoSum
    error is a multiple of 2**g (an SR result of a multiple of 2**g is one too) and a non-zero
    |x| >= 2**g; and top > every |s + t|, from the growth bound |s_k| <= K (max|t| + 2**(emin-m))
    (1 + 2**-m)**K (each stochastic rounding adds at most one quantum), or the format's max where that is
    smaller, plus max|t|. With no non-zero product every sum is zero (elo = emin)."""
    if m > 22 or emin - m < -149 or emax > 127 or not _f32_exact(sa, sb):
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


def _float32_exact(a, bt) -> bool:
    """True when every value of a and bt and every product a*b is exactly a float32 (finite values)."""
    return _f32_exact(stats(a), stats(bt))


def _f32_exact(sa, sb) -> bool:
    """_float32_exact from the operands' statistics (operands.stats)."""
    if sa.bits + sb.bits > 24 or sa.hi * sb.hi > _FLT_MAX or max(sa.hi, sb.hi) > _FLT_MAX:
        return False
    if sa.lo == np.inf or sb.lo == np.inf:
        return True  # no non-zero value in one operand: every product is zero
    # every value is a multiple of its lowest set bit, every product of lowbit(a) * lowbit(b)
    return min(sa.lowexp, sb.lowexp) >= -149 and sa.lowexp + sb.lowexp >= -149


def _matmul_cpu(a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                compensated, pout, key0, key1, offset, rbits):
    """The CPU matmul (arguments as accumulate_cpu.matmul_general): a fast narrow-accumulator kernel where
    one gives the same bits, else the general per-element kernel."""
    kind, elo = _narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout,
                             rbits)
    if kind is None:
        accumulate_cpu.matmul_general(np.ascontiguousarray(a), np.ascontiguousarray(bt), ia, ib, out, M, N, K,
                                      has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                                      key0, key1, offset, rbits)
        return
    M, N, K = int(M), int(N), int(K)
    fields = _float_fields(pacc)
    res = out.reshape(-1, M, N)
    for bi in range(ia.size):
        ra, rb = int(ia[bi]) * M, int(ib[bi]) * N
        res[bi] = _matmul_narrow(a[ra:ra + M], bt[rb:rb + N].T, kind, *fields, key0, key1, offset, bi * M * N, elo)

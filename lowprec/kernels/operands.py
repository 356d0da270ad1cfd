"""The operands of the narrow-accumulator kernels: packing into panels, and one-pass statistics.

Packing: ``a`` (M, K) becomes row panels ``Ap`` (ceil(M/PANEL_R), K, PANEL_R) and ``b`` = ``bt.T`` (K, N)
column panels ``Bp`` (ceil(N/PANEL_N), K, PANEL_N), zero-padded, so that a kernel reads, for each k, the
PANEL_R values of a row panel and a contiguous row of PANEL_N values of a column panel.

Statistics (:func:`stats`): whether every value is finite, a bound on the significant bits of every
value, the smallest and largest non-zero magnitudes and the exponent of the lowest set bit; the
preconditions of the fast kernels (kernels/linalg_cpu.py) are decided from them.
"""

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import scalar
from .jit import kernel

PANEL_R = 4  # rows of a row panel of Ap
PANEL_N = 64  # columns of a column panel of Bp

_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_INFBITS = np.int64(0x7FF0000000000000)


# ----------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------
@kernel(parallel=True)
def pack_rows(x, P):
    """P[p, k, r] = x[p*R + r, k] (zero past x's last row): x (n, K) rows into panels P (ceil(n/R), K, R)."""
    n, K = x.shape
    R = P.shape[2]
    for p in prange(P.shape[0]):
        for k0 in range(0, K, 16):  # blocks of k: the reads of R rows and the writes stay in cache
            k1 = min(k0 + 16, K)
            for r in range(R):
                row = p * R + r
                if row < n:
                    for k in range(k0, k1):
                        P[p, k, r] = x[row, k]
                else:
                    for k in range(k0, k1):
                        P[p, k, r] = 0.0


@kernel(parallel=True)
def pack_cols(b, P):
    """P[p, k, c] = b[k, p*NB + c] (zero past b's last column): the columns of a C-contiguous b (K, n) into
    panels P (ceil(n/NB), K, NB), row pieces copied as they lie."""
    K, n = b.shape
    NB = P.shape[2]
    for p in prange(P.shape[0]):
        j0 = p * NB
        w = min(NB, n - j0)
        for k in range(K):
            for c in range(w):
                P[p, k, c] = b[k, j0 + c]
            for c in range(w, NB):
                P[p, k, c] = 0.0


def pack(a, bt, dtype=np.float64):
    """a (M, K) and bt (N, K) float64 rows into row panels (M/R, K, R) and column panels (N/NB, K, NB) of b = bt.T,
    zero-padded, in ``dtype``. A ``bt`` that is the transposed view of a C-contiguous b (what lowprec.linalg passes
    for a 2-D b) is packed from b's rows directly, without a transposed copy."""
    M, K = a.shape
    N = bt.shape[0]
    Ap = np.empty((-(-M // PANEL_R), K, PANEL_R), dtype=dtype)
    Bp = np.empty((-(-N // PANEL_N), K, PANEL_N), dtype=dtype)
    pack_rows(np.ascontiguousarray(a), Ap)
    if not bt.flags.c_contiguous and bt.T.flags.c_contiguous:
        pack_cols(bt.T, Bp)
    else:
        pack_rows(np.ascontiguousarray(bt), Bp)
    return Ap, Bp


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------
@intrinsic
def _cttz64(typingctx, x):
    """The number of trailing zero bits of a non-zero int64."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.int64(types.int64), codegen


@kernel
def stats_pass(x):
    """One pass over float64 x: (all finite, OR of the mantissa fields, smallest non-zero |x| (inf if none),
    largest |x|, smallest exponent of a non-zero value's lowest set bit (2000 if none)); only the first is
    meaningful for the others when some value is not finite."""
    finite = True
    low_or = np.int64(0)
    lo, hi = np.inf, 0.0
    lowexp = np.int64(2000)
    for v in x.ravel():
        u = scalar.f64_as_i64(v)
        a = u & _ABS
        if a >= _INFBITS:
            finite = False
            continue
        low_or |= u & np.int64((1 << 52) - 1)
        if a != 0:
            av = scalar.i64_as_f64(a)
            lo = min(lo, av)
            hi = max(hi, av)
            e = a >> 52
            sig = (a & np.int64((1 << 52) - 1)) | (np.int64(1 << 52) if e > 0 else np.int64(0))
            lowexp = min(lowexp, max(e, np.int64(1)) - 1075 + _cttz64(sig))
    return finite, low_or, lo, hi, lowexp


class Stats(NamedTuple):
    finite: bool
    bits: int  # an upper bound on the significant bits of every value
    lo: float  # smallest non-zero |x|, inf if none
    hi: float  # largest |x|
    lowexp: int  # exponent of the lowest set bit over the non-zero values


def stats(x) -> Stats:
    """The :class:`Stats` of the values of x (any shape and strides; read without a copy where x or x.T
    is C-contiguous float64)."""
    if x.dtype == np.float64 and not x.flags.c_contiguous and x.T.flags.c_contiguous:
        x = x.T  # the same values (the statistics do not depend on the order): no transposed copy
    finite, low, lo, hi, lowexp = stats_pass(np.ascontiguousarray(x, dtype=np.float64))
    low = int(low)
    bits = 1 if low == 0 else 53 - ((low & -low).bit_length() - 1)
    return Stats(bool(finite), bits, float(lo), float(hi), int(lowexp))


def lowest_bit_exponent(x) -> int:
    """The exponent of the lowest set bit over the non-zero finite float64 values in x (at least one)."""
    return stats(x).lowexp

"""The fast narrow-accumulator matmul kernels (kernels/narrow.py and kernels/linalg_narrow.py, "direct", "twosum",
"twosum32", "sr", "sr32", "unfused"; dispatched by kernels/linalg_cpu.py) give the
bits of the general per-element kernel (accum.accumulate) and of an exact Fraction reference.

Data are built to reach the edges of the accumulator: overflow to Inf, subnormal and underflowing
sums, exact ties, exact cancellation to (signed) zero, and signed-zero inputs; shapes leave tile
remainders; stochastic runs cross a 2**32 boundary of the random counters.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_linalg import bits_equal, ref_matmul

from lowprec import round_to
from lowprec.accumulation import Accumulation, get_accumulation
from lowprec.kernels import accumulate_cpu, dispatch, operands
from lowprec.kernels import linalg_cpu as L
from lowprec.linalg import _kernel_args, matmul
from lowprec.rng import resolve_seed

pytestmark = pytest.mark.usefixtures("one_numba_thread")

NSLOT = 8


def _args(a2, bt2, ia, ib, M, N, K, acc, key0=0, key1=0, offset=0):
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    out = np.empty(ia.size * M * N)
    return (np.ascontiguousarray(a2), np.ascontiguousarray(bt2), ia, ib,
            out, np.int64(M), np.int64(N), np.int64(K), *_kernel_args(acc), np.uint32(key0), np.uint32(key1),
            np.int64(offset), np.int64(acc.random_bits))


def _kind(args):
    a, bt, ia, _, _, M, N, K, *rest = args
    return dispatch.narrow_kind(a, bt, ia, M, N, K, *rest[:-4], rest[-1])


def general(args):
    """The general per-element kernel (accum.accumulate), the reference the fast kernels must equal."""
    accumulate_cpu.matmul_general(*args)
    return args[4].copy()


def dispatched(args):
    out = np.empty_like(args[4])
    dispatch.matmul_array("cpu", *args[:4], out, *args[5:])
    return out


def fields(fmt):
    return fmt.man_bits, fmt.emin, fmt.emax


def edge_values(rng, shape, fmt, spread):
    """Values of ``fmt`` with random significands and exponents over ``spread`` (lo, hi), zeros, -0."""
    p = fmt.precision
    sig = rng.integers(1 << (p - 1), 1 << p, shape) / float(1 << (p - 1))
    x = sig * np.exp2(rng.integers(spread[0], spread[1] + 1, shape)) * rng.choice([-1.0, 1.0], shape)
    x[rng.random(shape) < 0.05] = 0.0
    x[rng.random(shape) < 0.05] = -0.0
    return np.asarray(round_to(x, fmt), dtype=np.float64)


def tie_values(rng, shape):
    """Small integers: their sums pass 2048 (fp16) / 256 (bf16), where odd sums are exact ties."""
    return rng.integers(-40, 41, shape).astype(np.float64)


def cancelling(a, bt):
    """Over the first half of k, make term 2k+1 the exact negative of term 2k, and b a power of two (so
    the terms are values of the accumulator): the partial sums return to zero after every pair, then go on."""
    a, bt = a.copy(), bt.copy()
    K = a.shape[1] // 2 - (a.shape[1] // 2) % 2
    bt[:, :K] = np.exp2(np.round(np.log2(np.abs(bt[:, :K]) + 2.0 ** -8)))
    a[:, 1:K:2] = -a[:, 0:K:2]
    bt[:, 1:K:2] = bt[:, 0:K:2]
    return a, bt


_SPREADS = {  # (a spread, b spread) per case and accumulator, in exponents
    "fp16": {"mixed": ((-14, 7), (-12, 8)), "overflow": ((4, 7), (3, 7)), "tiny": ((-14, -8), (-14, -8))},
    "bf16": {"mixed": ((-80, 60), (-70, 70)), "overflow": ((50, 64), (55, 64)), "tiny": ((-75, -60), (-74, -60))},
    # twosum32 needs values, products and sums that float32 holds exactly (products < 2**128, >= 2**-149)
    "bf16-f32": {"mixed": ((-60, 60), (-60, 60)), "overflow": ((60, 63), (60, 63)), "tiny": ((-66, -60), (-66, -60))},
    # sr32 also needs its exponents within float32 normal range (sr32_exponent_floor): bf16 does not overflow there
    "bf16-sr32": {"mixed": ((-30, 40), (-30, 40)), "tiny": ((-36, -28), (-36, -28))},
}


def _case(rng, acc, case, M, N, K, kind=None):
    F = acc.a_format
    if case == "ties":
        return tie_values(rng, (M, K)), tie_values(rng, (N, K))
    key = acc.acc_format.name
    if kind == "twosum32" or (kind == "sr32" and key == "bf16"):
        key = {"twosum32": "bf16-f32", "sr32": "bf16-sr32"}[kind]
    spreads = _SPREADS[key]
    sa, sb = spreads.get("mixed" if case == "cancel" else case, spreads["mixed"])  # (bf16-sr32 has no overflow)
    a, bt = edge_values(rng, (M, K), F, sa), edge_values(rng, (N, K), F, sb)
    return cancelling(a, bt) if case == "cancel" else (a, bt)


_CASES = ["mixed", "overflow", "tiny", "ties", "cancel"]
_KINDS = [("fp16", "direct"), ("fp16", "twosum"), ("bf16", "twosum"), ("bf16", "twosum32"), ("fp16-sr", "sr"),
          ("bf16-sr", "sr"), ("fp16-sr", "sr32"), ("bf16-sr", "sr32"), ("fp16-unfused", "unfused")]


def _check_preconditions(a, bt, acc, kind):
    """The test data meet the conditions under which narrow_kind would pick this kernel."""
    if kind == "direct":
        assert dispatch.narrow_kind(a, bt, np.zeros(1), 64, 64, 64, *_kernel_args(acc), 32) == "direct"
    if kind == "twosum32":
        assert L.float32_exact(a, bt)
    if kind == "sr32":
        assert L.sr32_exponent_floor(a, bt, *fields(acc.acc_format)) is not None


@pytest.mark.parametrize("name,kind", _KINDS)
@pytest.mark.parametrize("case", _CASES)
def test_fast_kernel_equals_general_kernel_on_edge_data(name, kind, case):
    acc = get_accumulation(name)
    rng = np.random.default_rng(sum(map(ord, name + case)))
    M, N, K = 9, 70, 41  # remainders in both tile directions
    if (name, kind, case) == ("bf16-sr", "sr32", "overflow"):
        case = "mixed"  # (sr32 never runs where bf16 sums could overflow: test_sr32_only_where_it_applies)
    a, bt = _case(rng, acc, case, M, N, K, kind)
    _check_preconditions(a, bt, acc, kind)
    k0, k1, off = (0x1234, 0xBEEF, (1 << 32) - 40000) if acc.is_stochastic else (0, 0, 0)  # crosses 2**32
    ref = general(_args(a, bt, np.zeros(1), np.zeros(1), M, N, K, acc, k0, k1, off)).reshape(M, N)
    fast = L.matmul_narrow(a, bt.T, kind, *fields(acc.acc_format), k0, k1, off, 0)
    assert bits_equal(fast, ref)
    if case == "overflow":
        assert np.isinf(ref).any() and np.isfinite(ref).any()


def test_edge_data_reach_the_edges():
    """The data above do reach what they are meant to: Inf, subnormal results, zeros of both signs."""
    acc = get_accumulation("fp16")
    rng = np.random.default_rng(0)
    a, bt = _case(rng, acc, "tiny", 9, 70, 41)
    r = L.matmul_narrow(a, bt.T, "direct", *fields(acc.acc_format))
    assert ((r != 0) & (np.abs(r) < 2.0 ** -14)).any()
    r = L.matmul_narrow(a[:, :1], bt[:, :1].T, "direct", *fields(acc.acc_format))
    assert (np.signbit(r) & (r == 0)).any()  # negative sums that underflow to -0
    a, bt = _case(rng, acc, "cancel", 9, 70, 40)
    r = L.matmul_narrow(a[:, :20], bt[:, :20].T, "direct", *fields(acc.acc_format))
    assert ((r == 0) | np.isinf(r)).all() and (r == 0).mean() > 0.9  # (an overflow to Inf stays Inf)


@pytest.mark.parametrize("name,kind", _KINDS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 0), (3, 5, 1), (4, 64, 2), (5, 65, 3), (8, 128, 7)])
def test_fast_kernel_shapes(name, kind, M, N, K):
    acc = get_accumulation(name)
    rng = np.random.default_rng(M * 100 + N + K)
    a, bt = _case(rng, acc, "mixed", M, N, K, kind)
    _check_preconditions(a, bt, acc, kind)
    ref = general(_args(a, bt, np.zeros(1), np.zeros(1), M, N, K, acc, 3, 4, 5)).reshape(M, N)
    assert bits_equal(L.matmul_narrow(a, bt.T, kind, *fields(acc.acc_format), 3, 4, 5, 0), ref)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 9), N=st.integers(1, 70), K=st.integers(0, 40),
       case=st.sampled_from(_CASES), which=st.sampled_from(_KINDS), offset=st.integers(0, 2**40))
def test_fast_kernel_equals_general_kernel_hypothesis(seed, M, N, K, case, which, offset):
    name, kind = which
    acc = get_accumulation(name)
    rng = np.random.default_rng(seed)
    a, bt = _case(rng, acc, case, M, N, K, kind)
    _check_preconditions(a, bt, acc, kind)
    k0, k1 = seed & 0xFFFFFFFF, (seed * 2654435761) & 0xFFFFFFFF
    ref = general(_args(a, bt, np.zeros(1), np.zeros(1), M, N, K, acc, k0, k1, offset)).reshape(M, N)
    assert bits_equal(L.matmul_narrow(a, bt.T, kind, *fields(acc.acc_format), k0, k1, offset, 0), ref)


@pytest.mark.parametrize("name,kind", _KINDS)
def test_fast_kernel_matches_fraction_reference(name, kind):
    """Against exact step-by-step Fraction arithmetic (tests/test_linalg.ref_matmul), away from overflow."""
    acc = get_accumulation(name)
    rng = np.random.default_rng(5)
    M, N, K = 3, 6, 17
    for case in ("mixed", "tiny", "ties", "cancel"):
        if case == "mixed":  # keep clear of overflow: the reference has no Inf
            sa = (-14, 3) if acc.acc_format.name == "fp16" else (-30, 20) if kind == "sr32" else (-60, 20)
            a, bt = edge_values(rng, (M, K), acc.a_format, sa), edge_values(rng, (N, K), acc.a_format, sa)
        else:
            a, bt = _case(rng, acc, case, M, N, K, kind)
        _check_preconditions(a, bt, acc, kind)
        ref = ref_matmul(a, bt.T, acc, seed=11)
        k0, k1, off = resolve_seed(11, M * N * K * NSLOT) if acc.is_stochastic else (0, 0, 0)
        fast = L.matmul_narrow(a, bt.T, kind, *fields(acc.acc_format), k0, k1, off, 0)
        assert bits_equal(fast, ref), case


def test_dispatch_picks_the_fast_kernels_and_keeps_the_bits():
    rng = np.random.default_rng(3)
    M, N, K = 6, 40, 150
    for name, expect in [("fp16", "direct"), ("bf16", "twosum32"), ("fp16-sr", "sr32"), ("bf16-sr", "sr32"),
                         (Accumulation(a_format="fp32", acc_format="fp16"), "twosum"),  # 24+24+11 > 50
                         (Accumulation(a_format="fp16", acc_format="fp16", out_format="fp32"), "direct"),
                         (Accumulation(a_format="fp16", acc_format="fp16", out_format="fp8_e5m2"), None),
                         (Accumulation(a_format="fp16", acc_format="fp16", fused=False), "unfused"),
                         (Accumulation(a_format="bf16", acc_format="bf16", fused=False), "unfused"),
                         (Accumulation(a_format="fp32", acc_format="bf16", fused=False), "unfused"),  # 48 bits
                         (Accumulation(a_format="fp16", acc_format="fp16", fused=False, acc_rounding="stochastic"),
                          None),
                         (Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="toward_zero"), None),
                         ("fp16-pairwise", None), ("fp16-kahan", None), ("fp16-fp32", None)]:
        acc = get_accumulation(name)
        a = np.asarray(round_to(rng.standard_normal((2 * M, K)) * 4, acc.a_format), np.float64)
        bt = np.asarray(round_to(rng.standard_normal((N, K)) * 4, acc.b_format), np.float64)
        args = _args(a, bt, [0, 1], [0, 0], M, N, K, acc, 9, 8, 7)
        assert _kind(args) == expect, name
        assert bits_equal(dispatched(args), general(args)), name
        if expect is not None:  # a NaN or Inf input sends the call to the general kernel
            a[1, 2] = np.inf
            args = _args(a, bt, [0, 1], [0, 0], M, N, K, acc, 9, 8, 7)
            assert _kind(args) is None
            assert bits_equal(dispatched(args), general(args)), name


def test_matmul_batched_and_thread_count_independent():
    import numba

    rng = np.random.default_rng(4)
    a = (rng.standard_normal((2, 1, 13, 70)) * 8).astype(np.float32)
    b = (rng.standard_normal((3, 70, 33)) * 8).astype(np.float32)
    for name in ("fp16", "bf16", "bf16-sr", "fp16-sr"):
        acc = get_accumulation(name)
        r1 = matmul(a, b, acc, seed=21)
        old = numba.get_num_threads()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        try:
            r2 = matmul(a, b, acc, seed=21)
        finally:
            numba.set_num_threads(old)
        assert bits_equal(r1, r2)
        # each batch element equals a 2-D product keyed by its place in the batch (general kernel)
        A = np.broadcast_to(a, (2, 3, 13, 70)).reshape(6, 13, 70)
        B = np.broadcast_to(b, (2, 3, 70, 33)).reshape(6, 70, 33)
        a2 = np.asarray(round_to(A, acc.a_format), np.float64).reshape(-1, 70)
        bt2 = np.swapaxes(np.asarray(round_to(B, acc.b_format), np.float64), 1, 2).reshape(-1, 70)
        k0, k1, off = resolve_seed(21, 6 * 13 * 33 * 70 * NSLOT) if acc.is_stochastic else (0, 0, 0)
        args = _args(a2, bt2, np.arange(6), np.arange(6), 13, 33, 70, acc, k0, k1, off)
        assert _kind(args) is not None
        assert bits_equal(r1.reshape(-1).astype(np.float64), general(args))


def test_twosum32_only_where_float32_is_exact():
    acc = get_accumulation("bf16")
    rng = np.random.default_rng(7)
    for case, expect in [("mixed", "twosum32"), ("overflow", "twosum"), ("tiny", "twosum")]:
        sa, sb = _SPREADS["bf16-f32" if case == "mixed" else "bf16"][case]
        a, bt = edge_values(rng, (6, 150), acc.a_format, sa), edge_values(rng, (40, 150), acc.a_format, sb)
        args = _args(a, bt, [0], [0], 6, 40, 150, acc)
        assert _kind(args) == expect, case
        assert bits_equal(dispatched(args), general(args)), case


def test_sr32_only_where_it_applies():
    """sr32 (float32 lanes) where its exponent and overflow conditions hold, else sr; same bits either way."""
    rng = np.random.default_rng(8)
    for name, spreads, expect in [("bf16-sr", _SPREADS["bf16-sr32"]["mixed"], "sr32"),
                                  ("bf16-sr", _SPREADS["bf16"]["tiny"], "sr"),  # products below 2**-88
                                  ("bf16-sr", _SPREADS["bf16"]["overflow"], "sr"),  # sums past float32's max
                                  ("bf16-sr", _SPREADS["bf16-f32"]["overflow"], "sr"),
                                  ("fp16-sr", _SPREADS["fp16"]["overflow"], "sr32"),  # fp16: any values
                                  ("fp16-sr", _SPREADS["fp16"]["tiny"], "sr32")]:
        acc = get_accumulation(name)
        a = edge_values(rng, (6, 150), acc.a_format, spreads[0])
        bt = edge_values(rng, (40, 150), acc.a_format, spreads[1])
        args = _args(a, bt, [0], [0], 6, 40, 150, acc, 5, 6, 7)
        assert _kind(args) == expect, (name, spreads)
        assert bits_equal(dispatched(args), general(args)), (name, spreads)


@pytest.mark.parametrize("name,kind", [("fp16", "direct"), ("bf16", "twosum"), ("bf16", "twosum32"),
                                       ("bf16-sr", "sr"), ("fp16-sr", "sr32"), ("bf16-sr", "sr32"),
                                       ("fp16-unfused", "unfused")])
def test_fast_kernel_equals_cuda_simulator(name, kind):
    from lowprec.kernels import linalg_cuda

    acc = get_accumulation(name)
    rng = np.random.default_rng(6)
    M, N, K = 3, 5, 9
    a, bt = _case(rng, acc, "mixed", M, N, K, kind)
    args = _args(a, bt, np.zeros(1), np.zeros(1), M, N, K, acc, 1, 2, 3)
    linalg_cuda._matmul_cuda(*args)
    assert bits_equal(L.matmul_narrow(a, bt.T, kind, *fields(acc.acc_format), 1, 2, 3, 0).ravel(), args[4])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8))
def test_lowest_bit_exponent_against_fractions(values):
    from fractions import Fraction

    def lowest(v):
        f = Fraction(v)
        if f.denominator > 1:
            return -(f.denominator.bit_length() - 1)
        n = abs(f.numerator)
        return (n & -n).bit_length() - 1

    nonzero = [v for v in values if v != 0]
    if not nonzero:
        return
    x = np.array(values, dtype=np.float64)
    assert operands.lowest_bit_exponent(x) == min(lowest(v) for v in nonzero)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=8))
def test_operand_stats_against_fractions(values):
    """The one-pass operand statistics the kernel choice rests on, against exact arithmetic."""
    from fractions import Fraction

    x = np.array(values, dtype=np.float64)
    st_ = operands.stats(x)
    mags = [abs(Fraction(v)) for v in values if v != 0]
    assert st_.finite and st_.hi == float(max([Fraction(0)] + mags))
    assert st_.lo == (float(min(mags)) if mags else np.inf)
    for v in values:  # every value has at most `bits` significant bits: v * 2**(bits - 1 - e) is an integer
        if v != 0:
            e = math.frexp(v)[1] - 1
            assert (Fraction(v) * Fraction(2) ** (st_.bits - 1 - e)).denominator == 1
    if L.float32_exact(x, x):  # a sufficient condition
        assert all(float(np.float32(a * b)) == Fraction(a) * Fraction(b) for a in values for b in values)
    assert not operands.stats(np.array([1.0, np.inf])).finite and not operands.stats(np.array([np.nan])).finite


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (5, 70, 9), (8, 128, 33)])
def test_pack_panels_from_rows_and_from_transposed_view(M, N, K):
    """_pack gives the panels Ap[p, k, r] = a[p*R + r, k], Bp[p, k, c] = b[k, p*NB + c] (zero padding), whether
    bt is a C-contiguous (N, K) array (packed row by row) or the transposed view of a C-contiguous b (packed from
    b's rows, no copy)."""
    rng = np.random.default_rng(M * 100 + N)
    a = rng.standard_normal((M, K))
    b = rng.standard_normal((K, N))
    R, NB = L.NARROW_R, L.NARROW_N
    want_a = np.zeros((-(-M // R) * R, K))
    want_a[:M] = a
    want_a = want_a.reshape(-1, R, K).transpose(0, 2, 1)
    want_b = np.zeros((K, -(-N // NB) * NB))
    want_b[:, :N] = b
    want_b = want_b.reshape(K, -1, NB).transpose(1, 0, 2)
    for bt in (np.ascontiguousarray(b.T), b.T):
        for dtype in (np.float64, np.float32):
            Ap, Bp = operands.pack(a, bt, dtype)
            assert Ap.dtype == dtype and Bp.dtype == dtype
            np.testing.assert_array_equal(Ap, want_a.astype(dtype))
            np.testing.assert_array_equal(Bp, want_b.astype(dtype))


def test_stats_of_transposed_view_equal_stats_of_copy():
    rng = np.random.default_rng(8)
    x = np.asarray(round_to(rng.standard_normal((30, 17)) * 2.0 ** rng.integers(-30, 30, (30, 17)), "bf16"),
                   np.float64)
    assert operands.stats(x.T) == operands.stats(np.ascontiguousarray(x.T)) == operands.stats(x)


def test_public_matmul_with_strided_operands_keeps_the_bits():
    """matmul on views (b.T, a column slice) gives the bits of the general kernel on contiguous copies."""
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((40, 90)) * 4).astype(np.float32)
    b = (rng.standard_normal((70, 90)) * 4).astype(np.float32)
    av, bv = a[:, 5:85], b.T[5:85]  # (40, 80) and (80, 70), neither C-contiguous
    for name in ("fp16", "bf16", "fp16-sr", "fp16-unfused", "fp16-fp32"):
        acc = get_accumulation(name)
        got = matmul(av, bv, acc, seed=5)
        a2 = np.asarray(round_to(np.ascontiguousarray(av), acc.a_format), np.float64)
        bt2 = np.ascontiguousarray(np.asarray(round_to(np.ascontiguousarray(bv), acc.b_format), np.float64).T)
        k0, k1, off = resolve_seed(5, 40 * 70 * 80 * NSLOT) if acc.is_stochastic else (0, 0, 0)
        one = np.zeros(1, dtype=np.int64)
        ref = general(_args(a2, bt2, one, one, 40, 70, 80, acc, k0, k1, off))
        assert got.dtype == np.float32
        assert bits_equal(got.reshape(-1).astype(np.float64), ref), name


def test_general_kernel_steps_are_typed_once():
    """accum's called steps (compiled once, called per term or output) are typed with int64 modes and bit
    counts, never with int literals: numba compiles a called function again for every new signature, and
    a literal constant at a call site is a signature of its own. Read from the symbol names of the steps
    linked into accumulate's code (numba's mangled names carry the argument types), which holds whether
    accumulate was compiled in this process or loaded from the cache."""
    import re

    from lowprec.kernels import accum

    acc = get_accumulation("fp16-kahan")
    a = np.ones((2, 3))
    has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout = _kernel_args(acc)
    r = accum.accumulate(a, np.int64(0), a, np.int64(1), np.int64(3), np.int64(0), has_prod, pprod, fused, pacc,
                         np.int64(mode), np.int64(order), np.int64(chunk), pchunk, compensated, pout, np.uint32(1),
                         np.uint32(2), np.int64(3), np.int64(32), np.empty(accum.PAIRWISE_STACK))
    assert r == 3.0
    lib = accum.accumulate.overloads[accum.accumulate.signatures[0]].library
    text = str(lib._shared_module) + str(lib._final_module)
    for step in ("round64", "round_sum", "draw", "term", "kahan_step"):
        # (the function's symbol, or its environment's where LLVM inlined every call: the same mangled types)
        names = set(re.findall(r"_ZN(?:08NumbaEnv)?(7lowprec7kernels5accum%d%s[A-Za-z0-9_]*)" % (len(step), step), text))
        assert names, step  # linked in: called, compiled once
        assert len(names) == 1 and not any("Literal" in n for n in names), names  # one signature, no literals



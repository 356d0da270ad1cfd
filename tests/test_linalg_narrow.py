"""The register-tiled narrow-accumulator kernels (kernels/linalg_narrow.py: "direct", "direct_noovf",
"twosum32") give the bits of the general per-element kernel (accum.accumulate) and of an exact
step-by-step Fraction reference, on the packed operands operands.pack makes.

Edge data come from tests/test_linalg_tile.py: overflow to Inf, subnormal and underflowing sums, exact
ties, exact cancellation to zero, signed zeros; shapes leave remainders in both tile directions.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_linalg import bits_equal, ref_matmul
from test_linalg_tile import _args, _case, cancelling, edge_values, fields, general, tie_values

from lowprec.accumulation import get_accumulation
from lowprec.formats import FP16
from lowprec.kernels import linalg_cpu as L
from lowprec.kernels import linalg_narrow as LN
from lowprec.kernels import dispatch, operands, rules
from lowprec.linalg import _kernel_args

pytestmark = pytest.mark.usefixtures("one_numba_thread")

_ACC = {"direct": "fp16", "twosum32": "bf16"}


def narrow(a, bt, kind, acc, no_overflow=False):
    """C = a @ bt.T by linalg_narrow.run on operands.pack's panels, cut to (M, N); kind "direct_plain":
    the unchecked "direct" kernel that run uses only for formats too wide for the checked one."""
    M, K = a.shape
    N = bt.shape[0]
    Ap, Bp = operands.pack(a, bt, np.float32 if kind == "twosum32" else np.float64)
    out = np.full((Ap.shape[0] * L.NARROW_R, Bp.shape[0] * L.NARROW_N), np.nan)
    if kind == "direct_plain":
        LN.kernels["direct"](Ap, Bp, out, np.int64(K), *rules.nearest_even_params(*fields(acc.acc_format)))
    else:
        LN.run(kind, Ap, Bp, out, K, *fields(acc.acc_format), no_overflow=no_overflow)
    return out[:M, :N]


def reference(a, bt, acc):
    M, N, K = a.shape[0], bt.shape[0], a.shape[1]
    return general(_args(a, bt, np.zeros(1), np.zeros(1), M, N, K, acc)).reshape(M, N)


def no_overflow(a, bt, acc):
    return LN.direct_no_overflow(operands.stats(a), operands.stats(bt), a.shape[1], *fields(acc.acc_format))


def kind_applies(a, bt, acc, kind):
    """linalg_cpu's own dispatch picks this kind for these operands (its preconditions hold)."""
    return dispatch.narrow_kind(a, bt, np.zeros(1), 64, 64, 64, *_kernel_args(acc), 32) == kind


def bounded(rng, acc, case, M, N, K):
    """fp16 data whose growth bound proves no overflow (direct_no_overflow), reaching the other edges."""
    if case == "ties":
        return tie_values(rng, (M, K)), tie_values(rng, (N, K))  # |a b| <= 1600, K <= 40: sums past 2048
    spread = (-14, -8) if case == "tiny" else (-14, 3)  # products below 2**8
    a, bt = edge_values(rng, (M, K), acc.a_format, spread), edge_values(rng, (N, K), acc.a_format, spread)
    return cancelling(a, bt) if case == "cancel" else (a, bt)


_CASES = ["mixed", "overflow", "tiny", "ties", "cancel"]


@pytest.mark.parametrize("kind", ["direct", "direct_plain", "twosum32"])
@pytest.mark.parametrize("case", _CASES)
def test_equal_to_general_kernel_on_edge_data(kind, case):
    """"direct" runs the checked kernel: the no-overflow step, tiles where a sum reached 2**15 done again."""
    acc = get_accumulation(_ACC.get(kind, "fp16"))
    rng = np.random.default_rng(sum(map(ord, kind + case)))
    M, N, K = 9, 70, 41  # remainders in both tile directions
    a, bt = _case(rng, acc, case, M, N, K, kind.replace("_plain", ""))
    assert kind_applies(a, bt, acc, kind.replace("_plain", ""))
    ref = reference(a, bt, acc)
    assert bits_equal(narrow(a, bt, kind, acc), ref)
    if case == "overflow":
        assert np.isinf(ref).any() and np.isfinite(ref).any()
        assert kind == "twosum32" or not no_overflow(a, bt, acc)


@pytest.mark.parametrize("case", ["mixed", "tiny", "ties", "cancel"])
def test_no_overflow_kernel_equal_to_general_kernel(case):
    acc = get_accumulation("fp16")
    rng = np.random.default_rng(sum(map(ord, case)))
    M, N, K = 9, 70, 40
    a, bt = bounded(rng, acc, case, M, N, K)
    assert kind_applies(a, bt, acc, "direct") and no_overflow(a, bt, acc)
    ref = reference(a, bt, acc)
    assert bits_equal(narrow(a, bt, "direct", acc, no_overflow=True), ref)
    if case == "tiny":  # subnormal results and negative sums that underflow to -0 (the sign is kept)
        assert ((ref != 0) & (np.abs(ref) < 2.0 ** -14)).any()
        r1 = reference(a[:, :1], bt[:, :1], acc)
        assert (np.signbit(r1) & (r1 == 0)).any()
        assert bits_equal(narrow(a[:, :1], bt[:, :1], "direct", acc, no_overflow=True), r1)
    if case == "ties":
        assert (np.abs(ref) > 2048).any()
    if case == "cancel":  # over the first 20 terms the partial sums return to zero after every pair
        r20 = reference(a[:, :20], bt[:, :20], acc)
        assert (r20 == 0).all()
        assert bits_equal(narrow(a[:, :20], bt[:, :20], "direct", acc, no_overflow=True), r20)


@pytest.mark.parametrize("kind", ["direct", "direct_plain", "direct_noovf", "twosum32"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 0), (3, 5, 1), (4, 64, 2), (5, 65, 3), (8, 128, 7), (13, 97, 1)])
def test_shapes(kind, M, N, K):
    acc = get_accumulation(_ACC.get(kind, "fp16"))
    rng = np.random.default_rng(M * 100 + N + K)
    if kind == "direct_noovf":
        a, bt = bounded(rng, acc, "mixed", M, N, K)
        assert no_overflow(a, bt, acc)
    else:
        a, bt = _case(rng, acc, "mixed", M, N, K, kind.replace("_plain", ""))
    got = narrow(a, bt, kind.replace("_noovf", ""), acc, no_overflow=kind == "direct_noovf")
    assert bits_equal(got, reference(a, bt, acc))


@pytest.mark.parametrize("kind", ["direct", "direct_noovf", "twosum32"])
def test_matches_fraction_reference(kind):
    """Against exact step-by-step Fraction arithmetic (tests/test_linalg.ref_matmul), away from overflow."""
    acc = get_accumulation(_ACC.get(kind, "fp16"))
    rng = np.random.default_rng(5)
    M, N, K = 3, 6, 17
    for case in ("mixed", "tiny", "ties", "cancel"):
        if kind == "direct_noovf":
            a, bt = bounded(rng, acc, case, M, N, K)
            assert no_overflow(a, bt, acc)
        elif case == "mixed":  # keep clear of overflow: the reference has no Inf
            sa = (-14, 3) if kind == "direct" else (-60, 20)
            a, bt = edge_values(rng, (M, K), acc.a_format, sa), edge_values(rng, (N, K), acc.a_format, sa)
        else:
            a, bt = _case(rng, acc, case, M, N, K, kind)
        got = narrow(a, bt, kind.replace("_noovf", ""), acc, no_overflow=kind == "direct_noovf")
        assert bits_equal(got, ref_matmul(a, bt.T, acc)), case


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 13), N=st.integers(1, 100), K=st.integers(0, 40),
       case=st.sampled_from(_CASES), kind=st.sampled_from(["direct", "direct_plain", "direct_noovf", "twosum32"]))
def test_equal_to_general_kernel_hypothesis(seed, M, N, K, case, kind):
    acc = get_accumulation(_ACC.get(kind, "fp16"))
    rng = np.random.default_rng(seed)
    if kind == "direct_noovf":
        a, bt = bounded(rng, acc, "mixed" if case == "overflow" else case, M, N, K)
    else:
        a, bt = _case(rng, acc, case, M, N, K, kind.replace("_plain", ""))
    noovf = kind == "direct_noovf"
    assert not noovf or no_overflow(a, bt, acc)
    assert bits_equal(narrow(a, bt, kind.replace("_noovf", ""), acc, no_overflow=noovf), reference(a, bt, acc))


def test_thread_count_does_not_change_the_bits():
    acc16, acc_bf = get_accumulation("fp16"), get_accumulation("bf16")
    rng = np.random.default_rng(7)
    M, N, K = 61, 200, 37
    cases = [("direct", acc16, False, _case(rng, acc16, "mixed", M, N, K, "direct")),
             ("direct", acc16, True, bounded(rng, acc16, "mixed", M, N, K)),
             ("twosum32", acc_bf, False, _case(rng, acc_bf, "mixed", M, N, K, "twosum32"))]
    old = numba.get_num_threads()
    try:
        for kind, acc, noovf, (a, bt) in cases:
            numba.set_num_threads(1)
            one = narrow(a, bt, kind, acc, noovf)
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            two = narrow(a, bt, kind, acc, noovf)
            assert bits_equal(one, two)
            assert bits_equal(one, reference(a, bt, acc))
    finally:
        numba.set_num_threads(old)


def test_no_overflow_bound_is_safe_and_not_vacuous():
    """Worst case for the bound: every product equal to H = a*b > 0 (H > 16, half the spacing below max:
    the sums do not stall). Where direct_no_overflow holds the sum of K such products stays finite; it
    holds up to K within a factor of 3 of where the sum overflows."""
    acc = get_accumulation("fp16")
    a_val, b_val = 3.0, 6.0 + 2.0 ** -7  # fp16 values; H = 18.0234...
    m, emin, emax = fields(acc.acc_format)
    largest, first_inf = 0, None
    for K in list(range(1, 30)) + list(range(1000, 4000, 100)):
        a, bt = np.full((1, K), a_val), np.full((64, K), b_val)
        ok = LN.direct_no_overflow(operands.stats(a), operands.stats(bt), K, m, emin, emax)
        ref = reference(a, bt, acc)
        if ok:
            largest = max(largest, K)
            assert np.isfinite(ref).all()
            assert bits_equal(narrow(a, bt, "direct", acc, no_overflow=True), ref)
        assert bits_equal(narrow(a, bt, "direct", acc), ref)  # checked: tiles past 2**15 done again
        if first_inf is None and np.isinf(ref).any():
            first_inf = K
    assert first_inf is not None and 1000 <= largest < first_inf < 3 * largest


def test_no_overflow_refuses_what_it_cannot_prove():
    s = operands.stats(np.array([1.0, 2.0]))
    big = operands.stats(np.array([1e300]))
    assert LN.direct_no_overflow(s, s, 100, FP16.man_bits, FP16.emin, FP16.emax)
    assert not LN.direct_no_overflow(s, s, 20000, FP16.man_bits, FP16.emin, FP16.emax)
    assert not LN.direct_no_overflow(big, big, 1, FP16.man_bits, FP16.emin, FP16.emax)  # H = inf
    assert not LN.direct_no_overflow(s, s, 1, 10, -1000, 990)  # the magic constant would not be finite
    assert LN.direct_no_overflow(s, s, 0, FP16.man_bits, FP16.emin, FP16.emax)


def test_run_rejects_what_its_tiles_cannot_take():
    Ap = np.zeros((1, 2, 4))
    out = np.zeros((4, 64))
    with pytest.raises(ValueError, match="kind"):
        LN.run("twosum", Ap, np.zeros((1, 2, 64)), out, 2, 10, -14, 15)
    with pytest.raises(ValueError, match="panels"):
        LN.run("direct", Ap, np.zeros((1, 2, 48)), out, 2, 10, -14, 15)
    with pytest.raises(ValueError, match="panels"):
        LN.run("direct", Ap, np.zeros((1, 2, 64)), np.zeros((4, 32)), 2, 10, -14, 15)

"""sum / dot / matmul against independent step-by-step references.

The reference follows docs/accumulation.md with exact ``fractions.Fraction``
arithmetic and its own rounding (``ref_round`` below, written from
NUMERICS.md section 2, not from the kernels): every addition is the exact
sum rounded once, in the stated order.
"""

import math
from fractions import Fraction

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import FloatFormat, Rounding, round_to
from lowprec.accumulation import PRESETS, Accumulation, get_accumulation
from lowprec.linalg import dot, matmul
from lowprec.linalg import sum as lp_sum
from lowprec.rng import resolve_seed

from reference import random_bits_array

NSLOT = 8  # counters per (output element, k), docs/accumulation.md


# ----------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------
def ref_round(q: Fraction, fmt, mode=Rounding.NEAREST_EVEN, R=None, r=None) -> Fraction:
    """Round the exact value q once to a float format (finite results only; overflow -> inf)."""
    if q == 0:
        return Fraction(0)
    sign = -1 if q < 0 else 1
    x = abs(q)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    e = max(e, fmt.emin)
    quantum = Fraction(2) ** (e - fmt.man_bits)
    n = math.floor(x / quantum)
    rem = x / quantum - n
    if rem:
        if mode is Rounding.NEAREST_EVEN:
            n += rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1)
        elif mode is Rounding.UP:
            n += sign > 0
        elif mode is Rounding.DOWN:
            n += sign < 0
        elif mode is Rounding.STOCHASTIC:
            n += R < math.floor(rem * 2 ** r)
        elif mode is not Rounding.TOWARD_ZERO:
            raise NotImplementedError(mode)
    v = n * quantum
    if v > fmt.max_exact:
        if mode is Rounding.TOWARD_ZERO:
            return sign * fmt.max_exact
        return Fraction(sign) * 10 ** 400  # stands for an overflow; tests keep clear of it
    return sign * v


def ref_accumulate(a_row, b_row, acc: Accumulation, rand=None) -> Fraction:
    """Step-by-step exact reference of one output element (docs/accumulation.md).

    rand(k, slot) gives the random integer of a rounding event (stochastic only)."""
    mode = acc.acc_rounding
    r = acc.random_bits
    K = len(a_row)

    def R(k, slot):
        return rand(k, slot) if mode is Rounding.STOCHASTIC else None

    def add(x, y, fmt, k, slot):
        return ref_round(x + y, fmt, mode, R(k, slot), r)

    terms = []
    for k in range(K):
        t = Fraction(float(a_row[k])) * Fraction(float(b_row[k]))
        if acc.product_format is not None:
            t = ref_round(t, acc.product_format)
        if not acc.fused:
            t = ref_round(t, acc.acc_format)
        terms.append(t)
    F = acc.acc_format
    if acc.order == "pairwise":
        # bottom-up pairs, an odd block carried up; a combine is keyed by its right block's first k
        blocks = [(k, t) for k, t in enumerate(terms)]
        while len(blocks) > 1:
            nxt = [(blocks[i][0], add(blocks[i][1], blocks[i + 1][1], F, blocks[i + 1][0], 0))
                   for i in range(0, len(blocks) - 1, 2)]
            if len(blocks) % 2:
                nxt.append(blocks[-1])
            blocks = nxt
        s = blocks[0][1] if blocks else Fraction(0)
        if K == 1:
            s = add(Fraction(0), s, F, 0, 0)
    else:
        C = acc.chunk if acc.order == "blocked" else max(K, 1)
        total = Fraction(0)
        for start in range(0, K, C):
            cs, c = Fraction(0), Fraction(0)
            for k in range(start, min(start + C, K)):
                if acc.compensated:
                    y = add(terms[k], -c, F, k, 1)
                    tt = add(cs, y, F, k, 0)
                    z = add(tt, -cs, F, k, 2)
                    c = add(z, -y, F, k, 3)
                    cs = tt
                else:
                    cs = add(cs, terms[k], F, k, 0)
            if acc.order == "blocked":
                total = ref_round(total + cs, acc.chunk_format)  # promotion: nearest-even
            else:
                total = cs
        s = total
    return ref_round(s, acc.out_format)


def ref_matmul(a, b, acc, seed=None):
    """Reference of matmul for 2-D a (M, K), b (K, N), inputs rounded by ml_dtypes-independent ref_round."""
    acc = get_accumulation(acc)
    M, K = a.shape
    N = b.shape[1]
    ar = [[ref_round(Fraction(float(v)), acc.a_format) for v in row] for row in a]
    br = [[ref_round(Fraction(float(b[k, j])), acc.b_format) for k in range(K)] for j in range(N)]
    out = np.empty((M, N))
    if acc.is_stochastic:
        k0, k1, off = resolve_seed(seed, M * N * K * NSLOT)
        bits = random_bits_array(k0, k1, off, M * N * K * NSLOT, acc.random_bits)
    for i in range(M):
        for j in range(N):
            o = i * N + j
            rand = (lambda k, slot, o=o: int(bits[(o * K + k) * NSLOT + slot])) if acc.is_stochastic else None
            out[i, j] = float(ref_accumulate(ar[i], br[j], acc, rand))
    return out


def bits_equal(x, y):
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))


def _data(rng, shape, scale=1.0, dtype=np.float64):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------
# Fraction step-by-step references
# ----------------------------------------------------------------------------
_FINITE_PRESETS = [n for n in PRESETS if n != "int8-int32"]


@pytest.mark.parametrize("name", _FINITE_PRESETS)
def test_presets_match_fraction_reference(name):
    rng = np.random.default_rng(len(name))
    acc = PRESETS[name]
    K = 300 if acc.order == "blocked" else 9  # several 128-chunks for the chunked preset
    a = _data(rng, (2, K), 2.0)
    b = _data(rng, (K, 3), 0.5)
    got = matmul(a, b, acc, seed=11, backend="cpu")
    assert np.array_equal(got, ref_matmul(a, b, acc, seed=11))


VARIANTS = [
    Accumulation(a_format="fp16", acc_format="bf16", fused=False),
    Accumulation(a_format="fp32", acc_format="fp16", product_format="bf16"),
    Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="toward_zero", compensated=True),
    Accumulation(a_format="bf16", acc_format="bf16", acc_rounding="stochastic", compensated=True),
    Accumulation(a_format="bf16", acc_format="bf16", acc_rounding="stochastic", order="pairwise"),
    Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="up", order="pairwise", fused=False),
    Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="down", order="blocked", chunk=3,
                 chunk_format="fp32", out_format="fp16"),
    Accumulation(a_format="fp8_e5m2", acc_format=FloatFormat(5, 4), acc_rounding="stochastic",
                 order="blocked", chunk=4, chunk_format="bf16", compensated=True, out_format="fp16"),
    Accumulation(a_format="fp32", acc_format="fp32", acc_rounding="stochastic"),
]


@pytest.mark.parametrize("acc", VARIANTS, ids=lambda a: f"{a.acc_format.name}-{a.acc_rounding.label}-{a.order}")
def test_description_options_match_fraction_reference(acc):
    rng = np.random.default_rng(5)
    for K in (1, 2, 7, 13):
        a = _data(rng, (2, K), 3.0)
        b = _data(rng, (K, 2), 0.7)
        assert np.array_equal(matmul(a, b, acc, seed=K, backend="cpu"), ref_matmul(a, b, acc, seed=K)), K


@pytest.mark.parametrize("C", [1, 2, 3, 5, 16, 17, 40])
def test_chunked_matches_reference_for_several_chunk_sizes(C):
    rng = np.random.default_rng(C)
    acc = Accumulation(a_format="fp16", acc_format="fp16", order="blocked", chunk=C, chunk_format="fp32",
                       out_format="fp32")
    a = _data(rng, (2, 37), 4.0)
    b = np.abs(_data(rng, (37, 2)))
    got = matmul(a, b, acc, backend="cpu")
    assert np.array_equal(got, ref_matmul(a, b, acc))
    # independent identities: C >= K is one fp16 chunk; C = 1 sums rounded products in fp32
    if C >= 37:
        seq = matmul(a, b, Accumulation(a_format="fp16", acc_format="fp16", out_format="fp32"), backend="cpu")
        assert np.array_equal(got, seq)
    if C == 1:
        rp = round_to(round_to(a, "fp16")[:, :, None] * round_to(b, "fp16")[None, :, :], "fp16")
        loop = np.zeros((2, 2), dtype=np.float32)
        for k in range(37):
            loop = loop + rp[:, k, :].astype(np.float32)
        assert np.array_equal(got, loop.astype(np.float64))


def test_chunked_differs_from_sequential_where_promotion_helps():
    # 1 + 4096 * 2**-11 in fp16: sequential stagnates at 2048 steps; chunks of 64 promoted to fp32 do not
    x = np.concatenate([[1.0], np.full(4096, 2.0 ** -11)]).astype(np.float32)
    seq = lp_sum(x, accumulation=Accumulation(a_format="fp16", acc_format="fp16", out_format="fp32"))
    blk = lp_sum(x, accumulation=Accumulation(a_format="fp16", acc_format="fp16", order="blocked", chunk=64,
                                              chunk_format="fp32", out_format="fp32"))
    assert float(seq) == 1.0  # 1 + 2**-11 is a tie, rounds to even 1
    # chunk 0 (1 and 63 small terms) stagnates at 1; the next 63 chunks are exactly 64 * 2**-11 = 2**-5 each,
    # the last one holds a single term; fp32 adds them all exactly
    assert float(blk) == 1 + 63 * 2.0 ** -5 + 2.0 ** -11


# ----------------------------------------------------------------------------
# fp32: the plain float32 loop
# ----------------------------------------------------------------------------
def _np32_loop(a, b):
    s = np.float32(0)
    for x, y in zip(a, b):
        s = s + np.float32(x) * np.float32(y)
    return s


@settings(max_examples=40)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6, width=32), st.floats(-1e3, 1e3, width=32)), min_size=0,
                max_size=40))
def test_fp32_sequential_equals_float32_python_loop(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.float32)
    b = np.array([p[1] for p in pairs], dtype=np.float32)
    unfused = Accumulation(fused=False)
    assert bits_equal(dot(a, b, unfused, backend="cpu"), _np32_loop(a, b))
    # fp16 inputs: products are exact in fp32, so fused == unfused == the float32 loop
    a16, b16 = np.clip(a, -6e4, 6e4).astype(np.float16).astype(np.float32), (b / 64).astype(np.float16).astype(np.float32)
    with np.errstate(over="ignore"):
        ref = _np32_loop(a16, b16)
    assert bits_equal(dot(a16, b16, "fp16-fp32", backend="cpu"), ref)


def test_fused_vs_unfused_differ_exactly_where_a_rounding_is_removed():
    e = np.float32(1 + 2.0 ** -23)
    a = np.array([-(1 + 2.0 ** -22), e], dtype=np.float32)
    b = np.array([1.0, e], dtype=np.float32)
    # exact: -(1 + 2**-22) + (1 + 2**-22 + 2**-46) = 2**-46; unfused rounds the product to 1 + 2**-22 first
    assert float(dot(a, b, "fp32")) == 2.0 ** -46
    assert float(dot(a, b, Accumulation(fused=False))) == 0.0
    rng = np.random.default_rng(1)
    A, B = _data(rng, (30, 20), dtype=np.float32), _data(rng, (20, 30), dtype=np.float32)
    fused = matmul(A, B, "fp32")
    unfused = matmul(A, B, Accumulation(fused=False))
    # a rounding is removed only where some product is not an fp32 number
    prods = A.astype(np.float64)[:, :, None] * B.astype(np.float64)[None, :, :]
    inexact = (prods != prods.astype(np.float32)).any(axis=1)
    differ = fused != unfused
    assert differ.any() and not (differ & ~inexact).any()
    # unfused == fused on products rounded to the accumulator first (the removed rounding)
    assert np.array_equal(unfused, matmul(A, B, Accumulation(product_format="fp32")))
    # fp16 inputs: every product is an fp32 number, nothing is removed
    A16, B16 = A.astype(np.float16).astype(np.float32), B.astype(np.float16).astype(np.float32)
    assert np.array_equal(matmul(A16, B16, "fp16-fp32"), matmul(A16, B16, Accumulation("fp16", fused=False)))


# ----------------------------------------------------------------------------
# shapes, batching, sum axes
# ----------------------------------------------------------------------------
def test_batched_broadcast_equals_loop_of_2d():
    rng = np.random.default_rng(2)
    a = _data(rng, (3, 1, 4, 5), dtype=np.float32)
    b = _data(rng, (2, 5, 3), dtype=np.float32)
    got = matmul(a, b, "bf16", backend="cpu")
    assert got.shape == (3, 2, 4, 3) and got.dtype == np.float32
    for i in range(3):
        for j in range(2):
            assert np.array_equal(got[i, j], matmul(a[i, 0], b[j], "bf16"))
    # vectors as in numpy.matmul
    assert matmul(a[0, 0, 0], b[0], "bf16").shape == (3,)
    assert matmul(a[0, 0], b[0, :, 0], "bf16").shape == (4,)
    v = matmul(a[0, 0, 0], b[0, :, 0], "bf16")
    assert np.ndim(v) == 0 and v == dot(a[0, 0, 0], b[0, :, 0], "bf16")


def test_dtype_follows_inputs_and_empty_sizes():
    a32 = np.ones((2, 3), np.float32)
    assert matmul(a32, np.ones((3, 2)), "fp16").dtype == np.float64
    assert matmul(a32, a32.T, "fp16").dtype == np.float32
    assert np.array_equal(matmul(np.ones((2, 0)), np.ones((0, 3))), np.zeros((2, 3)))
    assert matmul(np.ones((0, 4)), np.ones((4, 3))).shape == (0, 3)
    assert float(lp_sum(np.array([], np.float32))) == 0.0


def test_sum_axes_follow_index_order():
    rng = np.random.default_rng(3)
    x = _data(rng, (3, 4, 5), 10.0, np.float32)
    acc = PRESETS["bf16"]
    assert lp_sum(x, axis=1, accumulation=acc).shape == (3, 5)
    for axis in (0, 1, 2, -1, (0, 2)):
        got = lp_sum(x, axis=axis, accumulation=acc)
        axes = axis if isinstance(axis, tuple) else (axis,)
        keep = [i for i in range(3) if i % 3 not in [a % 3 for a in axes]]
        moved = np.transpose(x, keep + [a % 3 for a in axes]).reshape(got.size, -1)
        ref = [float(ref_accumulate([ref_round(Fraction(float(v)), acc.a_format) for v in row],
                                    [1.0] * moved.shape[1], acc)) for row in moved]
        assert np.array_equal(got.reshape(-1), np.array(ref, dtype=np.float32))
    whole = lp_sum(x, accumulation=acc)
    assert np.ndim(whole) == 0 and whole == lp_sum(x.reshape(-1), accumulation=acc)


def test_int8_int32_wraps_like_integer_hardware():
    a = np.full((1, 300), 127.0)
    b = np.full((300, 1), 127.0)
    b[:150] = -128.0
    got = matmul(a, b, "int8-int32")
    assert got[0, 0] == 127 * 127 * 150 - 127 * 128 * 150
    big = matmul(np.full((1, 140000), 127.0), np.full((140000, 1), 127.0), "int8-int32")
    exact = 140000 * 127 * 127
    assert big[0, 0] == (exact + 2 ** 31) % 2 ** 32 - 2 ** 31  # two's complement wrap of the int32 register


# ----------------------------------------------------------------------------
# stochastic accumulation
# ----------------------------------------------------------------------------
def test_stochastic_reproducible_and_thread_count_independent():
    rng = np.random.default_rng(4)
    a, b = _data(rng, (17, 40), dtype=np.float32), _data(rng, (40, 9), dtype=np.float32)
    r1 = matmul(a, b, "bf16-sr", seed=123)
    assert np.array_equal(r1, matmul(a, b, "bf16-sr", seed=123))
    assert not np.array_equal(r1, matmul(a, b, "bf16-sr", seed=124))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = matmul(a, b, "bf16-sr", seed=123, backend="cpu")
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = matmul(a, b, "bf16-sr", seed=123, backend="cpu")
    finally:
        numba.set_num_threads(old)
    assert bits_equal(one, r1) and bits_equal(two, r1)
    # the counters are keyed by the output element: a sub-block of rows gets other counters,
    # but the same element of a batched call gets the same as alone when it is element 0
    assert np.array_equal(matmul(a[:1, :], b[:, :1], "bf16-sr", seed=123), r1[:1, :1])


def test_stochastic_accumulation_is_unbiased():
    # x = 1 followed by 63 terms of 3 * 2**-10 (each below half an ulp of bf16 at 1): nearest stagnates at 1,
    # stochastic rounding is unbiased, E[sum] = 1 + 189 * 2**-10.
    n_samples, K = 4000, 64
    x = np.full((n_samples, K), 3 * 2.0 ** -10)
    x[:, 0] = 1.0
    acc_sr = Accumulation(a_format="fp32", acc_format="bf16", acc_rounding="stochastic")
    sums = lp_sum(x, axis=1, accumulation=acc_sr, seed=2024)
    assert float(lp_sum(x[0], accumulation=acc_sr.replace(acc_rounding="nearest_even"))) == 1.0
    exact = 1 + 189 * 2.0 ** -10
    # every step's rounding error is a martingale increment bounded by one ulp (<= 2**-6 here: sums < 2);
    # Azuma-Hoeffding over the n_samples * (K-1) increments: P(|mean error| > t) <= 2 exp(-n t^2 / (2 K ulp^2))
    ulp = 2.0 ** -6
    t = ulp * math.sqrt(2 * K * math.log(2 / 1e-9) / n_samples)
    assert abs(sums.mean() - exact) < t
    assert abs(sums.mean() - exact) < 0.3 * abs(1.0 - exact)  # far better than nearest's stagnation


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------
def test_bad_input_messages():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        matmul(a, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(4, 3, 2\)"):
        matmul(np.ones((2, 3, 3)), np.ones((4, 3, 2)))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        dot(np.ones(3), np.ones(4))
    with pytest.raises(TypeError, match="a must be .* got an array of dtype complex128"):
        matmul(np.ones((2, 2), dtype=np.complex128), a)
    with pytest.raises(TypeError, match="b must be .* float16"):
        matmul(a, np.ones((3, 2), dtype=np.float16))
    with pytest.raises(TypeError, match="x must be"):
        lp_sum(np.ones(3, dtype=np.complex128))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        matmul(np.float64(2.0), a)
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        matmul(a, a.T, Accumulation(order="blocked", chunk=0))
    with pytest.raises(ValueError, match="significant bits"):
        matmul(a, a.T, Accumulation(a_format=FloatFormat(8, 28)))
    with pytest.raises(ValueError, match="out_format int32 .*float32"):
        matmul(a, a.T, "int8-int32")
    with pytest.raises(ValueError, match="axis 3 is out of bounds"):
        lp_sum(a, axis=3)
    with pytest.raises(ValueError, match="backend"):
        matmul(a, a.T, backend="tpu")


# ----------------------------------------------------------------------------
# the register-tiled fp32 kernel gives the scalar kernel's bits
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("acc", ["fp32", "fp16-fp32", "bf16-fp32", "e4m3-fp32", "e5m2-e4m3-fp32", "tf32-fp32",
                                 Accumulation(fused=False), Accumulation(a_format="bf16", out_format="bf16"),
                                 Accumulation(a_format="fp16", product_format="fp32")],
                         ids=lambda a: a if isinstance(a, str) else "custom")
def test_tiled_fp32_kernel_equals_scalar_kernel(acc):
    from lowprec.kernels import dispatch
    from lowprec.linalg import _run

    rng = np.random.default_rng(8)
    M, K, N = 37, 45, 41  # not multiples of the 4 x 16 tile
    assert M * N * K >= dispatch.FP32_TILE_MIN_WORK and dispatch.fp32_tile(get_accumulation(acc), "cpu")
    a = (rng.standard_normal((2, M, K)) * 2.0 ** rng.integers(-20, 20, (2, M, K))).astype(np.float32)
    b = (rng.standard_normal((K, N)) * 2.0 ** rng.integers(-30, 10, (K, N))).astype(np.float32)
    a[0, 0, 3], a[0, 1, 4], b[5, 2] = np.inf, np.nan, -np.inf
    a[1, 2, :] = 2.0 ** -130  # bf16 subnormals: their products are not float32 numbers (the fma branch)
    fast = matmul(a, b, acc, backend="cpu")
    accobj = get_accumulation(acc)
    a2 = round_to(a, accobj.a_format).astype(np.float64).reshape(-1, K)
    bt2 = round_to(b, accobj.b_format).astype(np.float64).T.copy()
    slow = _run(a2, bt2, np.arange(2), np.zeros(2, np.int64), M, N, K, accobj, None, "cpu").reshape(2, M, N)
    assert bits_equal(fast, slow.astype(np.float32))
    assert np.isnan(fast).any()  # the NaNs are the same bits too


def test_integer_and_list_input_follow_round_to():
    """One input policy for the public API (core.as_float_input): integers, lists and Python numbers are taken
    as float64 exactly, as round_to takes them."""
    want = dot(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), "fp16")
    assert bits_equal(dot([1, 2, 3], [4, 5, 6], "fp16"), want) and float(want) == 32.0
    assert bits_equal(matmul(np.arange(6).reshape(2, 3), np.ones((3, 2), np.int8), "bf16"),
                      matmul(np.arange(6.0).reshape(2, 3), np.ones((3, 2)), "bf16"))
    assert float(lp_sum([2 ** 60, 1], None, "fp32")) == 2.0 ** 60
    with pytest.raises(ValueError, match="a holds the integer 9007199254740993"):
        dot([2 ** 53 + 1], [1.0])

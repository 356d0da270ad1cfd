"""The float32 tile kernel (kernels/linalg_fp32.py) against an independent reference.

The reference walks k = 0..K-1 for every output with numpy float64 arrays:
a float32 product is exact in float64 (24 + 24 bits); the fused step
``fl32(p + s)`` is computed exactly as TwoSum in float64 followed by
round-to-odd to 53 bits, then one nearest-even conversion to float32 (53 >=
24 + 2, so the double rounding is innocuous); the unfused step is float32
arithmetic. NaN results are compared as the canonical NaN (0x7FC00000).
"""

import numba
import numpy as np
import pytest

from lowprec.accumulation import Accumulation, get_accumulation
from lowprec.kernels.linalg_fp32 import TILE_M, TILE_N, _matmul_fp32_cpu
from lowprec.linalg import _run, prepare_matmul

CANONICAL_NAN = 0x7FC00000


def _fused_step(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """fl32(p + s), p exact products (float64), s float32 partial sums: rounded once."""
    with np.errstate(all="ignore"):
        s64 = s.astype(np.float64)
        hi = p + s64
        bb = hi - p  # TwoSum: hi + lo == p + s exactly (finite values)
        lo = (p - (hi - bb)) + (s64 - bb)
        finite = np.isfinite(hi)
        lo = np.where(finite, lo, 0.0)
        even = (hi.view(np.uint64) & np.uint64(1)) == 0
        bump = (lo != 0) & even & finite  # round to odd: step to the odd neighbour towards lo
        hi = np.where(bump, np.nextafter(hi, np.where(lo > 0, np.inf, -np.inf)), hi)
        return hi.astype(np.float32)


def reference(a: np.ndarray, b: np.ndarray, fused: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    M, K = a.shape
    N = b.shape[1]
    s = np.zeros((M, N), dtype=np.float32)
    with np.errstate(all="ignore"):
        for k in range(K):
            if fused:
                s = _fused_step(a[:, k, None].astype(np.float64) * b[None, k, :].astype(np.float64), s)
            else:
                s = s + a[:, k, None] * b[None, k, :]  # float32: product rounded, then the sum
    s[np.isnan(s)] = np.nan
    return s


def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _data(rng, M, K, N, special=False):
    a = (rng.standard_normal((M, K)) * 2.0 ** rng.integers(-10, 10, (M, K))).astype(np.float32)
    b = (rng.standard_normal((K, N)) * 2.0 ** rng.integers(-10, 10, (K, N))).astype(np.float32)
    a[rng.random((M, K)) < 0.1] = 0.0
    if special and M > 2 and K > 2 and N > 1:
        a[0, 1] = np.nan
        a[1, 0] = np.inf
        b[2, 1] = -np.inf
        a[2, :] = 2.0 ** -140  # products below float32's range: only the fused step keeps them
        b[0, 0] = 3.0e38  # products that overflow
        b[1, N - 1] = np.float32(1.4e-45)  # the smallest subnormal
    return a, b


SHAPES = [(1, 1, 1), (4, 1, 16), (5, 0, 17), (0, 3, 5), (3, 7, 16), (6, 16, 15), (7, 33, 31), (64, 20, 10),
          (65, 20, 48), (13, 9, 1), (1, 70, 40), (12, 2, 33), (11, 5, 32)]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("special", [False, True])
def test_kernel_equals_reference(shape, fused, special):
    rng = np.random.default_rng(sum(shape) + 7 * special)
    M, K, N = shape
    a, b = _data(rng, M, K, N, special)
    want = reference(a, b, fused)
    for parallel in (False, True):
        got = _matmul_fp32_cpu(a, b, fused, parallel)
        assert got.shape == (M, N) and got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(_bits(got), _bits(want)), (shape, fused, parallel)
    if special and M > 2 and K > 2 and N > 1:
        assert np.isnan(want).any() and np.isinf(want).any()
        assert (_bits(got)[np.isnan(got)] == CANONICAL_NAN).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", [(13, 40, 37), (6, 17, 16), (20, 9, 40), (101, 7, 21)], ids=str)
def test_k_blocks_change_no_bit(shape, fused):
    """The k loop in blocks (partial sums parked in memory between blocks, GROUP row tiles per block) gives
    the reference's bits for every block length, serial and parallel, direct and packed B panels."""
    rng = np.random.default_rng(sum(shape))
    M, K, N = shape
    a, b = _data(rng, M, K, N, special=True)
    want = reference(a, b, fused)
    for kc in (1, 2, 5, K - 1, K, K + 3):
        for parallel in (False, True):
            for bb in (b, np.asfortranarray(b)):
                got = _matmul_fp32_cpu(a, bb, fused, parallel, kc=kc)
                assert np.array_equal(_bits(got), _bits(want)), (kc, parallel)


def test_default_k_blocks_on_a_long_k():
    """K above K_BLOCK_FROM takes the blocked loop by default: still the reference's bits."""
    from lowprec.kernels.linalg_fp32 import K_BLOCK_FROM

    rng = np.random.default_rng(5)
    a, b = _data(rng, 14, K_BLOCK_FROM + 77, 20, special=True)
    for fused in (True, False):
        assert np.array_equal(_bits(_matmul_fp32_cpu(a, b, fused)), _bits(reference(a, b, fused)))


def _layouts(a, b):
    """The same operands in other memory layouts (values unchanged)."""
    M, K = a.shape
    N = b.shape[1]
    big_a = np.full((2 * M + 1, 3 * K + 2), np.nan, dtype=np.float32)
    big_a[1::2, 2::3][:M, :K] = a
    big_b = np.full((K + 3, N + 5), np.nan, dtype=np.float32)
    big_b[3:, 2:N + 2] = b
    wide_b = np.full((K, 2 * N), np.nan, dtype=np.float32)
    wide_b[:, ::2] = b
    yield "C", a, b
    yield "F", np.asfortranarray(a), np.asfortranarray(b)  # b.T row-contiguous: w.T in training
    yield "strided", big_a[1::2, 2::3][:M, :K], wide_b[:, ::2]
    yield "row-slice", a[::-1].copy()[::-1], big_b[3:, 2:N + 2]  # negative strides; rows not C-contiguous
    bt = np.full((N, 2 * K), np.nan, dtype=np.float32)
    bt[:, ::2] = b.T
    yield "bt-strided", a, bt[:, ::2].T
    ro = a.copy()
    ro.flags.writeable = False
    yield "read-only", ro, np.broadcast_to(b, b.shape)  # not writeable: numba types them as readonly arrays


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", [(5, 7, 17), (8, 33, 32), (3, 1, 20), (17, 12, 50)], ids=str)
def test_layouts_read_in_place(shape, fused):
    rng = np.random.default_rng(3)
    a, b = _data(rng, *shape, special=True)
    want = reference(a, b, fused)
    for name, x, y in _layouts(a, b):
        np.testing.assert_array_equal(x, a)
        np.testing.assert_array_equal(y, b)
        got = _matmul_fp32_cpu(x, y, fused)
        assert np.array_equal(_bits(got), _bits(want)), name


def test_one_compiled_kernel_per_variant():
    """Operands in any layout (C, F, strided, transposed views) run one compiled kernel per (fused,
    parallel): numba does not compile one per layout."""
    from lowprec.kernels.linalg_fp32 import _kernel

    rng = np.random.default_rng(4)
    a, b = _data(rng, 7, 33, 31)
    for fused in (True, False):
        for parallel in (False, True):
            for _, x, y in _layouts(a, b):
                _matmul_fp32_cpu(x, y, fused, parallel)
                _matmul_fp32_cpu(y.T, x.T, fused, parallel)
            assert len(_kernel(fused, parallel).signatures) == 1, (fused, parallel)


def test_fused_and_unfused_differ_on_inexact_products():
    """The reference tells the two kernels apart (so the tests above check which one ran)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 200)).astype(np.float32)
    b = rng.standard_normal((200, 16)).astype(np.float32)
    f, u = _matmul_fp32_cpu(a, b, True), _matmul_fp32_cpu(a, b, False)
    assert not np.array_equal(f, u)
    assert np.array_equal(_bits(f), _bits(reference(a, b, True)))
    assert np.array_equal(_bits(u), _bits(reference(a, b, False)))


def test_same_bits_on_one_and_two_threads():
    rng = np.random.default_rng(1)
    a, b = _data(rng, 70, 90, 83, special=True)
    old = numba.get_num_threads()
    try:
        results = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            for fused in (True, False):
                results.append(_matmul_fp32_cpu(a, b, fused, True))
                results.append(_matmul_fp32_cpu(a, b.T.copy().T, fused, True))
    finally:
        numba.set_num_threads(old)
    for fused in (0, 1):
        want = reference(a, b, fused == 0)
        for r in results[2 * fused::4] + results[2 * fused + 1::4]:
            assert np.array_equal(_bits(r), _bits(want))


def test_shapes_cover_the_tile_edges():
    """SHAPES has row counts and column counts on both sides of the tile's multiples."""
    ms = {m % TILE_M for m, _, _ in SHAPES}
    ns = {n % TILE_N for _, _, n in SHAPES}
    assert 0 in ms and len(ms) >= 4 and 0 in ns and len(ns) >= 4
    assert any(m < TILE_M for m, _, _ in SHAPES) and any(n < TILE_N for _, _, n in SHAPES)


@pytest.mark.parametrize("acc", ["fp32", "bf16-fp32", Accumulation(fused=False),
                                 Accumulation(a_format="bf16", out_format="bf16")],
                         ids=lambda a: a if isinstance(a, str) else repr(a)[:30])
@pytest.mark.parametrize("shape", [(2, 3, 2), (6, 1, 19), (37, 45, 10)], ids=str)
def test_prepared_matmul_equals_general_kernel(acc, shape):
    """linalg.prepare_matmul (the tile kernel at every size, operands in any layout) = the scalar kernel."""
    from lowprec import round_to

    acc = get_accumulation(acc)
    rng = np.random.default_rng(5)
    M, K, N = shape
    a, b = _data(rng, M, K, N, special=True)
    a = round_to(a, acc.a_format)
    b = round_to(b, acc.b_format)
    one = np.zeros(1, dtype=np.int64)
    want = _run(a.astype(np.float64), b.T.astype(np.float64).copy(), one, one, M, N, K, acc, None,
                "cpu").reshape(M, N).astype(np.float32)
    for _, x, y in _layouts(a, b):
        got = prepare_matmul(acc, "cpu")(x, y, inputs_rounded=True)
        assert got.flags.c_contiguous
        assert np.array_equal(_bits(got), _bits(want))

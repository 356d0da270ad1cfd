"""The training fast paths give the bits of the public API they stand in for."""

import numpy as np
import pytest

from lowprec import RandomStream, round_to
from lowprec.accumulation import Accumulation, get_accumulation
from lowprec.linalg import _abs_range, _fp32_products_exact, _matmul_f32, _ranges_exact, matmul

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _bits(x):
    x = np.ascontiguousarray(x)
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)


def _same_bits(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(_bits(x), _bits(y))


def _operands(rng, M, K, N, acc, special=False):
    a = (rng.standard_normal((M, K)) * 2.0 ** rng.integers(-12, 12, (M, K))).astype(np.float32)
    b = (rng.standard_normal((K, N)) * 2.0 ** rng.integers(-12, 6, (K, N))).astype(np.float32)
    a[rng.random((M, K)) < 0.1] = 0.0
    if special:
        a[0, 1], a[1, 2], b[2, 0] = np.nan, np.inf, -np.inf
        a[2, :] = 2.0 ** -130  # products below float32's subnormals: the fused kernel is needed
    return round_to(a, acc.a_format), round_to(b, acc.b_format)


# ----------------------------------------------------------------------------
# linalg._matmul_f32: the lean entry equals linalg.matmul
# ----------------------------------------------------------------------------
ACCS = ["fp32", "bf16-fp32", "fp16-fp32", "e4m3-fp32", "e5m2-e4m3-fp32", "fp16", "bf16-sr", "e4m3-chunk128",
        Accumulation(a_format="bf16", out_format="bf16"), Accumulation(fused=False)]


@pytest.mark.parametrize("acc", ACCS, ids=lambda a: a if isinstance(a, str) else repr(a)[:40])
@pytest.mark.parametrize("shape", [(3, 5, 4), (64, 64, 40), (37, 45, 10)])
@pytest.mark.parametrize("special", [False, True])
def test_matmul_f32_equals_matmul(acc, shape, special):
    acc = get_accumulation(acc)
    rng = np.random.default_rng(11)
    M, K, N = shape
    a, b = _operands(rng, M, K, N, acc, special and M > 2)
    s1, s2 = RandomStream(5, 101), RandomStream(5, 101)
    want = matmul(a, b, acc, seed=s1, backend="cpu")
    for exact in (None, _ranges_exact(acc, _abs_range(a), _abs_range(b))):
        s2.offset = 0
        got = _matmul_f32(a, b, acc, seed=s2, exact=exact)
        assert got.flags.c_contiguous
        assert _same_bits(got, want)
        assert s2.offset == s1.offset


def test_ranges_exact_equals_products_exact():
    rng = np.random.default_rng(3)
    for acc in ("bf16-fp32", "fp16-fp32", "e4m3-fp32", "fp32"):
        acc = get_accumulation(acc)
        for scale in (0, -60, -70, 60, 70):
            a, b = _operands(rng, 6, 7, 5, acc)
            a = round_to(a * np.float32(2.0 ** scale), acc.a_format)
            for x, y in ((a, b), (a, np.zeros_like(b)), (np.full_like(a, np.nan), b)):
                assert _ranges_exact(acc, _abs_range(x), _abs_range(y)) == _fp32_products_exact(acc, x, y)

"""CPU == CUDA bits for every accumulation preset, stochastic accumulation and the ops.

Runs the CUDA kernels in numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1), which is slow: the matrices are tiny. On a real GPU
(LOWPREC_REAL_CUDA=1) the same tests run on the device.
"""

import numpy as np
import pytest

import lowprec.ops as ops
from lowprec.accumulation import PRESETS, Accumulation
from lowprec.kernels.cuda import is_available
from lowprec.linalg import dot, matmul
from lowprec.linalg import sum as lp_sum

pytestmark = pytest.mark.skipif(not is_available(), reason="no CUDA device and no simulator")


def _bits_equal(x, y):
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))


def _inputs(name, rng):
    acc = PRESETS[name]
    K = 130 if acc.order == "blocked" else 6  # crosses a 128-chunk boundary
    dtype = np.float64 if name == "int8-int32" else np.float32
    a = rng.standard_normal((2, K)) * 3
    b = rng.standard_normal((K, 2)) * 2
    if name == "int8-int32":
        a, b = np.round(a * 40), np.round(b * 60)
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_cpu_equals_cuda(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    a, b = _inputs(name, rng)
    cpu = matmul(a, b, name, seed=7, backend="cpu")
    gpu = matmul(a, b, name, seed=7, backend="cuda")
    assert _bits_equal(cpu, gpu)


@pytest.mark.parametrize("acc", [
    Accumulation(a_format="bf16", acc_format="bf16", acc_rounding="stochastic", compensated=True),
    Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="stochastic", order="pairwise", fused=False),
    Accumulation(a_format="fp8_e5m2", acc_format="fp16", acc_rounding="stochastic", order="blocked", chunk=3,
                 chunk_format="bf16", product_format="fp16"),
    Accumulation(a_format="fp32", acc_format="fp32", acc_rounding="up"),
], ids=["sr-kahan", "sr-pairwise-unfused", "sr-blocked", "up"])
def test_stochastic_and_options_cpu_equals_cuda(acc):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 2, 7)).astype(np.float32)
    b = rng.standard_normal((2, 7, 2)).astype(np.float32)
    assert _bits_equal(matmul(a, b, acc, seed=3, backend="cpu"), matmul(a, b, acc, seed=3, backend="cuda"))


def test_dot_and_sum_cpu_equals_cuda():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(9).astype(np.float32)
    y = rng.standard_normal(9).astype(np.float32)
    assert _bits_equal(dot(x, y, "bf16-sr", seed=1, backend="cpu"), dot(x, y, "bf16-sr", seed=1, backend="cuda"))
    X = rng.standard_normal((3, 5))
    assert _bits_equal(lp_sum(X, axis=0, accumulation="fp16-sr", seed=2, backend="cpu"),
                       lp_sum(X, axis=0, accumulation="fp16-sr", seed=2, backend="cuda"))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "sqrt", "fma"])
def test_ops_cpu_equals_cuda(op):
    rng = np.random.default_rng(3)
    x, y, z = (rng.standard_normal((3, 8)) * 10).astype(np.float32)
    args = (np.abs(x),) if op == "sqrt" else (x, y, z) if op == "fma" else (x, y)
    fn = getattr(ops, op)
    for mode in ("nearest_even", "toward_zero", "stochastic"):
        assert _bits_equal(fn(*args, "bf16", mode, seed=4, backend="cpu"),
                           fn(*args, "bf16", mode, seed=4, backend="cuda"))


def _fast_case(kernel):
    """(accumulation, a, b) that the CPU dispatch runs with ``kernel`` (a fast path), 4 x 128 x 64."""
    rng = np.random.default_rng(sum(map(ord, kernel)))
    a = (rng.standard_normal((4, 128)) * 2.0 ** rng.integers(-4, 4, (4, 128))).astype(np.float32)
    b = (rng.standard_normal((128, 64)) * 2.0 ** rng.integers(-4, 4, (128, 64))).astype(np.float32)
    acc = {
        "fp32-fma": Accumulation(a_format="fp16"),
        "fp32-muladd": Accumulation(a_format="fp16", product_format="fp32"),
        "direct": Accumulation(a_format="fp16", acc_format="fp16"),
        "twosum32": Accumulation(a_format="bf16", acc_format="bf16"),
        "twosum": Accumulation(a_format="fp32", acc_format="fp16"),
        "unfused": Accumulation(a_format="fp16", acc_format="fp16", fused=False),
        "sr32": Accumulation(a_format="bf16", acc_format="bf16", acc_rounding="stochastic"),
        "sr": Accumulation(a_format="fp32", acc_format="bf16", acc_rounding="stochastic"),
    }[kernel]
    return acc, a, b


_FAST = ["fp32-fma", "fp32-muladd", "direct", "twosum32", "twosum", "unfused", "sr32", "sr"]


@pytest.mark.parametrize("kernel", [k if k in ("fp32-fma", "direct", "sr32") else
                                    pytest.param(k, marks=pytest.mark.slow) for k in _FAST])
def test_fast_path_sizes_cpu_equals_cuda(kernel):
    """At sizes where the CPU runs each fast kernel (checked through the dispatch tables), CUDA (the general
    kernel) gives the same bits: 4 x 128 x 64, the CPU's fast-path thresholds (2**15 multiply-adds, 16 columns)."""
    from lowprec import round_to
    from lowprec.kernels import dispatch
    from lowprec.linalg import _kernel_args

    acc, a, b = _fast_case(kernel)
    M, K = a.shape
    N = b.shape[1]
    if kernel.startswith("fp32-"):
        assert M * N * K >= dispatch.FP32_TILE_MIN_WORK and dispatch.fp32_tile(acc, "cpu") == kernel[5:]
    else:
        a2 = round_to(a, acc.a_format).astype(np.float64)
        bt2 = np.ascontiguousarray(round_to(b, acc.b_format).astype(np.float64).T)
        assert dispatch.narrow_kind(a2, bt2, np.zeros(1, np.int64), M, N, K, *_kernel_args(acc),
                                    acc.random_bits) == kernel
    cpu = matmul(a, b, acc, seed=5, backend="cpu")
    gpu = matmul(a, b, acc, seed=5, backend="cuda")
    assert _bits_equal(cpu, gpu)

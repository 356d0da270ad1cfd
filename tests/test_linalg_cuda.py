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

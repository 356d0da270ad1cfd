"""Matrix units: CPU == CUDA bits (kernels/mma_cpu.py against its twin in kernels/linalg_cuda.py).

Both kernels run the step arithmetic of kernels/mma.py; here the CUDA one runs in numba's CUDA simulator
(tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1; LOWPREC_REAL_CUDA=1 runs the same tests on a GPU). The
simulator runs Python per thread, so the matrices are small, except one case at the size where the CPU
kernel runs several row tiles and column panels on two threads.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from test_matrix_units import SCALED, _dequantized, _values, block_problems, problems, same_bits

from lowprec import round_to
from lowprec.kernels import dispatch
from lowprec.kernels.cuda import is_available
from lowprec.kernels.mma_cpu import TILE_I, TILE_J
from lowprec.linalg import dot, matmul
from lowprec.matrix_units import PRESETS, block_matmul

pytestmark = pytest.mark.skipif(not is_available(), reason="no CUDA device and no simulator")


def _case(u, M, K, N, seed):
    """Operands with exponents spread over the formats' ranges (zeros, subnormals, ties at the cut bit), and
    an addend of the unit's c format."""
    rng = np.random.default_rng(seed)
    A = np.array(_values(u.a_format, rng.integers(0, 2**40, M * K).tolist(), M * K)).reshape(M, K)
    B = np.array(_values(u.b_format, rng.integers(0, 2**40, K * N).tolist(), K * N)).reshape(K, N)
    C = np.asarray(round_to(rng.standard_normal((M, N)) * 2.0 ** rng.integers(-20, 10, (M, N)), u.c_format),
                   dtype=np.float64)
    C[0, 0] = -A[0, 0] * B[0, 0]  # cancellation in the first step
    return A, B, C


def _both(a, b, u, c=None):
    with np.errstate(all="ignore"):
        return matmul(a, b, u, c=c, backend="cpu"), matmul(a, b, u, c=c, backend="cuda")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_cpu_equals_cuda(name):
    """Every preset, 3 x K x 2 with K = two steps and a partial third (K padded with zero products)."""
    u = PRESETS[name]
    A, B, C = _case(u, 3, 2 * u.step_k + 3, 2, sum(map(ord, name)))
    cpu, gpu = _both(A, B, u, C)
    assert same_bits(cpu, gpu), (name, cpu, gpu)


@pytest.mark.parametrize("name", ["nv-hopper-fp8", "nv-ada-fp8-f16", "nv-blackwell-fp8"])
def test_e5m2_operands_cpu_equals_cuda(name):
    u = PRESETS[name].replace(b_format="fp8_e5m2")
    A, B, C = _case(u, 2, 2 * u.step_k + 1, 2, 5)
    assert same_bits(*_both(A, B, u, C))


@pytest.mark.parametrize("name", ["nv-hopper-fp16", "nv-ampere-tf32", "nv-ada-fp8-f16", "nv-hopper-fp8-promote128"])
def test_specials_cpu_equals_cuda(name):
    """Inf/NaN operands and addends (canonical NaN), -0 sums, K not a multiple of the step, K = 0."""
    u = PRESETS[name]
    k = u.step_k
    K = 4 * k + 1
    A = np.full((4, K), -0.0)
    B = np.ones((K, 3))
    C = np.full((4, 3), -0.0)
    A[1, 0] = np.inf  # Inf * 1
    A[2, 0], A[2, 1] = np.inf, -np.inf  # Inf - Inf
    B[2, 2] = 0.0  # ... and Inf * 0 in column 2
    C[3, 0], C[3, 1] = np.nan, -np.inf
    assert same_bits(*_both(A, B, u, C))
    assert same_bits(*_both(np.zeros((2, 0)), np.zeros((0, 3)), u, np.full((2, 3), 1.5)))


def test_dot_batches_and_broadcast_cpu_equals_cuda():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3, 20)).astype(np.float32)
    b = rng.standard_normal((20, 2)).astype(np.float32)
    c = rng.standard_normal(2).astype(np.float32)
    cpu, gpu = (matmul(a, b, "nv-ampere-fp16", c=c, backend=be) for be in ("cpu", "cuda"))
    assert cpu.dtype == gpu.dtype == np.float32 and same_bits(cpu, gpu)
    x, y = rng.standard_normal(33), rng.standard_normal(33)
    assert same_bits(dot(x, y, "nv-hopper-bf16", c=1.0, backend="cpu"), dot(x, y, "nv-hopper-bf16", c=1.0, backend="cuda"))


@pytest.mark.parametrize("name", ["nv-ampere-bf16", "nv-hopper-fp8-promote128", "nv-volta-fp16-f16",
                                  pytest.param("nv-blackwell-nvfp4", marks=pytest.mark.slow)])
def test_tiled_parallel_size_cpu_equals_cuda(name):
    """(TILE_I + 1) x K x (TILE_J + 4): the CPU kernel runs two row tiles and two column panels (the second
    partial) on two threads; CUDA gives the same bits."""
    u = PRESETS[name]
    M, N, K = TILE_I + 1, TILE_J + 4, 5 * u.step_k + 3
    rng = np.random.default_rng(17)
    a = rng.standard_normal((M, K)) * 2.0 ** rng.integers(-8, 8, (M, K))
    b = rng.standard_normal((K, N))
    c = rng.standard_normal((M, N))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        cpu = matmul(a, b, u, c=c, backend="cpu")
    finally:
        numba.set_num_threads(old)
    assert same_bits(cpu, matmul(a, b, u, c=c, backend="cuda"))


def test_dispatch_chooses_the_backend():
    """dispatch.matrix_unit_array runs the kernel of the backend it is given (the same bits)."""
    u = PRESETS["nv-turing-fp16"]
    A, B, C = _case(u, 2, 11, 2, 9)
    one = np.zeros(1, dtype=np.int64)
    C3 = np.broadcast_to(C, (1, 2, 2))  # read-only, as matmul passes it (the compiled signature it uses)
    cpu, gpu = (dispatch.matrix_unit_array(be, A[None], B[None], C3, one, one, u._kernel_params())
                for be in ("cpu", "cuda"))
    assert cpu.shape == gpu.shape == (1, 2, 2) and same_bits(cpu, gpu)
    assert same_bits(cpu[0], matmul(A, B, u, c=C, backend="cpu"))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(problems())
def test_cpu_equals_cuda_on_reference_problems(problem):
    """The reference comparison's problems (tests/test_matrix_units.py), CPU against CUDA (slow: ``-m slow``)."""
    u, A, B, C = problem
    with np.errstate(all="ignore"):
        C = np.asarray(round_to(C, u.c_format), dtype=np.float64)
    assert same_bits(*_both(A, B, u, C))


@pytest.mark.parametrize("name", SCALED)
def test_block_scaled_cpu_equals_cuda(name):
    """Path 2 (block_matmul) with scales over the whole scale format, E8M0's ends, a NaN scale, a zero block and
    K not a multiple of the step; CPU against CUDA and both against the exact reference."""
    import mma_reference as ref

    u = PRESETS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    M, N, K = 3, 2, 2 * u.step_k + 5
    nb = -(-K // u.block)
    QA = np.array(_values(u.a_format, rng.integers(0, 2**40, M * K).tolist(), M * K)).reshape(M, K)
    QB = np.array(_values(u.b_format, rng.integers(0, 2**40, K * N).tolist(), K * N)).reshape(K, N)
    if u.block_format.scale.name == "e8m0":
        SA = 2.0 ** rng.integers(-127, 128, (M, nb)).astype(float)
        SB = 2.0 ** rng.integers(-127, 128, (nb, N)).astype(float)
        SA[0, 0], SB[0, 0], SA[1, 0], SB[0, 1] = 2.0**127, 2.0**-127, 2.0**-127, 2.0**-127
    else:
        SA = np.asarray(round_to(rng.uniform(0, 448, (M, nb)) * 2.0 ** -rng.integers(0, 16, (M, nb)), "ue4m3"))
        SB = np.asarray(round_to(rng.uniform(0, 448, (nb, N)), "ue4m3"))
        SA[2, 1] = 0.0
    SA[2, -1] = np.nan
    QA[1, :u.block] = 0.0
    C = np.asarray(round_to(rng.standard_normal((M, N)) * 2.0 ** rng.integers(-20, 10, (M, N)), "fp32"),
                   dtype=np.float64)
    A, B = _dequantized(u, QA, SA, QB, SB)
    cpu, gpu = (block_matmul(A, SA, B, SB, u, c=C, backend=be) for be in ("cpu", "cuda"))
    assert same_bits(cpu, gpu)
    assert same_bits(cpu, ref.block_mma_matmul(QA, SA, QB, SB, C, u))


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(block_problems())
def test_block_cpu_equals_cuda_on_reference_problems(problem):
    u, QA, SA, QB, SB, C = problem
    C = np.asarray(round_to(C, "fp32"), dtype=np.float64)
    A, B = _dequantized(u, QA, SA, QB, SB)
    with np.errstate(all="ignore"):
        cpu, gpu = (block_matmul(A, SA, B, SB, u, c=C, backend=be) for be in ("cpu", "cuda"))
    assert same_bits(cpu, gpu)

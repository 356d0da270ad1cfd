"""Matrix units (lowprec.matrix_units, kernels/mma_cpu.py): published vectors, the exact reference, threads.

The reference (tests/mma_reference.py) is written from NUMERICS.md section 5 with exact integer and
Fraction arithmetic; the kernel must give its bits (NaN is one canonical NaN) on every preset.
"""

import re

import mma_reference as ref
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import round_to
from lowprec.kernels import dispatch, mma_cpu
from lowprec.kernels.mma_cpu import TILE_J
from lowprec.linalg import dot, matmul
from lowprec.matrix_units import (
    PRESETS,
    MatrixUnit,
    block_matmul,
    get_matrix_unit,
    is_matrix_unit,
)

NAMES = [n for n, u in PRESETS.items() if u.block_format is None]  # block-scaled presets: tests at the end
SCALED = [n for n, u in PRESETS.items() if u.block_format is not None]
FP32_OUT = [n for n, u in PRESETS.items() if u.out_format.name == "fp32"]


def same_bits(x, y) -> bool:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return x.shape == y.shape and np.array_equal(x.view(np.int64), y.view(np.int64))


# -- descriptor and presets ----------------------------------------------------------
@pytest.mark.parametrize("name,step,n,e_zero,out", [
    ("nv-volta-fp16", 4, 23, -131, "fp32"), ("nv-volta-fp16-f16", 4, 23, -20, "fp16"),
    ("nv-turing-fp16", 8, 24, -132, "fp32"), ("nv-ampere-fp16", 8, 24, -132, "fp32"),
    ("nv-ampere-fp16-f16", 8, 24, -21, "fp16"), ("nv-ampere-bf16", 8, 24, -132, "fp32"),
    ("nv-ampere-tf32", 4, 24, -132, "fp32"), ("nv-ada-fp8", 16, 13, -132, "e8m13"),
    ("nv-ada-fp8-f16", 16, 13, -21, "fp16"), ("nv-hopper-fp16", 16, 25, -133, "fp32"),
    ("nv-hopper-tf32", 8, 25, -133, "fp32"), ("nv-hopper-fp8", 32, 13, -133, "e8m13"),
    ("nv-blackwell-fp8", 32, 25, -133, "fp32"), ("nv-blackwell-bf16", 16, 25, -133, "fp32"),
])
def test_preset_parameters(name, step, n, e_zero, out):
    u = get_matrix_unit(name)
    assert (u.step_k, u.frac_bits, u.e_zero, u.out_format.name) == (step, n, e_zero, out)
    assert u.source and is_matrix_unit(name) and is_matrix_unit(u)


def test_descriptor_validation():
    assert get_matrix_unit("nv-hopper-fp8").replace(a_format="e5m2").a_format.name == "fp8_e5m2"
    assert get_matrix_unit("nv-hopper-fp8-promote128").promote_every == 128
    with pytest.raises(ValueError, match="split_k needs an even k"):
        MatrixUnit(k=5, split_k=True)
    with pytest.raises(ValueError, match="promote_every"):
        MatrixUnit(k=32, promote_every=100)
    with pytest.raises(ValueError, match="a_format"):
        MatrixUnit(a_format="fp32")
    with pytest.raises(ValueError, match="out_format"):
        MatrixUnit(out_format="bf16")
    with pytest.raises(ValueError, match="unknown matrix unit"):
        get_matrix_unit("nv-volta-bf16")
    with pytest.raises(ValueError, match="matrix-unit accumulations only"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), "fp32", c=np.ones((2, 2)))
    assert not is_matrix_unit("fp16-fp32")


# -- published vectors -----------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in FP32_OUT if PRESETS[n].a_format.name in ("fp16", "bf16", "tf32")])
def test_fasi_truncation_vector(name):
    """Fasi et al. (V100): a = 1, b = (2, 2**-23 + 2**-24, 0, 0): exactly 2 (nearest would give 2 + 2**-22);
    negated, -2. bf16 and tf32 hold the same values, so the vector applies to their presets as is."""
    a = np.ones(4)
    b = np.array([2.0, 2.0**-23 + 2.0**-24, 0.0, 0.0])
    assert float(round_to(np.array([2 + 2.0**-23 + 2.0**-24]), "fp32")[0]) == 2 + 2.0**-22
    assert float(dot(a, b, name)) == 2.0
    assert float(dot(-a, b, name)) == -2.0
    assert ref.mma_dot(a, b, 0.0, PRESETS[name]) == 2.0


@pytest.mark.parametrize("name", [n for n in FP32_OUT if PRESETS[n].a_format.name in ("fp16", "bf16", "tf32")
                                  and PRESETS[n].step_k >= 3 * 2 ** (PRESETS[n].frac_bits - 23)])
def test_fasi_non_monotonic(name):
    """Fasi et al.: with b = 2**-24 (x4) the V100 gives a smaller result for c = 1 than for c = 1 - 2**-24.
    From the rule, for n fractional bits and steps of k products: terms 2**-(n+1) are cut when c = 1
    (grid 2**-n) and kept when c = 1 - 2**-24 (exponent -1, grid 2**-(n+1)); k terms give at least
    1 + 2**-23 when k >= 3 * 2**(n - 23)."""
    u = PRESETS[name]
    n, k = u.frac_bits, u.step_k
    assert k >= 3 * 2 ** (n - 23)
    a = np.full(k, 2.0 ** (23 - n))  # a * b = 2**-(n+1)
    b = np.full(k, 2.0**-24)
    hi, lo = 1.0, 1.0 - 2.0**-24
    r_hi, r_lo = float(dot(a, b, name, c=hi)), float(dot(a, b, name, c=lo))
    assert r_hi == 1.0
    assert r_lo >= 1.0 + 2.0**-23
    assert r_hi < r_lo  # c larger, result smaller
    assert (ref.mma_dot(a, b, hi, u), ref.mma_dot(a, b, lo, u)) == (r_hi, r_lo)
    if name == "nv-volta-fp16":  # the paper's own vector
        assert float(dot(np.ones(4), np.full(4, 2.0**-24), name, c=hi)) == 1.0
        assert float(dot(np.ones(4), np.full(4, 2.0**-24), name, c=lo)) == 1.0 + 2.0**-23


@pytest.mark.parametrize("name", ["nv-ada-fp8", "nv-hopper-fp8"])
def test_fp8_truncation_vector(name):
    """The fp8 analogue of Fasi's first vector: 2 + 1.5 * 2**-13 (e4m3: 2**-6 * 6 * 2**-9) is cut to 2 by the
    13 fractional bits; the ideal rounding to e8m13 (nearest) would give 2 + 2**-12."""
    a = np.array([1.0, 2.0**-6, 0.0, 0.0])
    b = np.array([2.0, 6 * 2.0**-9, 0.0, 0.0])
    assert float(dot(a, b, name)) == 2.0
    assert float(dot(-a, b, name)) == -2.0
    assert float(round_to(np.array([2 + 1.5 * 2.0**-13]), PRESETS[name].out_format)[0]) == 2 + 2.0**-12


# MMA-Sim (arXiv 2511.10909), Table 8: d = 2**23 + (-2**13 * 2**10) - 0.5 - 0.25 - 0.125, exact -0.875
TABLE8 = [("nv-volta-fp16", 0.0), ("nv-turing-fp16", -0.5), ("nv-ampere-fp16", -0.5), ("nv-ampere-bf16", -0.5),
          ("nv-ampere-tf32", -0.5), ("nv-hopper-fp16", -0.75), ("nv-blackwell-fp16", -0.75),
          ("nv-ada-fp8", 0.0), ("nv-hopper-fp8", 0.0), ("nv-blackwell-fp8", -0.75)]


@pytest.mark.parametrize("name,expected", TABLE8)
def test_mmasim_table8(name, expected):
    u = PRESETS[name]
    if u.a_format.name.startswith("fp8"):
        u = u.replace(a_format="fp8_e5m2", b_format="fp8_e5m2")  # -2**13 needs e5m2
    a = np.array([-2.0**13, -0.5, -0.25, -0.125])
    b = np.array([2.0**10, 1.0, 1.0, 1.0])
    assert float(dot(a, b, u, c=2.0**23)) == expected
    assert ref.mma_dot(a, b, 2.0**23, u) == expected


# -- the kernel against the exact reference -----------------------------------------------
def _values(fmt, draw_ints, n):
    """n exact values of fmt: exponents spread over its range (subnormals included), random significands."""
    m = fmt.man_bits
    out = []
    for code in draw_ints:
        kind = code % 16
        if kind == 0:
            out.append(0.0 if code % 32 < 16 else -0.0)
            continue
        e = fmt.emin - m + (code >> 5) % (fmt.emax - fmt.emin + m + 1)
        sig = (code >> 13) % (1 << (m + 1)) | (1 if kind < 4 else 0)  # odd significands: the cut bit set
        v = sig * 2.0 ** (e - m)
        v = min(abs(v), fmt.max) * (-1 if code & 2 else 1)
        out.append(float(round_to(np.array([v]), fmt)[0]))
    return out[:n]


@st.composite
def problems(draw):
    name = draw(st.sampled_from(NAMES))
    u = PRESETS[name]
    if u.a_format.name.startswith("fp8") and draw(st.booleans()):
        u = u.replace(**{draw(st.sampled_from(["a_format", "b_format"])): "fp8_e5m2"})
    M, N = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    K = draw(st.integers(1, 2 * u.step_k + 3))
    ints = st.lists(st.integers(0, 2**40), min_size=M * K + K * N, max_size=M * K + K * N)
    codes = draw(ints)
    A = np.array(_values(u.a_format, codes[:M * K], M * K)).reshape(M, K)
    B = np.array(_values(u.b_format, codes[M * K:], K * N)).reshape(K, N)
    scale = draw(st.integers(-30, 10))
    C = np.array(draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=M * N,
                               max_size=M * N))).reshape(M, N) * 2.0**scale
    if draw(st.booleans()):  # cancellation: c = -(first product)
        C[0, 0] = -A[0, 0] * B[0, 0]
    special = draw(st.sampled_from([None, None, None, "inf_a", "nan_b", "inf_c", "inf_pair"]))
    if special == "inf_a":
        A[0, 0] = np.inf
    elif special == "nan_b":
        B[-1, -1] = np.nan
    elif special == "inf_c":
        C[-1, 0] = -np.inf
    elif special == "inf_pair":
        A[0, 0], A[0, -1] = np.inf, -np.inf
    return u, A, B, C


@settings(max_examples=150, deadline=None)
@given(problems())
def test_kernel_matches_reference(problem):
    u, A, B, C = problem
    with np.errstate(all="ignore"):
        C = np.asarray(round_to(C, u.c_format), dtype=np.float64)
        got = matmul(A, B, u, c=C)
        exp = ref.mma_matmul(A, B, C, u)
    assert same_bits(got, exp), (u, A, B, C, got, exp)


@pytest.mark.parametrize("name", ["nv-hopper-fp16-f16", "nv-ada-fp8-f16", "nv-volta-fp16-f16"])
def test_fp16_output_ties(name):
    """nearest-even at the fp16 output: sums exactly halfway between two fp16 values go to the even one."""
    u = PRESETS[name]
    cases = [([1.0, 2.0**-6], [1.0, 2.0**-5], 1.0),  # 1 + 2**-11: half an ulp -> 1 (even)
             ([1.0, 2.0**-5, 2.0**-6], [1.0, 2.0**-5, 2.0**-5], 1.0 + 2.0**-9)]  # 1 + 3 * 2**-11 -> even
    for a, b, expected in cases:
        assert float(dot(np.array(a), np.array(b), u)) == expected
        assert ref.mma_dot(a, b, 0.0, u) == expected


def test_tf32_inputs_truncated():
    """tf32 operands are float32 values with the 13 low bits cleared (1 + 2**-10 + 2**-11 -> 1 + 2**-10, where
    nearest would give 1 + 2**-9); bf16 operands are rounded to nearest."""
    one = np.ones(1, np.float32)
    for name in ("nv-ampere-tf32", "nv-hopper-tf32", "nv-blackwell-tf32"):
        assert float(dot(np.array([1 + 2.0**-10 + 2.0**-11], np.float32), one, name)) == 1 + 2.0**-10
        assert float(dot(np.array([-(1 + 2.0**-10 + 2.0**-11)], np.float32), one, name)) == -(1 + 2.0**-10)
    assert float(dot(np.array([1 + 2.0**-8 + 2.0**-9], np.float32), one, "nv-hopper-bf16")) == 1 + 2.0**-7


def test_nan_is_canonical_and_zero_signs():
    nan_bits = np.float32(np.nan).view(np.uint32)
    r = dot(np.array([np.inf, 1.0], np.float32), np.array([0.0, 1.0], np.float32), "nv-hopper-bf16")
    assert r.view(np.uint32) == nan_bits
    # -0 only when every term is -0 (K is padded with +0 to a multiple of the step: 16 here)
    neg0 = dot(np.full(16, -0.0, np.float32), np.ones(16, np.float32), "nv-hopper-fp16", c=-0.0)
    assert np.signbit(neg0) and neg0 == 0
    assert not np.signbit(dot(np.full(15, -0.0, np.float32), np.ones(15, np.float32), "nv-hopper-fp16", c=-0.0))
    pos0 = dot(np.array([-1.0], np.float32), np.array([1.0], np.float32), "nv-hopper-fp16", c=1.0)
    assert not np.signbit(pos0) and pos0 == 0


def test_shapes_batches_and_addend():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3, 40)).astype(np.float32)
    b = rng.standard_normal((40, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    out = matmul(a, b, "nv-ampere-fp16", c=c)
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    for t in range(2):
        assert same_bits(out[t], matmul(a[t], b, "nv-ampere-fp16", c=np.broadcast_to(c, (3, 5))))
    v = dot(a[0], b[:, 0], "nv-ampere-fp16")
    assert v.shape == (3,) and same_bits(v, matmul(a[0], b[:, 0], "nv-ampere-fp16"))


# -- threads --------------------------------------------------------------------
@pytest.fixture
def threads_always(monkeypatch):
    """Small products run on the calling thread (mma_cpu.SERIAL_BELOW); these tests' products take the thread pool."""
    monkeypatch.setattr(mma_cpu, "SERIAL_BELOW", 0)


@pytest.mark.usefixtures("threads_always")
@pytest.mark.parametrize("name", ["nv-ampere-bf16", "nv-hopper-fp8-promote128", "nv-volta-fp16-f16"])
def test_one_thread_equals_two(name):
    """Ten row tiles and two column panels of the kernel (the second partial) on one and on two threads; the
    operands stay below dispatch.SPECIALISE_FROM elements, so their rounding runs the loops `lowprec warm`
    compiles."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 100)) * 2.0 ** rng.integers(-8, 8, (37, 100))
    b = rng.standard_normal((100, TILE_J + 36))
    assert b.size < dispatch.SPECIALISE_FROM and b.shape[1] % TILE_J
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        r1 = matmul(a, b, name)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        r2 = matmul(a, b, name)
    finally:
        numba.set_num_threads(old)
    assert same_bits(r1, r2)


def test_serial_launch_keeps_the_bits(monkeypatch):
    """A product below mma_cpu.SERIAL_BELOW runs on the calling thread, above it on the pool: the same bits."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 64)), rng.standard_normal((64, 96))
    assert 40 * 64 * 128 < mma_cpu.SERIAL_BELOW
    serial = matmul(a, b, "nv-hopper-fp8")
    monkeypatch.setattr(mma_cpu, "SERIAL_BELOW", 0)
    assert same_bits(serial, matmul(a, b, "nv-hopper-fp8"))


def _quantized_operands(u, rng, M, K, N):
    """Elements of the unit's formats and, block-scaled, scale values per block along K (and the dequantized values)."""
    QA = np.asarray(round_to(rng.standard_normal((M, K)) * 2.0 ** rng.integers(-6, 6, (M, K)), u.a_format), np.float64)
    QB = np.asarray(round_to(rng.standard_normal((K, N)) * 2.0 ** rng.integers(-6, 6, (K, N)), u.b_format), np.float64)
    QA[rng.random((M, K)) < 0.05] = 0.0  # zero terms (their steps align at e_zero)
    QB[rng.random((K, N)) < 0.05] = -0.0
    if u.block_format is None:
        return QA, None, QB, None
    nb = -(-K // u.block)
    sf = u.block_format.scale
    SA = np.asarray(round_to(2.0 ** rng.uniform(-8, 8, (M, nb)), sf), np.float64)
    SB = np.asarray(round_to(2.0 ** rng.uniform(-8, 8, (nb, N)), sf), np.float64)
    return QA, SA, QB, SB


@pytest.mark.parametrize("name", ["nv-ampere-bf16", "nv-hopper-fp8-promote128", "nv-blackwell-mxfp8",
                                  "nv-blackwell-nvfp4"])
@pytest.mark.parametrize("M,K,N", [(70, 40, 5), (3, 40, 20), (5, 40, 100), (4, 40, TILE_J + 36)])
def test_panel_widths_and_transposed_products(name, M, K, N):
    """The tile's lanes are the columns of a panel of B whose width follows N (mma_cpu.panel_width: 16 lanes for 5
    columns, 32 for 20, 128 for 100, two panels of 192 for 292), and a product with fewer than 64 columns and more
    rows than columns runs transposed (c.T + b.T @ a.T). Entries in the first and last row and column, and in the
    middle, against the exact reference."""
    u = PRESETS[name]
    assert [mma_cpu.panel_width(n) for n in (5, 20, 100, TILE_J + 36)] == [16, 32, 128, 192]
    rng = np.random.default_rng(M * 1000 + N)
    QA, SA, QB, SB = _quantized_operands(u, rng, M, K, N)
    C = np.asarray(round_to(rng.standard_normal((M, N)), "fp32"), np.float64)
    rows, cols = sorted({0, M // 2, M - 1}), sorted({0, N // 2, N - 1})
    if u.block_format is None:
        got = matmul(QA, QB, u, c=C)
        exp = ref.mma_matmul(QA[rows], QB[:, cols], C[np.ix_(rows, cols)], u)
    else:
        A, B = _dequantized(u, QA, SA, QB, SB)
        got = block_matmul(A, SA, B, SB, u, c=C)
        exp = ref.block_mma_matmul(QA[rows], SA[rows], QB[:, cols], SB[:, cols], C[np.ix_(rows, cols)], u)
    assert same_bits(got[np.ix_(rows, cols)], exp)


# -- DeepSeek-V3: fp8 accumulation error grows with K, promotion every 128 keeps it flat ----------
def test_fp8_promotion_error_growth():
    """a, b uniform on [0, 1) rounded to e4m3 (all products positive: truncation always loses magnitude,
    the case where the error accumulates); relative error of the mean over 7 x 7 outputs against the
    exact product (7 rows: operands below dispatch.SPECIALISE_FROM elements, rounded by the loops `lowprec warm`
    compiles). Measured: nv-hopper-fp8 5.0e-3 (K = 512) -> 6.6e-2 (K = 4096); promoted every 128: 5.0e-4 at
    every K."""
    rng = np.random.default_rng(0)
    errs = {}
    for K in (512, 4096):
        a = round_to(rng.uniform(0, 1, (7, K)), "fp8_e4m3fn")
        b = round_to(rng.uniform(0, 1, (K, 7)), "fp8_e4m3fn")
        assert a.size < dispatch.SPECIALISE_FROM
        exact = a @ b  # float64: every partial sum is exact here (multiples of 2**-18 below 2**13)
        for name in ("nv-hopper-fp8", "nv-hopper-fp8-promote128"):
            errs[name, K] = float(np.mean(np.abs(matmul(a, b, name) - exact) / exact))
    assert errs["nv-hopper-fp8", 4096] > 8 * errs["nv-hopper-fp8", 512]
    assert errs["nv-hopper-fp8", 4096] > 0.02
    assert errs["nv-hopper-fp8-promote128", 4096] < 1e-3
    assert errs["nv-hopper-fp8-promote128", 4096] < 1.5 * errs["nv-hopper-fp8-promote128", 512]


@pytest.mark.parametrize("name,expected", [("nv-turing-fp16-f16", 0.0), ("nv-ampere-fp16-f16", 0.0),
                                           ("nv-hopper-fp16-f16", 2.0**-24)])
def test_zero_terms_align_at_e_zero(name, expected):
    """A zero term (here c = 0) takes part in the alignment at e_zero: with e_zero = -21 (mma, fp16 output) the
    largest exponent is -21, the grid 2**-45 cuts the product 2**-46, and 2**-25 is an exact tie that rounds to
    even (0); with -133 (wgmma) the grid is 2**-50, 2**-25 + 2**-46 is above the tie and rounds up to 2**-24."""
    a = np.array([2.0**-11, 2.0**-24])
    b = np.array([2.0**-14, 2.0**-22])
    assert float(dot(a, b, name)) == expected
    assert ref.mma_dot(a, b, 0.0, PRESETS[name]) == expected


def test_unit_table_and_explain_view():
    from lowprec.cli import main
    from lowprec.matrix_units.explain import explain_mma, unit_table

    table = unit_table()
    assert all(f"| {n} |" in table for n in PRESETS)
    text = explain_mma([-2.0**13, -0.5, -0.25, -0.125], [2.0**10, 1, 1, 1], "nv-turing-fp16", c=2.0**23)
    lines = text.splitlines()
    assert lines[-3] == "result   -0.5" and lines[-2] == "exact    -0.875"
    assert any("-0.25" in ln and ln.rstrip().endswith("-0.25") for ln in lines)  # the cut-off part of -0.25
    assert main(["matrix-units", "nv-hopper-fp8"]) == 0
    assert main(["explain-mma", "nv-volta-fp16", "--a", "1", "1", "--b", "2", "1e-7"]) == 0
    assert main(["explain-mma", "nv-blackwell-mxfp8"]) == 0  # the built-in worked example
    assert main(["explain-mma", "nv-blackwell-nvfp4", "--a", "1", "-3", "--b", "0.5", "2", "--c", "1"]) == 0


@pytest.mark.parametrize("name", ["nv-hopper-fp8-promote128", "nv-ampere-tf32", "nv-blackwell-fp8-f16"])
def test_long_chains_match_reference(name):
    """K = 300: several steps, a partial last step, and for promote128 three promotion blocks (the last partial)."""
    u = PRESETS[name]
    rng = np.random.default_rng(11)
    a = rng.uniform(-1, 1, (2, 300)) * 2.0 ** rng.integers(-6, 6, (2, 300))
    b = rng.uniform(-1, 1, (300, 2))
    c = rng.uniform(-4, 4, (2, 2))
    with np.errstate(over="ignore"):
        assert same_bits(matmul(a, b, u, c=c), ref.mma_matmul(a, b, c, u))


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(problems())
def test_kernel_matches_reference_long(problem):
    """The reference comparison with ten times the examples (slow: run with ``-m slow``)."""
    test_kernel_matches_reference.hypothesis.inner_test(problem)


def test_empty_k_returns_the_addend():
    c = np.array([[1.0 + 2.0**-20]])
    for name in ("nv-hopper-fp8", "nv-hopper-fp8-promote128", "nv-ampere-fp16"):
        assert same_bits(matmul(np.zeros((1, 0)), np.zeros((0, 1)), name, c=c), c)
        assert same_bits(ref.mma_matmul(np.zeros((1, 0)), np.zeros((0, 1)), c, PRESETS[name]), c)


# -- block-scaled presets (Blackwell mxf8f6f4, mxf4, mxf4nvf4) ----------------------------------------------
def test_block_preset_parameters():
    mx8, mx4, nv4 = (PRESETS[n] for n in ("nv-blackwell-mxfp8", "nv-blackwell-mxfp4", "nv-blackwell-nvfp4"))
    assert (mx8.step_k, mx8.frac_bits, mx8.e_zero, mx8.block, mx8.group, mx8.block_format.scale.name,
            mx8.block_format.scale_rule, mx8.a_format.name) == (32, 25, -133, 32, 0, "e8m0", "floor", "fp8_e4m3fn")
    assert (mx4.step_k, mx4.frac_bits, mx4.e_zero, mx4.block, mx4.group, mx4.block_format.scale.name,
            mx4.a_format.name) == (64, 35, -139, 32, 16, "e8m0", "fp4_e2m1fn")
    assert (nv4.step_k, nv4.frac_bits, nv4.block, nv4.group, nv4.block_format.scale.name,
            nv4.block_format.tensor_scale) == (64, 35, 16, 16, "ue4m3", True)
    assert all(PRESETS[n].out_format.name == "fp32" and PRESETS[n].source for n in SCALED)
    e5 = mx8.replace(b_format="fp8_e5m2")
    assert e5.operand_block_format("b").element.name == "fp8_e5m2" and e5.operand_block_format("a") == mx8.block_format
    with pytest.raises(ValueError, match="E8M0 powers of two"):
        mx8.replace(block_format="nvfp4")
    with pytest.raises(ValueError, match="group=16 must divide"):
        mx4.replace(k=40)
    with pytest.raises(ValueError, match="exceed 53 bits"):
        mx4.replace(a_format="fp8_e5m2", b_format="fp8_e5m2")
    with pytest.raises(ValueError, match="needs a block_format"):
        MatrixUnit(group=16)
    with pytest.raises(ValueError, match="1-D blocks"):
        mx8.replace(block_format="fp8_128x128")


def _one(unit, qa, sa, qb, sb, c=0.0):
    """c + sum(qa * sa * qb * sb) for one row and column: per-element scales given as one per block."""
    u = PRESETS[unit] if isinstance(unit, str) else unit
    qa, qb = np.asarray(qa, float), np.asarray(qb, float)
    SA, SB = np.asarray(sa, float)[None, :], np.asarray(sb, float)[:, None]
    fa, fb = np.repeat(SA, u.block, 1)[:, :qa.size], np.repeat(SB, u.block, 0)[:qb.size]
    with np.errstate(invalid="ignore"):
        got = block_matmul(qa[None, :] * np.where(np.isnan(fa), 1, fa), SA, qb[:, None] * np.where(np.isnan(fb), 1, fb),
                           SB, u, c=np.array([[c]]))
    exp = ref.block_mma_matmul(qa[None, :], SA, qb[:, None], SB, np.array([[c]]), u)
    assert same_bits(got, exp), (got, exp)
    return float(got[0, 0])


def _vec(n, pairs):
    """A length-n vector of zeros with the given {index: value}."""
    v = np.zeros(n)
    for i, x in pairs.items():
        v[i] = x
    return v


def test_mxfp8_hand_vectors():
    """nv-blackwell-mxfp8: one E8M0 scale per 32 elements along K and one step of 32 products; every product
    q_a q_b s_a s_b is a term at exponent E(q_a) + E(q_b) + log2 s_a + log2 s_b, truncated to 25 fractional bits."""
    u = "nv-blackwell-mxfp8"
    ones = np.ones(32)
    # scales at the ends of E8M0's range: 2**127 * 2**-127 = 1, so 32 products of 1
    assert _one(u, ones, [2.0**127], ones, [2.0**-127]) == 32.0
    # 2**127 * 2**127: the exact sum 32 * 2**254 is beyond fp32: the toward-zero conversion overflows to Inf
    assert _one(u, ones, [2.0**127], ones, [2.0**127]) == np.inf
    # 2**-127 * 2**-127: products 448**2 * 2**-254 sit far below the grid 2**(-133 - 25) that the zero
    # addend (e_zero = -133) sets: truncated to 0
    assert _one(u, np.full(32, 448.0), [2.0**-127], np.full(32, 448.0), [2.0**-127]) == 0.0
    # 2**-127 * 2**-13: 32 products 2**-140, exact on that grid: 2**-135, an fp32 subnormal
    assert _one(u, ones, [2.0**-127], ones, [2.0**-13]) == 2.0**-135
    # alignment truncation inside a step: 448 * 448 = 1.53 * 2**17 sets the grid 2**(16 - 25) = 2**-9, the
    # product -2**-9 * 2**-9 = -2**-18 is cut: 200704 (round toward zero of the exact sum: 200704 - 2**-6)
    a, b = _vec(32, {0: 448.0, 1: -2.0**-9}), _vec(32, {0: 448.0, 1: 2.0**-9})
    assert _one(u, a, [1.0], b, [1.0]) == 200704.0
    assert float(round_to(np.array([200704 - 2.0**-18]), "fp32", "toward_zero")[0]) == 200704 - 2.0**-6
    # the addend large: c = 2**40 sets the grid 2**15; -200704 is truncated to -196608 (6 * 2**15), and
    # 2**40 - 196608 is an fp32 value (the exact sum rounds toward zero to 2**40 - 262144)
    a, b = _vec(32, {0: -448.0}), _vec(32, {0: 448.0})
    assert _one(u, a, [1.0], b, [1.0], c=2.0**40) == 2.0**40 - 196608
    # ... and small: c = -2**-30 below the grid 2**-25 of the product 1: cut (round toward zero of 1 - 2**-30
    # would give 1 - 2**-24)
    assert _one(u, _vec(32, {0: 1.0}), [1.0], _vec(32, {0: 1.0}), [1.0], c=-2.0**-30) == 1.0


def test_mxfp8_nan_scale_and_e5m2():
    u = "nv-blackwell-mxfp8"
    nan_bits = np.float32(np.nan).view(np.uint32)
    # a NaN scale (E8M0 0xFF) makes every product of its block NaN, even zero elements; the chain keeps it
    r = _one(u, np.zeros(64), [np.nan, 1.0], np.ones(64), [1.0, 1.0])
    assert r != r
    qa, qb = np.ones((2, 64)), np.ones((64, 1))
    out = block_matmul(qa, np.array([[1.0, np.nan], [1.0, 1.0]]), qb, np.ones((2, 1)), u)
    assert out.dtype == np.float64 and out[0, 0] != out[0, 0] and out[1, 0] == 64.0
    assert np.float32(out[0, 0]).view(np.uint32) == nan_bits
    # e5m2 operands for b (the backward pass): Inf elements follow the IEEE sum
    e5 = PRESETS[u].replace(b_format="fp8_e5m2")
    assert _one(e5, np.ones(32), [2.0**-3], _vec(32, {0: 57344.0, 1: np.inf}), [1.0]) == np.inf
    assert _one(e5, np.ones(32), [1.0], _vec(32, {0: -np.inf, 1: np.inf}), [1.0]) != 0  # NaN


@pytest.mark.parametrize("unit", ["nv-blackwell-mxfp4", "nv-blackwell-nvfp4"])
def test_fp4_hand_vectors(unit):
    """mxf4 / mxf4nvf4: four exact sums of 16 products per step, each aligned at the exponent of its two scales
    (not at its own magnitude), truncated to 35 fractional bits."""
    u = PRESETS[unit]
    nb = 64 // u.block
    ones_a = [1.0] * nb

    def scales(first, second):  # first scale for elements 0..31, second for 32..63
        return [first] * (nb // 2) + [second] * (nb // 2)

    # group 0: 6 * 6 * 2**16 at scale exponent 16; group 2: -0.5 * 0.5 * 2**-15 = -2**-17 at scale exponent
    # -15. The grid is 2**(16 - 35) = 2**-19 (from the scales, not from the value's exponent 21, which would
    # cut it): kept, and the exact 2359296 - 2**-17 rounds toward zero to 2359296 - 0.25
    a, b = _vec(64, {0: 6.0, 32: -0.5}), _vec(64, {0: 6.0, 32: 0.5})
    assert _one(u, a, scales(256.0, 2.0**-9), b, scales(256.0, 2.0**-6)) == 2359296 - 0.25
    # at scale exponent -18 the term -2**-20 is below the grid: cut
    assert _one(u, a, scales(256.0, 2.0**-9), b, scales(256.0, 2.0**-9)) == 2359296.0
    # the addend large: c = 2**20 sets the grid 2**-15 and cuts the group -2**-20 (scales 2**-9 * 2**-9):
    # 2**20, where rounding the exact sum toward zero gives 2**20 - 2**-4
    a, b = _vec(64, {0: -0.5}), _vec(64, {0: 0.5})
    assert _one(u, a, [2.0**-9] * nb, b, [2.0**-9] * nb, c=2.0**20) == 2.0**20
    # ... and small: c = -2**-37 against a group 1 at exponent 0: cut
    assert _one(u, _vec(64, {0: 1.0}), ones_a, _vec(64, {0: 1.0}), ones_a, c=-2.0**-37) == 1.0
    # a sum that cancels keeps its scales' exponent: the group 6*6 - 6*6 at exponent 16 sets the grid 2**-19 and
    # cuts -2**-20 (a zero group would sit at e_zero, the grid would come from c = 2**-10 and keep it)
    a, b = _vec(64, {0: 6.0, 1: -6.0, 32: -0.5}), _vec(64, {0: 6.0, 1: 6.0, 32: 0.5})
    assert _one(u, a, scales(256.0, 2.0**-9), b, scales(256.0, 2.0**-9), c=2.0**-10) == 2.0**-10
    a[1] = 0.0
    b[0] = 0.0
    assert _one(u, a, scales(256.0, 2.0**-9), b, scales(256.0, 2.0**-9), c=2.0**-10) == 2.0**-10 - 2.0**-20
    # a NaN scale: NaN
    assert _one(u, np.ones(64), scales(1.0, np.nan), np.ones(64), ones_a) != _one(u, np.ones(64), ones_a,
                                                                                    np.ones(64), ones_a)
    if u.block_format.scale.name == "e8m0":
        # scales at the ends of E8M0: 2**127 * 2**-127 = 1; 2**127 * 2**127 overflows; 2**-127 * 2**-127 is lost
        assert _one(u, np.full(64, 6.0), [2.0**127] * nb, np.full(64, 6.0), [2.0**-127] * nb) == 64 * 36.0
        assert _one(u, np.full(64, 0.5), [2.0**127] * nb, np.full(64, 0.5), [2.0**127] * nb) == np.inf
        assert _one(u, np.full(64, 6.0), [2.0**-127] * nb, np.full(64, 6.0), [2.0**-127] * nb) == 0.0
        # e_zero = -139: the zero addend sets the grid 2**-174. Group 0: 2 * 2**-150 = 2**-149 (scales 2**-127,
        # 2**-23); group 2: -0.25 * 2**-178 = -2**-180, cut, so the result is 2**-149 (aligned at -150 instead,
        # the grid 2**-185 would keep it and 2**-149 - 2**-180 rounds toward zero to 0)
        a, b = _vec(64, {0: 2.0, 32: 0.5}), _vec(64, {0: 1.0, 32: -0.5})
        assert _one(u, a, [2.0**-127] * nb, b, scales(2.0**-23, 2.0**-51)) == 2.0**-149
    else:
        # UE4M3 scales carry significands: 1.125 * 1.125 * 36 = 45.5625; the smallest UE4M3 (2**-9, a
        # subnormal at exponent -6) times 448
        assert _one(u, _vec(64, {0: 6.0}), [1.125] * nb, _vec(64, {0: 6.0}), [1.125] * nb) == 45.5625
        assert _one(u, _vec(64, {0: 1.0}), [2.0**-9] * nb, _vec(64, {0: 1.0}), [448.0] * nb) == 448 * 2.0**-9
        # a zero scale makes its groups zero groups (at e_zero)
        assert _one(u, np.ones(64), [0.0] * nb, np.ones(64), ones_a, c=3.0) == 3.0


def _block_values(fmt, codes):
    """Element values of fmt (zeros, subnormals, the largest, random significands) from integer codes."""
    return np.array(_values(fmt, codes, len(codes)))


def _scale_values(fmt, codes):
    """Scale values spread over the whole scale format, its ends often, NaN sometimes."""
    out = []
    for code in codes:
        kind = code % 16
        if fmt.name == "e8m0":
            e = (-127, 127, -126, 126)[kind] if kind < 4 else (code >> 4) % 255 - 127
            out.append(np.nan if kind == 15 and code % 64 == 15 else 2.0 ** e)
        else:
            v = float(lowprec_decode(np.array([(code >> 4) % 127], np.uint8), fmt)[0])
            out.append(np.nan if kind == 15 and code % 64 == 15 else (448.0 if kind == 1 else v))
    return np.array(out)


def lowprec_decode(codes, fmt):
    from lowprec import decode

    return decode(codes, fmt)


@st.composite
def block_problems(draw):
    u = PRESETS[draw(st.sampled_from(SCALED))]
    if u.group == 0 and draw(st.booleans()):
        u = u.replace(**{draw(st.sampled_from(["a_format", "b_format"])): "fp8_e5m2"})
    M, N = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    K = draw(st.integers(1, 2 * u.step_k + 5))
    nb = -(-K // u.block)
    codes = draw(st.lists(st.integers(0, 2**40), min_size=M * K + K * N + M * nb + nb * N,
                          max_size=M * K + K * N + M * nb + nb * N))
    QA = _block_values(u.a_format, codes[:M * K]).reshape(M, K)
    QB = _block_values(u.b_format, codes[M * K:M * K + K * N]).reshape(K, N)
    rest = codes[M * K + K * N:]
    sf = u.block_format.scale
    SA = _scale_values(sf, rest[:M * nb]).reshape(M, nb)
    SB = _scale_values(sf, rest[M * nb:]).reshape(nb, N)
    C = np.array(draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=M * N,
                               max_size=M * N))).reshape(M, N) * 2.0 ** draw(st.integers(-140, 60))
    if draw(st.booleans()):  # an exact cancellation, and a group that cancels
        QA[0, 0], QB[0, 0] = 1.0, 1.0
        if K > 1 and u.group:
            QA[0, 1], QB[1, 0] = -1.0, 1.0
    return u, QA, SA, QB, SB, C


def _dequantized(u, QA, SA, QB, SB):
    fa = np.repeat(SA, u.block, 1)[:, :QA.shape[1]]
    fb = np.repeat(SB, u.block, 0)[:QB.shape[0]]
    with np.errstate(all="ignore"):
        return QA * np.where(np.isnan(fa), 1, fa), QB * np.where(np.isnan(fb), 1, fb)


@settings(max_examples=60, deadline=None)
@given(block_problems())
def test_block_kernel_matches_reference(problem):
    u, QA, SA, QB, SB, C = problem
    C = np.asarray(round_to(C, "fp32"), dtype=np.float64)
    A, B = _dequantized(u, QA, SA, QB, SB)
    with np.errstate(all="ignore"):
        got = block_matmul(A, SA, B, SB, u, c=C)
    exp = ref.block_mma_matmul(QA, SA, QB, SB, C, u)
    assert same_bits(got, exp), (u, QA, SA, QB, SB, C, got, exp)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(block_problems())
def test_block_kernel_matches_reference_long(problem):
    test_block_kernel_matches_reference.hypothesis.inner_test(problem)


@pytest.mark.parametrize("name", SCALED)
def test_block_path1_is_quantize_then_path2(name):
    """matmul(a, b, preset) == block_matmul of lowprec.block's quantization (a along K = its last axis, b along
    axis 0), and for NVFP4 the epilogue fp32(fp32(s_a * s_b) * D + c), one rounding."""
    import lowprec.block as lb

    u = PRESETS[name]
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 100)) * 2.0 ** rng.integers(-10, 10, (3, 100))
    b = rng.standard_normal((100, 2)).astype(np.float32)
    a[1, 32:64] = 0.0  # a zero block
    parts = []
    for x, axis in ((a, -1), (b, 0)):
        enc = lb.encode(x, u.block_format, axis=axis, packed=False)
        ts = enc.tensor_scale
        values = lb.decode(enc.elements, enc.scales, u.block_format, axis=axis, packed=False,
                           tensor_scale=None if ts is None else 1.0)
        sv = lowprec_decode(enc.scales, u.block_format.scale)
        parts.append((values, sv, ts))
    (A, SA, ta), (B, SB, tb) = parts
    got = matmul(a, b, name)
    assert got.dtype == np.float64 and got.shape == (3, 2)
    d = block_matmul(A, SA, B, SB, u)
    if ta is None:
        assert same_bits(got, d)
        c = np.array([[0.5], [-3.0], [1e-3]], np.float32)
        assert same_bits(matmul(a, b, name, c=c), block_matmul(A, SA, B, SB, u, c=c))
    else:
        alpha = np.float32(float(ta) * float(tb))
        assert same_bits(got, np.float32(float(alpha) * d).astype(np.float64))  # alpha * D is exact in float64
    scale = 1.0 if ta is None else float(np.float32(float(ta) * float(tb)))
    assert np.allclose(got, A @ B * scale, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(A) @ np.abs(B))) * scale)


def test_block_rceil_quantizer_and_batches():
    """replace(block_format=...) changes the quantizer: the microxcaling block (960 clipped to 896 by the OCP
    floor rule) keeps 960 under rceil; batched operands quantize per matrix."""
    import lowprec.block as lb

    a = np.array([[960.0, 957.0] + [1.0] * 30])
    b = _vec(32, {0: 1.0})[:, None]
    u = get_matrix_unit("nv-blackwell-mxfp8")
    assert float(matmul(a, b, u)[0, 0]) == 896.0
    rceil = u.replace(block_format=u.block_format.replace(scale_rule="rceil"))
    assert float(matmul(a, b, rceil)[0, 0]) == 960.0
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    out = matmul(x, y, "nv-blackwell-mxfp4")
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    assert same_bits(out[1], matmul(x[1], y, "nv-blackwell-mxfp4"))
    assert np.array_equal(lb.quantize(x[1], "mxfp4") @ lb.quantize(y, "mxfp4", axis=0), out[1])
    e5 = u.replace(b_format="fp8_e5m2")  # b quantized to mxfp8_e5m2 (its element format replaced)
    xy = (x[0].astype(np.float64), y.astype(np.float64) * 1e4)
    assert np.array_equal(matmul(*xy, e5), lb.quantize(xy[0], "mxfp8_e4m3") @ lb.quantize(xy[1], "mxfp8_e5m2", axis=0))
    for n in SCALED:  # K = 0: the addend as it is; a NaN input: its block's NaN scale
        assert same_bits(matmul(np.zeros((1, 0)), np.zeros((0, 2)), n, c=np.array([[1.5, -2.0]])),
                         np.array([[1.5, -2.0]]))
        r = matmul(np.array([[np.nan] + [1.0] * 40]), np.ones((41, 1)), n)
        assert r[0, 0] != r[0, 0]
    v = dot(x[0, 0], y[:, 0], "nv-blackwell-mxfp8")
    assert v.shape == () and float(v) == float(matmul(x[0, :1], y[:, :1], "nv-blackwell-mxfp8")[0, 0])


def test_block_matmul_validation():
    u = "nv-blackwell-mxfp8"
    ones = np.ones((2, 64))
    s = np.ones((2, 2))
    with pytest.raises(ValueError, match="unit must be block-scaled"):
        block_matmul(ones, s, ones.T, s.T, "nv-blackwell-fp8")
    with pytest.raises(ValueError, match=r"a_scales must have shape \(2, 2\)"):
        block_matmul(ones, np.ones((2, 1)), ones.T, s.T, u)
    with pytest.raises(ValueError, match="b_scales must hold e8m0 scale values"):
        block_matmul(ones, s, ones.T, np.full((2, 2), 3.0), u)
    bad = ones.copy()
    bad[1, 5] = 0.3
    with pytest.raises(ValueError, match=r"a_values\[1, 5\] = 0.3 divided by its scale"):
        block_matmul(bad, s, ones.T, s.T, u)
    with pytest.raises(ValueError, match="shape mismatch"):
        block_matmul(ones, s, ones, s, u)
    with pytest.raises(ValueError, match="b_values must be a 2-D array"):
        block_matmul(ones, s, np.ones(64), s.T, u)
    from lowprec.matrix_units.explain import explain_mma

    with pytest.raises(ValueError, match="a_scales and b_scales go together"):
        explain_mma([1.0], [1.0], u, a_scales=[1.0])
    with pytest.raises(ValueError, match="a_scales must hold one scale per 32 elements"):
        explain_mma([1.0], [1.0], u, a_scales=[1.0, 1.0], b_scales=[1.0])
    with pytest.raises(ValueError, match="finite inputs and scales only"):
        explain_mma([1.0], [1.0], u, a_scales=[np.nan], b_scales=[1.0])
    with pytest.raises(ValueError, match="for block-scaled units"):
        explain_mma([1.0], [1.0], "nv-hopper-fp8", a_scales=[1.0], b_scales=[1.0])
    with pytest.raises(ValueError, match="not a value of fp4_e2m1fn"):
        block_matmul(np.full((1, 64), 5.0), np.ones((1, 4)), np.ones((64, 1)), np.ones((4, 1)), "nv-blackwell-nvfp4")


@pytest.mark.usefixtures("threads_always")
@pytest.mark.parametrize("name", SCALED)
def test_block_one_thread_equals_two(name):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((9, 200)) * 2.0 ** rng.integers(-20, 20, (9, 200))
    b = rng.standard_normal((200, TILE_J + 36))  # two column panels, the second partial
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        r1 = matmul(a, b, name)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        r2 = matmul(a, b, name)
    finally:
        numba.set_num_threads(old)
    assert same_bits(r1, r2)
    if not PRESETS[name].block_format.tensor_scale:  # (NVFP4's tensor scale of one column differs)
        for j in (0, TILE_J + 1, TILE_J + 35):  # the tiles do not change the bits: one column alone (one panel, one lane)
            assert same_bits(r1[:, j:j + 1], matmul(a, b[:, j:j + 1], name))


# -- explain-mma of block-scaled units, against the exact reference -------------------------------------------
_SCALE_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\.\.(\d+)\s+(0x[0-9a-f]+)\s+(\S+)\s+(-?\d+)\s+(0x[0-9a-f]+)\s+(\S+)\s+(-?\d+)$")
_TERM_ROW = re.compile(r"^\s+(c|a\d+\*b\d+|group \d+)\s+(\S+)\s+(-?\d+)\s+(-?)([01]+)\.([01]+)\s+(\S+)$")


def _parse_explain(text):
    """The numbers of an explain_mma view of a block-scaled unit: scale rows, and per step the largest exponent,
    the term rows (name, value, exponent, aligned units, cut), the exact truncated sum and the rounded value."""
    scales, steps, result = [], [], None
    for line in text.splitlines():
        m = _SCALE_ROW.match(line)
        if m and not steps:
            scales.append((int(m[4], 16), float(m[5]), int(m[6]), int(m[7], 16), float(m[8]), int(m[9])))
        elif line.startswith("step "):
            steps.append({"terms": []})
        elif steps and (m := re.search(r"largest exponent (-?\d+)", line)):
            steps[-1]["e_max"] = int(m[1])
        elif steps and (m := _TERM_ROW.match(line)):
            units = int(m[5] + m[6], 2) * (-1 if m[4] else 1)
            steps[-1]["terms"].append((m[1], float(m[2]), int(m[3]), units, 0.0 if m[7] == "0" else float(m[7])))
        elif steps and (m := re.search(r"exact sum of the truncated terms (\S+) =", line)):
            steps[-1]["sum"] = float(m[1])
        elif steps and (m := re.search(r"\(a multiple of 2\*\*-?\d+\): (\S+), dropped", line)):
            steps[-1]["rounded"] = float(m[1])
        elif line.startswith("result"):
            result = float(line.split()[1])
    return scales, steps, result


def _check_explain(u, text, QA, SA, QB, SB, c, tensor=None):
    """Every printed number of the view against mma_reference (block_terms, aligned_terms, block_step) and the
    scale codes against ml_dtypes' encodings."""
    from fractions import Fraction

    import ml_dtypes

    scales, steps, result = _parse_explain(text)
    sf = u.block_format.scale
    dt = ml_dtypes.float8_e8m0fnu if sf.name == "e8m0" else ml_dtypes.float8_e4m3fn  # ue4m3: e4m3fn's positive codes
    assert len(scales) == SA.size
    for q, (ca, va, ea, cb, vb, eb) in enumerate(scales):
        assert (va, vb) == (SA[q], SB[q])
        assert (ca, cb) == tuple(int(np.array([s], dt).view(np.uint8)[0]) for s in (SA[q], SB[q]))
        assert (ea, eb) == (ref.scale_exponent(SA[q], sf), ref.scale_exponent(SB[q], sf))
    K, k, blk = QA.size, u.step_k, u.block
    Kp = -(-K // k) * k
    qa, qb = list(QA) + [0.0] * (Kp - K), list(QB) + [0.0] * (Kp - K)
    sa = [float(SA[min(l // blk, SA.size - 1)]) for l in range(Kp)]
    sb = [float(SB[min(l // blk, SB.size - 1)]) for l in range(Kp)]
    d = 0.0 if tensor else c
    assert len(steps) == Kp // k
    for s0, step in zip(range(0, Kp, k), steps):
        sl = slice(s0, s0 + k)
        terms = ref.block_terms(qa[sl], sa[sl], qb[sl], sb[sl], d, u)
        e_max, units = ref.aligned_terms(terms, u)
        grid = Fraction(2) ** (e_max - u.frac_bits)
        names = [f"a{s0 + i}*b{s0 + i}" if u.group == 0 else f"group {(s0 + i * u.group) // u.group}"
                 for i in range(len(terms) - 1)] + ["c"]
        rows = [(nm, float(v), e, n, float(v - n * grid)) for nm, (v, e, _), n in zip(names, terms, units)
                if u.group or nm == "c" or v != 0]
        assert step["e_max"] == e_max
        assert sorted(step["terms"]) == sorted(rows), (step["terms"], rows)
        assert step["sum"] == float(sum(units) * grid)
        d = ref.block_step(qa[sl], sa[sl], qb[sl], sb[sl], d, u)
        assert step["rounded"] == d
    if tensor:
        alpha = float(np.float32(tensor[0] * tensor[1]))
        d = float(ref.round_fraction(Fraction(alpha) * Fraction(d) + Fraction(c), 23, -126, 127, "rne"))
    assert result == d
    return steps


@pytest.mark.parametrize("name", SCALED)
def test_explain_block_scaled_against_reference(name):
    """explain_mma of a block-scaled unit: the built-in worked example (scales given) and float inputs quantized
    as matmul does (two steps, the second padded; NVFP4 with its per-tensor scales and epilogue), every printed
    scale, term, cut, sum and rounding against the Fraction reference; the worked examples show what they claim."""
    import lowprec.block as lb
    from lowprec.matrix_units.explain import explain_mma, worked_example

    u = PRESETS[name]
    a, sa, b, sb, c = worked_example(u)
    text = explain_mma(a, b, u, c, a_scales=sa, b_scales=sb)
    fa, fb = np.repeat(sa, u.block)[:a.size], np.repeat(sb, u.block)[:b.size]
    steps = _check_explain(u, text, a / fa, sa, b / fb, sb, c)
    cut = [t for st in steps for t in st["terms"] if t[4] != 0]
    assert cut if u.group == 0 else not cut  # mxf8f6f4: products cut; fp4: the small group kept
    if u.group:  # a group that cancels keeps its scales' exponent (and sets the grid)
        assert ("group 0", 0.0, 16, 0, 0.0) in steps[0]["terms"] and steps[0]["e_max"] == 16
    rng = np.random.default_rng(1)
    K = u.step_k + 5
    x = rng.standard_normal(K) * 2.0 ** rng.integers(-6, 6, K)
    y = rng.standard_normal(K)
    text = explain_mma(x, y, u, c=0.375)
    parts = []
    for v, axis in ((x[None, :], -1), (y[:, None], 0)):
        enc = lb.encode(v, u.operand_block_format("a" if axis else "b"), axis=axis, packed=False)
        q = np.asarray(lowprec_decode(enc.elements, u.a_format), dtype=np.float64).ravel()
        parts += [q, np.asarray(lowprec_decode(enc.scales, u.block_format.scale), dtype=np.float64).ravel(),
                  enc.tensor_scale]
    QA, SA, ta, QB, SB, tb = parts
    _check_explain(u, text, QA, SA, QB, SB, 0.375, None if ta is None else (float(ta), float(tb)))

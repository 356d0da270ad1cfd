"""Matrix units (lowprec.matrix_units, kernels/mma_cpu.py): published vectors, the exact reference, threads.

The reference (tests/mma_reference.py) is written from NUMERICS.md section 5 with exact integer and
Fraction arithmetic; the kernel must give its bits (NaN is one canonical NaN) on every preset.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mma_reference as ref
from lowprec import round_to
from lowprec.linalg import dot, matmul
from lowprec.matrix_units import PRESETS, MatrixUnit, get_matrix_unit, is_matrix_unit

NAMES = list(PRESETS)
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
@pytest.mark.parametrize("name", ["nv-ampere-bf16", "nv-hopper-fp8-promote128", "nv-volta-fp16-f16"])
def test_one_thread_equals_two(name):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 300)) * 2.0 ** rng.integers(-8, 8, (37, 300))
    b = rng.standard_normal((300, 300))  # two column panels of the kernel, the second partial
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        r1 = matmul(a, b, name)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        r2 = matmul(a, b, name)
    finally:
        numba.set_num_threads(old)
    assert same_bits(r1, r2)


# -- DeepSeek-V3: fp8 accumulation error grows with K, promotion every 128 keeps it flat ----------
def test_fp8_promotion_error_growth():
    """a, b uniform on [0, 1) rounded to e4m3 (all products positive: truncation always loses magnitude,
    the case where the error accumulates); relative error of the mean over 32 x 8 outputs against the
    exact product. Measured: nv-hopper-fp8 5.0e-3 (K = 512) -> 6.6e-2 (K = 4096); promoted every 128:
    5.0e-4 at every K."""
    rng = np.random.default_rng(0)
    errs = {}
    for K in (512, 4096):
        a = round_to(rng.uniform(0, 1, (32, K)), "fp8_e4m3fn")
        b = round_to(rng.uniform(0, 1, (K, 8)), "fp8_e4m3fn")
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

"""Error measures and bounds: formulas by hand, and computed errors respecting the bounds."""

import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec import analysis
from lowprec.accumulation import PRESETS, Accumulation
from lowprec.linalg import dot, matmul


def test_measures_by_hand():
    assert analysis.exact_dot([1e16, 1.0, -1e16], [1.0, 1.0, 1.0]) == 1
    assert analysis.exact_sum([0.1, 0.2]) == Fraction(0.1) + Fraction(0.2)
    assert analysis.relative_error(1.0, Fraction(4, 3)) == 0.25
    assert analysis.relative_error(0.0, 0) == 0.0 and analysis.relative_error(1.0, 0) == math.inf
    # computed 3 for exact 1*1 + 1*(-2) + 1*4 = 3: no error; 4 has error 1 over sum |a_i b_i| = 7
    assert analysis.backward_error(3.0, [1, 1, 1], [1, -2, 4]) == 0.0
    assert analysis.backward_error(4.0, [1, 1, 1], [1, -2, 4]) == 1 / 7
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        analysis.backward_error(1.0, [1, 2], [1, 2, 3])


def test_formulas():
    u = 2.0 ** -11
    assert analysis.unit_roundoff("fp16") == u and analysis.unit_roundoff("fp16", "stochastic") == 2 * u
    assert analysis.unit_roundoff("bf16", "toward_zero") == 2.0 ** -7
    assert analysis.gamma(3, u) == 3 * u / (1 - 3 * u)
    with pytest.raises(ValueError, match="n\\*u < 1"):
        analysis.gamma(2048, u)
    lam = 5.0
    assert analysis.gamma_tilde(100, u, lam) == pytest.approx(math.exp(lam * 10 * u + 100 * u * u / (1 - u)) - 1)
    assert analysis.hm2019_probability(100, lam, u) == pytest.approx(1 - 200 * math.exp(-25 * (1 - u) ** 2 / 2))
    c, q = analysis.probabilistic_bound(500, u, 0.95)
    assert q == pytest.approx(0.95) and c < analysis.gamma(500, u)
    c_sr, q_sr = analysis.stochastic_rounding_bound(500, u, 0.95)
    assert q_sr == pytest.approx(0.95) and c_sr == analysis.probabilistic_bound(500, 2 * u, 0.95)[0]


def test_accumulation_bound_counts_roundings():
    u16, u32 = 2.0 ** -11, 2.0 ** -24
    assert analysis.accumulation_bound("fp16", 50)[0] == analysis.gamma(50, u16)
    t = 50 * u16 + u16  # unfused: the product is rounded to the accumulator too
    assert analysis.accumulation_bound("fp16-unfused", 50)[0] == t / (1 - t)
    t = 128 * 2.0 ** -13 + 3 * u32  # up to 128 roundings in an e8m13 chunk, toward zero (2u); 3 in fp32
    assert analysis.accumulation_bound("e4m3-chunk128", 300)[0] == pytest.approx(t / (1 - t))
    assert analysis.accumulation_bound("fp16-pairwise", 1000)[0] == analysis.gamma(10, u16)
    with pytest.raises(ValueError, match="compensated"):
        analysis.accumulation_bound("fp16-kahan", 10)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp16-pairwise", "bf16-sr", "e4m3-chunk128", "fp16-unfused"])
def test_computed_errors_respect_the_deterministic_bound(name):
    rng = np.random.default_rng(7)
    n = 100  # n * 2u < 1 for bf16
    A = rng.uniform(-1, 1, (6, n))
    B = rng.uniform(0, 1, (n, 6))
    acc = PRESETS[name]
    C = matmul(A, B, acc, seed=1)
    Ar = np.asarray(analysis_round(A, acc.a_format))
    Br = np.asarray(analysis_round(B, acc.b_format))
    c, _ = analysis.accumulation_bound(acc, n)
    for i in range(6):
        for j in range(6):
            assert analysis.backward_error(C[i, j], Ar[i], Br[:, j]) <= c


def analysis_round(x, fmt):
    from lowprec import round_to
    return round_to(x, fmt)


def test_probabilistic_bounds_hold_at_their_frequency():
    # fp16 accumulation of fp16 products, n = 1000 terms with u = 2**-11: gamma_n would be ~0.95,
    # the probabilistic bounds are far smaller yet must hold at least at the stated frequency.
    rng = np.random.default_rng(3)
    n, trials, prob = 1000, 60, 0.9
    A = rng.uniform(0, 1, (trials, n)).astype(np.float32)
    B = rng.uniform(0, 1, (trials, n)).astype(np.float32)
    for acc in (Accumulation(a_format="fp16", acc_format="fp16"),
                Accumulation(a_format="fp16", acc_format="fp16", acc_rounding="stochastic")):
        c, q = analysis.accumulation_bound(acc, n, "probabilistic", prob)
        assert q == pytest.approx(prob) and c < 0.2
        got = dot(A, B, acc, seed=9)
        Ar, Br = analysis_round(A, "fp16"), analysis_round(B, "fp16")
        errs = [analysis.backward_error(got[t], Ar[t], Br[t]) for t in range(trials)]
        assert np.mean(np.array(errs) <= c) >= q
        assert max(errs) <= analysis.accumulation_bound(acc, n)[0]

"""CUDA kernels == CPU kernels, bit for bit, for every preset and mode.

Runs under numba's CUDA simulator in CI (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1 before numba is imported); with LOWPREC_REAL_CUDA=1 on
a machine with a GPU the same tests run on the device. The simulator runs
each thread in Python, so the arrays here are small and chosen to cover
every branch: zeros, subnormals, ties, overflow, Inf and NaN.
"""

import numpy as np
import pytest

import lowprec
from lowprec.formats import FixedFormat, FloatFormat, get_format
from lowprec.kernels import cuda as kcuda

pytestmark = pytest.mark.skipif(not kcuda.is_available(), reason="no CUDA device or simulator")

MODES = ["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd", "stochastic"]
FORMATS = [get_format(n) for n in lowprec.PRESETS] + [FloatFormat(3, 4, has_subnormals=False),
                                                      FixedFormat(8, 3, overflow="wrap")]


def _probe(fmt, dtype):
    """Values around every interesting place of ``fmt``, representable in ``dtype``."""
    base = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1.0 + 2.0 ** -11, 0.1, 3.0, 7.5, 1e-3]
    if isinstance(fmt, FloatFormat):
        base += [fmt.max, fmt.max * 1.001, fmt.max * 2, fmt.tiny, fmt.tiny * 0.75, fmt.smallest_subnormal,
                 fmt.smallest_subnormal * 0.5, fmt.smallest_subnormal * 1.5]
    else:
        base += [fmt.max + 0.5, fmt.min - 0.5, fmt.eps * 2.5, 1e9]
    rng = np.random.default_rng(0)
    base += list(rng.standard_normal(16) * 10.0 ** rng.integers(-6, 6, 16))
    with np.errstate(over="ignore"):
        x = np.array(base + [-v for v in base], dtype=dtype)
    return x


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_round_cuda_equals_cpu_every_mode(fmt):
    for dtype in (np.float64, np.float32):
        if not fmt.fits_in(dtype):
            continue
        x = _probe(fmt, dtype)
        for mode in MODES:
            cpu = lowprec.round_to(x, fmt, mode, seed=7, backend="cpu")
            gpu = lowprec.round_to(x, fmt, mode, seed=7, backend="cuda")
            np.testing.assert_array_equal(_bits(cpu), _bits(gpu), err_msg=f"{fmt.name} {mode} {dtype}")


@pytest.mark.parametrize("fmt", [get_format(n) for n in ("fp16", "fp8_e4m3fn", "fp4_e2m1fn", "int8")],
                         ids=lambda f: f.name)
def test_encode_decode_cuda_equals_cpu(fmt):
    x = _probe(fmt, np.float64)
    x = x[~np.isnan(x)] if not fmt.has_nan else x
    for mode in ("nearest_even", "stochastic"):
        e_cpu = lowprec.encode(x, fmt, mode, seed=3, backend="cpu")
        e_gpu = lowprec.encode(x, fmt, mode, seed=3, backend="cuda")
        np.testing.assert_array_equal(e_cpu, e_gpu)
    pats = np.arange(1 << fmt.bits, dtype=np.uint8 if fmt.bits <= 8 else np.uint16)[:300]
    np.testing.assert_array_equal(_bits(lowprec.decode(pats, fmt, backend="cpu")),
                                  _bits(lowprec.decode(pats, fmt, backend="cuda")))


def test_stochastic_offsets_and_streams_match_on_cuda():
    x = np.linspace(-3, 3, 200)
    for kw in (dict(seed=1, offset=12345), dict(seed=2 ** 63 + 5, stream=9), dict(seed=4, random_bits=64)):
        np.testing.assert_array_equal(lowprec.round_to(x, "bf16", "stochastic", backend="cpu", **kw),
                                      lowprec.round_to(x, "bf16", "stochastic", backend="cuda", **kw))


def test_kernel_sources_use_no_numpy_ufuncs_on_scalars():
    """numba-cuda (the real GPU target) has no scalar lowering for numpy ufuncs such as np.sqrt:
    on an H200 the ops kernel failed to compile with ``KeyError: <ufunc 'sqrt'>`` although the
    simulator (plain Python) ran it. Scalar kernel code must use ``math`` functions and dtype
    constructors only."""
    import re
    from pathlib import Path

    allowed = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
               "float64", "bool_", "empty", "zeros", "nan", "inf"}
    kernels = Path(lowprec.__file__).parent / "kernels"
    offenders = []
    for name in ("scalar.py", "accum.py"):
        for lineno, line in enumerate((kernels / name).read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for fn in re.findall(r"\bnp\.([A-Za-z_0-9]+)\s*\(", code):
                if fn not in allowed:
                    offenders.append(f"{name}:{lineno}: np.{fn}")
    assert not offenders, offenders


def test_cuda_equals_the_cpu_specialised_loops_at_their_threshold():
    """From dispatch.SPECIALISE_FROM elements the CPU runs its specialised loops (mode and flags compiled
    in): the CUDA kernels (runtime arguments, one thread per element) give the same bits there too,
    with counters that cross 2**32."""
    from lowprec.kernels import dispatch

    n = dispatch.SPECIALISE_FROM + 17
    x = (np.random.default_rng(5).standard_normal(n) * 100).astype(np.float32)
    x[:6] = [np.nan, np.inf, -0.0, 1e-40, 65520.0, -448.5]
    # the CPU rounds the whole array (its specialised loop); the CUDA kernel, one thread per element with
    # runtime arguments whatever the size, rounds windows of it with the same counters (element i of the
    # window at stream offset + start draws counter offset + start + i): the start, where the counters
    # cross 2**32, the middle and the ragged end (the simulator runs each thread in Python)
    windows = [(0, 1536), (n // 2 - 300, n // 2 + 300), (n - 600, n)]
    for fmt, mode in (("bf16", "stochastic"), ("fp8_e4m3fn", "nearest_even"), ("int8", "down")):
        offset = 2 ** 32 - 1000
        kw = dict(seed=9, offset=offset) if mode == "stochastic" else {}
        cpu = lowprec.round_to(x, fmt, mode, backend="cpu", **kw)
        assert x.size >= dispatch.SPECIALISE_FROM
        for a, b in windows:
            wkw = dict(seed=9, offset=offset + a) if mode == "stochastic" else {}
            gpu = lowprec.round_to(x[a:b], fmt, mode, backend="cuda", **wkw)
            np.testing.assert_array_equal(_bits(cpu[a:b]), _bits(gpu), err_msg=f"{fmt} {mode} [{a}:{b}]")

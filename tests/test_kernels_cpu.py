"""The CPU element loops agree: every specialised loop gives the runtime-argument loop's bits.

Both kinds of loop run the one scalar definition (kernels/scalar.py): the specialised loops inline it
with the mode and the format's flags as constants, the runtime-argument loops call it. This file
checks them against each other on edge data (ties at every position, subnormals, the overflow
thresholds, Inf, NaN, signed zeros) and random data, for round and encode, float32 and float64
carriers; tests/test_core.py checks round_to against ml_dtypes, numpy and Fractions. CI runs a bounded
selection (each case compiles a specialised loop: seconds); the rest is marked ``slow``.
"""

import numpy as np
import pytest

import lowprec
from lowprec import Rounding
from lowprec.kernels import cpu, dispatch, scalar
from lowprec.rng import derive_key

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _edge(dtype, fmt) -> np.ndarray:
    vals = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.5, 2.5, 3.0, 0.1, 1e-30, 2.0 ** -149]
    if isinstance(fmt, lowprec.FloatFormat):
        ulp_max = 2.0 ** (fmt.emax - fmt.man_bits)
        for v in (float(fmt.max), float(fmt.tiny), float(fmt.max) + ulp_max / 2, float(fmt.tiny) / 2,
                  2.0 ** (fmt.emin - fmt.man_bits), 1 + 2.0 ** -(fmt.man_bits + 1)):
            with np.errstate(over="ignore"):  # (float64's largest value's neighbour above is Inf)
                vals += [v, -v, np.nextafter(v, 0), np.nextafter(v, np.inf)]
    else:
        vals += [fmt.max + 0.5, -fmt.max - 1.5, 0.5, -0.5, 1.5, 2 ** -fmt.frac_bits / 2]
    with np.errstate(over="ignore"):
        e = np.array(vals, dtype=np.float64).astype(dtype)
    rng = np.random.default_rng(len(vals))
    r = (rng.standard_normal(3000) * np.exp2(rng.integers(-20, 20, 3000))).astype(dtype)
    return np.concatenate([e, r])


def _cases():
    """(name, mode, carriers, ops): CI checks the float32 carrier's round loop of a bounded selection
    (every mode of fp16, nearest-even and stochastic of a NaN-only, a saturating and a fixed format);
    ``slow`` runs everything (both carriers, encode too, every preset and mode)."""
    out = []
    for name in lowprec.preset_names():
        fmt = lowprec.get_format(name)
        for mode in Rounding:
            ci = name == "fp16" or (name in ("fp8_e4m3fn", "int8") and mode in (Rounding.NEAREST_EVEN,
                                                                               Rounding.STOCHASTIC)) or (
                name == "fp4_e2m1fn" and mode is Rounding.NEAREST_EVEN)
            if ci and fmt.fits_in(np.float32):
                out.append(pytest.param(name, mode, (np.float32,), ("round",), id=f"{name}-{mode.name.lower()}"))
            out.append(pytest.param(name, mode, (np.float32, np.float64), ("round", "encode"), marks=pytest.mark.slow,
                                    id=f"{name}-{mode.name.lower()}-all"))
    return out


@pytest.mark.parametrize("name,mode,carriers,ops", _cases())
def test_specialised_loops_equal_the_runtime_argument_loop(name, mode, carriers, ops):
    fmt = lowprec.get_format(name)
    p = fmt._kernel_params()
    k0, k1 = derive_key(11, 2)
    for dtype in carriers:
        if not fmt.fits_in(dtype):
            continue
        x = _edge(dtype, fmt)
        if not fmt.has_nan:
            x = x[~np.isnan(x)]
        CW, CM, CB, ity = lowprec.core.carrier_of(dtype)
        for rbits in ((32, 7) if mode is Rounding.STOCHASTIC and name == "fp16" else (32,)):
            spec = cpu.spec_of(p, int(mode), rbits)
            for op in ops:
                out_dtype = ity if op == "round" else np.int64
                args = (CW, CM, CB, p, int(mode), np.uint32(k0), np.uint32(k1), np.int64(2 ** 32 - 1000), rbits)
                want = np.empty(x.size, out_dtype)
                cpu.element_any(cpu.OPS[op], p[0])(cpu.OPS[op], x.view(ity), want, *args)
                got = np.empty(x.size, out_dtype)
                cpu.specialised(op, spec, False)(cpu.OPS[op], x.view(ity), got, *args)
                bad = np.flatnonzero(got != want)
                assert bad.size == 0, (op, dtype.__name__, rbits, x[bad[:5]], got[bad[:5]], want[bad[:5]])


def _loops_agree(op, loop, reference, u, args, out_dtype=None):
    """Run the CPU loop ``loop`` and ``reference`` of ``op`` ("round" or "encode") on the carrier bits ``u`` with
    ``args``: the same output bits, else the first differing inputs and both outputs (hex) in the message."""
    want = np.empty(u.size, u.dtype if out_dtype is None else out_dtype)
    got = np.empty_like(want)
    reference(cpu.OPS[op], u, want, *args)
    loop(cpu.OPS[op], u, got, *args)
    bad = np.flatnonzero(got != want)
    mask = (1 << (8 * u.itemsize)) - 1
    assert bad.size == 0, [(hex(int(u[i]) & mask), hex(int(got[i]) & mask), hex(int(want[i]) & mask))
                           for i in bad[:5]]


_NE32_CUSTOM = (lowprec.get_format("fp16").replace(saturate=True, name="fp16-sat"),
                lowprec.get_format("fp8_e4m3fn").replace(saturate=True, name="e4m3fn-sat"),
                lowprec.FloatFormat(5, 3, has_subnormals=False, name="e5m3-ftz"),
                lowprec.FloatFormat(3, 2, bias=1, has_inf=False, nan="none", name="e3m2-bias1"),
                lowprec.FloatFormat(8, 22, name="e8m22"), lowprec.FloatFormat(8, 1, name="e8m1"))
_NE32_FORMATS = [f for f in [lowprec.get_format(n) for n in lowprec.preset_names()] + list(_NE32_CUSTOM)
                 if isinstance(f, lowprec.FloatFormat) and scalar.nearest_even_f32_applies(f._kernel_params())]


def _float32_patterns(m: int) -> np.ndarray:
    """float32 bit patterns that reach every branch of a nearest-even rounding to m mantissa bits: each sign and
    float32 exponent (zeros, subnormals, Inf, NaN) with the dropped bits at 0, 1, just below / at / above half
    of the target quantum, with an even and an odd kept value, all ones; and 2**20 patterns spread over all
    2**32."""
    d = 23 - m
    lsb, half = 1 << d, 1 << (d - 1)
    mants = {0, 1, 2, lsb - 1, lsb, lsb + 1, half - 1, half, half + 1, lsb + half - 1, lsb + half, lsb + half + 1,
             (1 << 23) - 1, (1 << 23) - half, (1 << 23) - half - 1, 1 << 22, (1 << 22) + half}
    grid = np.array([(s << 31) | (e << 23) | (mt & 0x7FFFFF) for s in (0, 1) for e in range(256) for mt in mants],
                    dtype=np.int64)
    spread = np.arange(1 << 20, dtype=np.int64) * 4093 + 17
    return (np.concatenate([grid, spread]) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("fmt", _NE32_FORMATS, ids=lambda f: f.name)
def test_nearest_even_f32_step_equals_the_definition(fmt):
    """The specialised nearest-even loops of float32 data run scalar.round_nearest_even_f32, not the definition
    (dispatch.ELEMENT_KERNELS): the same bits (NaN payloads and signs included) as the runtime-argument loop,
    on patterns that reach each of its branches. (``slow``: every 2**32 pattern.)"""
    p = fmt._kernel_params()
    assert dispatch.element_step("round", p, int(Rounding.NEAREST_EVEN), np.int32) == cpu.NEAREST_EVEN_F32
    u = np.concatenate([_float32_patterns(fmt.man_bits), _edge(np.float32, fmt).view(np.int32)])
    args = (32, 23, 127, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
    _loops_agree("round", cpu.specialised("round", cpu.spec_of(p, 0, 32, cpu.NEAREST_EVEN_F32), True),
                 cpu.element_any(cpu.ROUND, p[0]), u, args)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", _NE32_FORMATS, ids=lambda f: f.name)
def test_nearest_even_f32_step_equals_the_definition_on_every_float32(fmt):
    """round_nearest_even_f32 against the definition's specialised loop on all 2**32 float32 bit patterns."""
    p = fmt._kernel_params()
    args = (32, 23, 127, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
    fast = cpu.specialised("round", cpu.spec_of(p, 0, 32, cpu.NEAREST_EVEN_F32), True)
    ref = cpu.specialised("round", cpu.spec_of(p, 0, 32), True)
    chunk = 1 << 26
    got, want = np.empty(chunk, np.int32), np.empty(chunk, np.int32)
    for lo in range(0, 1 << 32, chunk):
        u = (np.arange(lo, lo + chunk, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        fast(cpu.ROUND, u, got, *args)
        ref(cpu.ROUND, u, want, *args)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, [hex(int(u[i]) & 0xFFFFFFFF) for i in bad[:5]]


_SR32_FORMATS = [f for f in _NE32_FORMATS if scalar.stochastic_f32_applies(f._kernel_params()) is not None]


def _sr32_step(p) -> int:
    step = dispatch.element_step("round", p, int(Rounding.STOCHASTIC), np.int32, 32)
    assert step == (cpu.STOCHASTIC_F32_WIDE if p[2] == -126 else cpu.STOCHASTIC_F32)
    return step


@pytest.mark.parametrize("fmt", _SR32_FORMATS, ids=lambda f: f.name)
def test_stochastic_f32_step_equals_the_definition(fmt):
    """The specialised stochastic loops (32 random bits) of float32 data run scalar.round_stochastic_f32 (narrow,
    or wide for float32's exponent range): the runtime-argument loop's bits on the branch-reaching patterns, under
    two keys, with counters inside one 2**32 block and crossing one. (``slow``: every 2**32 pattern.)"""
    p = fmt._kernel_params()
    sr = int(Rounding.STOCHASTIC)
    u = np.concatenate([_float32_patterns(fmt.man_bits), _edge(np.float32, fmt).view(np.int32)])
    fast = cpu.specialised("round", cpu.spec_of(p, sr, 32, _sr32_step(p)), True)
    for (k0, k1), offset in (((0x1234, 0xBEEF), 5), ((0xFFFFFFFF, 0), 2 ** 32 - 1000)):
        args = (32, 23, 127, p, sr, np.uint32(k0), np.uint32(k1), np.int64(offset), 32)
        _loops_agree("round", fast, cpu.element_any(cpu.ROUND, p[0]), u, args)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", _SR32_FORMATS, ids=lambda f: f.name)
def test_stochastic_f32_step_equals_the_definition_on_every_float32(fmt):
    """round_stochastic_f32 against the definition's specialised stochastic loop on all 2**32 float32 patterns
    (the random bits of each from its counter)."""
    p = fmt._kernel_params()
    sr = int(Rounding.STOCHASTIC)
    fast = cpu.specialised("round", cpu.spec_of(p, sr, 32, _sr32_step(p)), True)
    ref = cpu.specialised("round", cpu.spec_of(p, sr, 32), True)
    chunk = 1 << 26
    got, want = np.empty(chunk, np.int32), np.empty(chunk, np.int32)
    for j, lo in enumerate(range(0, 1 << 32, chunk)):
        u = (np.arange(lo, lo + chunk, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        args = (32, 23, 127, p, sr, np.uint32(0x9E37 + j), np.uint32(7), np.int64(j << 26), 32)
        fast(cpu.ROUND, u, got, *args)
        ref(cpu.ROUND, u, want, *args)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, [hex(int(u[i]) & 0xFFFFFFFF) for i in bad[:5]]


_NE64_FORMATS = [f for f in [lowprec.get_format(n) for n in lowprec.preset_names()] + list(_NE32_CUSTOM)
                 + [lowprec.FloatFormat(11, 51, name="e11m51"), lowprec.FloatFormat(11, 1, name="e11m1")]
                 if isinstance(f, lowprec.FloatFormat) and scalar.nearest_even_f64_applies(f._kernel_params())]


def _float64_patterns(m: int, n_spread: int) -> np.ndarray:
    """:func:`_float32_patterns` for float64: every sign and float64 exponent with the dropped bits at each
    branch's edges, and ``n_spread`` random bit patterns."""
    d = 52 - m
    lsb, half = 1 << d, 1 << (d - 1)
    mants = {0, 1, 2, lsb - 1, lsb, lsb + 1, half - 1, half, half + 1, lsb + half - 1, lsb + half, lsb + half + 1,
             (1 << 52) - 1, (1 << 52) - half, (1 << 52) - half - 1, 1 << 51, (1 << 51) + half}
    mants = np.array(sorted(v & ((1 << 52) - 1) for v in mants), dtype=np.uint64)
    grid = ((np.arange(2048, dtype=np.uint64)[:, None] << np.uint64(52)) | mants[None, :]).ravel()
    rng = np.random.default_rng(m)
    spread = rng.integers(0, 1 << 62, n_spread, dtype=np.uint64) * np.uint64(4) + rng.integers(0, 4, n_spread,
                                                                                                 dtype=np.uint64)
    return np.concatenate([grid, grid | np.uint64(1 << 63), spread]).view(np.int64)


def _ne64_against_definition(fmt, u, reference):
    p = fmt._kernel_params()
    args = (64, 52, 1023, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
    _loops_agree("round", cpu.specialised("round", cpu.spec_of(p, 0, 32, cpu.NEAREST_EVEN_F64), True), reference(p),
                 u, args)


@pytest.mark.parametrize("fmt", _NE64_FORMATS, ids=lambda f: f.name)
def test_nearest_even_f64_step_equals_the_definition(fmt):
    """The specialised nearest-even loops of float64 data run scalar.round_nearest_even_f64: the runtime-argument
    loop's bits on patterns that reach each of its branches, and on random patterns. (``slow``: 2**26 more
    random patterns against the definition's specialised loop.)"""
    p = fmt._kernel_params()
    assert dispatch.element_step("round", p, int(Rounding.NEAREST_EVEN), np.int64) == cpu.NEAREST_EVEN_F64
    u = np.concatenate([_float64_patterns(fmt.man_bits, 1 << 16), _edge(np.float64, fmt).view(np.int64)])
    _ne64_against_definition(fmt, u, lambda p: cpu.element_any(cpu.ROUND, p[0]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", _NE64_FORMATS, ids=lambda f: f.name)
def test_nearest_even_f64_step_equals_the_definition_on_many_float64(fmt):
    rng = np.random.default_rng(fmt.man_bits + 100)
    scale = np.exp2(rng.integers(fmt.emin - fmt.man_bits - 4, min(fmt.emax + 3, 1023), 1 << 24)).astype(np.float64)
    with np.errstate(over="ignore"):  # (float64's range: some overflow to Inf)
        near = (rng.standard_normal(1 << 24) * scale).view(np.int64)  # values across the format's binades
    u = np.concatenate([_float64_patterns(fmt.man_bits, 1 << 26), near])
    _ne64_against_definition(fmt, u, lambda p: cpu.specialised("round", cpu.spec_of(p, 0, 32), True))


_FIXED_FORMATS = [lowprec.get_format(n) for n in ("int8", "uint8", "int4", "int16")] + [
    lowprec.FixedFormat(16, 8), lowprec.FixedFormat(4, -3), lowprec.FixedFormat(22, 0),
    lowprec.FixedFormat(22, 126, signed=False), lowprec.FixedFormat(12, -64), lowprec.FixedFormat(1, 0, signed=False)]
_FIXED64_FORMATS = _FIXED_FORMATS + [lowprec.get_format("int32"), lowprec.FixedFormat(32, 0, signed=False)] + [
    lowprec.FixedFormat(32, 20), lowprec.FixedFormat(23, 0)]


def _fixed_patterns(fmt, dtype) -> np.ndarray:
    """Bit patterns that reach every branch of a nearest-even rounding to a fixed-point format: every sign and
    exponent of ``dtype`` with several mantissas (zeros, subnormals, Inf, NaN payloads), the ties (k + 1/2) * q and
    their neighbours for k near 0 and both ends, and 2**20 patterns spread over the bit patterns."""
    ity, nb, mb = (np.int32, 32, 23) if dtype == np.float32 else (np.int64, 64, 52)
    mants = [0, 1, 2, 3, (1 << mb) - 1, 1 << (mb - 1), (1 << (mb - 1)) + 1, 0x2AAAAA]
    grid = [(s << (nb - 1)) | (e << mb) | mt for s in (0, 1) for e in range(1 << (nb - 1 - mb)) for mt in mants]
    grid = (np.array(grid, dtype=np.uint64) & np.uint64(2 ** nb - 1)).astype(np.uint32 if nb == 32 else np.uint64)
    q = 2.0 ** -fmt.frac_bits
    k = np.array(sorted({0, 1, 2, 3, 4, 5, fmt.kmax - 1, fmt.kmax, fmt.kmax + 1, fmt.kmin - 1, fmt.kmin,
                         fmt.kmin + 1}), dtype=np.float64)
    k = np.concatenate([k, -k])
    with np.errstate(over="ignore"):
        ties = ((k + 0.5) * q).astype(dtype)
        ties = np.concatenate([ties, np.nextafter(ties, dtype(np.inf)), np.nextafter(ties, dtype(-np.inf)),
                               (k * q).astype(dtype), ((k + 0.25) * q).astype(dtype)])
    rng = np.random.default_rng(fmt.bits)
    spread = rng.integers(0, 2 ** nb, 1 << 20, dtype=np.uint64).astype(np.uint32 if nb == 32 else np.uint64)
    return np.concatenate([grid.view(ity), ties.view(ity), spread.view(ity), _edge(dtype, fmt).view(ity)])


def _fixed_against_definition(fmt, dtype, u, reference):
    p = fmt._kernel_params()
    CW, CM, CB, ity = lowprec.core.carrier_of(dtype)
    step = dispatch.element_step("round", p, int(Rounding.NEAREST_EVEN), ity)
    assert step == (cpu.FIXED_NEAREST_F32 if dtype == np.float32 else cpu.FIXED_NEAREST_F64)
    args = (CW, CM, CB, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
    _loops_agree("round", cpu.specialised("round", cpu.spec_of(p, 0, 32, step), True), reference(p), u, args)


@pytest.mark.parametrize("fmt", _FIXED_FORMATS, ids=lambda f: f.name)
def test_fixed_nearest_f32_step_equals_the_definition(fmt):
    """The specialised nearest-even loops of float32 data to a saturating fixed-point format of at most 22 bits
    run scalar.round_fixed_nearest_f32: the runtime-argument loop's bits on patterns that reach each of its
    branches. (``slow``: every 2**32 pattern.)"""
    _fixed_against_definition(fmt, np.float32, _fixed_patterns(fmt, np.float32),
                              lambda p: cpu.element_any(cpu.ROUND, p[0]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", _FIXED_FORMATS, ids=lambda f: f.name)
def test_fixed_nearest_f32_step_equals_the_definition_on_every_float32(fmt):
    p = fmt._kernel_params()
    ref = cpu.specialised("round", cpu.spec_of(p, 0, 32), True)
    chunk = 1 << 26
    for lo in range(0, 1 << 32, chunk):
        u = (np.arange(lo, lo + chunk, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        _fixed_against_definition(fmt, np.float32, u, lambda p: ref)


@pytest.mark.parametrize("fmt", _FIXED64_FORMATS, ids=lambda f: f.name)
def test_fixed_nearest_f64_step_equals_the_definition(fmt):
    """The same for float64 data (scalar.round_fixed_nearest_f64, formats of at most 51 bits: every FixedFormat)."""
    _fixed_against_definition(fmt, np.float64, _fixed_patterns(fmt, np.float64),
                              lambda p: cpu.element_any(cpu.ROUND, p[0]))


_ENCODE_CI = ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2fnuz", "e5m3-ftz", "e3m2-bias1", "fp16-sat", "fp4_e2m1fn")


def _encode_cases():
    out = []
    for fmt in _NE32_FORMATS:
        for mode in (Rounding.NEAREST_EVEN, Rounding.STOCHASTIC):
            for dtype in ((np.float32, np.float64) if mode is Rounding.NEAREST_EVEN else (np.float32,)):
                if mode is Rounding.STOCHASTIC and fmt not in _SR32_FORMATS:
                    continue
                marks = () if fmt.name in _ENCODE_CI and dtype == np.float32 else (pytest.mark.slow,)
                out.append(pytest.param(fmt, mode, dtype, marks=marks,
                                        id=f"{fmt.name}-{mode.name.lower()}-{np.dtype(dtype).name}"))
    return out


@pytest.mark.parametrize("fmt,mode,dtype", _encode_cases())
def test_encode_with_a_fast_step_equals_the_definition(fmt, mode, dtype):
    """The specialised encode loops round with the fast element step, then take scalar.float_pattern_of: the
    runtime-argument encode loop's patterns (scalar.encode_bits) on the branch-reaching patterns."""
    p = fmt._kernel_params()
    CW, CM, CB, ity = lowprec.core.carrier_of(dtype)
    step = dispatch.element_step("encode", p, int(mode), ity, 32)
    assert step != cpu.DEFINITION
    if dtype == np.float32:
        u = np.concatenate([_float32_patterns(fmt.man_bits), _edge(np.float32, fmt).view(np.int32)])
    else:
        u = np.concatenate([_float64_patterns(fmt.man_bits, 1 << 16), _edge(np.float64, fmt).view(np.int64)])
    args = (CW, CM, CB, p, int(mode), np.uint32(0x1234), np.uint32(0xBEEF), np.int64(2 ** 32 - 1000), 32)
    _loops_agree("encode", cpu.specialised("encode", cpu.spec_of(p, int(mode), 32, step), True),
                 cpu.element_any(cpu.ENCODE, p[0]), u, args, out_dtype=np.int64)


def test_dispatch_runs_the_fast_steps_only_where_they_apply():
    """The fast element steps for float32 and float64 data at nearest-even (float and saturating fixed-point
    formats; encode too for float formats) and for float32 data at stochastic rounding with 32 random bits; the
    definition for fixed-point encode, other modes and random-bit counts, fp32 itself on float32 data (m = 23), E8M0 (no zero), wrapping fixed point and
    fixed point wider than 22 bits on float32 data."""
    ne, step = int(Rounding.NEAREST_EVEN), dispatch.element_step
    fp16 = lowprec.get_format("fp16")._kernel_params()
    fp32 = lowprec.get_format("fp32")._kernel_params()
    assert step("round", fp16, ne, np.int32) == cpu.NEAREST_EVEN_F32
    assert step("round", fp16, ne, np.int64) == step("round", fp32, ne, np.int64) == cpu.NEAREST_EVEN_F64
    assert step("encode", fp16, ne, np.int32) == cpu.NEAREST_EVEN_F32  # (then scalar.float_pattern_of)
    assert step("encode", fp16, ne, np.int64) == cpu.NEAREST_EVEN_F64
    assert step("round", fp16, int(Rounding.STOCHASTIC), np.int32, 32) == cpu.STOCHASTIC_F32
    bf16 = lowprec.get_format("bf16")._kernel_params()
    assert step("round", bf16, int(Rounding.STOCHASTIC), np.int32, 32) == cpu.STOCHASTIC_F32_WIDE
    odd = lowprec.FloatFormat(7, 10, bias=121, name="e7m10-b121")  # emin - m = -130, emin = -120: neither variant
    assert step("round", odd._kernel_params(), int(Rounding.STOCHASTIC), np.int32, 32) == cpu.DEFINITION
    assert step("round", odd._kernel_params(), ne, np.int32) == cpu.NEAREST_EVEN_F32
    assert step("round", fp16, int(Rounding.STOCHASTIC), np.int32, 7) == cpu.DEFINITION  # (r < 32: the definition)
    assert step("round", fp16, int(Rounding.STOCHASTIC), np.int64, 32) == cpu.DEFINITION
    assert step("round", fp16, int(Rounding.NEAREST_AWAY), np.int64) == cpu.DEFINITION
    assert step("round", fp32, ne, np.int32) == cpu.DEFINITION
    for carrier in (np.int32, np.int64):
        assert step("round", lowprec.E8M0._kernel_params(), ne, carrier) == cpu.DEFINITION
    int8 = lowprec.get_format("int8")
    assert step("round", int8._kernel_params(), ne, np.int32) == cpu.FIXED_NEAREST_F32
    assert step("round", int8._kernel_params(), ne, np.int64) == cpu.FIXED_NEAREST_F64
    assert step("encode", int8._kernel_params(), ne, np.int32) == cpu.DEFINITION
    assert step("round", int8._kernel_params(), int(Rounding.STOCHASTIC), np.int32, 32) == cpu.DEFINITION
    wrap = lowprec.FixedFormat(8, 0, overflow="wrap")
    assert step("round", wrap._kernel_params(), ne, np.int32) == cpu.DEFINITION
    assert step("round", lowprec.FixedFormat(23, 0)._kernel_params(), ne, np.int32) == cpu.DEFINITION
    assert step("round", lowprec.FixedFormat(23, 0)._kernel_params(), ne, np.int64) == cpu.FIXED_NEAREST_F64
    choice = dispatch.element_choice("round", fp16, ne, 32, True, np.int32, np.int32)
    assert choice.loop is cpu.specialised("round", cpu.spec_of(fp16, ne, 32, cpu.NEAREST_EVEN_F32), True)


def test_decode_loops_agree():
    for name in ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2fnuz", "fp4_e2m1fn", "int8", "uint8"):
        fmt = lowprec.get_format(name)
        bits = np.arange(2 ** fmt.bits, dtype=np.int64)
        p = fmt._kernel_params()
        want = np.empty(bits.size, np.int64)
        got = np.empty(bits.size, np.int64)
        args = (64, 52, 1023, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
        cpu.element_any(cpu.DECODE, p[0])(cpu.DECODE, bits, want, *args)
        cpu.decode_parallel(cpu.DECODE, bits, got, *args)
        assert np.array_equal(got, want), name


def test_dispatch_picks_the_runtime_argument_loop_first_then_the_specialised_one(monkeypatch):
    """Small calls of a specialisation that is neither compiled nor cached run the runtime-argument
    loop until SPECIALISE_AFTER elements; large arrays run the specialised loop at once."""
    monkeypatch.setattr(dispatch, "SPECIALISE_AFTER", 50)
    p = lowprec.get_format("fp6_e2m3fn")._kernel_params()
    x = np.zeros(20, np.int32)
    choice = dispatch.element_choice("round", p, int(Rounding.UP), 32, False, np.int32, np.int32)
    choice.ready, choice.work = False, 0  # as in a process whose cache does not hold the specialisation
    picks = [choice.pick(x.size) is choice.loop for _ in range(4)]
    assert picks == [False, False, True, True]  # 20, 40 elements: runtime loop; 60 >= 50: specialised
    big = dispatch.element_choice("round", p, int(Rounding.DOWN), 32, False, np.int32, np.int32)
    big.ready, big.work = False, 0
    assert big.pick(dispatch.SPECIALISE_FROM) is big.loop


_CUSTOM = (lowprec.FloatFormat(4, 0, has_inf=False, nan="all_ones", name="e4m0"),
           lowprec.FloatFormat(5, 3, has_subnormals=False, name="e5m3-ftz"),
           lowprec.FloatFormat(3, 2, bias=1, has_inf=False, nan="none", name="e3m2-bias1"),
           lowprec.FixedFormat(8, 3, overflow="wrap", name="q4.3-wrap"),
           lowprec.FixedFormat(12, 4, signed=False, name="uq8.4"))


@pytest.mark.parametrize("fmt", [lowprec.get_format(n) for n in lowprec.preset_names()] + list(_CUSTOM)
                         + [lowprec.E8M0, lowprec.UE4M3],
                         ids=lambda f: f.name)
def test_interpreted_loops_equal_the_compiled_ones(fmt):
    """The runtime-argument loops run by the Python interpreter (kernels/plain.py: the same source, numba's
    intrinsics replaced by Python twins) give the compiled loops' bits: every mode, both carriers, round,
    encode and decode, stochastic with counters crossing 2**32 and r = 7, 32, 64."""
    from lowprec.kernels import plain

    p = fmt._kernel_params()
    k0, k1 = derive_key(5, 1)
    for dtype in (np.float32, np.float64):
        if not fmt.fits_in(dtype):
            continue
        x = _edge(dtype, fmt)[:160]
        CW, CM, CB, ity = lowprec.core.carrier_of(dtype)
        for mode in Rounding:
            for rbits in ((7, 32, 64) if mode is Rounding.STOCHASTIC else (32,)):
                for op in ("round", "encode"):
                    out_dtype = ity if op == "round" else np.int64
                    args = (CW, CM, CB, p, int(mode), np.uint32(k0), np.uint32(k1), np.int64(2 ** 32 - 80), rbits)
                    want = np.empty(x.size, out_dtype)
                    cpu.element_any(cpu.OPS[op], p[0])(cpu.OPS[op], x.view(ity), want, *args)
                    got = np.empty(x.size, out_dtype)
                    plain.element_loop(cpu.OPS[op], p[0])(cpu.OPS[op], x.view(ity), got, *args)
                    bad = np.flatnonzero(got != want)
                    assert bad.size == 0, (op, dtype.__name__, mode.name, rbits, x[bad[:5]], got[bad[:5]], want[bad[:5]])
        if fmt.bits <= 12:
            bits = np.arange(2 ** fmt.bits, dtype=np.int64)
            want = np.empty(bits.size, ity)
            got = np.empty(bits.size, ity)
            args = (CW, CM, CB, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
            cpu.element_any(cpu.DECODE, p[0])(cpu.DECODE, bits, want, *args)
            plain.element_loop(cpu.DECODE, p[0])(cpu.DECODE, bits, got, *args)
            assert np.array_equal(got, want), ("decode", dtype.__name__)


def test_dispatch_interprets_first_calls_until_the_runtime_argument_loop_is_available(monkeypatch):
    """A few values of a loop that is neither compiled nor cached run interpreted (no compiler), up to
    INTERPRET_BUDGET elements per process; a larger array, or the budget spent, runs the compiled loop."""
    monkeypatch.setattr(dispatch, "INTERPRET_BUDGET", 100)
    r = dispatch._Runtime(cpu.ROUND, 0, np.int32, np.int32)
    r.ready = False  # as in a process that has not compiled it and whose cache does not hold it
    assert [r.pick(40) is r.interpreted for _ in range(3)] == [True, True, False]  # 40, 80; 120 > 100
    assert r.pick(1) is r.compiled  # from then on
    r2 = dispatch._Runtime(cpu.ROUND, 0, np.int32, np.int32)
    r2.ready = False
    assert r2.pick(dispatch.INTERPRET_UPTO + 1) is r2.compiled

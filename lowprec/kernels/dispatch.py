"""Every backend and kernel choice: the only place that knows both backends and all the kernels exist.

Backends: ``resolve_backend`` turns "auto" into "cpu" or "cuda" (a real GPU, never the simulator).

CPU element loops (kernels/cpu.py), chosen per call by this table (first match; :class:`_Choice` and :class:`_Runtime`):

=========================  ================================================================
loop                       runs when
=========================  ================================================================
specialised (serial below  ``n >= SPECIALISE_FROM``: an array this large pays for the
``PARALLEL_FROM``, else    compilation within a few calls
parallel)
specialised, serial        its code is already compiled, in this process or in numba's cache
                           on disk, or this process has rounded ``SPECIALISE_AFTER`` elements
                           with the same specialisation through the runtime-argument loop
runtime-argument           otherwise (first calls, small arrays, rarely used modes/formats),
                           when it is compiled or in the on-disk cache, or the array is larger
                           than ``INTERPRET_UPTO``, or this process has interpreted
                           ``INTERPRET_BUDGET`` elements of this loop already
runtime-argument,          otherwise: the same loop and scalar definitions run by the Python
interpreted                interpreter (kernels/plain.py), so that a first call on a few values
                           (``explain``, a scalar) waits for no compiler
=========================  ================================================================

All loops give the same bits (the same scalar definition; tests/test_kernels_cpu.py checks every
specialisation, and the interpreted loops, against the runtime-argument loop). A specialised round loop runs
the definition, or the first element step of :data:`ELEMENT_KERNELS` whose precondition holds (a faster
algorithm for the same rule; its proof in docs/kernels.md).
``LOWPREC_SPECIALISE=always`` specialises at the first call, ``never`` only runs specialised loops that are
compiled or for large arrays.

sum / dot / matmul and lowprec.ops: CUDA runs the general kernels; on the CPU the tables
:data:`FP32_TILE_KERNELS` (per accumulation) and :data:`NARROW_KERNELS` (per call: their preconditions read
the operands) list the fast kernels, each with its precondition; the first that holds runs, else the
general kernel. The proofs are in docs/kernels.md, one section per kernel.

Hardware matrix units (lowprec.matrix_units): :func:`matrix_unit_array` runs kernels/mma_cpu.py on the CPU and
its twin in kernels/linalg_cuda.py on CUDA (the same step arithmetic, kernels/mma.py; the same bits).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np

from ..formats import FP32 as _FP32
from ..formats import FloatFormat
from ..rounding import Rounding
from . import cpu, plain
from .jit import is_cached

BACKENDS = ("cpu", "cuda", "auto")
ROUND, ENCODE, DECODE = cpu.ROUND, cpu.ENCODE, cpu.DECODE  # the loops' op codes

#: Below this many elements a loop runs on the calling thread: waking the thread pool, and waiting for a
#: descheduled worker on a busy machine, costs more than ~100 us of rounding. Same bits either way.
PARALLEL_FROM = 1 << 18
#: From this many elements the specialised loop runs at once (compiled on first use).
SPECIALISE_FROM = 1 << 15
#: Elements a process rounds through the runtime-argument loop before it compiles the specialised one
#: (the runtime-argument loop is ~20-40x slower per element; a specialisation takes seconds to compile).
SPECIALISE_AFTER = 1 << 25
#: Arrays up to this size may run interpreted while the runtime-argument loop is not compiled (~50 us per element).
INTERPRET_UPTO = 256
#: Elements a process interprets per runtime-argument loop before it compiles (or loads) the loop.
INTERPRET_BUDGET = 8192


def _read_policy() -> str:
    value = os.environ.get("LOWPREC_SPECIALISE", "adaptive").strip().lower()
    if value not in ("adaptive", "always", "never"):
        raise ValueError(f"LOWPREC_SPECIALISE must be 'adaptive', 'always' or 'never', got {value!r}")
    return value


_POLICY = _read_policy()


def resolve_backend(backend: str) -> str:
    """'cpu' or 'cuda' for a requested backend; 'auto' takes a real GPU when there is one."""
    if backend == "cpu":
        return "cpu"
    if backend == "auto" and _AUTO:
        return _AUTO[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    from . import cuda

    if backend == "cuda":
        if not cuda.is_available():
            raise RuntimeError("backend='cuda' but no CUDA device is available "
                               "(set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the simulator)")
        return "cuda"
    _AUTO.append("cuda" if cuda.is_available() and not cuda.is_simulator() else "cpu")
    return _AUTO[0]


_AUTO: list = []  # what "auto" resolved to (a process does not gain or lose a GPU)


class _Runtime:
    """The runtime-argument loop of one (op, format kind, carrier types): compiled, or interpreted until then."""

    __slots__ = ("compiled", "interpreted", "ready", "work", "probe")

    def __init__(self, op: int, kind: int, xdtype, outdtype):
        self.compiled = cpu.element_any(op, kind)
        self.interpreted = plain.element_loop(op, kind)
        self.ready = None  # None: not looked up; True: compiled or cached; False: neither (yet)
        self.work = 0  # elements interpreted so far
        self.probe = (op, np.empty(0, xdtype), np.empty(0, outdtype), 32, 23, 127, (0,) * 9, 0,
                      np.uint32(0), np.uint32(0), np.int64(0), 32)

    def pick(self, n: int):
        if self.ready:
            return self.compiled
        if n <= INTERPRET_UPTO and self.work + n <= INTERPRET_BUDGET and _POLICY != "always":
            if self.ready is None:
                self.ready = is_cached(self.compiled, *self.probe)
                if self.ready:
                    return self.compiled
            self.work += n
            return self.interpreted
        self.ready = True
        return self.compiled


_RUNTIME: dict = {}


def runtime_loop(op: int, kind: int, xdtype, outdtype) -> _Runtime:
    """The state of the runtime-argument loop of (op, format kind, carrier types) (memoised)."""
    key = (op, kind, np.dtype(xdtype).num, np.dtype(outdtype).num)
    r = _RUNTIME.get(key)
    if r is None:
        r = _RUNTIME[key] = _Runtime(op, kind, xdtype, outdtype)
    return r


class _Choice:
    """One (op, specialisation, size class, carrier) in use: which loop runs, and the elements rounded
    through the runtime-argument loop so far."""

    __slots__ = ("loop", "generic", "parallel", "ready", "work", "probe")

    def __init__(self, op, spec, parallel, probe):
        self.loop = cpu.specialised(op, spec, parallel)
        self.generic = runtime_loop(cpu.OPS[op], spec[0], probe[1].dtype, probe[2].dtype)
        self.parallel = parallel
        self.ready = None  # None: not yet looked up; True: use the specialised loop; False: not on disk
        self.work = 0
        self.probe = probe  # argument values of the loop's signature, to look it up in the cache

    def pick(self, n: int):
        """The loop for ``n`` elements (the table in the module docstring)."""
        if self.ready or n >= SPECIALISE_FROM:
            return self.loop
        policy = _POLICY
        if policy == "always":
            self.ready = True
            return self.loop
        if self.ready is None:
            self.ready = is_cached(self.loop, *self.probe)
            if self.ready:
                return self.loop
        self.work += n
        if self.work >= SPECIALISE_AFTER and policy == "adaptive":
            self.ready = True
            return self.loop
        return self.generic.pick(n)


_CHOICES: dict = {}


def element_choice(op: str, p, mode: int, rbits: int, parallel: bool, xdtype, outdtype) -> _Choice:
    """The state of the CPU ``op`` ("round" or "encode") loops for one specialisation and size class
    (memoised: one entry per combination in use)."""
    spec = cpu.spec_of(p, mode, rbits, element_step(op, p, mode, xdtype, rbits))
    key = (op, spec, bool(parallel), np.dtype(xdtype).num, np.dtype(outdtype).num)
    c = _CHOICES.get(key)
    if c is None:
        probe = (cpu.OPS[op], np.empty(0, xdtype), np.empty(0, outdtype), 32, 23, 127, tuple(int(v) for v in p), int(mode),
                 np.uint32(0), np.uint32(0), np.int64(0), int(rbits))
        c = _CHOICES[key] = _Choice(op, spec, bool(parallel), probe)
    return c


def element_loop(op: str, x: np.ndarray, out: np.ndarray, p, mode: int, rbits: int):
    """The CPU loop that rounds (``op`` "round" or "encode") the flat carrier view ``x`` into ``out``."""
    n = x.size
    return element_choice(op, p, mode, rbits, n >= PARALLEL_FROM, x.dtype, out.dtype).pick(n)


def round_array(backend, x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    """Round the flat carrier view ``x`` into ``out`` (see kernels/cpu.py for the arguments)."""
    if resolve_backend(backend) == "cpu":
        element_loop("round", x, out, p, mode, rbits)(cpu.ROUND, x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits)
    else:
        from . import cuda

        cuda._round_cuda(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits)


def encode_array(backend, x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits):
    """Encode the flat carrier view ``x`` into bit patterns ``out`` (an unsigned or int64 array wide enough for
    the format's patterns: the CPU loops write it directly)."""
    if resolve_backend(backend) == "cpu":
        element_loop("encode", x, out, p, mode, rbits)(cpu.ENCODE, x, out, CW, CM, CB, p, mode, key0, key1, offset,
                                                       rbits)
    else:
        from . import cuda

        codes = out if out.dtype == np.int64 else np.empty(out.shape, np.int64)
        cuda._encode_cuda(x, codes, CW, CM, CB, p, mode, key0, key1, offset, rbits)
        if codes is not out:
            out[...] = codes


#: decode_array looks values up in a table of every pattern's value (made by the decode loops) for formats of
#: at most TABLE_BITS bits and at least TABLE_FROM patterns: a gather in place of the definition per element.
TABLE_BITS, TABLE_FROM = 16, 1 << 12


@lru_cache(maxsize=64)
def decode_table(p: tuple, nbits: int, CW: int, CM: int, CB: int) -> np.ndarray:
    """The carrier bits of every pattern's value of the format with parameters ``p`` and ``nbits`` bits (read-only;
    computed by the decode loop, so the definition's bits)."""
    codes = np.arange(1 << nbits, dtype=np.int64)
    table = np.empty(codes.size, np.int32 if CW == 32 else np.int64)
    _decode_loop(codes, table, CW, CM, CB, p)
    table.setflags(write=False)
    return table


def _decode_loop(bits, out, CW, CM, CB, p):
    n = bits.size
    loop = cpu.decode_parallel if n >= PARALLEL_FROM else runtime_loop(cpu.DECODE, p[0], bits.dtype, out.dtype).pick(n)
    loop(cpu.DECODE, bits, out, CW, CM, CB, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)


def decode_array(backend, bits, out, CW, CM, CB, p, nbits: int = 64):
    """Decode the bit patterns ``bits`` (a flat integer array, every pattern below ``2**nbits``, ``nbits`` the
    format's width) into the carrier view ``out``."""
    if resolve_backend(backend) == "cpu":
        if nbits <= TABLE_BITS and bits.size >= TABLE_FROM:
            cpu.gather_parallel(bits, decode_table(tuple(int(v) for v in p), nbits, CW, CM, CB), out)
        else:
            _decode_loop(bits if bits.dtype == np.int64 else bits.astype(np.int64), out, CW, CM, CB, p)
    else:
        from . import cuda

        cuda._decode_cuda(bits if bits.dtype == np.int64 else bits.astype(np.int64), out, CW, CM, CB, p)


# ---------------------------------------------------------------------------------------------------
# matmul / dot / sum and the elementwise ops: the accumulation kernels
# ---------------------------------------------------------------------------------------------------
class FastKernel(NamedTuple):
    """One accelerated accumulation kernel: the general kernel's bits wherever its precondition holds.

    ``needs`` states the precondition; its proof is in docs/kernels.md, in the section named after the
    kernel. ``plan`` decides: None when the precondition does not hold, else the tuple of parameters the
    kernel needs (the facts its proof derived from the operands)."""

    name: str
    needs: str
    plan: Callable


def _nearest_even_f32(op, p, mode, xdtype, rbits):
    from . import scalar

    ok = (op in ("round", "encode") and mode == scalar.NEAREST_EVEN and np.dtype(xdtype) == np.int32
          and scalar.nearest_even_f32_applies(p))
    return () if ok else None


def _nearest_even_f64(op, p, mode, xdtype, rbits):
    from . import scalar

    ok = (op in ("round", "encode") and mode == scalar.NEAREST_EVEN and np.dtype(xdtype) == np.int64
          and scalar.nearest_even_f64_applies(p))
    return () if ok else None


def _stochastic_f32(wide):
    def plan(op, p, mode, xdtype, rbits):
        from . import scalar

        ok = (op in ("round", "encode") and mode == scalar.STOCHASTIC and rbits == 32
              and np.dtype(xdtype) == np.int32 and scalar.stochastic_f32_applies(p) == wide)
        return () if ok else None

    return plan


def _fixed_nearest(cw):
    def plan(op, p, mode, xdtype, rbits):
        from . import scalar

        ok = (op == "round" and mode == scalar.NEAREST_EVEN and np.dtype(xdtype) == np.dtype(f"int{cw}")
              and scalar.fixed_nearest_applies(p, cw))
        return () if ok else None

    return plan


#: Element steps a specialised round loop runs in place of the definition (kernels/cpu.py), first match; plan
#: (op, format parameters, mode, carrier dtype, random bits). The proofs are in docs/kernels.md, one section per step.
ELEMENT_KERNELS = (
    FastKernel("nearest-even-f32", "round or encode, nearest-even, float32 data, a float format with a sign and "
               "a zero, 1 <= m <= 22 and emin >= -126", _nearest_even_f32),
    FastKernel("nearest-even-f64", "round or encode, nearest-even, float64 data (int64 carrier, CW = 64), a float "
               "format with a sign and a zero, 1 <= m <= 51 and emin >= -1022", _nearest_even_f64),
    FastKernel("stochastic-f32", "round or encode, stochastic with 32 random bits, float32 data, a float format with a "
               "sign and a zero, 1 <= m <= 22 and emin - m >= -126", _stochastic_f32(0)),
    FastKernel("stochastic-f32-wide", "as stochastic-f32, with emin == -126 (bf16, tf32)", _stochastic_f32(1)),
    FastKernel("fixed-nearest-f32", "round (not encode), nearest-even, float32 data, a saturating fixed-point format "
               "of at most 22 bits", _fixed_nearest(32)),
    FastKernel("fixed-nearest-f64", "round (not encode), nearest-even, float64 data, a saturating fixed-point format "
               "of at most 51 bits", _fixed_nearest(64)),
)
_ELEMENT_STEPS = {"nearest-even-f32": cpu.NEAREST_EVEN_F32, "nearest-even-f64": cpu.NEAREST_EVEN_F64,
                  "stochastic-f32": cpu.STOCHASTIC_F32, "stochastic-f32-wide": cpu.STOCHASTIC_F32_WIDE,
                  "fixed-nearest-f32": cpu.FIXED_NEAREST_F32, "fixed-nearest-f64": cpu.FIXED_NEAREST_F64}


def element_step(op: str, p, mode: int, xdtype, rbits: int = 32) -> int:
    """The element step (cpu.spec_of's ``step``) the specialised ``op`` loop runs: the first of
    :data:`ELEMENT_KERNELS` whose precondition holds, else the definition."""
    for k in ELEMENT_KERNELS:
        if k.plan(op, p, mode, xdtype, rbits) is not None:
            return _ELEMENT_STEPS[k.name]
    return cpu.DEFINITION


def _fp32_fma(acc):
    return () if acc.product_format is None and acc.fused else None


def _fp32_muladd(acc):
    return () if acc.product_format is None or acc.product_format == _FP32 else None


#: Kernels that compute a whole accumulation in IEEE float32 arithmetic (kernels/linalg_fp32.py), any operands,
#: on top of the common precondition :func:`_fp32_common`. Chosen per accumulation (:func:`fp32_tile`).
FP32_TILE_KERNELS = (
    FastKernel("fp32-fma", "exact products, fused: one float32 FMA per step", _fp32_fma),
    FastKernel("fp32-muladd", "products rounded to fp32 (or unfused): a float32 multiply, then an add", _fp32_muladd),
)


def _fp32_common(acc) -> bool:
    """fp32 accumulator, nearest-even, sequential, not compensated, float input formats that float32 holds."""
    return (acc.acc_format == _FP32 and acc.acc_rounding is Rounding.NEAREST_EVEN and acc.order == "sequential"
            and not acc.compensated and isinstance(acc.a_format, FloatFormat) and isinstance(acc.b_format, FloatFormat)
            and acc.a_format.fits_in(np.float32) and acc.b_format.fits_in(np.float32))


@lru_cache(maxsize=256)
def fp32_tile(acc, backend: str):
    """"fma" or "muladd" when a kernel of :data:`FP32_TILE_KERNELS` computes ``acc`` on ``backend``, else None."""
    if backend != "cpu" or not _fp32_common(acc):
        return None
    for k in FP32_TILE_KERNELS:
        if k.plan(acc) is not None:
            return k.name[len("fp32-"):]
    return None


class NarrowFacts(NamedTuple):
    """What the narrow kernels' preconditions read: the step, the accumulator (m, emin, emax), K and the
    operands' statistics (kernels/operands.stats)."""

    fused: bool
    mode: int
    m: int
    emin: int
    emax: int
    K: int
    sa: object
    sb: object


def _unfused(f):
    from . import scalar

    if f.fused or f.mode != scalar.NEAREST_EVEN:
        return None
    sa, sb = f.sa, f.sb
    exact = (sa.bits + sb.bits <= 53 and sa.hi * sb.hi < 2.0 ** 1000
             and (sa.lo == np.inf or sb.lo == np.inf or sa.lowexp + sb.lowexp >= -1074))
    return () if exact else None


def _sr32(f):
    from . import linalg_cpu, scalar

    if not f.fused or f.mode != scalar.STOCHASTIC:
        return None
    elo = linalg_cpu.sr32_floor(f.sa, f.sb, f.K, f.m, f.emin, f.emax)
    return None if elo is None else (elo,)


def _sr(f):
    from . import scalar

    return () if f.fused and f.mode == scalar.STOCHASTIC else None


def _direct(f):
    from . import linalg_narrow, scalar

    if not f.fused or f.mode != scalar.NEAREST_EVEN:
        return None
    if f.m + 1 + f.sa.bits + f.sb.bits <= 50 and f.emax - (f.emin - f.m) <= 50:
        return (linalg_narrow.direct_no_overflow(f.sa, f.sb, f.K, f.m, f.emin, f.emax),)
    return None


def _twosum32(f):
    from . import linalg_cpu, scalar

    ok = f.fused and f.mode == scalar.NEAREST_EVEN and f.emin == -126 and f.emax == 127
    return () if ok and linalg_cpu.f32_exact(f.sa, f.sb) else None


def _twosum(f):
    from . import scalar

    return () if f.fused and f.mode == scalar.NEAREST_EVEN else None


#: Narrow-accumulator kernels (kernels/narrow.py, kernels/linalg_narrow.py), first whose precondition holds,
#: on top of the common precondition of :func:`narrow_plan`. Chosen per call (they read the operands).
NARROW_KERNELS = (
    FastKernel("unfused", "unfused, nearest-even; float64 holds every product exactly", _unfused),
    FastKernel("sr32", "fused, stochastic; float32 holds every value and product, and the exponent floor of "
                       "rules.sum_stochastic32_floor exists for the operands' range", _sr32),
    FastKernel("sr", "fused, stochastic", _sr),
    FastKernel("direct", "fused, nearest-even; m + 1 + bits(a) + bits(b) <= 50 and emax - (emin - m) <= 50", _direct),
    FastKernel("twosum32", "fused, nearest-even; float32's exponent range; float32 holds every value and product",
               _twosum32),
    FastKernel("twosum", "fused, nearest-even", _twosum),
)

#: Multiply-adds below which the general kernel is as fast as any narrow one.
NARROW_MIN_WORK = 1 << 15
#: The fp32 tile kernel runs from this many multiply-adds in lowprec.linalg.matmul (any size when prepared).
FP32_TILE_MIN_WORK = 1 << 15


def narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits):
    """(name, parameters) of the first kernel of :data:`NARROW_KERNELS` that gives this accumulation's bits on
    these operands (``a`` (.., K), ``bt`` (.., K) as the kernels take them), or (None, None).

    Common precondition: exact products (no product format), sequential order, no compensation, at least
    NARROW_MIN_WORK multiply-adds and an output at least a quarter tile wide; an IEEE accumulator with
    subnormals, no saturation, m <= 20, 0 <= emax <= 1000, emin - m >= -1000; nearest-even, or stochastic
    with 32 random bits; an output format that holds every accumulator value; finite operands."""
    from . import accum, linalg_cpu, scalar
    from .operands import stats

    if (has_prod or order != accum.SEQUENTIAL or compensated
            or ia.size * M * N * K < NARROW_MIN_WORK or N < linalg_cpu.NARROW_N // 4):
        return None, None
    fields = linalg_cpu.float_fields(pacc)
    if fields is None:
        return None, None
    m, emin, emax = fields
    if not (mode == scalar.NEAREST_EVEN or (mode == scalar.STOCHASTIC and rbits == 32)):
        return None, None
    if tuple(pout) != tuple(pacc) and not linalg_cpu.holds(pout, m, emin, emax):
        return None, None  # the final rounding must change nothing
    sa, sb = stats(a), stats(bt)
    if not (sa.finite and sb.finite):
        return None, None  # NaN/Inf inputs: the general kernel
    facts = NarrowFacts(bool(fused), int(mode), m, emin, emax, int(K), sa, sb)
    for k in NARROW_KERNELS:
        params = k.plan(facts)
        if params is not None:
            return k.name, params
    return None, None


def matmul_array(backend, a, bt, ia, ib, out, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk,
                 compensated, pout, key0, key1, offset, rbits):
    """The (batched) product of the row blocks ``a`` and ``bt`` into the flat float64 ``out`` (arguments as
    kernels/accumulate_cpu.matmul_general): on CUDA the general kernel; on the CPU the first narrow kernel whose
    precondition holds (:func:`narrow_plan`), else the general kernel."""
    if resolve_backend(backend) == "cuda":
        from . import linalg_cuda

        linalg_cuda._matmul_cuda(np.ascontiguousarray(a), np.ascontiguousarray(bt), ia, ib, out, M, N, K, has_prod,
                                 pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout, key0, key1, offset,
                                 rbits)
        return
    from . import accumulate_cpu, linalg_cpu

    kind, params = narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout,
                               rbits)
    if kind is None:
        accumulate_cpu.matmul_general(np.ascontiguousarray(a), np.ascontiguousarray(bt), ia, ib, out, M, N, K,
                                      has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                                      key0, key1, offset, rbits)
        return
    M, N, K = int(M), int(N), int(K)
    fields = linalg_cpu.float_fields(pacc)
    elo = params[0] if params else None
    res = out.reshape(-1, M, N)
    for bi in range(ia.size):  # (the narrow kernels pack the operands as they lie: no contiguous copies)
        ra, rb = int(ia[bi]) * M, int(ib[bi]) * N
        res[bi] = linalg_cpu.matmul_narrow(a[ra:ra + M], bt[rb:rb + N].T, kind, *fields, key0, key1, offset,
                                            bi * M * N, elo)


def ops_array(backend, *args) -> None:
    """lowprec.ops' elementwise loop (arguments as kernels/accumulate_cpu.ops_elementwise) on ``backend``."""
    if resolve_backend(backend) == "cuda":
        from . import linalg_cuda

        linalg_cuda._ops_cuda(*args)
    else:
        from . import accumulate_cpu

        accumulate_cpu.ops_elementwise(*args)


def narrow_kind(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, chunk, pchunk, compensated, pout,
                rbits):
    """The name of the narrow kernel :func:`matmul_array` runs for these arguments (those of
    accumulate_cpu.matmul_general less the output and the counters), or None for the general kernel."""
    return narrow_plan(a, bt, ia, M, N, K, has_prod, pprod, fused, pacc, mode, order, compensated, pout, rbits)[0]


# ---------------------------------------------------------------------------------------------------
# hardware matrix units (lowprec.matrix_units)
# ---------------------------------------------------------------------------------------------------
def matrix_unit_array(backend, a, b, c, ia, ib, params: dict, sa=None, sb=None) -> np.ndarray:
    """``c[t] + a[ia[t]] @ b[ib[t]]`` for each batch ``t`` under a matrix unit: float64 stacks ``a`` (.., M, K),
    ``b`` (.., K, N), ``c`` (T, M, N) holding values of the unit's formats; ``params`` the keyword arguments of
    kernels/mma_cpu.matmul_mma_cpu (``MatrixUnit._kernel_params()``). Returns float64 (T, M, N). One kernel per
    backend, the same bits: kernels/mma_cpu.py (tiled, parallel) on the CPU, kernels/linalg_cuda.py (one thread
    per output) on CUDA, both built from kernels/mma.py. Block-scaled units: ``sa`` (.., M, blocks) and ``sb``
    (.., blocks, N) int32 scale exponents, indexed by batch as ``a`` and ``b``."""
    if resolve_backend(backend) == "cuda":
        from .linalg_cuda import _matmul_mma_cuda as run
    else:
        from .mma_cpu import matmul_mma_cpu as run
    out = np.empty((ia.size,) + c.shape[1:])
    for t in range(ia.size):
        scales = () if sa is None else (sa[ia[t]], sb[ib[t]])
        out[t] = run(a[ia[t]], b[ib[t]], c[t], *scales, **params)
    return out


# ---------------------------------------------------------------------------------------------------
# block-scaled formats (lowprec.block)
# ---------------------------------------------------------------------------------------------------
#: From this many elements a block quantization runs its specialised loop (compiled on first use); below,
#: the runtime-argument loop (kernels/block_cpu.block_any), unless the specialised one is already compiled
#: or in the on-disk cache. Same bits either way.
BLOCK_SPECIALISE_FROM = 1 << 16

_BLOCK_READY: dict = {}  # (spec, carrier dtypes) -> whether the specialised loop is compiled or cached


def block_array(backend, op, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule, emax_elem,
                m_elem, max_elem, s_t, lo, mode, key0, key1, offset, rbits):
    """Block-quantize (``op`` QUANTIZE) or encode (ENCODE) the flat carrier view ``xi`` into ``out``, one scale per
    block into ``scale_code`` / ``scale_val`` (arguments as kernels/block_cpu.py's loops); returns (blocks holding a
    NaN, blocks holding an Inf). CUDA: kernels/block_cuda.py; CPU: the specialised loop from
    ``BLOCK_SPECIALISE_FROM`` elements or when it is compiled, else the runtime-argument loop."""
    from . import block_cpu

    args = (op, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW, CM, CB, pe, ps, rule, emax_elem, m_elem,
            max_elem, s_t, lo, mode, key0, key1, offset, rbits)
    if resolve_backend(backend) == "cuda":
        from . import block_cuda

        if out.dtype in (np.int32, np.int64):
            return block_cuda._block_cuda(*args)
        codes = np.empty(out.shape, np.int64)  # (patterns: the CUDA loops write int64)
        res = block_cuda._block_cuda(*(args[:2] + (codes,) + args[3:]))
        out[...] = codes
        return res
    spec = block_cpu.spec_of(op, pe, rule == block_cpu.AMAX, mode, rbits, CW == 32, TA, TQ, ps)
    loop = block_cpu.block_loop(spec)
    if xi.size < BLOCK_SPECIALISE_FROM and _POLICY != "always":
        key = (spec, xi.dtype.num, out.dtype.num)
        ready = _BLOCK_READY.get(key)
        if ready is None:
            ready = _BLOCK_READY[key] = is_cached(loop, *args)
        if not ready:
            loop = block_cpu.block_any()
    else:
        _BLOCK_READY[(spec, xi.dtype.num, out.dtype.num)] = True
    return loop(*args)

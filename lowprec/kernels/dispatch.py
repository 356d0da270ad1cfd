"""Every backend and kernel choice for the element loops: the only place that knows both backends exist.

Backends: ``resolve_backend`` turns "auto" into "cpu" or "cuda" (a real GPU, never the simulator).

CPU element loops (kernels/cpu.py), chosen per call from the table :data:`ELEMENT_LOOPS`, first match:

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
specialisation against the runtime-argument loop). ``LOWPREC_SPECIALISE=always`` specialises at the
first call, ``never`` only runs specialised loops that are compiled or for large arrays.
"""

from __future__ import annotations

import os

import numpy as np

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
    spec = cpu.spec_of(p, mode, rbits)
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
    """Encode the flat carrier view ``x`` into bit patterns ``out`` (int64)."""
    if resolve_backend(backend) == "cpu":
        element_loop("encode", x, out, p, mode, rbits)(cpu.ENCODE, x, out, CW, CM, CB, p, mode, key0, key1, offset,
                                                       rbits)
    else:
        from . import cuda

        cuda._encode_cuda(x, out, CW, CM, CB, p, mode, key0, key1, offset, rbits)


def decode_array(backend, bits, out, CW, CM, CB, p):
    """Decode the bit patterns ``bits`` (int64) into the carrier view ``out``."""
    if resolve_backend(backend) == "cpu":
        n = bits.size
        loop = cpu.decode_parallel if n >= PARALLEL_FROM else runtime_loop(cpu.DECODE, p[0], bits.dtype, out.dtype).pick(n)
        loop(cpu.DECODE, bits, out, CW, CM, CB, p, 0, np.uint32(0), np.uint32(0), np.int64(0), 32)
    else:
        from . import cuda

        cuda._decode_cuda(bits, out, CW, CM, CB, p)

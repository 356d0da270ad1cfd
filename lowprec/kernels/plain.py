"""Kernel functions run by the Python interpreter: :func:`twin` (kernels/scalar.py's definitions, cpu.py's
runtime-argument loops, the block and accumulation steps).

A first ``round_to``, ``encode``, ``decode`` or ``explain`` of a few values should not wait seconds for a
compiler, and neither should numba's CUDA simulator, which calls a kernel's device functions from Python
(kernels/cuda.py's ``device_functions``). These are the same functions (the same code objects), with
the few names that only numba can run replaced by their plain-Python meaning:

- numpy's fixed-width integer conversions (``np.int64(v)``, ``np.uint32(v)``, ...) wrap ``v`` to the
  width as numba's do (a C cast); arithmetic between them is Python's exact integer arithmetic, which
  equals numba's int64 arithmetic wherever the definitions' int64 intermediates do not overflow (they do
  not: scalar.py's docstrings bound every intermediate);
- the intrinsics ``_like``, ``_shl``, ``_shr``, ``_mix32``, the bit casts and ``_int_times_pow2_bits``
  do what their docstrings in scalar.py say. Values run in 64-bit lanes (a float32 carrier's bits
  held in an int64, a form the definitions support), except where the source converts to ``np.int32``:
  such a value is an :class:`_I32` and keeps its width through ``_like`` and the shifts;
- ``np.float32`` is numpy's float32 scalar (each float32 operation rounded to float32, as compiled code
  does; numpy may warn where compiled code silently overflows to Inf), ``prange`` is ``range``. Python
  floats are IEEE doubles, but ``x / 0.0`` raises: the steps twinned for the simulator guard their
  divisions (the accumulation's ``apply_op``, which divides by its operand, stays compiled there).

kernels/dispatch.py runs these loops for small arrays until the compiled runtime-argument loop is
available (compiled in this process or found in numba's on-disk cache). Same bits:
tests/test_kernels_cpu.py runs them against the compiled loops on the edge data of every format kind,
mode and carrier. About 20-60 us per element, so only for a few elements.
"""

from __future__ import annotations

import struct
import sys
import threading
import types as _types

import numpy as _np

from . import cpu, scalar

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1


class _I32(int):
    """A Python int that numba would type as an int32 (so ``_like`` and the shifts keep 32 bits)."""

    __slots__ = ()


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


class _FixedWidth:
    """The numpy names the definitions use: conversions that wrap like numba's integer casts."""

    @staticmethod
    def int64(v):
        return _signed(int(v), 64)

    @staticmethod
    def int32(v):
        return _I32(_signed(int(v), 32))

    @staticmethod
    def uint64(v):
        return int(v) & _M64

    @staticmethod
    def uint32(v):
        return int(v) & _M32

    float64 = float


def _width(x) -> int:
    return 32 if type(x) is _I32 else 64


def _like(proto, v):
    """``v`` converted to the integer type of ``proto`` (wrapping)."""
    if type(proto) is _I32:
        return _I32(_signed(int(v), 32))
    return _signed(int(v), 64)


def _shl(x, n):
    """``x << n`` in x's width."""
    w = _width(x)
    r = _signed(int(x) << int(n), w)
    return _I32(r) if w == 32 else r


def _shr(x, n):
    """``x >> n``, arithmetic for signed x (Python's ``>>`` on ints; unsigned values are non-negative)."""
    r = int(x) >> int(n)
    return _I32(r) if type(x) is _I32 else r


def _mix32(x):
    """lowbias32 of x's low 32 bits (scalar._mix32)."""
    v = int(x) & _M32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & _M32
    v ^= v >> 15
    v = (v * 0x846CA68B) & _M32
    return v ^ (v >> 16)


def f64_as_i64(x):
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def i64_as_f64(x):
    return struct.unpack("<d", struct.pack("<q", _signed(int(x), 64)))[0]


def f32_as_i32(x):
    return _I32(struct.unpack("<i", struct.pack("<f", float(x)))[0])


def i32_as_f32(x):
    return struct.unpack("<f", struct.pack("<i", _signed(int(x), 32)))[0]


def _int_times_pow2_bits(proto, k, scale):
    """Carrier bits (proto's width) of the exact product ``k * scale`` (scalar._int_times_pow2_bits)."""
    v = float(int(k)) * float(scale)  # exact: the caller guarantees the carrier holds the product
    if type(proto) is _I32:
        return _I32(struct.unpack("<i", struct.pack("<f", v))[0])
    return struct.unpack("<q", struct.pack("<d", v))[0]


class _Numpy(_FixedWidth):
    """``np`` as the twins see it: :class:`_FixedWidth`'s integer conversions, ``float32`` as numpy's
    float32 scalar (float32 arithmetic rounds each operation to float32, as compiled code does), every
    other name numpy's own."""

    float32 = _np.float32

    def __getattr__(self, name):
        return getattr(_np, name)


#: names that only numba can run, by the name the kernel sources use, and their plain-Python meaning
_TWIN_NAMES = {
    "np": _Numpy(), "prange": range, "_like": _like, "_shl": _shl, "_shr": _shr, "_mix32": _mix32,
    "f64_as_i64": f64_as_i64, "i64_as_f64": i64_as_f64, "f32_as_i32": f32_as_i32, "i32_as_f32": i32_as_f32,
    "_int_times_pow2_bits": _int_times_pow2_bits,
}
#: the same, by identity (for intrinsics reached as module attributes, ``scalar.f64_as_i64``)
_TWIN_OBJECTS = {id(getattr(scalar, k)): v for k, v in _TWIN_NAMES.items() if hasattr(scalar, k)}
_twins: dict = {}  # id of the original -> (original, twin): the originals stay alive, so ids stay unique
_twin_lock = threading.RLock()


def twin(obj):
    """The plain-Python twin of a compiled kernel function (or of a kernel module): its own source run by
    the interpreter, with every lowprec function it reaches (through its globals, its closure cells and the
    attributes of kernel modules) replaced by that function's twin, and the names only numba can run
    (``_TWIN_NAMES``) by their plain-Python meaning. Anything else is returned as it is.

    No compiler involved: a first call of a few values, ``explain``, and numba's CUDA simulator (whose
    threads call the device functions from Python: kernels/cuda.py, block_cuda.py, linalg_cuda.py) run these
    instead of compiling each function for Python's argument types in every process."""
    with _twin_lock:
        return _twin(obj)


def _twin(obj):
    hit = _twins.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    if id(obj) in _TWIN_OBJECTS:
        return _TWIN_OBJECTS[id(obj)]
    f = obj if isinstance(obj, _types.FunctionType) else getattr(obj, "py_func", None)
    if isinstance(f, _types.FunctionType) and f.__module__.startswith(_PACKAGE):
        cells = None if f.__closure__ is None else tuple(_types.CellType() for _ in f.__closure__)
        copy = _types.FunctionType(f.__code__, _namespace(f.__globals__), f.__name__, f.__defaults__, cells)
        copy.__qualname__ = f.__qualname__ + "<python>"
        copy.__module__ = f.__module__
        copy.__doc__ = f.__doc__
        _twins[id(obj)] = (obj, copy)
        for new, old in zip(cells or (), f.__closure__ or ()):  # filled after registering: cycles end here
            try:
                new.cell_contents = _twin(old.cell_contents)
            except ValueError:  # an empty cell stays empty
                pass
        return copy
    if isinstance(obj, _types.ModuleType) and obj.__name__.startswith(_PACKAGE) and obj is not _self:
        mod = _ModuleTwin(obj.__name__ + "<python>", _namespace(vars(obj)))
        _twins[id(obj)] = (obj, mod)
        return mod
    return obj


class _ModuleTwin(_types.ModuleType):
    """A kernel module seen through its twinned namespace (``scalar.round_bits`` in a twin is the twin)."""

    def __init__(self, name, namespace):
        super().__init__(name)
        self._namespace = namespace

    def __getattr__(self, name):
        try:
            return self._namespace[name]
        except KeyError:
            raise AttributeError(name) from None


def _namespace(globals_: dict) -> dict:
    """A copy of a module's globals with every value twinned (memoised: the functions of a module share it;
    registered before it is filled, so a cycle sees it, partly filled, and names are looked up at call time)."""
    hit = _twins.get(id(globals_))
    if hit is not None and hit[0] is globals_:
        return hit[1]
    ns: dict = {}
    _twins[id(globals_)] = (globals_, ns)
    for k, v in list(globals_.items()):
        ns[k] = _TWIN_NAMES[k] if k in _TWIN_NAMES else _twin(v)
    return ns


_PACKAGE = __name__.rsplit(".", 1)[0]  # "lowprec.kernels"
_self = sys.modules[__name__]

#: scalar.py's definitions, run by the interpreter
DEFINITIONS = twin(scalar.DEFINITIONS.called())

_LOOPS: dict = {}


def element_loop(op: int, kind: int):
    """cpu.py's runtime-argument loop of ``op`` for a format kind, run by the interpreter (same arguments)."""
    loop = _LOOPS.get((op, kind))
    if loop is None:
        loop = _LOOPS[op, kind] = twin(cpu.element_any(op, kind))
    return loop

"""kernels/scalar.py's definitions and cpu.py's runtime-argument loops, run by the Python interpreter.

A first ``round_to``, ``encode``, ``decode`` or ``explain`` of a few values should not wait seconds for a
compiler. These are the same functions (the same code objects, kernels/jit.py's
:meth:`~lowprec.kernels.jit.Definitions.python` and :func:`~lowprec.kernels.jit.interpreted`), with
the few names that only numba can run replaced by their plain-Python meaning:

- numpy's fixed-width integer conversions (``np.int64(v)``, ``np.uint32(v)``, ...) wrap ``v`` to the
  width as numba's do (a C cast); arithmetic between them is Python's exact integer arithmetic, which
  equals numba's int64 arithmetic wherever the definitions' int64 intermediates do not overflow (they do
  not: scalar.py's docstrings bound every intermediate);
- the intrinsics ``_like``, ``_shl``, ``_shr``, ``_mix32``, the bit casts and ``_int_times_pow2_bits``
  do what their docstrings in scalar.py say. Values run in 64-bit lanes (a float32 carrier's bits
  held in an int64, a form the definitions support), except where the source converts to ``np.int32``:
  such a value is an :class:`_I32` and keeps its width through ``_like`` and the shifts.

kernels/dispatch.py runs these loops for small arrays until the compiled runtime-argument loop is
available (compiled in this process or found in numba's on-disk cache). Same bits:
tests/test_kernels_cpu.py runs them against the compiled loops on the edge data of every format kind,
mode and carrier. About 20-60 us per element, so only for a few elements.
"""

from __future__ import annotations

import struct

from . import cpu, scalar
from .jit import interpreted

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


#: scalar.py's definitions, run by the interpreter
DEFINITIONS = scalar.DEFINITIONS.python({
    "np": _FixedWidth, "_like": _like, "_shl": _shl, "_shr": _shr, "_mix32": _mix32,
    "f64_as_i64": f64_as_i64, "i64_as_f64": i64_as_f64, "f32_as_i32": f32_as_i32, "i32_as_f32": i32_as_f32,
    "_int_times_pow2_bits": _int_times_pow2_bits,
})

_LOOPS: dict = {}


def element_loop(op: int, kind: int):
    """cpu.py's runtime-argument loop of ``op`` for a format kind, run by the interpreter (same arguments)."""
    loop = _LOOPS.get((op, kind))
    if loop is None:
        generic = cpu.element_any(op, kind)
        namespace = dict(generic.py_func.__globals__)
        namespace.update(np=_FixedWidth, _called=DEFINITIONS)
        loop = _LOOPS[op, kind] = interpreted(generic, namespace)
    return loop

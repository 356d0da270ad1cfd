"""The SGD update of lowprec.autograd.optim in one compiled pass (float32 master weights and state).

``sgd_f32`` computes, element by element, exactly what the numpy code of
``Optimizer._step``/``SGD._update`` computes for float32 arrays: every
operation is one IEEE float32 operation rounded to nearest-even, in the same
order and with the same operands (numba, like numpy, never contracts a
product and a sum into an FMA without fast-math flags), and a NaN result
carries the NaN numpy's would (see ``_add``):

- ``gg = g + wd * w`` (only with weight decay);
- with momentum: ``buf = gg`` at the first step, else ``buf = mu * buf + gg``
  (in place); without: the update is ``gg``;
- ``new = w - lr * update``.

It also returns telemetry's counts for the two identity roundings to fp32
that follow (state and master: only subnormal and NaN results can occur, as
``events.count_bits(x, x, ..., same=True)`` counts them), so that the
optimizer makes one compiled call per parameter instead of several numpy
passes and two counting calls.
"""

import numpy as np
from numba import njit

from . import scalar
from .events import events as _events
from .jit import kernel

_F32_TINY = np.uint32(0x00800000)  # fp32's smallest normal
_F32_MAX = np.uint32(0x7F7FFFFF)
_F32_INF = np.uint32(0x7F800000)


@njit(inline="always")
def _add(a, b):
    """a + b in float32, with numpy's NaN: where both are NaN, a's (quieted). x86 returns the first operand's
    NaN, and numpy's loops put the left operand first, but LLVM may swap the operands of a commutative fadd
    (seen: b's payload came out). A subtraction keeps its order; a product here has a finite operand."""
    r = a + b
    return scalar.i32_as_f32(np.int32(scalar.f32_as_i32(a) | np.int32(0x00400000))) if a != a else r


@njit(inline="always")
def _bits(x):
    """The bits of a float32 value as uint32 (the form events.events compares)."""
    return np.uint32(scalar.f32_as_i32(x))


@kernel
def sgd_f32(g, w, buf, new, mu, lr, wd, decay, momentum, first):
    """One SGD step on flat float32 arrays (see the module docstring); ``decay``: weight decay is on
    (``wd`` is added even where float32(wd) is 0, as numpy adds it); ``buf`` is updated in place
    (ignored without momentum), ``new`` receives the new weights. Returns (subnormal, NaN) counts of
    the state and of the new weights."""
    s_sub = 0
    s_nan = 0
    w_sub = 0
    w_nan = 0
    for i in range(g.size):
        gi = g[i]
        wi = w[i]
        if decay:
            gi = _add(gi, wd * wi)
        if momentum:
            b = gi if first else _add(mu * buf[i], gi)
            buf[i] = b
            e_nan, e_sub, _, _ = _events(_bits(b), _bits(b), _F32_TINY, _F32_MAX, _F32_INF)
            s_nan += e_nan
            s_sub += e_sub
        else:
            b = gi
        nw = wi - lr * b
        new[i] = nw
        e_nan, e_sub, _, _ = _events(_bits(nw), _bits(nw), _F32_TINY, _F32_MAX, _F32_INF)
        w_nan += e_nan
        w_sub += e_sub
    return s_sub, s_nan, w_sub, w_nan

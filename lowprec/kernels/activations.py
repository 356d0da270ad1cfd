"""Compiled activation passes of the autograd (flat float32 arrays; numpy's values, one pass)."""

import numpy as np

from .jit import kernel


@kernel
def relu_f32(x, out):
    """out = where(x > 0, x, +0)."""
    zero = np.float32(0.0)
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > zero else zero


@kernel
def relu_grad_f32(r, g, out):
    """out = where(r > 0, g, +0)."""
    zero = np.float32(0.0)
    for i in range(r.size):
        out[i] = g[i] if r[i] > zero else zero

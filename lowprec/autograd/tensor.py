"""A small reverse-mode autograd over numpy arrays, with every tensor rounded by role.

Each op builds its output from numpy arithmetic, rounds it to the format the
precision runtime (:class:`lowprec.amp.Precision`) names for its role, and
attaches a ``_backward`` closure next to the forward code, as micrograd does.

Numeric model
-------------
* Without a runtime (``ctx=None``, the default for tensors you create) ops
  are plain numpy in the input dtype: float64 tensors give float64
  gradients (used for finite-difference checks).
* With a runtime, values are float32 carriers. An op's output is computed
  in float32 arithmetic (a fused op: one rounding at the end) and rounded
  once to the ``activation`` format; matmuls go through
  :func:`lowprec.linalg.matmul` with the policy's accumulation. In the
  backward pass each gradient contribution is rounded to
  ``activation_grad`` (or ``weight_grad`` for parameters), and when a
  tensor receives several contributions their sum is rounded again.
* The softmax cross-entropy loss is computed in float32 (as autocast
  does); only its gradient with respect to the logits is rounded.

Writing your own op (e.g. a fake quantizer): compute the output array,
create ``out = Tensor(data, (x,), "myop", ctx=x.ctx)``, round it with
``out._round_forward(...)`` if you want the policy's rounding, and set
``out._backward`` to a closure that calls ``x._add_grad(g)`` for each input
that ``requires_grad``. :meth:`Tensor._add_grad` applies the gradient
rounding of the policy.

Examples
--------
>>> import numpy as np
>>> x = Tensor(np.array([[1.0, -2.0]]), requires_grad=True)
>>> w = Tensor(np.array([[3.0], [4.0]]), requires_grad=True)
>>> y = (x @ w).relu().mean()
>>> y.backward()
>>> x.grad.tolist(), w.grad.tolist()
([[0.0, 0.0]], [[0.0], [0.0]])
>>> y = (x @ w).tanh().mean(); x.zero_grad(); w.zero_grad(); y.backward()
>>> bool(np.isclose(x.grad[0, 0], 3 * (1 - np.tanh(-5.0) ** 2)))
True
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from ..formats import FP32
from ..kernels import activations
from ..rounding import Rounding

__all__ = ["Tensor", "softmax_cross_entropy", "matmul", "quantized_matmul", "add_bias", "cast_grad", "no_grad",
           "is_grad_enabled"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715

_GRAD_ENABLED = [True]
_F32 = np.dtype(np.float32)


def is_grad_enabled() -> bool:
    """False inside :class:`no_grad` (ops then build no graph), else True."""
    return _GRAD_ENABLED[0]


class no_grad:
    """Context manager: ops build no graph inside it (evaluation)."""

    def __enter__(self):
        self._prev = _GRAD_ENABLED[0]
        _GRAD_ENABLED[0] = False

    def __exit__(self, *exc):
        _GRAD_ENABLED[0] = self._prev


def _as_data(data, ctx) -> np.ndarray:
    if type(data) is np.ndarray and data.dtype == _F32:  # (what ops make: float32 arrays, taken as they are)
        return data
    arr = np.asarray(data)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise TypeError(f"Tensor data must be float32/float64 (or ints/bools), got dtype {arr.dtype}")
    if ctx is not None and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _quiet(fn):
    """Run an op with floating-point warnings off: overflow to Inf and NaN are results to study."""
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapper


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes along which an operand of ``shape`` was broadcast."""
    if g.shape == shape:
        return g
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g


class Tensor:
    """An array with a gradient, a place in the graph and a precision runtime.

    Parameters
    ----------
    data : array_like
        float32/float64 values (ints are taken as float64). With a ``ctx``
        the data are stored as float32.
    _children : tuple of Tensor
        The inputs of the op that made this tensor (internal).
    _op : str
        The op's name (for printing and telemetry names).
    requires_grad : bool
        Whether gradients are computed for this tensor (ops propagate it).
    name : str, optional
        Name used in telemetry (``<name>`` for the value, ``<name>.grad``).
    ctx : lowprec.amp.Precision, optional
        The precision runtime; ops inherit it from their inputs.
    is_param : bool
        A trained parameter: its gradient is rounded as ``weight_grad``.

    Examples
    --------
    >>> t = Tensor([1.0, 2.0], requires_grad=True)
    >>> (t * t).mean().backward(); t.grad
    array([1., 2.])
    """

    def __init__(self, data, _children: tuple = (), _op: str = "", *, requires_grad: bool = False,
                 name: Optional[str] = None, ctx=None, is_param: bool = False):
        if ctx is None:
            for c in _children:
                if c.ctx is not None:
                    ctx = c.ctx
                    break
        self.ctx = ctx
        self.data = _as_data(data, ctx)
        self.grad: Optional[np.ndarray] = None
        self._grad_set = False
        self._backward = lambda: None
        enabled = _GRAD_ENABLED[0]
        self._prev = tuple(_children) if enabled else ()
        self._op = _op
        rg = bool(requires_grad)
        if not rg and enabled:
            for c in _children:
                if c.requires_grad:
                    rg = True
                    break
        self.requires_grad = rg
        self.name = name
        self.is_param = bool(is_param)
        # the format the data / the gradient are exactly in (see _data_fmt), and the array it was given for
        self._fmt = self._fmt_of = self._gfmt = self._gfmt_of = None

    # ----- plumbing -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, op={self._op!r}, name={self.name!r})"

    def numpy(self) -> np.ndarray:
        """The values (the array itself, not a copy)."""
        return self.data

    def _tname(self, default: str) -> str:
        return self.name or default or "tensor"

    def _round_forward(self, role: str = "activation") -> "Tensor":
        """Round ``self.data`` in place to the format of ``role`` (no-op without a runtime)."""
        if self.ctx is not None:
            self.data, tag = self.ctx._round(self.data, role, self._tname(self._op), self._data_fmt())
            self._set_fmt(tag)
        return self

    # A tag says "this array is exactly in format F": round_to(array, F, any mode) returns it bit for
    # bit, so that rounding it to F again (a role's rounding, a matmul's input rounding) can be skipped.
    # A tag belongs to one array object: assigning a new array to .data/.grad drops it. Arrays are
    # never modified in place by lowprec; code that does so must assign the result again
    # (``t.data = t.data.copy()`` after editing) to drop the tag.

    def _data_fmt(self):
        """The format ``self.data`` is exactly in, or None."""
        return self._fmt if self._fmt_of is self.data else None

    def _set_fmt(self, fmt) -> None:
        self._fmt, self._fmt_of = fmt, (self.data if fmt is not None else None)

    def _grad_fmt(self):
        """The format ``self.grad`` is exactly in, or None."""
        return self._gfmt if self._gfmt_of is self.grad else None

    def _set_grad_fmt(self, fmt) -> None:
        self._gfmt, self._gfmt_of = fmt, (self.grad if fmt is not None else None)

    @property
    def _grad_role(self) -> str:
        return "weight_grad" if self.is_param else "activation_grad"

    def _add_grad(self, g: np.ndarray, exact_from: Optional["Tensor"] = None) -> None:
        """Accumulate a gradient contribution, rounded to this tensor's gradient role.

        ``exact_from=t`` says that ``g`` holds values of ``t.grad`` unchanged
        (or zeros): when ``t``'s gradient role is this tensor's, the values
        are already in the format and the first contribution is taken as is.
        """
        if not self.requires_grad:
            return
        if g.shape != self.data.shape:
            g = np.broadcast_to(g, self.data.shape)
        if self.ctx is None:
            g = np.asarray(g, dtype=self.data.dtype)
            self.grad = g.copy() if not self._grad_set else self.grad + g
        elif (exact_from is not None and not self._grad_set and exact_from._grad_role == self._grad_role
              and g.dtype == np.float32):
            tag = exact_from._grad_fmt()  # g holds values of exact_from.grad (or zeros): its format too
            self.grad = np.ascontiguousarray(g)  # already rounded to this role's format: no second rounding
            self._set_grad_fmt(tag)
        else:
            g = np.asarray(g, dtype=np.float32)
            if self._grad_set:
                g = self.grad + g
            g, tag = self.ctx._round(g, self._grad_role, self._tname(self._op) + ".grad", None)
            self.grad = np.ascontiguousarray(g)
            self._set_grad_fmt(tag)
        self._grad_set = True

    def zero_grad(self) -> None:
        """Forget the gradient (the next backward starts from zero)."""
        self.grad = None
        self._grad_set = False

    def backward(self, grad=None) -> None:
        """Back-propagate from this tensor.

        Parameters
        ----------
        grad : array_like or float, optional
            The gradient of the final objective with respect to this tensor;
            default 1 (this tensor is the loss). A loss scale is passed here.
        """
        topo: list = []
        seen: set = set()
        stack = [(self, False)]
        while stack:  # iterative post-order DFS (no recursion limit on deep graphs)
            node, done = stack.pop()
            if done:
                topo.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for child in node._prev:
                if id(child) not in seen:
                    stack.append((child, False))
        for node in topo:
            if not node.is_param and node._prev:
                node.zero_grad()  # intermediate gradients start fresh; leaves accumulate
        seed = np.ones_like(self.data) if grad is None else np.broadcast_to(
            np.asarray(grad, dtype=self.data.dtype), self.data.shape).copy()
        self.grad = seed
        self._grad_set = True
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for node in reversed(topo):  # Inf/NaN are values being studied here, not errors
                if node._grad_set:
                    node._backward()

    # ----- ops: forward and backward side by side --------------------------------------------

    def __matmul__(self, other) -> "Tensor":
        return matmul(self, other)

    def matmul(self, other, name: Optional[str] = None) -> "Tensor":
        """``self @ other`` (see :func:`matmul`)."""
        return matmul(self, other, name=name)

    @_quiet
    def __add__(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(np.asarray(other, dtype=self.dtype), ctx=self.ctx)
        try:
            data = self.data + other.data
        except ValueError:
            raise ValueError(f"cannot add tensors of shapes {self.shape} and {other.shape}") from None
        out = Tensor(data, (self, other), "add")._round_forward()

        def _backward():
            self._add_grad(_unbroadcast(out.grad, self.shape), exact_from=out if self.shape == out.shape else None)
            other._add_grad(_unbroadcast(out.grad, other.shape), exact_from=out if other.shape == out.shape else None)
        out._backward = _backward
        return out

    __radd__ = __add__

    def add_bias(self, bias: "Tensor", name: Optional[str] = None) -> "Tensor":
        """``self + bias`` with ``bias`` of shape (features,) broadcast over rows."""
        return add_bias(self, bias, name=name)

    @_quiet
    def __mul__(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(np.asarray(other, dtype=self.dtype), ctx=self.ctx)
        try:
            data = self.data * other.data
        except ValueError:
            raise ValueError(f"cannot multiply tensors of shapes {self.shape} and {other.shape}") from None
        out = Tensor(data, (self, other), "mul")._round_forward()

        def _backward():
            self._add_grad(_unbroadcast(out.grad * other.data, self.shape))
            other._add_grad(_unbroadcast(out.grad * self.data, other.shape))
        out._backward = _backward
        return out

    __rmul__ = __mul__

    def __neg__(self) -> "Tensor":
        return self * -1.0

    def __sub__(self, other) -> "Tensor":
        return self + (-other if isinstance(other, Tensor) else -np.asarray(other))

    @_quiet
    def relu(self, name: Optional[str] = None) -> "Tensor":
        """max(x, 0); the gradient at 0 is taken as 0."""
        x = self.data
        if x.dtype == _F32 and x.flags.c_contiguous:
            r = np.empty_like(x)  # one compiled pass (same values as the numpy branch)
            activations.relu_f32(x.reshape(-1), r.reshape(-1))
        else:
            r = np.where(x > 0, x, x.dtype.type(0))
        # r > 0 exactly where x > 0 (elsewhere r is +0), so r stands for the mask in the backward pass
        out = Tensor(r, (self,), "relu", name=name)
        out._set_fmt(self._data_fmt())  # values of self, or +0: in self's format
        out._round_forward()

        def _backward():
            g = out.grad
            if g.dtype == _F32 and g.flags.c_contiguous and r.dtype == _F32:
                gx = np.empty_like(g)
                activations.relu_grad_f32(r.reshape(-1), g.reshape(-1), gx.reshape(-1))
            else:
                gx = np.where(r > 0, g, g.dtype.type(0))
            self._add_grad(gx, exact_from=out)
        out._backward = _backward
        return out

    @_quiet
    def tanh(self, name: Optional[str] = None) -> "Tensor":
        """tanh(x); the backward uses the rounded output: d = 1 - y**2."""
        out = Tensor(np.tanh(self.data), (self,), "tanh", name=name)._round_forward()

        def _backward():
            y = out.data
            self._add_grad(out.grad * (1 - y * y))
        out._backward = _backward
        return out

    @_quiet
    def gelu(self, name: Optional[str] = None) -> "Tensor":
        """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))."""
        x = self.data
        c = x.dtype.type(_SQRT_2_OVER_PI)
        k = x.dtype.type(_GELU_C)
        t = np.tanh(c * (x + k * x * x * x))
        half = x.dtype.type(0.5)
        out = Tensor(half * x * (1 + t), (self,), "gelu", name=name)._round_forward()

        def _backward():
            d = half * (1 + t) + half * x * (1 - t * t) * c * (1 + 3 * k * x * x)
            self._add_grad(out.grad * d)
        out._backward = _backward
        return out

    @_quiet
    def sum(self, axis=None, name: Optional[str] = None) -> "Tensor":
        """Sum over ``axis`` (all axes by default)."""
        out = Tensor(np.asarray(self.data.sum(axis=axis)), (self,), "sum", name=name)._round_forward()

        def _backward():
            g = out.grad if axis is None else np.expand_dims(out.grad, axis)
            self._add_grad(np.broadcast_to(g, self.shape))
        out._backward = _backward
        return out

    @_quiet
    def mean(self, axis=None, name: Optional[str] = None) -> "Tensor":
        """Mean over ``axis`` (all axes by default)."""
        n = self.data.size if axis is None else np.prod([self.shape[a] for a in np.atleast_1d(axis)])
        out = Tensor(np.asarray(self.data.mean(axis=axis)), (self,), "mean", name=name)._round_forward()

        def _backward():
            g = out.grad if axis is None else np.expand_dims(out.grad, axis)
            self._add_grad(np.broadcast_to(g / g.dtype.type(n), self.shape))
        out._backward = _backward
        return out

    def reshape(self, *shape) -> "Tensor":
        """A tensor with the same values in a new shape (no rounding: values are unchanged)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {self.shape} into {shape}") from None
        out = Tensor(data, (self,), "reshape")
        out._set_fmt(self._data_fmt() if out.data is data else None)

        def _backward():
            self._add_grad(out.grad.reshape(self.shape), exact_from=out)
        out._backward = _backward
        return out


def _check_matmul_shapes(a: Tensor, b: Tensor) -> None:
    if a.data.ndim < 2 or b.data.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul needs (..., M, K) @ (..., K, N) operands, got shapes {a.shape} and {b.shape}")


def _mm(ctx, a: np.ndarray, b: np.ndarray, which: str, a_fmt=None, b_fmt=None, t: bool = False) -> np.ndarray:
    """a @ b (``t``: its transpose): plain numpy without a runtime, else lowprec.linalg with the policy's accumulation.

    ``a_fmt``/``b_fmt``: formats the operands are known to be exactly in (tags), or None. The result
    is ``linalg.matmul(a, b, accumulation, seed=stream)`` bit for bit; on the CPU it is computed by
    the runtime's prepared product (``linalg.prepare_matmul``): an operand is rounded to its input
    format only when it is not already in it. With ``t`` and the float32 tile kernel, ``(a @ b).T`` is computed directly as
    ``b.T @ a.T``: every output has the same products (a product does not depend on the order of its
    factors) summed in the same k order, and the result comes out C-contiguous.
    """
    if ctx is None:
        return (a @ b).T if t else a @ b
    from .. import linalg

    acc = ctx.accumulation(which)
    seed = ctx.streams["matmul_" + which]
    mm = ctx.matmul_of(which)
    if mm is None or a.dtype != _F32 or b.dtype != _F32 or a.ndim != 2 or b.ndim != 2:
        out = linalg.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), acc, seed=seed)
        return out.T if t else out
    fast = mm.kernel != "general"
    a = _operand(ctx, a, a_fmt, acc.a_format, fast)
    b = _operand(ctx, b, b_fmt, acc.b_format, fast)
    if not t:
        return mm(a, b, seed=seed, inputs_rounded=True)
    if fast:
        return mm(b.T, a.T, seed=seed, inputs_rounded=True)
    return mm(a, b, seed=seed, inputs_rounded=True).T


def _operand(ctx, x: np.ndarray, tag, fmt, fast: bool = False) -> np.ndarray:
    """``x`` (float32) as linalg.matmul's input rounding (nearest-even to ``fmt``) would leave it.

    ``fast``: the operand goes to the float32 tile kernel, whose NaN results are canonical
    whatever NaNs its inputs hold, so an fp32 operand is used as it is.
    """
    if tag is not None and (tag is fmt or tag == fmt):
        return x
    if fmt is FP32 and (fast or not np.isnan(x).any()):
        return x  # float32 numbers are fp32 numbers; only NaNs would change (to the canonical NaN)
    return ctx.rounding_of(fmt, Rounding.NEAREST_EVEN)(x)


@_quiet
def matmul(a: Tensor, b: Tensor, name: Optional[str] = None) -> Tensor:
    """``a @ b`` for 2-D tensors (M, K) @ (K, N).

    With a runtime the product runs through :func:`lowprec.linalg.matmul`
    with the policy's ``forward_accumulation``; the gradients ``g @ b.T`` and
    ``(g.T @ a).T`` (gradient operand on the left) use
    ``backward_accumulation``. Outputs are rounded to ``activation`` and the
    gradients to their roles.

    Raises
    ------
    ValueError
        The inner dimensions differ (the message shows both shapes).
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul needs two Tensors, got {type(a).__name__} and {type(b).__name__}")
    _check_matmul_shapes(a, b)
    if a.data.ndim != 2 or b.data.ndim != 2:
        raise ValueError(f"matmul takes 2-D tensors, got shapes {a.shape} and {b.shape}")
    ctx = a.ctx or b.ctx
    out = Tensor(_mm(ctx, a.data, b.data, "forward", a._data_fmt(), b._data_fmt()), (a, b), "matmul", name=name,
                 ctx=ctx)._round_forward()

    def _backward():
        g = out.grad
        gf = out._grad_fmt()
        if a.requires_grad:
            a._add_grad(_mm(ctx, g, b.data.T, "backward", gf, b._data_fmt()))
        if b.requires_grad:  # dB = a.T @ g computed as (g.T @ a).T: the gradient is the left operand
            b._add_grad(_mm(ctx, g.T, a.data, "backward", gf, a._data_fmt(), t=True))
    out._backward = _backward
    return out


@_quiet
def quantized_matmul(a: Tensor, b: Tensor, qmm, name: Optional[str] = None) -> Tensor:
    """``a @ b`` for 2-D tensors whose three products quantize their own operands.

    ``qmm.forward(ctx, a, b)`` returns the forward product and ``qmm.backward(ctx, g, a, b, need_a, need_b)``
    the pair ``(dA, dB)`` (None where not needed) for the output gradient ``g``; they get the Tensors, so
    that each product can quantize each operand along its own contraction axis (the block-scaled
    policies of :mod:`lowprec.amp.blockscaled`, the scaled fp8 products on a matrix unit of
    :mod:`lowprec.amp.hardware`). The output is rounded to ``activation`` and the gradients to their
    roles, as :func:`matmul` does.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"quantized_matmul needs two Tensors, got {type(a).__name__} and {type(b).__name__}")
    _check_matmul_shapes(a, b)
    if a.data.ndim != 2 or b.data.ndim != 2:
        raise ValueError(f"quantized_matmul takes 2-D tensors, got shapes {a.shape} and {b.shape}")
    ctx = a.ctx or b.ctx
    out = Tensor(qmm.forward(ctx, a, b), (a, b), "matmul", name=name, ctx=ctx)._round_forward()

    def _backward():
        da, db = qmm.backward(ctx, np.asarray(out.grad, dtype=np.float32), a, b, a.requires_grad, b.requires_grad)
        if da is not None:
            a._add_grad(da)
        if db is not None:
            b._add_grad(db)
    out._backward = _backward
    return out


@_quiet
def add_bias(x: Tensor, bias: Tensor, name: Optional[str] = None) -> Tensor:
    """``x + bias`` for x of shape (N, F) and bias of shape (F,); the bias gradient sums over rows.

    Raises
    ------
    ValueError
        ``bias`` is not 1-D with ``x.shape[-1]`` entries.
    """
    if bias.data.ndim != 1 or x.data.ndim < 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias must have shape ({x.shape[-1] if x.data.ndim else '?'},) to match x of shape "
                         f"{x.shape}, got {bias.shape}")
    out = Tensor(x.data + bias.data, (x, bias), "add_bias", name=name)._round_forward()

    def _backward():
        x._add_grad(out.grad, exact_from=out)
        bias._add_grad(out.grad.reshape(-1, bias.shape[0]).sum(axis=0))
    out._backward = _backward
    return out


def cast_grad(x: Tensor, cast, name: Optional[str] = None) -> Tensor:
    """``x`` unchanged in the forward pass; in the backward pass the incoming gradient goes through
    ``cast(g)`` (a float32 array in, one of the same shape out) before it reaches ``x``, where it is
    rounded to ``x``'s gradient role as usual.

    What a scaled fp8 recipe needs for the gradient of a layer's output: ``dY`` cast once, after the
    activation's backward, before both gradient matmuls use it (lowprec.amp.scaling)."""
    out = Tensor(x.data, (x,), "cast_grad", name=name, ctx=x.ctx)
    out._set_fmt(x._data_fmt())

    def _backward():
        x._add_grad(cast(np.asarray(out.grad, dtype=np.float32)))
    out._backward = _backward
    return out


@_quiet
def softmax_cross_entropy(logits: Tensor, labels, name: Optional[str] = "loss") -> Tensor:
    """Mean cross-entropy of softmax(logits) against integer labels, computed stably.

    ``loss = mean_i(logsumexp(z_i) - z_i[y_i])`` with ``z_i = logits_i - max(logits_i)``,
    in the carrier precision (float32 with a runtime). The gradient with
    respect to the logits, ``(softmax(z) - onehot(y)) * upstream / N``, is
    rounded to ``activation_grad``.

    Parameters
    ----------
    logits : Tensor of shape (N, C)
    labels : array_like of ints in [0, C), shape (N,)

    Raises
    ------
    ValueError
        Shapes do not match or labels are out of range.

    Examples
    --------
    >>> import numpy as np
    >>> loss = softmax_cross_entropy(Tensor(np.zeros((2, 4))), [0, 3])
    >>> bool(np.isclose(float(loss.data), np.log(4)))
    True
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a Tensor, got {type(logits).__name__}")
    y = np.asarray(labels)
    if logits.data.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {logits.shape}")
    if y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits {logits.shape}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    n, c = logits.shape
    if n and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels must be in [0, {c}), got values in [{y.min()}, {y.max()}]")
    z = logits.data - logits.data.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = (np.log(s[:, 0]) - z[rows, y]).mean()
    out = Tensor(np.asarray(loss, dtype=logits.dtype), (logits,), "cross_entropy", name=name)

    def _backward():
        p = e / s
        p[rows, y] -= 1
        logits._add_grad(p * (out.grad / out.grad.dtype.type(n)))
    out._backward = _backward
    return out

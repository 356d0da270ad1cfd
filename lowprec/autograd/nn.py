"""Layers: Linear and MLP, with seeded initialisation and per-role precision.

A parameter is a :class:`~lowprec.autograd.tensor.Tensor` with
``is_param=True``. Its ``data`` is the weight *as stored* (rounded to the
policy's ``weight`` format); when the policy keeps master weights, the
optimizer holds the float32 master copy and refreshes ``data`` from it
after each step. In the forward pass a Linear layer rounds the stored
weight to ``weight_used``, applies the policy's weight fake quantizer if
any, rounds its input to ``activation`` and applies the activation fake
quantizer if any, then computes ``x @ W + b``. A policy with a ``matmul_quant`` factory (the block-scaled
recipes of :mod:`lowprec.amp.blockscaled`) computes ``x @ W`` and its two gradient products itself
(:func:`~lowprec.autograd.tensor.quantized_matmul`), each quantizing its operands along its own
contraction axis; so do the per-tensor scaled fp8 recipes on a matrix unit (:mod:`lowprec.amp.hardware`).

Examples
--------
>>> import numpy as np
>>> from lowprec.amp import Precision
>>> mlp = MLP([4, 8, 3], seed=0, ctx=Precision("bf16-mixed"))
>>> x = Tensor(np.ones((2, 4), dtype=np.float32))
>>> mlp(x).shape, len(mlp.parameters())
((2, 3), 4)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .tensor import Tensor, add_bias, cast_grad, is_grad_enabled, matmul, quantized_matmul

__all__ = ["Linear", "MLP", "ACTIVATIONS"]

#: Names of the activations MLP accepts.
ACTIVATIONS = ("relu", "tanh", "gelu")


class Linear:
    """``y = x @ W + b`` with W of shape (in_features, out_features).

    Parameters
    ----------
    in_features, out_features : int
    rng : numpy Generator
        Source of the initial weights: He-uniform ``U(-sqrt(6/in), sqrt(6/in))``
        for W (drawn in float64, then rounded to float32 and to the policy's
        ``weight`` format); the bias starts at zero.
    ctx : lowprec.amp.Precision, optional
        Precision runtime (None: plain numpy float64).
    layer_index : int
        Position in the network: passed to the policy's fake-quant factories
        and used in telemetry names (``layer{i}.weight`` ...).
    init : {"he", "lecun"}
        He-uniform bound ``sqrt(6/in)`` (default) or LeCun-uniform ``sqrt(1/in)``.
    last : bool
        The network's last layer (told to the policy's ``matmul_quant`` factory: the fp4 recipes keep it
        in bf16).
    """

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator, ctx=None,
                 layer_index: int = 0, init: str = "he", last: bool = False):
        for nm, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.ctx = ctx
        self.index = int(layer_index)
        if init not in ("he", "lecun"):
            raise ValueError(f"init must be 'he' or 'lecun', got {init!r}")
        bound = np.sqrt(6.0 / in_features) if init == "he" else np.sqrt(1.0 / in_features)
        w = rng.uniform(-bound, bound, size=(in_features, out_features))
        dtype = np.float32 if ctx is not None else np.float64
        self.weight = Tensor(w.astype(dtype), requires_grad=True, name=f"layer{self.index}.weight", ctx=ctx,
                             is_param=True)
        self.bias = Tensor(np.zeros(out_features, dtype=dtype), requires_grad=True,
                           name=f"layer{self.index}.bias", ctx=ctx, is_param=True)
        if ctx is not None:  # weights as stored
            for p in (self.weight, self.bias):
                p.data, tag = ctx._round(p.data, "weight", None, None)
                p._set_fmt(tag)
        policy = ctx.policy if ctx is not None else None
        wq = policy.weight_fake_quant if policy is not None else None
        aq = policy.act_fake_quant if policy is not None else None
        self.weight_quant = wq(self.index, self.out_features) if wq is not None else None
        self.act_quant = aq(self.index, self.out_features) if aq is not None else None
        mq = policy.matmul_quant if policy is not None else None
        self.matmul_quant = mq(self.index, self.out_features, bool(last)) if mq is not None else None
        hw = getattr(ctx, "hardware", None)
        if self.matmul_quant is None and hw is not None and hw.route == "tensor":
            from ..amp.hardware import TensorScaledUnitMatmul  # scaled fp8 operands through the matrix unit

            self.matmul_quant = TensorScaledUnitMatmul(self.act_quant, self.weight_quant)

    def parameters(self) -> list:
        """The trained tensors: weight, bias, then any fake-quantizer parameters."""
        params = [self.weight, self.bias]
        for q in (self.weight_quant, self.act_quant):
            if q is not None and hasattr(q, "parameters"):
                params.extend(q.parameters())
        return params

    def weight_used(self) -> Tensor:
        """The weight as the matmul sees it: rounded to ``weight_used``, then fake-quantized."""
        w = self.weight
        policy = self.ctx.policy if self.ctx is not None else None
        if policy is not None and policy.format("weight_used") != policy.format("weight"):
            data, tag = self.ctx._round(w.data, "weight_used", f"layer{self.index}.weight_used", w._data_fmt())
            if data is not w.data:  # a rounding that is the identity for the gradient (straight through)
                src = w
                w = Tensor(data, (src,), "round", name=f"layer{self.index}.weight_used")
                w._set_fmt(tag)
                w._backward = (lambda s=src, t=w: s._add_grad(t.grad, exact_from=t))
        if self.weight_quant is not None:
            w = self.weight_quant(w)
        return w

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"layer{self.index} expects inputs with {self.in_features} features, "
                             f"got shape {x.shape}")
        if self.act_quant is not None:
            x = self.act_quant(x)
        if self.matmul_quant is not None:
            y = quantized_matmul(x, self.weight_used(), self.matmul_quant, name=f"layer{self.index}.matmul")
        else:
            y = matmul(x, self.weight_used(), name=f"layer{self.index}.matmul")
        y = add_bias(y, self.bias, name=f"layer{self.index}.preact")
        grad_cast = getattr(self.act_quant, "grad_cast", None)
        if grad_cast is not None and self.ctx is not None and is_grad_enabled():
            # the policy casts the gradient of this layer's output (dY) once, before both gradient matmuls
            y = cast_grad(y, lambda g, c=self.ctx: grad_cast(c, g), name=f"layer{self.index}.output")
        return y


class MLP:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (no activation after the last layer).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, at least two.
    activation : {"relu", "tanh", "gelu"}
    seed : int
        Seed of the initial weights (numpy's default generator).
    ctx : lowprec.amp.Precision, optional
        Precision runtime shared by all layers.

    Raises
    ------
    ValueError
        Fewer than two sizes, a non-positive size, or an unknown activation.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", seed: int = 0, ctx=None):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least input and output widths, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        self.sizes = sizes
        self.activation = activation
        self.ctx = ctx
        rng = np.random.default_rng(seed)
        self.layers = [Linear(sizes[i], sizes[i + 1], rng, ctx=ctx, layer_index=i, last=i == len(sizes) - 2)
                       for i in range(len(sizes) - 1)]

    def parameters(self) -> list:
        """All trained tensors, layer by layer."""
        return [p for layer in self.layers for p in layer.parameters()]

    def input(self, x) -> Tensor:
        """Wrap a batch as a Tensor rounded to the ``activation`` format (no gradient)."""
        t = Tensor(x, name="input", ctx=self.ctx)
        return t._round_forward()

    def __call__(self, x) -> Tensor:
        """Logits for a batch ``x`` of shape (N, sizes[0]) (array or Tensor)."""
        if not isinstance(x, Tensor):
            x = self.input(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = getattr(x, self.activation)(name=f"layer{i}.{self.activation}")
        return x

    def n_activations(self, batch: int) -> int:
        """Values held for backward for one batch: inputs, pre-activations and activations."""
        hidden = sum(self.sizes[1:-1])
        return batch * (self.sizes[0] + 2 * hidden + self.sizes[-1])

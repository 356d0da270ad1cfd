"""A minimal autograd for emulated mixed-precision training.

:mod:`~lowprec.autograd.tensor` holds :class:`Tensor` and its ops (forward
and backward side by side), :mod:`~lowprec.autograd.nn` the layers and
:mod:`~lowprec.autograd.optim` the optimizers. The formats come from a
precision runtime, :class:`lowprec.amp.Precision`.
"""

from .nn import MLP, Linear
from .optim import SGD, Adam, Optimizer, clip_grad_norm
from .tensor import (Tensor, add_bias, cast_grad, is_grad_enabled, matmul, no_grad, quantized_matmul,
                     softmax_cross_entropy)

__all__ = ["Tensor", "matmul", "quantized_matmul", "add_bias", "cast_grad", "softmax_cross_entropy", "no_grad",
           "is_grad_enabled",
           "Linear", "MLP",
           "SGD", "Adam", "Optimizer", "clip_grad_norm"]

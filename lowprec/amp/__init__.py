"""Precision policies (which format where) and loss scaling.

A :class:`Policy` is a table: for each *role* a tensor can play in training,
the format it is rounded to and the rounding mode. The roles are

================== ==========================================================
``weight``          weights as stored in the model (the low-precision copy)
``weight_used``     weights as fed to the matmul (rounded from the stored copy
                    every forward pass; fake quantization applies after it)
``activation``      every forward tensor: inputs, matmul outputs, bias adds,
                    nonlinearities (the loss itself is computed in float32)
``activation_grad`` gradients flowing back through activations
``weight_grad``     gradients of parameters (what the optimizer reads)
``optimizer_state`` momentum / Adam moments
``master``          the master copy of the weights that updates are applied
                    to; ``None`` means *no master weights*: updates are
                    rounded straight into the stored weights
================== ==========================================================

The rounding of ``master`` (or of ``weight`` when there is no master copy)
is the rounding of the weight *update*: ``nearest_even`` or ``stochastic``.
Matmuls use the accumulation named by ``forward_accumulation`` (forward)
and ``backward_accumulation`` (both gradient matmuls; the gradient operand
is always the left one, so ``"e5m2-e4m3-fp32"`` means e5m2 gradients times
e4m3 weights/activations). The names are those of
:func:`lowprec.accumulation.get_accumulation`.

Extension points (used by :mod:`lowprec.quant`): ``weight_fake_quant`` and
``act_fake_quant`` are *factories* ``f(layer_index, out_features)`` that
return a callable ``Tensor -> Tensor`` (or None for "leave this layer
alone"). :class:`lowprec.autograd.nn.Linear` calls them once when it is built
and applies the weight quantizer to the weights as used and the activation
quantizer to the layer's input activations. If the returned callable has a
``parameters()`` method, its Tensors are trained with the layer's.

Loss scaling: :class:`LossScaler` with ``mode`` ``"none"``, ``"static"`` or
``"dynamic"``, following PyTorch's GradScaler (see its docstring).

The package holds one concept per module, and re-exports their public names:

* :mod:`lowprec.amp.policies`: :class:`Policy`, :data:`ROLES`, the presets,
  :func:`policy_bytes`;
* :mod:`lowprec.amp.registry`: :func:`register_policy`, :func:`get_policy`,
  :func:`policy_names` (importing it registers the presets);
* :mod:`lowprec.amp.runtime`: :class:`Precision`, the per-role rounding
  during training;
* :mod:`lowprec.amp.scaler`: :class:`LossScaler`, :func:`parse_loss_scale`;
* :mod:`lowprec.amp.scaling`: tensor scaling of matmul operands (:class:`ScalingRecipe`,
  :class:`TensorScaler`, :func:`scale_from_amax`, :func:`scaled_cast`) and the policies
  ``fp8-current``, ``fp8-delayed``, ``fp8-rowwise``;
* :mod:`lowprec.amp.blockscaled`: block- and tile-scaled products (:class:`BlockRecipe`,
  :func:`block_policy`) and the policies ``fp8-deepseek``, ``mxfp8``, ``nvfp4``, ``mxfp4``;
* :mod:`lowprec.amp.hardware`: the matrix unit that runs a policy's matmuls
  (:func:`resolve_hardware`, ``Precision(..., hardware="nv-hopper")``, ``lowprec train --hardware``).

Examples
--------
>>> from lowprec import amp
>>> p = amp.get_policy("bf16-mixed")
>>> p.format("activation").name, p.rounding("master").label, p.master_weights
('bf16', 'nearest_even', True)
>>> amp.get_policy("pure-fp16").master_weights
False
"""

from .policies import ROLES, Policy, policy_bytes
from .registry import get_policy, policy_names, register_policy
from .runtime import Precision
from .scaler import LossScaler, parse_loss_scale
from .scaling import ScalingRecipe, TensorScaler, scale_from_amax, scaled_cast
from .blockscaled import BlockRecipe, block_policy
from .hardware import resolve_hardware

__all__ = ["ROLES", "Policy", "register_policy", "get_policy", "policy_names", "Precision",
           "LossScaler", "parse_loss_scale", "policy_bytes", "ScalingRecipe", "TensorScaler", "scale_from_amax",
           "scaled_cast", "BlockRecipe", "block_policy", "resolve_hardware"]

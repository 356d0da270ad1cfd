"""Precision policies: :class:`Policy` (role -> format and rounding), the presets, :func:`policy_bytes`.

The roles are listed in :data:`ROLES` (see :mod:`lowprec.amp` for what each
one is). :data:`PRESETS` holds the built-in policies (``fp32``,
``fp16-mixed``, ``bf16-mixed``, ``fp8-mixed``, ``pure-fp16``), which
:mod:`lowprec.amp.registry` registers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..formats import FloatFormat, get_format
from ..rounding import Rounding, get_rounding
from .scaler import parse_loss_scale

__all__ = ["ROLES", "Policy", "PRESETS", "policy_bytes"]

#: The roles a policy table must name, in a fixed order (also the stream ids of stochastic rounding).
ROLES = ("weight", "weight_used", "activation", "activation_grad", "weight_grad", "optimizer_state",
         "master")


def _entry(role: str, value) -> tuple:
    """Normalise one table entry to (format or None, Rounding)."""
    if value is None:
        if role != "master":
            raise ValueError(f"policy role {role!r} needs a format; only 'master' may be None")
        return (None, Rounding.NEAREST_EVEN)
    if isinstance(value, (str, FloatFormat)) or hasattr(value, "_kernel_params"):
        fmt, rnd = value, "nearest_even"
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        fmt, rnd = value
    else:
        raise TypeError(f"policy entry for {role!r} must be a format, a (format, rounding) pair or None, "
                        f"got {value!r}")
    if fmt is None:
        if role != "master":
            raise ValueError(f"policy role {role!r} needs a format; only 'master' may be None")
        return (None, get_rounding(rnd))
    fmt = get_format(fmt)
    if not fmt.fits_in(np.float32):
        raise ValueError(f"policy role {role!r}: format {fmt.name} does not fit in the float32 carrier "
                         "that training uses")
    return (fmt, get_rounding(rnd))


@dataclass(frozen=True)
class Policy:
    """A precision policy: the table role -> (format, rounding), and the accumulations.

    Parameters
    ----------
    name : str
        The name used by ``lowprec train --precision``.
    table : dict
        ``{role: (format, rounding)}`` for every role in :data:`ROLES`; a
        bare format means nearest-even; ``master`` may be ``None`` (no master
        weights). Formats and roundings may be names or objects.
    forward_accumulation, backward_accumulation : str
        Accumulation preset names for the forward and the gradient matmuls.
    loss_scale : str
        Default loss scaling for this policy (``"none"``, ``"static:VALUE"``,
        ``"dynamic"``); ``lowprec train --loss-scale`` overrides it.
    weight_fake_quant, act_fake_quant : callable, optional
        Factories ``f(layer_index, out_features) -> callable(Tensor) -> Tensor``
        (or None); see :mod:`lowprec.amp`. A returned callable with
        ``parameters()`` has them trained; one with ``state_dict()`` and
        ``load_state_dict()`` has that state (observer ranges, ...) saved in
        ``lowprec train``'s checkpoints, so that a resumed run is bit-exact. An
        activation quantizer with ``grad_cast(ctx, g)`` also casts the gradient of
        its layer's output (the scaled fp8 recipes of :mod:`lowprec.amp.scaling`).
    description : str
        One line shown by ``lowprec train --help``.
    matmul_quant : callable, optional
        A factory ``f(layer_index, out_features, last)`` of the object that computes a layer's three
        products with its own operand quantization (``forward(ctx, x, w)`` and ``backward(ctx, g, x, w,
        need_x, need_w)``, see :func:`lowprec.autograd.quantized_matmul`): the block-scaled recipes of
        :mod:`lowprec.amp.blockscaled`, which quantize each operand along the contraction axis of each
        product. ``last`` is True for the network's last layer.
    hardware : str, optional
        The matrix unit that runs the matmuls (:mod:`lowprec.amp.hardware`): a family such as
        ``"nv-hopper"`` or a preset name; None (or ``"ideal"``): the accumulations named above.
        :class:`~lowprec.amp.Precision`'s ``hardware`` overrides it.

    Raises
    ------
    ValueError
        A role is missing or unknown, a format/rounding name is unknown, or
        a format does not fit in float32.

    Examples
    --------
    >>> p = Policy("my-bf16", {"weight": "bf16", "weight_used": "bf16", "activation": "bf16",
    ...            "activation_grad": "bf16", "weight_grad": "bf16", "optimizer_state": "fp32",
    ...            "master": None}, "bf16-fp32", "bf16-fp32")
    >>> p.master_weights, p.update_rounding.label
    (False, 'nearest_even')
    >>> p.replace(name="my-bf16-sr", table={**p.table, "weight": ("bf16", "stochastic")}).update_rounding.label
    'stochastic'
    """

    name: str
    table: dict
    forward_accumulation: str = "fp32"
    backward_accumulation: str = "fp32"
    loss_scale: str = "none"
    weight_fake_quant: Optional[Callable] = None
    act_fake_quant: Optional[Callable] = None
    description: str = ""
    matmul_quant: Optional[Callable] = None
    hardware: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"policy name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.table, dict):
            raise TypeError(f"policy table must be a dict role -> (format, rounding), got {type(self.table).__name__}")
        unknown = set(self.table) - set(ROLES)
        missing = [r for r in ROLES if r not in self.table]
        if unknown:
            raise ValueError(f"unknown policy role(s) {sorted(unknown)}; expected {', '.join(ROLES)}")
        if missing:
            raise ValueError(f"policy {self.name!r} misses role(s) {missing}; every role in {', '.join(ROLES)} "
                             "needs an entry ('master' may be None)")
        object.__setattr__(self, "table", {r: _entry(r, self.table[r]) for r in ROLES})
        for which in ("forward_accumulation", "backward_accumulation"):
            value = getattr(self, which)
            if not isinstance(value, str):
                raise TypeError(f"{which} must be an accumulation preset name, got {type(value).__name__}")
        parse_loss_scale(self.loss_scale)
        if self.hardware is not None and not isinstance(self.hardware, str):
            raise TypeError(f"hardware must be None or a str (a family or a matrix-unit preset name), "
                            f"got {type(self.hardware).__name__}")
        for which in ("weight_fake_quant", "act_fake_quant", "matmul_quant"):
            value = getattr(self, which)
            if value is not None and not callable(value):
                raise TypeError(f"{which} must be None or a factory f(layer_index, out_features), "
                                f"got {type(value).__name__}")

    def format(self, role: str):
        """The format of ``role`` (None only for ``master`` without master weights)."""
        return self._get(role)[0]

    def rounding(self, role: str) -> Rounding:
        """The rounding mode of ``role``."""
        return self._get(role)[1]

    def _get(self, role: str) -> tuple:
        try:
            return self.table[role]
        except KeyError:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}") from None

    @property
    def master_weights(self) -> bool:
        """Whether updates go to a separate master copy."""
        return self.table["master"][0] is not None

    @property
    def update_rounding(self) -> Rounding:
        """The rounding of weight updates (of ``master``, or of ``weight`` without master weights)."""
        return self.table["master" if self.master_weights else "weight"][1]

    def replace(self, **changes) -> "Policy":
        """A copy with some fields changed (the result is not registered)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The table as aligned text lines."""
        lines = [f"policy {self.name}: {self.description}".rstrip(": ")]
        for role in ROLES:
            fmt, rnd = self.table[role]
            lines.append(f"  {role:<16} {fmt.name if fmt is not None else '(none)':<12} {rnd.label}")
        lines.append(f"  {'forward matmul':<16} {self.forward_accumulation}")
        lines.append(f"  {'backward matmul':<16} {self.backward_accumulation}")
        lines.append(f"  {'loss scaling':<16} {self.loss_scale}")
        if self.matmul_quant is not None and hasattr(self.matmul_quant, "recipe"):
            r = self.matmul_quant.recipe
            lines.append(f"  {'block formats':<16} x {r.x.name}, w {r.w.name}, dy {r.g.name}")
        if self.hardware is not None:
            lines.append(f"  {'hardware':<16} {self.hardware}")
        return "\n".join(lines)


def _preset(name, low, acc, master="fp32", state="fp32", weight=None, weight_used=None, act_grad=None,
            loss_scale="dynamic", bwd_acc=None, description=""):
    return Policy(name, {
        "weight": weight or low, "weight_used": weight_used or low, "activation": low,
        "activation_grad": act_grad or low, "weight_grad": act_grad or low, "optimizer_state": state,
        "master": master}, acc, bwd_acc or acc, loss_scale, description=description)


#: The built-in policies, in registration order.
PRESETS = (
    _preset("fp32", "fp32", "fp32", master=None, loss_scale="none",
            description="everything in fp32 (the reference)"),
    _preset("fp16-mixed", "fp16", "fp16-fp32",
            description="fp16 weights/activations/gradients, fp32 accumulation, fp32 master weights and state"),
    _preset("bf16-mixed", "bf16", "bf16-fp32", loss_scale="none",
            description="bf16 weights/activations/gradients, fp32 accumulation, fp32 master weights and state"),
    _preset("fp8-mixed", "fp8_e4m3fn", "e4m3-fp32", weight="bf16", act_grad="fp8_e5m2",
            bwd_acc="e5m2-e4m3-fp32",
            description="e4m3 forward, e5m2 gradients, fp32 accumulation, fp32 master weights"),
    _preset("pure-fp16", "fp16", "fp16-fp32", master=None, state="fp16",
            description="fp16 everywhere incl. weights and optimizer state, no master weights "
                        "(fp32 accumulation)"),
)


def policy_bytes(policy, n_params: int, n_activations: int, state_per_param: int) -> dict:
    """Bytes held per tensor role for a model, counting each value at its format's width.

    Parameters
    ----------
    policy : Policy or str
    n_params : int
        Number of trained parameters.
    n_activations : int
        Number of activation values held for the backward pass (one batch).
    state_per_param : int
        Optimizer state values per parameter (SGD with momentum: 1, Adam: 2).

    Examples
    --------
    >>> policy_bytes("fp16-mixed", 1000, 0, 1)["master"]
    4000
    """
    from .registry import get_policy  # (the registry imports this module)

    policy = get_policy(policy)

    def nbytes(role, n):
        fmt = policy.format(role)
        return 0 if fmt is None else int(math.ceil(n * fmt.bits / 8))

    out = {
        "weight": nbytes("weight", n_params),
        "master": nbytes("master", n_params),
        "weight_grad": nbytes("weight_grad", n_params),
        "optimizer_state": nbytes("optimizer_state", n_params * state_per_param),
        "activation": nbytes("activation", n_activations),
        "activation_grad": nbytes("activation_grad", n_activations),
    }
    out["total"] = sum(out.values())
    return out

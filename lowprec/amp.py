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

Examples
--------
>>> from lowprec import amp
>>> p = amp.get_policy("bf16-mixed")
>>> p.format("activation").name, p.rounding("master").label, p.master_weights
('bf16', 'nearest_even', True)
>>> amp.get_policy("pure-fp16").master_weights
False
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .core import round_to
from .formats import FP32, FixedFormat, FloatFormat, get_format
from .kernels import cpu as _cpu
from .kernels import dispatch
from .rng import RandomStream
from .rounding import DEFAULT_RANDOM_BITS, Rounding, get_rounding
from .telemetry import Telemetry, _limits32

__all__ = ["ROLES", "Policy", "register_policy", "get_policy", "policy_names", "Precision",
           "LossScaler", "parse_loss_scale", "policy_bytes"]

#: The roles a policy table must name, in a fixed order (also the stream ids of stochastic rounding).
ROLES = ("weight", "weight_used", "activation", "activation_grad", "weight_grad", "optimizer_state",
         "master")

_STREAM_OF_ROLE = {r: i for i, r in enumerate(ROLES)}
#: Training rounds tensors below this size on the calling thread (the same bits as the parallel loop):
#: a layer's weights (256 x 256) take ~30 us on one core, about what waking the thread pool costs, and on
#: a busy machine a parallel loop can wait milliseconds for a descheduled worker.
_SERIAL_BELOW = 1 << 18
_F32 = np.dtype(np.float32)


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
        (or None); see the module docstring.
    description : str
        One line shown by ``lowprec train --help``.

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
        for which in ("weight_fake_quant", "act_fake_quant"):
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
        return "\n".join(lines)


def _preset(name, low, acc, master="fp32", state="fp32", weight=None, weight_used=None, act_grad=None,
            loss_scale="dynamic", bwd_acc=None, description=""):
    return Policy(name, {
        "weight": weight or low, "weight_used": weight_used or low, "activation": low,
        "activation_grad": act_grad or low, "weight_grad": act_grad or low, "optimizer_state": state,
        "master": master}, acc, bwd_acc or acc, loss_scale, description=description)


_REGISTRY: dict = {}


def register_policy(policy: Policy, *, overwrite: bool = False) -> Policy:
    """Make ``policy`` available by name (``get_policy``, ``lowprec train --precision``).

    Raises
    ------
    TypeError
        ``policy`` is not a Policy.
    ValueError
        A different policy of that name exists and ``overwrite`` is False.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a lowprec.amp.Policy, got {type(policy).__name__}")
    old = _REGISTRY.get(policy.name)
    if old is not None and old is not policy and old != policy and not overwrite:
        raise ValueError(f"a different policy named {policy.name!r} is already registered; "
                         "pass overwrite=True to replace it")
    _REGISTRY[policy.name] = policy
    return policy


def policy_names() -> list:
    """Names of all registered policies, in registration order."""
    return list(_REGISTRY)


def get_policy(policy) -> Policy:
    """Return a registered policy by name (or a Policy unchanged).

    Raises
    ------
    ValueError
        Unknown name; the message lists the registered ones.
    """
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a Policy or a registered name, got {type(policy).__name__}")
    try:
        return _REGISTRY[policy.strip()]
    except KeyError:
        raise ValueError(f"unknown precision policy {policy!r}; expected one of {', '.join(_REGISTRY)} "
                         "(or register your own with lowprec.amp.register_policy)") from None




# ---------------------------------------------------------------------------------------------
# The runtime: a policy plus random streams and telemetry


class Precision:
    """A policy at run time: rounds tensors by role with reproducible random streams.

    Parameters
    ----------
    policy : Policy or str
    seed : int
        Seed of the stochastic-rounding streams: role ``r`` uses
        ``RandomStream(seed).spawn(ROLES.index(r))`` and the matmuls use
        streams 100 (forward) and 101 (backward); parameter updates use
        stream ``1000 + i`` for parameter ``i`` (see :mod:`lowprec.autograd.optim`).
    telemetry : Telemetry, optional
        Receives the counts of every rounding (None: no counting).

    Examples
    --------
    >>> import numpy as np
    >>> p = Precision("bf16-mixed", seed=0)
    >>> float(p.round(np.float32([1 + 2**-10]), "activation")[0])
    1.0
    """

    MATMUL_STREAMS = {"forward": 100, "backward": 101}

    def __init__(self, policy="fp32", seed: int = 0, telemetry: Optional[Telemetry] = None):
        self.policy = get_policy(policy)
        self.seed = int(seed)
        self.telemetry = telemetry
        root = RandomStream(self.seed)
        self.streams = {r: root.spawn(_STREAM_OF_ROLE[r]) for r in ROLES}
        for kind, sid in self.MATMUL_STREAMS.items():
            self.streams["matmul_" + kind] = root.spawn(sid)
        self._accumulations: dict = {}
        self._kernels: dict = {}  # id(format) -> (format, kernel parameters)
        self._backend: Optional[str] = None

    def round(self, x: np.ndarray, role: str, name: Optional[str] = None, *, fmt=None, rounding=None,
              stream: Optional[RandomStream] = None) -> np.ndarray:
        """Round ``x`` (float32) to the format of ``role``; report to telemetry under ``name``.

        ``fmt``/``rounding``/``stream`` override the policy's entry (used by the optimizer).
        A role whose format is None (``master`` without master weights) returns ``x`` as is.
        """
        return self._round(x, role, name, None, fmt, rounding, stream)[0]

    def _round(self, x, role, name, tag, fmt=None, rounding=None, stream=None) -> tuple:
        """:meth:`round`, told that ``x`` is already exactly in format ``tag`` (or None: unknown).

        Returns ``(result, tag of the result)``. The tag of a result is the format
        it is exactly in as :func:`round_to` would give it (canonical NaNs
        included), or None. Rounding an array to the format it is tagged with
        is skipped: every mode returns a value of the format unchanged
        (stochastic rounding too: its stream still advances by ``x.size``, so
        later draws are those of the unskipped run); telemetry still counts it.
        """
        pfmt, prnd = self.policy.table[role]
        fmt = pfmt if fmt is None else fmt
        rnd = prnd if rounding is None else rounding
        if fmt is None:
            return x, tag
        if fmt is FP32 and x.dtype == np.float32:
            out = x  # float32 values are fp32 values: rounding is the identity
            out_tag = tag
        elif not (isinstance(x, np.ndarray) and x.dtype == _F32 and isinstance(rnd, Rounding)
                  and isinstance(fmt, (FloatFormat, FixedFormat))
                  and (stream is None or isinstance(stream, RandomStream))):
            out_tag = None  # the general path, as round_to takes its arguments
            if rnd is Rounding.STOCHASTIC:
                out = round_to(x, fmt, rnd, seed=stream if stream is not None else self.streams[role])
            else:
                out = round_to(x, fmt, rnd)
        elif tag is not None and (tag is fmt or tag == fmt):
            out, out_tag = x, fmt  # already a value of fmt: rounding would return it unchanged
            if rnd is Rounding.STOCHASTIC:
                (stream if stream is not None else self.streams[role]).take(x.size)
        else:
            tel = self.telemetry
            st = stream if stream is not None else self.streams[role]
            if tel is not None and name is not None and tel.active and self._backend == "cpu":
                lim = _limits32(fmt)
                if lim is not None:  # round and count in one compiled pass (the counts record() would make)
                    out, counts = self._kernel_round(x, fmt, rnd, st, lim)
                    tel._add(name, role, fmt, out.size, *counts)
                    return out, fmt
            out = self._kernel_round(x, fmt, rnd, st)
            out_tag = fmt
        if self.telemetry is not None and name is not None:
            self.telemetry.record(name, role, x, out, fmt)
        return out, out_tag

    def _kernel_round(self, x: np.ndarray, fmt, rnd: Rounding, stream: Optional[RandomStream], lim=None):
        """``round_to(x, fmt, rnd, seed=stream)`` for a native float32 ndarray ``x`` (internal).

        The checks round_to makes on every call (format and rounding names, dtype,
        the format fitting in float32, the backend) are made once per format;
        the kernel gets exactly the arguments round_to gives it. ``stream`` is
        only used (and advanced) by stochastic rounding. With ``lim`` (telemetry's
        ``_limits32(fmt)``; CPU only) returns ``(result, (underflow, subnormal, overflow,
        nan))``: the counts telemetry would make of this rounding, from the same pass.
        """
        entry = self._kernels.get(id(fmt))
        if entry is None or entry[0] is not fmt:
            if not fmt.fits_in(np.float32):
                return round_to(x, fmt, rnd, seed=stream)  # raises round_to's error
            if self._backend is None:
                self._backend = dispatch.resolve_backend("auto")
            entry = self._kernels[id(fmt)] = (fmt, fmt._kernel_params(), {})
        flat = np.ascontiguousarray(x).reshape(-1)
        n = flat.size
        out = np.empty(n, dtype=np.float32)
        if rnd is Rounding.STOCHASTIC:
            k0, k1, off = stream.take(n)
        else:
            k0 = k1 = off = 0
        if self._backend == "cpu":  # the CPU loops dispatch.round_array would pick, looked up once per mode and size
            key = (int(rnd), n < _SERIAL_BELOW)
            loops = entry[2].get(key)
            if loops is None:  # (_loops picks the serial loop for sizes below cpu.SERIAL_BELOW)
                loops = entry[2][key] = _cpu._loops(entry[1], key[0], 0 if key[1] else n, DEFAULT_RANDOM_BITS)
            args = (flat.view(np.int32), out.view(np.int32), 32, 23, 127, entry[1], np.uint32(k0), np.uint32(k1),
                    np.int64(off), DEFAULT_RANDOM_BITS)
            if lim is not None:
                u, s, o, nn = loops[2](*args, *lim)
                return out.reshape(x.shape), (int(u), int(s), int(o), int(nn))
            loops[0](*args)
        else:
            dispatch.round_array(self._backend, flat.view(np.int32), out.view(np.int32), 32, 23, 127, entry[1],
                                 int(rnd), np.uint32(k0), np.uint32(k1), np.int64(off), DEFAULT_RANDOM_BITS)
        return out.reshape(x.shape)

    def accumulation(self, which: str):
        """The Accumulation object of ``which`` in ("forward", "backward")."""
        acc = self._accumulations.get(which)
        if acc is None:
            from .accumulation import get_accumulation  # issue 3's module; imported when first needed

            name = getattr(self.policy, which + "_accumulation")
            acc = self._accumulations[which] = get_accumulation(name)
        return acc

    def _lean_matmul(self, which: str):
        """None when ``which``'s matmuls must take linalg.matmul (not on the CPU, or an output format
        float32 cannot hold: matmul raises); else the kind of linalg's fast fp32 kernel ("fma",
        "muladd") or "general" (internal, cached)."""
        key = "lean_" + which
        if key not in self._accumulations:
            from . import linalg

            acc = self.accumulation(which)
            if self._backend is None:
                self._backend = dispatch.resolve_backend("auto")
            lean = None
            if self._backend == "cpu" and acc.out_format.fits_in(np.float32):
                lean = linalg._fast_fp32_kernel(acc, "cpu") or "general"
            self._accumulations[key] = lean
        return self._accumulations[key]

    def stream_state(self) -> dict:
        """Offsets of every stream (for checkpoints)."""
        return {k: s.offset for k, s in self.streams.items()}

    def load_stream_state(self, state: dict) -> None:
        """Restore offsets written by :meth:`stream_state`."""
        for k, off in state.items():
            self.streams[k].offset = int(off)


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


# ---------------------------------------------------------------------------------------------
# Loss scaling


def parse_loss_scale(spec) -> tuple:
    """Parse ``"none"``, ``"static:VALUE"`` or ``"dynamic"`` into (mode, value or None).

    Examples
    --------
    >>> parse_loss_scale("static:1024"), parse_loss_scale("dynamic")
    (('static', 1024.0), ('dynamic', None))
    """
    if not isinstance(spec, str):
        raise TypeError(f"loss scale must be a string, got {type(spec).__name__}")
    s = spec.strip().lower()
    if s in ("none", "dynamic"):
        return s, None
    if s.startswith("static:"):
        try:
            value = float(s.split(":", 1)[1])
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"static loss scale must be a positive finite number, got {spec!r}")
        return "static", value
    raise ValueError(f"unknown loss scale {spec!r}; expected 'none', 'static:VALUE' or 'dynamic'")


class LossScaler:
    """Loss scaling with PyTorch GradScaler semantics.

    ``mode="none"``: scale 1, never skips (Inf/NaN gradients reach the weights).
    ``mode="static"``: a constant scale; steps with Inf/NaN gradients are skipped.
    ``mode="dynamic"``: start at ``init_scale``; after each step, if any
    gradient was Inf/NaN the step is skipped (weights and optimizer state are
    untouched), ``scale *= backoff_factor`` and the growth counter resets to
    0; otherwise the counter increases and when it reaches
    ``growth_interval`` the scale is multiplied by ``growth_factor`` (only if
    the result is finite) and the counter resets to 0.

    Use: ``loss.backward(scaler.scale)``; ``scaler.unscale_(optimizer)``
    (gradients become float32 ``grad / scale`` and are checked for Inf/NaN;
    clip after this); ``scaler.step(optimizer)`` (steps unless Inf/NaN was
    found); ``scaler.update()``.

    Examples
    --------
    >>> s = LossScaler("dynamic", init_scale=8.0, growth_interval=2)
    >>> for found_inf in (False, False, True):
    ...     s._found_inf = found_inf; s.update()
    >>> s.scale, s.growth_tracker
    (8.0, 0)
    """

    def __init__(self, mode: str = "dynamic", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        if mode not in ("none", "static", "dynamic"):
            raise ValueError(f"loss scaler mode must be 'none', 'static' or 'dynamic', got {mode!r}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self.mode = mode
        self.scale = 1.0 if mode == "none" else float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0
        self._found_inf = False
        self._unscaled = False

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "LossScaler":
        """Build from ``"none"``, ``"static:VALUE"`` or ``"dynamic"``."""
        mode, value = parse_loss_scale(spec)
        if mode == "static":
            kwargs["init_scale"] = value
        return cls(mode, **kwargs)

    def unscale_(self, optimizer) -> bool:
        """Divide every gradient by the scale (into float32) and look for Inf/NaN; returns found_inf."""
        if self._unscaled:
            return self._found_inf
        inv = np.float32(1.0 / self.scale)
        found = False
        for p in optimizer.params:
            if p.grad is None:
                continue
            g = p.grad.astype(np.float32, copy=True)
            if self.scale != 1.0:
                with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                    g *= inv
            p.grad = g
            if not found and not np.isfinite(g).all():
                found = True
        self._found_inf = found
        self._unscaled = True
        return found

    def step(self, optimizer) -> bool:
        """Step the optimizer unless Inf/NaN gradients were found; returns whether it stepped."""
        if not self._unscaled:
            self.unscale_(optimizer)
        if self._found_inf and self.mode != "none":
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Update the scale after a step (dynamic mode) and reset the per-step flags."""
        if self.mode == "dynamic":
            if self._found_inf:
                self.scale *= self.backoff_factor
                self.growth_tracker = 0
            else:
                successful = self.growth_tracker + 1
                if successful == self.growth_interval:
                    new_scale = self.scale * self.growth_factor
                    if math.isfinite(new_scale) and new_scale <= float(np.finfo(np.float32).max):
                        self.scale = new_scale
                    self.growth_tracker = 0
                else:
                    self.growth_tracker = successful
        self._found_inf = False
        self._unscaled = False

    @property
    def found_inf(self) -> bool:
        """Whether the last unscale found Inf/NaN gradients."""
        return self._found_inf

    def state_dict(self) -> dict:
        """The scaler's state (JSON-serialisable)."""
        return {"mode": self.mode, "scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.mode = state["mode"]
        self.scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.growth_tracker = int(state["growth_tracker"])
        self._found_inf = False
        self._unscaled = False


# The presets (registered last: Policy validation uses the helpers above)
for _p in (
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
):
    register_policy(_p)

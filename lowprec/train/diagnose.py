"""What went wrong when a run keeps skipping steps: :func:`diagnose_skips`.

A loss scaler skips a step whose gradients hold Inf or NaN. A few skips at
the start are how dynamic loss scaling finds its scale; a long run of them
means the run has stopped learning. :func:`lowprec.train.train` calls
:func:`diagnose_skips` after ``skip_alert`` consecutive skipped steps (and
after as many steps with a non-finite loss) and reports the text during the
run and in the summary: which tensor overflowed first in the last step (from
the telemetry), whether the forward pass or only the gradients overflow, and
what to try.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["diagnose_skips"]

_FORWARD_ROLES = ("activation", "weight_used", "weight")


def _first(tensors: dict, event: str):
    for name, entry in tensors.items():
        if entry.get(event):
            return name, entry
    return None, None


def _tries(policy, scaler_mode: str, forward: bool) -> str:
    """What to try, for this policy and loss scaling."""
    tries = ["a smaller --lr", "--clip-norm"]
    if not policy.master_weights or str(policy.format("optimizer_state").name) != "fp32":
        tries.append(f"a policy with fp32 master weights and state (e.g. fp16-mixed instead of {policy.name})")
    if policy.format("activation") is not None and policy.format("activation").name != "bf16":
        tries.append("a format with more range (bf16-mixed)")
    if not forward:
        if scaler_mode == "static":
            tries.insert(0, "a lower fixed scale (--loss-scale static:VALUE) or --loss-scale dynamic")
        elif scaler_mode == "none":
            tries.insert(0, "--loss-scale dynamic, so that overflowing steps are skipped")
    elif scaler_mode == "none":
        tries.append("--loss-scale dynamic, so that an overflowing step is skipped instead of reaching the weights")
    return "Try " + ", ".join(tries[:-1]) + " or " + tries[-1] + "."


def diagnose_skips(model, tel, loss: float, scale: float, run_length: int, skipped: bool, policy,
                   scaler_mode: str = "dynamic") -> str:
    """One paragraph (a single line) on why ``run_length`` steps in a row were skipped or gave a NaN loss.

    Parameters
    ----------
    model : MLP
        The model (its parameters' gradients are those of the last step).
    tel : Telemetry
        The run's telemetry (its ``last_step`` names the tensors that overflowed); may be disabled.
    loss : float
        The last step's loss.
    scale : float
        The loss scale the last step used.
    run_length : int
        How many consecutive steps were skipped (or had a non-finite loss).
    skipped : bool
        Whether the steps were skipped (False: the steps were taken, the loss is NaN or Inf).
    policy : Policy
        The run's precision policy.
    scaler_mode : str
        ``"none"``, ``"static"`` or ``"dynamic"``.
    """
    what = (f"{run_length} consecutive steps skipped (Inf/NaN gradients) at loss scale {scale:g}" if skipped
            else f"the loss has been {loss} for {run_length} consecutive steps")
    tensors = {}
    if tel is not None and tel.enabled and tel.last_step is not None:
        tensors = tel.last_step["tensors"]
    name, entry = _first(tensors, "overflow")
    event = "overflowed"
    if name is None:
        name, entry = _first(tensors, "nan")
        event = "became NaN"
    params = model.parameters()

    def names(ps):
        return ", ".join(ps[:3]) + (f" and {len(ps) - 3} more" if len(ps) > 3 else "")

    bad_grads = [p.name for p in params if p.grad is not None and not np.all(np.isfinite(p.grad))]
    bad_weights = [p.name for p in params if not np.all(np.isfinite(p.data))]
    where = ""
    if name is not None:
        n = entry["overflow"] if event == "overflowed" else entry["nan"]
        where = f"; first in the last step: {name} ({entry['format']}, {entry['role']}) where {n} values {event}"
    elif bad_grads:
        where = f"; non-finite gradients in {names(bad_grads)}"
    forward = (entry is not None and entry["role"] in _FORWARD_ROLES) or not math.isfinite(loss) or bool(bad_weights)
    if bad_weights:
        cause = f" The weights of {names(bad_weights)} are Inf/NaN: the run cannot recover."
    elif forward:
        wmax = max((float(np.max(np.abs(p.data))) if p.data.size else 0.0, p.name) for p in params)
        cause = (" The forward pass overflows, so the loss and every gradient are NaN and no loss scale can "
                 f"help: the weights have grown too large (the largest weight is {wmax[0]:.3g}, in {wmax[1]}).")
    elif scaler_mode == "dynamic":
        cause = (f" The loss is finite but the scaled gradients overflow even though the scale has backed off "
                 f"to {scale:g}.")
    else:
        cause = f" The loss is finite but the gradients, scaled by {scale:g}, overflow."
    return f"{policy.name}: {what}{where}.{cause} {_tries(policy, scaler_mode, forward)}"

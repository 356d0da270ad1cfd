"""The policy registry: :func:`register_policy`, :func:`get_policy`, :func:`policy_names`.

Importing this module registers the built-in policies
(:data:`lowprec.amp.policies.PRESETS`, then the scaled fp8 recipes
:data:`lowprec.amp.scaling.SCALED_PRESETS`, the block-scaled recipes
:data:`lowprec.amp.blockscaled.BLOCK_POLICIES`); other modules register more (the
QAT policies of :mod:`lowprec.quant.qat`).
"""

from __future__ import annotations

from .policies import PRESETS, Policy
from .blockscaled import BLOCK_POLICIES
from .scaling import SCALED_PRESETS

__all__ = ["register_policy", "get_policy", "policy_names"]

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


for _p in PRESETS + SCALED_PRESETS + BLOCK_POLICIES:
    register_policy(_p)

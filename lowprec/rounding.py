"""Rounding modes.

The modes are members of :class:`Rounding`; strings are accepted at the
public boundary and converted once by :func:`get_rounding`. Their exact
semantics are in ``docs/rounding.md`` and NUMERICS.md section 2.
"""

from __future__ import annotations

import enum

__all__ = ["Rounding", "get_rounding", "DEFAULT_RANDOM_BITS", "MAX_RANDOM_BITS"]


class Rounding(enum.IntEnum):
    """How a value between two neighbours ``d < x < u`` of a format is resolved.

    The integer values are what the kernels receive.
    """

    NEAREST_EVEN = 0  #: nearest, ties to the neighbour with an even last bit (IEEE default)
    NEAREST_AWAY = 1  #: nearest, ties away from zero
    TOWARD_ZERO = 2  #: truncation
    UP = 3  #: toward +inf
    DOWN = 4  #: toward -inf
    ODD = 5  #: round to odd: truncate, then set the last bit if inexact (von Neumann / Boldo-Melquiond)
    STOCHASTIC = 6  #: u with probability (x-d)/(u-d), quantised to r random bits

    @property
    def is_nearest(self) -> bool:
        return self in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY)

    @property
    def is_directed(self) -> bool:
        return self in (Rounding.TOWARD_ZERO, Rounding.UP, Rounding.DOWN)

    @property
    def is_stochastic(self) -> bool:
        return self is Rounding.STOCHASTIC

    @property
    def label(self) -> str:
        return self.name.lower()


#: Default number of random bits r for stochastic rounding (see docs/rounding.md).
DEFAULT_RANDOM_BITS = 32
MAX_RANDOM_BITS = 64

_ALIASES = {
    "nearest": Rounding.NEAREST_EVEN, "rne": Rounding.NEAREST_EVEN, "nearest_even": Rounding.NEAREST_EVEN,
    "round_nearest_even": Rounding.NEAREST_EVEN, "nearest_away": Rounding.NEAREST_AWAY,
    "rna": Rounding.NEAREST_AWAY, "toward_zero": Rounding.TOWARD_ZERO, "rtz": Rounding.TOWARD_ZERO,
    "truncate": Rounding.TOWARD_ZERO, "up": Rounding.UP, "rup": Rounding.UP, "toward_positive": Rounding.UP,
    "down": Rounding.DOWN, "rdn": Rounding.DOWN, "toward_negative": Rounding.DOWN, "odd": Rounding.ODD,
    "round_to_odd": Rounding.ODD, "rto": Rounding.ODD, "stochastic": Rounding.STOCHASTIC,
    "sr": Rounding.STOCHASTIC,
}


def get_rounding(rounding) -> Rounding:
    """Convert a :class:`Rounding` or its name (case-insensitive, '-' or '_') to a Rounding.

    Raises
    ------
    TypeError
        Not a Rounding or a string.
    ValueError
        Unknown name; the message lists the accepted ones.
    """
    if isinstance(rounding, Rounding):
        return rounding
    if not isinstance(rounding, str):
        raise TypeError(f"rounding must be a Rounding or a string, got {type(rounding).__name__}")
    key = rounding.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    names = ", ".join(m.label for m in Rounding)
    raise ValueError(f"unknown rounding {rounding!r}; expected one of {names}")

"""Counter-based random bits for stochastic rounding: keys, streams and offsets.

Every random number lowprec draws is ``random_bits(key, counter)`` where
``key = derive_key(seed, stream)`` and ``counter = offset + flat index`` of
the element in C order. There is no hidden global state: the same
``(seed, stream, offset)`` gives the same bits on CPU and CUDA, on any
thread count and however the array is chunked.

How to get both reproducibility and fresh random numbers:

* ``seed=<int>``: the same int gives the same bits every call (what you want
  to reproduce one call; *not* what you want inside a loop);
* ``seed=RandomStream(<int>)``: each call takes the next block of counters
  (the stream's ``offset`` advances by the array size), so successive calls
  never reuse random numbers and the whole sequence replays from the int;
* ``seed=numpy.random.Generator``: a fresh 64-bit seed is drawn from it per call;
* ``seed=None``: fresh OS entropy per call (not reproducible).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

__all__ = ["RandomStream", "derive_key", "resolve_seed"]

_M64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One step of Steele, Lea and Flood's SplitMix64 finaliser (exact Python ints)."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _check_u64(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= _M64:
        raise ValueError(f"{name} must be in 0..2**64-1, got {value}")
    return value


def derive_key(seed: int, stream: int = 0) -> tuple:
    """The two 32-bit kernel keys for ``(seed, stream)``."""
    seed = _check_u64("seed", seed)
    stream = _check_u64("stream", stream)
    z = _splitmix64(seed ^ _splitmix64(stream ^ 0x5851F42D4C957F2D))
    z = _splitmix64(z)
    return z & 0xFFFFFFFF, z >> 32


@dataclass
class RandomStream:
    """A reproducible source of fresh random counters: pass it as ``seed=``.

    Each call that consumes random bits takes ``n`` counters starting at
    ``offset`` and advances ``offset`` by ``n``.

    Examples
    --------
    >>> import numpy as np, lowprec
    >>> s = lowprec.RandomStream(seed=7)
    >>> x = np.full(4, 1 + 2**-12)
    >>> a = lowprec.round_to(x, "bf16", "stochastic", seed=s)
    >>> s.offset
    4
    """

    seed: int
    stream: int = 0
    offset: int = 0

    def __post_init__(self):
        self.seed = _check_u64("seed", self.seed)
        self.stream = _check_u64("stream", self.stream)
        self.offset = _check_u64("offset", self.offset)

    def take(self, n: int) -> tuple:
        """Return (key0, key1, offset) for n counters and advance."""
        k0, k1 = derive_key(self.seed, self.stream)
        start = self.offset
        if start + n >= 1 << 63:
            raise OverflowError("RandomStream exhausted its 2**63 counters; start a new stream")
        self.offset = start + n
        return k0, k1, start

    def spawn(self, stream: int) -> "RandomStream":
        """An independent stream with the same seed (e.g. one per layer or per device)."""
        return RandomStream(self.seed, stream, 0)


def resolve_seed(seed, n: int, stream: int = 0, offset: int = 0) -> tuple:
    """(key0, key1, offset) for a call that consumes ``n`` counters.

    ``seed`` is None, an int, a RandomStream or a numpy Generator (module docstring)."""
    if isinstance(seed, RandomStream):
        if stream or offset:
            raise ValueError("pass stream/offset inside the RandomStream, not next to it")
        return seed.take(n)
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 1 << 64, dtype=np.uint64))
    elif seed is None:
        seed = secrets.randbits(64)
    offset = _check_u64("offset", offset)
    if offset + n >= 1 << 63:
        raise ValueError(f"offset + size must stay below 2**63, got offset={offset}")
    k0, k1 = derive_key(seed, stream)
    return k0, k1, offset

"""The precision runtime: :class:`Precision`, a policy plus random streams and telemetry.

During training every tensor is rounded through :meth:`Precision.round` to
the format and rounding mode of its role; stochastic rounding draws from
one reproducible :class:`lowprec.RandomStream` per role, whose offsets are
checkpointed (:meth:`Precision.stream_state`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..core import PreparedRounding, prepare_rounding, round_to
from ..formats import FP32, FixedFormat, FloatFormat
from ..kernels import dispatch
from ..linalg import PreparedMatmul, prepare_matmul
from ..rng import RandomStream
from ..rounding import Rounding
from ..telemetry import Telemetry
from .policies import ROLES
from .registry import get_policy

__all__ = ["Precision"]

_STREAM_OF_ROLE = {r: i for i, r in enumerate(ROLES)}
_F32 = np.dtype(np.float32)


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
    hardware : str, optional
        The matrix unit that runs the matmuls (a family such as ``"nv-hopper"``, a preset name, or
        ``"ideal"``); None: the policy's ``hardware`` (ideal accumulation unless it names one). Resolved
        by :func:`lowprec.amp.hardware.resolve_hardware` into :attr:`hardware` (None for ideal).

    Examples
    --------
    >>> import numpy as np
    >>> p = Precision("bf16-mixed", seed=0)
    >>> float(p.round(np.float32([1 + 2**-10]), "activation")[0])
    1.0
    """

    MATMUL_STREAMS = {"forward": 100, "backward": 101}

    def __init__(self, policy="fp32", seed: int = 0, telemetry: Optional[Telemetry] = None,
                 hardware: Optional[str] = None):
        from .hardware import resolve_hardware

        self.policy = get_policy(policy)
        self.hardware = resolve_hardware(self.policy, hardware if hardware is not None else self.policy.hardware)
        self.seed = int(seed)
        self.telemetry = telemetry
        root = RandomStream(self.seed)
        self.streams = {r: root.spawn(_STREAM_OF_ROLE[r]) for r in ROLES}
        for kind, sid in self.MATMUL_STREAMS.items():
            self.streams["matmul_" + kind] = root.spawn(sid)
        self._accumulations: dict = {}

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
            out = self.rounding_of(fmt, rnd)(x, seed=stream if stream is not None else self.streams[role])
            out_tag = fmt
        if self.telemetry is not None and name is not None:
            self.telemetry.record(name, role, x, out, fmt)
        return out, out_tag

    def rounding_of(self, fmt, rounding: Rounding) -> PreparedRounding:
        """The prepared rounding of float32 tensors to ``fmt`` in mode ``rounding``
        (:func:`lowprec.core.prepare_rounding`, on this runtime's backend).

        Raises
        ------
        ValueError
            ``fmt`` has values that float32 cannot hold (as :func:`lowprec.round_to` says).
        """
        return prepare_rounding(fmt, rounding, np.float32)

    def accumulation(self, which: str):
        """The Accumulation object of ``which`` in ("forward", "backward"), or the MatrixUnit that runs it
        (``hardware`` on a policy without per-operand scales)."""
        acc = self._accumulations.get(which)
        if acc is None and self.hardware is not None and self.hardware.route == "plain":
            acc = self._accumulations[which] = self.hardware.units["forward" if which == "forward" else "dgrad"]
        if acc is None:
            from ..accumulation import get_accumulation  # imported when first needed

            name = getattr(self.policy, which + "_accumulation")
            acc = self._accumulations[which] = get_accumulation(name)
        return acc

    def matmul_of(self, which: str) -> Optional[PreparedMatmul]:
        """The prepared float32 product of ``which``'s accumulation ("forward" or "backward"), or None
        where its matmuls take :func:`lowprec.linalg.matmul` (not on the CPU, or an output format that
        float32 cannot hold). Cached."""
        key = "matmul_" + which
        if key not in self._accumulations:
            acc = self.accumulation(which)
            ok = (self.hardware is None and dispatch.resolve_backend("auto") == "cpu"
                  and acc.out_format.fits_in(np.float32))
            self._accumulations[key] = prepare_matmul(acc, "cpu") if ok else None
        return self._accumulations[key]

    def stream_state(self) -> dict:
        """Offsets of every stream (for checkpoints)."""
        return {k: s.offset for k, s in self.streams.items()}

    def load_stream_state(self, state: dict) -> None:
        """Restore offsets written by :meth:`stream_state`."""
        for k, off in state.items():
            self.streams[k].offset = int(off)

"""The accumulation description: how a dot product, sum or matmul is computed, completely.

An :class:`Accumulation` states (NUMERICS.md section 4):

* the input formats ``a_format`` and ``b_format`` (inputs are rounded to them
  first, nearest-even);
* the product: exact (``product_format=None``) or rounded (nearest-even) to
  ``product_format``;
* ``fused``: one rounding of ``s + a*b`` (True), or the product first rounded
  (nearest-even) to the accumulator format and then added (False);
* the accumulator format and its rounding ``acc_rounding`` (any mode,
  stochastic included); every addition in the accumulator uses this mode;
* the order: ``"sequential"`` over k, ``"pairwise"`` (bottom-up pairs,
  an odd block carried up), or ``"blocked"``: chunks of ``chunk`` consecutive
  terms summed in the accumulator from zero, each chunk sum then added in
  order, rounded to nearest-even, to a running total held in
  ``chunk_format`` (promotion to a wider register, as fp8 GEMMs do on
  hardware);
* ``compensated``: Kahan summation in the accumulator (sequential, and
  within chunks for blocked);
* the output format (the final sum rounded nearest-even to it).

The exact semantics, step by step, are in ``docs/accumulation.md``; the
kernels are in ``lowprec/kernels/accum.py``.

Examples
--------
>>> from lowprec.accumulation import get_accumulation
>>> get_accumulation("fp16-fp32")
Accumulation(name='fp16-fp32', a_format='fp16', b_format='fp16', product_format=None, fused=True, acc_format='fp32', acc_rounding='nearest_even', order='sequential', out_format='fp32')
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Union

from .formats import FixedFormat, FloatFormat, get_format
from .rounding import Rounding, get_rounding

__all__ = ["Accumulation", "get_accumulation", "PRESETS", "preset_names", "ORDERS", "LIMITED_FP8_ACC"]

ORDERS = ("sequential", "pairwise", "blocked")

#: The limited-precision accumulator of the "e4m3-chunk128" preset: 14 significant bits
#: (13 stored) with fp32's exponent range, truncating. DeepSeek-V3 (2024, section 3.3.2)
#: measured that FP8 GEMMs on H800 tensor cores retain "around 14 bits" of accumulation
#: precision, and Fasi, Higham, Mikaitis and Pranesh ("Numerical behavior of NVIDIA tensor
#: cores", PeerJ CS 2021) found that tensor cores truncate (round toward zero) when they
#: align and add; so the preset accumulates in this format with toward-zero rounding and
#: promotes the partial sum to fp32 (nearest-even) every 128 products.
LIMITED_FP8_ACC = FloatFormat(8, 13, name="e8m13")

_Fmt = Union[str, FloatFormat, FixedFormat]


def _span(fmt) -> tuple:
    """(precision, exponent of the smallest quantum, exponent bound of the magnitude)."""
    if isinstance(fmt, FixedFormat):
        return fmt.bits, -fmt.frac_bits, fmt.bits - fmt.frac_bits
    return fmt.precision, fmt.emin - fmt.man_bits, fmt.emax + 1


def _fmt_name(fmt) -> str:
    return fmt.name


@dataclass(frozen=True, repr=False)
class Accumulation:
    """A complete description of how a dot product / sum / matmul is accumulated.

    Parameters
    ----------
    a_format, b_format : format or name
        Formats the inputs are rounded to (nearest-even) before use;
        ``b_format=None`` means the same as ``a_format``.
    product_format : format, name or None
        None: products are exact. Otherwise each product is rounded
        (nearest-even) to this format.
    fused : bool
        True: each step rounds ``s + a*b`` once. False: the product is first
        rounded (nearest-even) to the accumulator format.
    acc_format : format or name
        The accumulator's format (precision at most 51 bits).
    acc_rounding : Rounding or str
        Rounding of every addition in the accumulator (nearest_even,
        toward_zero, stochastic, ...). Conversions (inputs, products, the
        promotion of chunk sums, the output) round to nearest-even.
    order : {"sequential", "pairwise", "blocked"}
    chunk : int or None
        Chunk size C (>= 1) for ``order="blocked"``; must be None otherwise.
    chunk_format : format, name or None
        Format in which chunk sums are combined, nearest-even (blocked only);
        None: ``acc_format``.
    compensated : bool
        Kahan compensated summation (sequential or blocked order).
    out_format : format, name or None
        Format of the result (nearest-even from the accumulator); None: ``acc_format``.
    name : str, optional
        A label (presets carry their name); not part of equality.

    Raises
    ------
    TypeError, ValueError
        Unknown formats or modes, a bad ``order``/``chunk``, or input formats
        whose exact products float64 cannot hold (the simulation needs them exact).

    Examples
    --------
    >>> acc = Accumulation(a_format="bf16", acc_format="bf16", acc_rounding="stochastic")
    >>> acc.b_format.name, acc.out_format.name, acc.random_bits
    ('bf16', 'bf16', 32)
    >>> Accumulation(order="blocked", chunk=0)
    Traceback (most recent call last):
    ...
    ValueError: chunk must be an int >= 1 for order='blocked', got 0
    """

    a_format: _Fmt = "fp32"
    b_format: Optional[_Fmt] = None
    product_format: Optional[_Fmt] = None
    fused: bool = True
    acc_format: _Fmt = "fp32"
    acc_rounding: Union[str, Rounding] = "nearest_even"
    order: str = "sequential"
    chunk: Optional[int] = None
    chunk_format: Optional[_Fmt] = None
    compensated: bool = False
    out_format: Optional[_Fmt] = None
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        a = get_format(self.a_format)
        set_("a_format", a)
        set_("b_format", a if self.b_format is None else get_format(self.b_format))
        if self.product_format is not None:
            set_("product_format", get_format(self.product_format))
        acc = get_format(self.acc_format)
        set_("acc_format", acc)
        set_("acc_rounding", get_rounding(self.acc_rounding))
        for flag in ("fused", "compensated"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}")
        if not isinstance(self.order, str) or self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.order == "blocked":
            if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
                raise ValueError(f"chunk must be an int >= 1 for order='blocked', got {self.chunk!r}")
            set_("chunk_format", acc if self.chunk_format is None else get_format(self.chunk_format))
        else:
            if self.chunk is not None or self.chunk_format is not None:
                raise ValueError(f"chunk and chunk_format apply to order='blocked' only; got order={self.order!r} "
                                 f"with chunk={self.chunk!r}, chunk_format={self.chunk_format!r}")
        if self.compensated and self.order == "pairwise":
            raise ValueError("compensated=True applies to order='sequential' or 'blocked', not 'pairwise'")
        set_("out_format", acc if self.out_format is None else get_format(self.out_format))
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {type(self.name).__name__}")
        self._check_formats()

    def _check_formats(self) -> None:
        pa, qa, ha = _span(self.a_format)
        pb, qb, hb = _span(self.b_format)
        if pa + pb > 53 or qa + qb < -1074 or ha + hb > 1024:
            raise ValueError(
                f"the products of {self.a_format.name} x {self.b_format.name} need {pa + pb} significant bits "
                f"and exponents 2**{qa + qb}..2**{ha + hb}; the simulation holds exact products in float64 "
                "(at most 53 bits, 2**-1074..2**1024): choose narrower input formats")
        for role in ("acc_format", "chunk_format", "out_format", "product_format"):
            fmt = getattr(self, role)
            if isinstance(fmt, FloatFormat) and fmt.man_bits > 50:
                raise ValueError(f"{role} {fmt.name} has {fmt.precision} bits of precision; at most 51 are "
                                 "supported (exact single rounding goes through float64 with round-to-odd)")
        if self.acc_rounding is Rounding.STOCHASTIC:
            for role in ("acc_format", "chunk_format"):
                if isinstance(getattr(self, role), FixedFormat):
                    raise ValueError(f"stochastic accumulation needs a floating-point {role}, "
                                     f"got {getattr(self, role).name}")

    # -- derived facts ---------------------------------------------------------
    @property
    def random_bits(self) -> int:
        """r, the random bits per stochastic rounding: min(32, 52 - p) for the accumulator's precision p.

        The bound keeps stochastic rounding of an exact sum exact through the
        float64 round-to-odd intermediate (see kernels/accum.py); fp32
        accumulators therefore use 28 random bits, fp16/bf16 ones 32."""
        if isinstance(self.acc_format, FloatFormat):
            return min(32, 52 - self.acc_format.precision)
        return 32

    @property
    def is_stochastic(self) -> bool:
        return self.acc_rounding is Rounding.STOCHASTIC

    def replace(self, **changes) -> "Accumulation":
        """A copy with some fields changed (the name is dropped unless given)."""
        changes.setdefault("name", None)
        return replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        for f in fields(self):
            if f.name == "name":
                continue
            v = getattr(self, f.name)
            if f.name in ("chunk", "chunk_format") and self.order != "blocked":
                continue
            if f.name == "compensated" and not v:
                continue
            if isinstance(v, (FloatFormat, FixedFormat)):
                v = _fmt_name(v)
            elif isinstance(v, Rounding):
                v = v.label
            parts.append(f"{f.name}={v!r}")
        return f"Accumulation({', '.join(parts)})"


def _preset(name: str, **kw) -> Accumulation:
    return Accumulation(name=name, **kw)


#: Named accumulations. See docs/accumulation.md for what each models.
PRESETS: dict = {acc.name: acc for acc in (
    _preset("fp32", a_format="fp32", acc_format="fp32"),
    _preset("fp16-fp32", a_format="fp16", acc_format="fp32"),
    _preset("bf16-fp32", a_format="bf16", acc_format="fp32"),
    _preset("tf32-fp32", a_format="tf32", acc_format="fp32"),
    _preset("fp16", a_format="fp16", acc_format="fp16"),
    _preset("fp16-unfused", a_format="fp16", acc_format="fp16", fused=False),
    _preset("bf16", a_format="bf16", acc_format="bf16"),
    _preset("bf16-sr", a_format="bf16", acc_format="bf16", acc_rounding="stochastic"),
    _preset("fp16-sr", a_format="fp16", acc_format="fp16", acc_rounding="stochastic"),
    _preset("fp16-pairwise", a_format="fp16", acc_format="fp16", order="pairwise"),
    _preset("fp16-kahan", a_format="fp16", acc_format="fp16", compensated=True),
    _preset("e4m3-fp32", a_format="fp8_e4m3fn", acc_format="fp32"),
    _preset("e5m2-e4m3-fp32", a_format="fp8_e5m2", b_format="fp8_e4m3fn", acc_format="fp32"),
    _preset("e4m3-chunk128", a_format="fp8_e4m3fn", acc_format=LIMITED_FP8_ACC, acc_rounding="toward_zero",
            order="blocked", chunk=128, chunk_format="fp32", out_format="fp32"),
    _preset("int8-int32", a_format="int8", acc_format=FixedFormat(32, 0, overflow="wrap", name="int32_wrap"),
            out_format="int32"),
)}


def preset_names() -> list:
    """Names of the accumulation presets."""
    return list(PRESETS)


def get_accumulation(accumulation) -> Accumulation:
    """An :class:`Accumulation` from itself or a preset name.

    Raises
    ------
    TypeError
        Not an Accumulation or a string.
    ValueError
        Unknown preset name (the message lists them).

    Examples
    --------
    >>> get_accumulation("e4m3-chunk128").chunk
    128
    """
    if isinstance(accumulation, Accumulation):
        return accumulation
    if not isinstance(accumulation, str):
        raise TypeError(f"accumulation must be an Accumulation or a preset name, got {type(accumulation).__name__}")
    key = accumulation.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    raise ValueError(f"unknown accumulation {accumulation!r}; expected one of {', '.join(PRESETS)} "
                     "or an Accumulation object")

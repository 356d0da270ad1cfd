"""Number formats: what a floating-point or fixed-point format is.

A :class:`FloatFormat` is ``(exp_bits, man_bits, bias, subnormals on/off,
Inf or not, NaN encoding, saturate or not)``; a :class:`FixedFormat` is
``(bits, frac_bits, signed, overflow)``. Both are small immutable objects
whose ``repr`` reads like the constructor call. Presets (``FP16``, ``BF16``,
``FP8_E4M3FN``, ``INT8``, ...) are looked up by name with :func:`get_format`.

Everything numeric a format promises (``max``, ``tiny``, ``eps``, ...) is
derived here from its fields as exact Python numbers, so that tests and the
kernels agree on one source. See ``docs/formats.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Union

import numpy as np

__all__ = [
    "FloatFormat",
    "FixedFormat",
    "Format",
    "get_format",
    "preset_names",
    "PRESETS",
    "FP32",
    "TF32",
    "FP16",
    "BF16",
    "FP8_E4M3FN",
    "FP8_E5M2",
    "FP6_E3M2FN",
    "FP6_E2M3FN",
    "FP4_E2M1FN",
    "INT8",
    "UINT8",
    "INT4",
    "E8M0",
    "UE4M3",
    "SCALE_FORMATS",
]

#: The NaN encodings a FloatFormat may use.
#: ``"ieee"``: exponent all ones is reserved; mantissa 0 is Inf, else NaN.
#: ``"all_ones"``: only S.1111.111 is NaN (OCP e4m3fn); no Inf.
#: ``"negative_zero"``: the pattern 1000...0 is the only NaN; no -0, no Inf
#: (the "fnuz" formats of ml_dtypes and AMD/Graphcore fp8).
#: ``"none"``: every pattern is a finite number (OCP fp6/fp4); no NaN, no Inf.
NAN_ENCODINGS = ("ieee", "all_ones", "negative_zero", "none")

# Kernel-side integer codes (kernels take ints, never objects).
KIND_FLOAT = 0
KIND_FIXED = 1
_NAN_CODE = {name: i for i, name in enumerate(NAN_ENCODINGS)}


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format ``sign | exponent (exp_bits) | mantissa (man_bits)``.

    Parameters
    ----------
    exp_bits : int
        Stored exponent bits, 1..11.
    man_bits : int
        Stored mantissa (fraction) bits without the hidden bit, 0..52.
    bias : int, optional
        Exponent bias; default ``2**(exp_bits-1) - 1`` (IEEE).
    has_subnormals : bool
        Gradual underflow when True. When False a result below the smallest
        normal is flushed to signed zero *after* rounding (hardware FTZ).
    has_inf : bool
        Whether the format has infinities (only with ``nan="ieee"``).
    nan : str
        NaN encoding, one of ``NAN_ENCODINGS`` (see the module constant).
    saturate : bool
        Overflow gives ``+-max`` instead of Inf/NaN. Forced for ``nan="none"``
        formats, which cannot express overflow any other way.
    name : str, optional
        Display name; derived from the fields when omitted.
    signed : bool
        Whether the format has a sign bit (default). An unsigned format
        (``signed=False``; the block-scale formats E8M0 and UE4M3) stores
        ``exponent | mantissa`` in ``exp_bits + man_bits`` bits; rounding a
        negative number (``x < 0``, -Inf included) to it gives NaN, and -0 gives +0
        (or NaN without zero). Needs a NaN encoding other than ``"ieee"``.
    has_zero : bool
        Whether the all-zeros exponent field holds zero and subnormals (default).
        ``has_zero=False`` (E8M0) makes it one more normal binade: ``emin = -bias``,
        no zero, no subnormals (``has_subnormals`` must be False). Rounding gives
        ``tiny`` (the smallest value) for every positive value below it, in every
        mode, and NaN for zero.

    Why flags and not another class: a scale format is a floating-point format with
    two facts less (no sign, no zero); with the flags every derived property (``max``,
    ``tiny``, ``emax``), :func:`lowprec.round_to`, :func:`lowprec.encode` and
    :func:`lowprec.decode` and the one scalar rounding definition serve it unchanged.

    Examples
    --------
    >>> FloatFormat(5, 10).max
    65504.0
    >>> FloatFormat(4, 3, has_inf=False, nan="all_ones").max
    448.0
    >>> E8M0.tiny, E8M0.max, E8M0.bits
    (5.877471754111438e-39, 1.7014118346046923e+38, 8)
    """

    exp_bits: int
    man_bits: int
    bias: int = None  # type: ignore[assignment]
    has_subnormals: bool = True
    has_inf: bool = True
    nan: str = "ieee"
    saturate: bool = False
    name: str = field(default=None, compare=False)  # type: ignore[assignment]
    signed: bool = True
    has_zero: bool = True

    def __post_init__(self):
        k = _check_int("exp_bits", self.exp_bits, 1, 11)
        m = _check_int("man_bits", self.man_bits, 0, 52)
        if self.nan not in NAN_ENCODINGS:
            raise ValueError(f"nan must be one of {NAN_ENCODINGS}, got {self.nan!r}")
        for flag in ("has_subnormals", "has_inf", "saturate", "signed", "has_zero"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}")
        if self.has_inf and self.nan != "ieee":
            raise ValueError(f"has_inf=True needs nan='ieee' (exponent all ones reserved), got nan={self.nan!r}")
        if not self.has_inf and self.nan == "ieee":
            raise ValueError("nan='ieee' reserves the all-ones exponent for Inf and NaN; "
                             "with has_inf=False use nan='all_ones', 'negative_zero' or 'none'")
        if not self.signed and self.nan in ("ieee", "negative_zero"):
            raise ValueError(f"an unsigned format needs nan='all_ones' or 'none', got nan={self.nan!r}")
        if not self.has_zero and self.has_subnormals:
            raise ValueError("has_zero=False makes the zero exponent field a normal binade: "
                             "pass has_subnormals=False")
        if self.nan == "ieee" and k < 2:
            raise ValueError(f"an IEEE-style format needs exp_bits >= 2, got {k}")
        bias = (1 << (k - 1)) - 1 if self.bias is None else self.bias
        bias = _check_int("bias", bias, -1022, 1022 + (1 << k))
        object.__setattr__(self, "bias", bias)
        if self.nan == "none" and not self.saturate:
            object.__setattr__(self, "saturate", True)
        if self.tmax < 1 and m == 0 and self.nan == "all_ones" and k == 1:
            raise ValueError("format has no finite nonzero value")
        if self.emin < -1022 or self.emax > 1023:
            raise ValueError(
                f"exponent range emin={self.emin}, emax={self.emax} does not fit in a float64 carrier "
                "(need emin >= -1022 and emax <= 1023); change bias or exp_bits")
        if self.has_subnormals and self.emin - m < -1074:
            raise ValueError(f"smallest subnormal 2**{self.emin - m} is below float64's 2**-1074")
        if self.name is None:
            object.__setattr__(self, "name", self._default_name())

    # -- identity ----------------------------------------------------------
    def _default_name(self) -> str:
        base = f"e{self.exp_bits}m{self.man_bits}"
        if self.nan == "all_ones":
            base += "fn"
        elif self.nan == "none":
            base += "fn"
        elif self.nan == "negative_zero":
            base += "fnuz"
        if self.bias != (1 << (self.exp_bits - 1)) - 1:
            base += f"_b{self.bias}"
        if not self.has_subnormals and self.has_zero:
            base += "_ftz"
        if not self.signed:
            base = "u" + base
        if not self.has_zero:
            base += "_nz"
        if self.saturate and self.nan != "none":
            base += "_sat"
        return base

    def __repr__(self) -> str:
        args = [f"exp_bits={self.exp_bits}", f"man_bits={self.man_bits}", f"bias={self.bias}"]
        if not self.has_subnormals:
            args.append("has_subnormals=False")
        if not self.has_inf:
            args.append("has_inf=False")
        if self.nan != "ieee":
            args.append(f"nan={self.nan!r}")
        if self.saturate:
            args.append("saturate=True")
        args.append(f"name={self.name!r}")
        if not self.signed:
            args.append("signed=False")
        if not self.has_zero:
            args.append("has_zero=False")
        return f"FloatFormat({', '.join(args)})"

    def replace(self, **changes) -> "FloatFormat":
        """A copy with some fields changed (the name is re-derived unless given)."""
        fields = dict(exp_bits=self.exp_bits, man_bits=self.man_bits, bias=self.bias,
                      has_subnormals=self.has_subnormals, has_inf=self.has_inf, nan=self.nan,
                      saturate=self.saturate, name=None, signed=self.signed, has_zero=self.has_zero)
        fields.update(changes)
        return FloatFormat(**fields)

    # -- encoding facts ----------------------------------------------------
    @property
    def bits(self) -> int:
        """Total bit width: sign (when signed) + exponent + mantissa."""
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def precision(self) -> int:
        """p = man_bits + 1 (significand bits including the hidden bit)."""
        return self.man_bits + 1

    @property
    def has_nan(self) -> bool:
        return self.nan != "none"

    @property
    def has_negative_zero(self) -> bool:
        return self.nan != "negative_zero" and self.signed and self.has_zero

    @property
    def tmax(self) -> int:
        """Magnitude code (exponent and mantissa fields as one integer) of the largest finite value."""
        k, m = self.exp_bits, self.man_bits
        if self.nan == "ieee":
            return ((1 << k) - 1 << m) - 1
        if self.nan == "all_ones":
            return (1 << (k + m)) - 2
        return (1 << (k + m)) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: 1 - bias (-bias without zero)."""
        return 1 - self.bias if self.has_zero else -self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        return (self.tmax >> self.man_bits) - self.bias

    # -- values (exact) ------------------------------------------------------
    @property
    def max_exact(self) -> Fraction:
        m = self.man_bits
        frac = self.tmax & ((1 << m) - 1)
        return Fraction((1 << m) + frac, 1 << m) * Fraction(2) ** self.emax

    @property
    def max(self) -> float:
        """Largest finite value."""
        return float(self.max_exact)

    @property
    def tiny(self) -> float:
        """Smallest positive normal value, 2**emin."""
        return 2.0 ** self.emin

    smallest_normal = tiny

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value: 2**(emin - man_bits) with subnormals, else ``tiny``."""
        if self.has_subnormals and self.man_bits > 0:
            return 2.0 ** (self.emin - self.man_bits)
        return self.tiny

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next larger value, 2**-man_bits."""
        return 2.0 ** -self.man_bits

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-p = eps/2: the largest relative error of round-to-nearest in the normal range."""
        return 2.0 ** -(self.man_bits + 1)

    @property
    def kind(self) -> str:
        return "float"

    def fits_in(self, dtype) -> bool:
        """True when every value of this format is exactly a value of ``dtype`` (float32/float64)."""
        fi = np.finfo(dtype)
        carrier_m, carrier_emin, carrier_emax = fi.nmant, int(fi.minexp), int(fi.maxexp) - 1
        if not self.has_zero and self.emin < carrier_emin:
            # The kernels round on the carrier's binades: a normal binade of the format below the
            # carrier's smallest normal (E8M0's 2**-127 in float32) is rounded from float64.
            return False
        smallest = self.emin - self.man_bits if self.has_subnormals else self.emin
        return (self.man_bits <= carrier_m and self.emax <= carrier_emax
                and smallest >= carrier_emin - carrier_m
                and (self.emin >= carrier_emin or self.emin - self.man_bits >= carrier_emin - carrier_m))

    def _kernel_params(self):
        """The integer tuple the kernels take (see kernels/scalar.py for the layout).

        Slot 6 holds has_subnormals in bit 0 and "unsigned" in bit 1; a format without zero is
        the one whose emin is -bias (every other has emin = 1 - bias)."""
        return (KIND_FLOAT, self.man_bits, self.emin, self.bias, self.tmax, _NAN_CODE[self.nan],
                int(self.has_subnormals) | (0 if self.signed else 2), int(self.saturate), self.exp_bits)


@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point (or integer) format: value = k * 2**-frac_bits, k a ``bits``-bit integer.

    Parameters
    ----------
    bits : int
        Word width, 1..32 (signed needs 2..32).
    frac_bits : int
        Bits after the binary point; 0 gives integers. May be negative (a
        quantum above 1) or exceed ``bits``.
    signed : bool
        Two's complement when True: k in [-2**(bits-1), 2**(bits-1)-1]; else
        k in [0, 2**bits - 1].
    overflow : {"saturate", "wrap"}
        Out-of-range integers clamp to the nearest end, or wrap modulo
        2**bits (the rounded integer's residue, as integer hardware does).

    Examples
    --------
    >>> FixedFormat(8, 0).max, FixedFormat(8, 0).min
    (127.0, -128.0)
    >>> FixedFormat(16, 8).eps
    0.00390625
    """

    bits: int
    frac_bits: int = 0
    signed: bool = True
    overflow: str = "saturate"
    name: str = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self):
        _check_int("bits", self.bits, 2 if self.signed else 1, 32)
        _check_int("frac_bits", self.frac_bits, -64, 126)
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"signed must be a bool, got {type(self.signed).__name__}")
        if self.overflow not in ("saturate", "wrap"):
            raise ValueError(f"overflow must be 'saturate' or 'wrap', got {self.overflow!r}")
        if self.name is None:
            if self.frac_bits == 0:
                base = f"{'int' if self.signed else 'uint'}{self.bits}"
            else:
                base = f"{'fixed' if self.signed else 'ufixed'}{self.bits}_{self.frac_bits}"
            if self.overflow == "wrap":
                base += "_wrap"
            object.__setattr__(self, "name", base)

    def __repr__(self) -> str:
        return (f"FixedFormat(bits={self.bits}, frac_bits={self.frac_bits}, signed={self.signed}, "
                f"overflow={self.overflow!r}, name={self.name!r})")

    @property
    def kmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def kmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def max(self) -> float:
        return float(Fraction(self.kmax) * Fraction(2) ** -self.frac_bits)

    @property
    def min(self) -> float:
        return float(Fraction(self.kmin) * Fraction(2) ** -self.frac_bits)

    @property
    def eps(self) -> float:
        """The quantum (spacing of all values), 2**-frac_bits."""
        return 2.0 ** -self.frac_bits

    quantum = eps

    @property
    def smallest_subnormal(self) -> float:
        return self.eps

    @property
    def tiny(self) -> float:
        return self.eps

    @property
    def unit_roundoff(self) -> float:
        """Absolute (not relative) error bound of round-to-nearest: quantum/2."""
        return self.eps / 2

    @property
    def has_nan(self) -> bool:
        return False

    @property
    def has_inf(self) -> bool:
        return False

    @property
    def has_subnormals(self) -> bool:
        return False

    @property
    def saturate(self) -> bool:
        return self.overflow == "saturate"

    @property
    def kind(self) -> str:
        return "fixed"

    def fits_in(self, dtype) -> bool:
        fi = np.finfo(dtype)
        lowest = -self.frac_bits
        highest = self.bits - self.frac_bits
        return (self.bits - (0 if not self.signed else 1) <= fi.nmant + 1
                and lowest >= int(fi.minexp) - fi.nmant and highest <= int(fi.maxexp))

    def _kernel_params(self):
        return (KIND_FIXED, self.bits, self.frac_bits, int(self.signed), int(self.overflow == "wrap"),
                0, 0, 0, 0)


Format = Union[FloatFormat, FixedFormat]

FP32 = FloatFormat(8, 23, name="fp32")
TF32 = FloatFormat(8, 10, name="tf32")
FP16 = FloatFormat(5, 10, name="fp16")
BF16 = FloatFormat(8, 7, name="bf16")
FP8_E4M3FN = FloatFormat(4, 3, has_inf=False, nan="all_ones", name="fp8_e4m3fn")
FP8_E5M2 = FloatFormat(5, 2, name="fp8_e5m2")
FP8_E4M3FNUZ = FloatFormat(4, 3, bias=8, has_inf=False, nan="negative_zero", name="fp8_e4m3fnuz")
FP8_E5M2FNUZ = FloatFormat(5, 2, bias=16, has_inf=False, nan="negative_zero", name="fp8_e5m2fnuz")
FP6_E3M2FN = FloatFormat(3, 2, has_inf=False, nan="none", name="fp6_e3m2fn")
FP6_E2M3FN = FloatFormat(2, 3, has_inf=False, nan="none", name="fp6_e2m3fn")
FP4_E2M1FN = FloatFormat(2, 1, has_inf=False, nan="none", name="fp4_e2m1fn")
#: Block-scale formats (OCP Microscaling Formats v1.0, section 5.4.1; NVIDIA's NVFP4 block scale).
#: E8M0: 8 exponent bits, no sign, no mantissa, no zero: 2**-127 (0x00) .. 2**127 (0xFE), 0xFF NaN.
E8M0 = FloatFormat(8, 0, bias=127, has_subnormals=False, has_inf=False, nan="all_ones", name="e8m0",
                   signed=False, has_zero=False)
#: UE4M3: the non-negative half of e4m3fn in 7 bits (0 .. 448, 0x7F NaN); stored in a byte whose top bit
#: is 0, so a UE4M3 byte is also the e4m3fn byte of the same value.
UE4M3 = FloatFormat(4, 3, has_inf=False, nan="all_ones", name="ue4m3", signed=False)
INT8 = FixedFormat(8, 0, name="int8")
UINT8 = FixedFormat(8, 0, signed=False, name="uint8")
INT4 = FixedFormat(4, 0, name="int4")
INT16 = FixedFormat(16, 0, name="int16")
INT32 = FixedFormat(32, 0, name="int32")

PRESETS: dict = {f.name: f for f in (
    FP32, TF32, FP16, BF16, FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ,
    FP6_E3M2FN, FP6_E2M3FN, FP4_E2M1FN, INT8, UINT8, INT4, INT16, INT32)}

#: Scale formats, found by get_format but kept out of PRESETS (which lists signed element formats).
SCALE_FORMATS: dict = {f.name: f for f in (E8M0, UE4M3)}

_ALIASES = {
    "e8m0fnu": "e8m0", "float8_e8m0fnu": "e8m0", "ue8m0": "e8m0", "fp8_e8m0fnu": "e8m0",
    "float8_ue4m3": "ue4m3", "ue4m3fn": "ue4m3",
    "float32": "fp32", "binary32": "fp32", "float16": "fp16", "half": "fp16", "binary16": "fp16",
    "bfloat16": "bf16", "e4m3": "fp8_e4m3fn", "fp8_e4m3": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn", "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "float8_e4m3fnuz": "fp8_e4m3fnuz", "float8_e5m2fnuz": "fp8_e5m2fnuz",
    "float6_e3m2fn": "fp6_e3m2fn", "float6_e2m3fn": "fp6_e2m3fn", "float4_e2m1fn": "fp4_e2m1fn",
    "fp4": "fp4_e2m1fn",
}


def preset_names() -> list:
    """Names of all preset formats, in table order."""
    return list(PRESETS)


def get_format(fmt) -> Format:
    """Return a format from an object or a name (case-insensitive; aliases such as 'bfloat16' work).

    Raises
    ------
    TypeError
        ``fmt`` is neither a format nor a string.
    ValueError
        Unknown name; the message lists the known ones.
    """
    if isinstance(fmt, (FloatFormat, FixedFormat)):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a FloatFormat, FixedFormat or a preset name, got {type(fmt).__name__}")
    key = fmt.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    if key in SCALE_FORMATS:
        return SCALE_FORMATS[key]
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(list(PRESETS) + list(SCALE_FORMATS))} "
                     f"(or a FloatFormat/FixedFormat object)")


def all_values(fmt, include_nan: bool = False) -> np.ndarray:
    """Every value of a format of at most 16 bits, as float64, in bit-pattern order.

    Index ``i`` of the result is the value of bit pattern ``i``; NaN patterns
    give NaN (dropped unless ``include_nan``).
    """
    from .core import decode  # formats stays below core; import at call time

    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"all_values enumerates formats of at most 16 bits; {fmt.name} has {fmt.bits}")
    dtype = np.uint8 if fmt.bits <= 8 else np.uint16
    vals = decode(np.arange(1 << fmt.bits, dtype=dtype), fmt)
    return vals if include_nan else vals[~np.isnan(vals)]

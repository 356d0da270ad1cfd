"""Matrix units of real accelerators: what a tensor core computes for ``D = A B + C``, bit for bit.

A :class:`MatrixUnit` describes one hardware matrix-multiply-accumulate instruction and how a GEMM
chains it over K (NUMERICS.md section 5). Per output element and per fused step of ``step_k``
products:

1. the products ``a_l * b_l`` are exact; each term (the products and the addend ``c``) is
   ``significand x 2**exponent`` with the exponent of a product ``E(a) + E(b)``, where
   ``E(x) = max(floor(log2|x|), emin of x's format)`` (a subnormal input sits at its format's
   minimum exponent, its significand below 1); a zero term (a product with a zero factor, or
   ``c == 0``) sits at exponent ``e_zero``, a constant of the hardware's alignment datapath;
2. every term is aligned to the largest exponent ``e_max`` among them and truncated toward zero to
   ``frac_bits`` fractional bits, i.e. to a multiple of ``2**(e_max - frac_bits)`` (no guard bits);
   the truncated terms are summed exactly (signed zeros follow IEEE: the sum is -0 only when every
   term is -0);
3. the sum is rounded once to ``out_format``: toward zero for fp32 and e8m13 (where the hardware
   overflows to infinity, not to the largest finite value: ``|sum| >= 2**128`` gives +-Inf),
   nearest-even for fp16 (IEEE overflow);
4. a NaN or infinity among the inputs of a step gives the IEEE result of the exact sum of its
   products and ``c`` (``Inf * 0`` and ``Inf - Inf`` are NaN); a NaN result is the canonical quiet
   NaN;
5. a GEMM runs the steps in k order, each step's rounded output being the next step's ``c``; K is
   padded with zeros to a multiple of ``step_k``, as GEMM kernels pad their tiles. An instruction
   whose k is split in two halves (``split_k``: Ampere and Ada m16n8k16, m16n8k8 tf32 and m16n8k32
   fp8) is exactly such a chain of two steps of ``k / 2``;
6. inputs are rounded to ``a_format``/``b_format`` nearest-even, except that tf32 operands
   (``truncate_inputs``) are float32 values with their 13 low bits cleared, as the hardware reads
   them (float64 inputs are first rounded to float32, nearest-even);
7. optionally (``promote_every = N_C``), DeepSeek-V3's recipe: the chain restarts from ``c = +0``
   every ``N_C`` elements of K and its result is added to a separate fp32 accumulator with one IEEE
   fp32 addition (nearest-even); the user's ``c`` is that accumulator's initial value, and the
   result is fp32.

Why a sibling of :class:`~lowprec.accumulation.Accumulation` rather than a field of it: a fused
block step is a different algebra from "round after every add". None of ``product_format``,
``fused``, ``acc_rounding``, ``order``, ``chunk`` or ``compensated`` means anything inside it, and
its own parameters (step size, fractional bits, ``e_zero``, the output's rounding and overflow) mean
nothing to the scalar accumulations. As a field, most combinations would be invalid and every kernel
would have to refuse them; as a sibling each description is complete and checked once, and
:func:`lowprec.linalg.matmul` and :func:`~lowprec.linalg.dot` accept either (or a preset name of
either) in the same ``accumulation`` argument. Per-group scales (Blackwell's block-scaled
instructions) extend this descriptor: a scale format and block size whose exponents add to each
product's exponent, exactly.

Sources: Fasi, Higham, Mikaitis and Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS
7:e330 (2021) (truncation, no normalisation inside a step, round toward zero); Xie et al., "MMA-Sim:
bit-accurate reference model of tensor cores and matrix cores", arXiv 2511.10909 (2025) and its
reference implementation (``frac_bits``, step sizes, split k, e8m13, ``e_zero``, tf32 truncation,
overflow to Inf, canonical NaN); Khattak and Mikaitis, "Accurate models of NVIDIA tensor cores",
arXiv 2512.07004 (2025); DeepSeek-AI, "DeepSeek-V3 technical report", arXiv 2412.19437, section
3.3.2 (promotion every 128 elements). See ``docs/matrix_units.md``.

Examples
--------
>>> from lowprec.matrix_units import get_matrix_unit
>>> mu = get_matrix_unit("nv-hopper-fp8")
>>> mu.step_k, mu.frac_bits, mu.out_format.name, mu.a_format.name
(32, 13, 'e8m13', 'fp8_e4m3fn')
>>> mu.replace(b_format="fp8_e5m2").b_format.name
'fp8_e5m2'
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Union

from ..formats import FP16, FP32, FloatFormat, get_format
from ..rounding import Rounding

__all__ = ["MatrixUnit", "get_matrix_unit", "is_matrix_unit", "PRESETS", "preset_names", "E8M13"]

#: fp32's exponent range with 13 fraction bits: what Ada's and Hopper's fp8 instructions write to an
#: fp32 output (the low 10 bits are zero).
E8M13 = FloatFormat(8, 13, name="e8m13")

_OUTPUTS = {"fp32": Rounding.TOWARD_ZERO, "e8m13": Rounding.TOWARD_ZERO, "fp16": Rounding.NEAREST_EVEN}

_Fmt = Union[str, FloatFormat]


def _out_format(fmt) -> FloatFormat:
    if isinstance(fmt, str) and fmt.strip().lower() == "e8m13":
        return E8M13
    f = get_format(fmt)
    if f == E8M13:
        return E8M13
    if f not in (FP32, FP16):
        raise ValueError(f"out_format must be one of {', '.join(_OUTPUTS)}, got {getattr(f, 'name', f)!r}")
    return FP32 if f == FP32 else FP16


@dataclass(frozen=True, repr=False)
class MatrixUnit:
    """One hardware matrix-multiply-accumulate instruction, chained over K (see the module docstring).

    Parameters
    ----------
    a_format, b_format : format or name
        Operand formats (float formats of at most 8 exponent bits and 10 stored mantissa bits:
        fp16, bf16, tf32, fp8 e4m3fn/e5m2 ...); ``b_format=None`` means ``a_format``.
    k : int
        Products per instruction (the instruction's k), >= 1.
    split_k : bool
        The instruction computes its k products as two chained steps of ``k / 2`` (k even).
    frac_bits : int
        Fractional bits kept after alignment to the largest exponent (n), 1..40.
    out_format : "fp32", "e8m13" or "fp16"
        The rounded output of each step (and the format of ``c``: fp32 for "e8m13"). fp32 and e8m13
        round toward zero, fp16 to nearest-even.
    e_zero : int
        Exponent at which a zero term is aligned (it takes part in the maximum).
    truncate_inputs : bool
        Operands are float32 values truncated to ``a_format`` (tf32: 13 low bits cleared) instead of
        rounded nearest-even; needs a format with 8 exponent bits.
    promote_every : int or None
        N_C: promote the chain into an fp32 accumulator every N_C elements of K (a multiple of
        ``step_k``); the result is then fp32.
    name : str, optional
        A label (presets carry their name); not part of equality.
    source : str, optional
        Where the parameters come from; not part of equality.

    Raises
    ------
    TypeError, ValueError
        Unknown formats, out-of-range parameters (the message names the value and what is allowed).

    Examples
    --------
    >>> MatrixUnit(a_format="fp16", k=8, frac_bits=24, out_format="fp32", e_zero=-132).step_k
    8
    >>> MatrixUnit(a_format="fp16", k=8, split_k=True, frac_bits=24, e_zero=-132).step_k
    4
    """

    a_format: _Fmt = "fp16"
    b_format: Optional[_Fmt] = None
    k: int = 8
    split_k: bool = False
    frac_bits: int = 24
    out_format: _Fmt = "fp32"
    e_zero: int = -132
    truncate_inputs: bool = False
    promote_every: Optional[int] = None
    name: Optional[str] = field(default=None, compare=False)
    source: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        a = get_format(self.a_format)
        b = a if self.b_format is None else get_format(self.b_format)
        for role, f in (("a_format", a), ("b_format", b)):
            if not isinstance(f, FloatFormat) or f.man_bits > 10 or f.exp_bits > 8 or f.emin < -126 \
                    or f.emax > 127:
                raise ValueError(f"{role} must be a float format with at most 8 exponent bits and 10 mantissa "
                                 f"bits (fp16, bf16, tf32, fp8_e4m3fn, fp8_e5m2, ...), got {getattr(f, 'name', f)!r}")
        set_("a_format", a)
        set_("b_format", b)
        set_("out_format", _out_format(self.out_format))
        for flag in ("split_k", "truncate_inputs"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}")
        for nm, lo, hi in (("k", 1, 256), ("frac_bits", 1, 40), ("e_zero", -300, 300)):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{nm} must be an int in {lo}..{hi}, got {v!r}")
        if self.split_k and self.k % 2:
            raise ValueError(f"split_k needs an even k, got k={self.k}")
        if self.truncate_inputs and (a.exp_bits != 8 or b.exp_bits != 8):
            raise ValueError("truncate_inputs reads float32 operands and clears their low bits: it needs formats "
                             f"with fp32's 8 exponent bits, got {a.name} x {b.name}")
        if self.promote_every is not None:
            p = self.promote_every
            if isinstance(p, bool) or not isinstance(p, int) or p < 1 or p % self.step_k:
                raise ValueError(f"promote_every must be a positive multiple of step_k={self.step_k}, got {p!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {type(self.name).__name__}")

    # -- derived facts ---------------------------------------------------------
    @property
    def step_k(self) -> int:
        """Products per fused step: ``k``, or ``k / 2`` for a split instruction."""
        return self.k // 2 if self.split_k else self.k

    @property
    def out_rounding(self) -> Rounding:
        """Toward zero for fp32 and e8m13 outputs, nearest-even for fp16."""
        return _OUTPUTS[self.out_format.name]

    @property
    def c_format(self) -> FloatFormat:
        """The format of the addend ``c`` and of the result's storage (fp32 for an e8m13 output)."""
        return FP32 if self.out_format is not FP16 else FP16

    @property
    def result_format(self) -> FloatFormat:
        """The format of :func:`lowprec.linalg.matmul`'s result: fp32 when promoted, else ``out_format``."""
        return FP32 if self.promote_every is not None else self.out_format

    def _kernel_params(self) -> dict:
        """The matrix-unit kernels' keyword arguments (kernels/mma_cpu.matmul_mma_cpu, its CUDA twin)."""
        o = self.out_format
        return dict(k=self.step_k, frac_bits=self.frac_bits, e_zero=self.e_zero, a_emin=self.a_format.emin,
                    b_emin=self.b_format.emin, c_emin=self.c_format.emin, out_man=o.man_bits, out_emin=o.emin,
                    out_emax=o.emax, toward_zero=self.out_rounding is Rounding.TOWARD_ZERO,
                    promote_steps=0 if self.promote_every is None else self.promote_every // self.step_k)

    def replace(self, **changes) -> "MatrixUnit":
        """A copy with some fields changed (the name and source are dropped unless given)."""
        changes.setdefault("name", None)
        changes.setdefault("source", None)
        return replace(self, **changes)

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"] if self.name is not None else []
        for f in fields(self):
            if f.name in ("name", "source"):
                continue
            v = getattr(self, f.name)
            if f.name == "promote_every" and v is None:
                continue
            if isinstance(v, FloatFormat):
                v = v.name
            parts.append(f"{f.name}={v!r}")
        return f"MatrixUnit({', '.join(parts)})"


_VOLTA = "Fasi et al. 2021 (V100, mma m8n8k4); MMA-Sim (Volta: n = 23, e_zero -131 / -20 for fp16 out)"
_TURING = "MMA-Sim (Turing mma m16n8k8: n = 24, e_zero -132 / -21)"
_AMPERE = "MMA-Sim (Ampere/Ada mma m16n8k16 and tf32 m16n8k8 split in halves: n = 24, e_zero -132 / -21)"
_ADA8 = "MMA-Sim (Ada mma m16n8k32 fp8, split in halves: n = 13, e8m13 output, e_zero -132 / -21)"
_HOPPER = "MMA-Sim (Hopper wgmma k = 16 fp16/bf16, 8 tf32: n = 25, e_zero -133)"
_HOPPER8 = "MMA-Sim (Hopper wgmma k = 32 fp8: n = 13, e8m13 output, e_zero -133); DeepSeek-V3 sec. 3.3.2"
_BLACKWELL = "MMA-Sim (Blackwell tcgen05 k = 16 fp16/bf16, 8 tf32, 32 fp8: n = 25, e_zero -133)"


def _p(name, source, **kw) -> MatrixUnit:
    return MatrixUnit(name=name, source=source, **kw)


#: Named hardware presets. fp8 presets take e4m3fn operands; ``.replace(a_format="fp8_e5m2")`` (or
#: ``b_format``) gives the e5m2 variants, which the hardware computes with the same parameters.
PRESETS: dict = {mu.name: mu for mu in (
    _p("nv-volta-fp16", _VOLTA, a_format="fp16", k=4, frac_bits=23, e_zero=-131),
    _p("nv-volta-fp16-f16", _VOLTA, a_format="fp16", k=4, frac_bits=23, out_format="fp16", e_zero=-20),
    _p("nv-turing-fp16", _TURING, a_format="fp16", k=8, frac_bits=24, e_zero=-132),
    _p("nv-turing-fp16-f16", _TURING, a_format="fp16", k=8, frac_bits=24, out_format="fp16", e_zero=-21),
    _p("nv-ampere-fp16", _AMPERE, a_format="fp16", k=16, split_k=True, frac_bits=24, e_zero=-132),
    _p("nv-ampere-fp16-f16", _AMPERE, a_format="fp16", k=16, split_k=True, frac_bits=24, out_format="fp16",
       e_zero=-21),
    _p("nv-ampere-bf16", _AMPERE, a_format="bf16", k=16, split_k=True, frac_bits=24, e_zero=-132),
    _p("nv-ampere-tf32", _AMPERE, a_format="tf32", k=8, split_k=True, frac_bits=24, e_zero=-132,
       truncate_inputs=True),
    _p("nv-ada-fp16", _AMPERE, a_format="fp16", k=16, split_k=True, frac_bits=24, e_zero=-132),
    _p("nv-ada-fp16-f16", _AMPERE, a_format="fp16", k=16, split_k=True, frac_bits=24, out_format="fp16",
       e_zero=-21),
    _p("nv-ada-bf16", _AMPERE, a_format="bf16", k=16, split_k=True, frac_bits=24, e_zero=-132),
    _p("nv-ada-fp8", _ADA8, a_format="fp8_e4m3fn", k=32, split_k=True, frac_bits=13, out_format="e8m13",
       e_zero=-132),
    _p("nv-ada-fp8-f16", _ADA8, a_format="fp8_e4m3fn", k=32, split_k=True, frac_bits=13, out_format="fp16",
       e_zero=-21),
    _p("nv-hopper-fp16", _HOPPER, a_format="fp16", k=16, frac_bits=25, e_zero=-133),
    _p("nv-hopper-fp16-f16", _HOPPER, a_format="fp16", k=16, frac_bits=25, out_format="fp16", e_zero=-133),
    _p("nv-hopper-bf16", _HOPPER, a_format="bf16", k=16, frac_bits=25, e_zero=-133),
    _p("nv-hopper-tf32", _HOPPER, a_format="tf32", k=8, frac_bits=25, e_zero=-133, truncate_inputs=True),
    _p("nv-hopper-fp8", _HOPPER8, a_format="fp8_e4m3fn", k=32, frac_bits=13, out_format="e8m13", e_zero=-133),
    _p("nv-hopper-fp8-f16", _HOPPER8, a_format="fp8_e4m3fn", k=32, frac_bits=13, out_format="fp16",
       e_zero=-133),
    _p("nv-hopper-fp8-promote128", _HOPPER8, a_format="fp8_e4m3fn", k=32, frac_bits=13, out_format="e8m13",
       e_zero=-133, promote_every=128),
    _p("nv-blackwell-fp16", _BLACKWELL, a_format="fp16", k=16, frac_bits=25, e_zero=-133),
    _p("nv-blackwell-fp16-f16", _BLACKWELL, a_format="fp16", k=16, frac_bits=25, out_format="fp16",
       e_zero=-133),
    _p("nv-blackwell-bf16", _BLACKWELL, a_format="bf16", k=16, frac_bits=25, e_zero=-133),
    _p("nv-blackwell-tf32", _BLACKWELL, a_format="tf32", k=8, frac_bits=25, e_zero=-133, truncate_inputs=True),
    _p("nv-blackwell-fp8", _BLACKWELL, a_format="fp8_e4m3fn", k=32, frac_bits=25, e_zero=-133),
    _p("nv-blackwell-fp8-f16", _BLACKWELL, a_format="fp8_e4m3fn", k=32, frac_bits=25, out_format="fp16",
       e_zero=-133),
)}


def preset_names() -> list:
    """Names of the matrix-unit presets."""
    return list(PRESETS)


def is_matrix_unit(accumulation) -> bool:
    """True for a :class:`MatrixUnit` or the name of a matrix-unit preset."""
    if isinstance(accumulation, MatrixUnit):
        return True
    return isinstance(accumulation, str) and accumulation.strip().lower() in PRESETS


def get_matrix_unit(unit) -> MatrixUnit:
    """A :class:`MatrixUnit` from itself or a preset name.

    Raises
    ------
    TypeError
        Not a MatrixUnit or a string.
    ValueError
        Unknown preset name (the message lists them).

    Examples
    --------
    >>> get_matrix_unit("nv-ampere-bf16").step_k
    8
    """
    if isinstance(unit, MatrixUnit):
        return unit
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a MatrixUnit or a preset name, got {type(unit).__name__}")
    key = unit.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    raise ValueError(f"unknown matrix unit {unit!r}; expected one of {', '.join(PRESETS)} or a MatrixUnit object")

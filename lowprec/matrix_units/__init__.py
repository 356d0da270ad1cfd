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
3.3.2 (promotion every 128 elements). Block-scaled steps: MMA-Sim's ``st_fdpa`` and ``gst_fdpa``
(``mmasim/arithmetic/fdpa.py``: scale significands multiply the significand, scale exponents add to the
exponent, group sums of 16 in float32, exact for fp4; ``MMA_ST_FDPA(F=25, L_max=32, e_zero=-133)``,
``MMA_GST_FDPA(G=16, F=35, L_max=64)``), the PTX ISA's block-scaling section (scale_A per row and k-block,
scale_B per k-block and column). See ``docs/matrix_units.md``.

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

import numpy as np

from ..block import BlockFormat, get_block_format
from ..formats import E8M0, FP16, FP32, UE4M3, FloatFormat, get_format
from ..rounding import Rounding

__all__ = ["MatrixUnit", "get_matrix_unit", "is_matrix_unit", "PRESETS", "preset_names", "E8M13", "block_matmul"]

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
    block_format : BlockFormat, preset name or None
        Block-scaled instructions (Blackwell ``mxf8f6f4``, ``mxf4``, ``mxf4nvf4``): the operands are
        elements of ``a_format``/``b_format`` with one scale (E8M0 or UE4M3) per ``block`` elements along K,
        and :func:`lowprec.linalg.matmul` block-quantizes float inputs with this format (its element format
        replaced by ``a_format`` for ``a``, ``b_format`` for ``b``; 1-D blocks only). See "Block-scaled
        steps" below.
    group : int
        0: every scaled product is a term of the step (ST-FDPA, ``mxf8f6f4``; E8M0 scales only). G > 0:
        products are summed exactly in groups of G and each group sum is one term, aligned at the exponent of
        its two scales (GST-FDPA, ``mxf4``/``mxf4nvf4``, G = 16); G must divide ``block`` and ``step_k``.
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
    block_format: Optional[Union[str, BlockFormat]] = None
    group: int = 0
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
        self._check_block(a, b)
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {type(self.name).__name__}")

    def _check_block(self, a: FloatFormat, b: FloatFormat) -> None:
        g = self.group
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 256:
            raise ValueError(f"group must be an int in 0..256 (0: no groups), got {g!r}")
        if self.block_format is None:
            if g:
                raise ValueError(f"group={g} sums products under one pair of block scales: it needs a block_format")
            return
        bf = get_block_format(self.block_format)
        object.__setattr__(self, "block_format", bf)
        if len(bf.block) != 1 or bf.scale not in (E8M0, UE4M3):
            raise ValueError("block_format must have 1-D blocks along K and E8M0 or UE4M3 scales (the scales a "
                             f"tensor core reads), got {bf.name}")
        if self.truncate_inputs:
            raise ValueError("truncate_inputs (tf32) does not apply to block-scaled operands")
        blk = bf.block[0]
        if g == 0:
            if bf.scale != E8M0:
                raise ValueError("per-product block scales (group=0, mxf8f6f4) are E8M0 powers of two; a "
                                 f"{bf.scale.name} scale needs group sums (group > 0), got {bf.name}")
            return
        if blk % g or self.step_k % g:
            raise ValueError(f"group={g} must divide the block size ({blk}) and step_k ({self.step_k})")
        # a group sum is exact in float64, and the aligned terms of a step sum exactly (mma.py)
        grid = (a.emin - a.man_bits) + (b.emin - b.man_bits)
        top = float(a.max) * float(b.max) * g
        if top / 2.0 ** grid >= 2.0 ** 52 or (self.step_k // g) * top * 4 * 2.0 ** self.frac_bits \
                + 2.0 ** (self.frac_bits + 1) >= 2.0 ** 53:
            raise ValueError(f"group sums of {g} products of {a.name} x {b.name} with frac_bits={self.frac_bits} "
                             "exceed 53 bits: group-scaled units take small element formats (fp4, fp6)")

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
                    promote_steps=0 if self.promote_every is None else self.promote_every // self.step_k,
                    block=0 if self.block_format is None else self.block_format.block[0], group=self.group)

    @property
    def block(self) -> int:
        """Elements per scale along K (0 for an unscaled unit)."""
        return 0 if self.block_format is None else self.block_format.block[0]

    def operand_block_format(self, operand: str) -> BlockFormat:
        """The block format that quantizes operand ``"a"`` or ``"b"``: ``block_format`` with that operand's
        element format."""
        el = self.a_format if operand == "a" else self.b_format
        bf = self.block_format
        if bf is None:
            raise ValueError(f"{self.name or 'this matrix unit'} has no block scales")
        return bf if bf.element == el else bf.replace(element=el)

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
            if f.name in ("promote_every", "block_format") and v is None or f.name == "group" and v == 0:
                continue
            if isinstance(v, BlockFormat):
                v = v.name
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
_MXF8 = ("MMA-Sim (Blackwell tcgen05.mma.kind::mxf8f6f4 block_scale, m128n8k32, ue8m0 scale per 32: ST-FDPA, "
         "n = 25, L = 32, e_zero -133); OCP MX v1.0 (mxfp8_e4m3 quantizer); PTX ISA 9.7.16.10.7 (block scaling)")
_MXF4 = ("MMA-Sim (Blackwell tcgen05.mma.kind::mxf4 / mxf4nvf4 block_scale, m128n8k64: GST-FDPA, exact sums of "
         "16 products, n = 35, L = 64, e_zero -139); OCP MX v1.0 (mxfp4 quantizer: ue8m0 scale per 32)")
_NVF4 = ("MMA-Sim (Blackwell tcgen05.mma.kind::mxf4nvf4 block16 ue4m3: GST-FDPA, exact sums of 16 products, "
         "n = 35, L = 64, e_zero -139); NVIDIA NVFP4 (two-level quantizer: ue4m3 per 16, fp32 per tensor)")


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
    _p("nv-blackwell-mxfp8", _MXF8, a_format="fp8_e4m3fn", k=32, frac_bits=25, e_zero=-133,
       block_format="mxfp8_e4m3"),
    _p("nv-blackwell-mxfp4", _MXF4, a_format="fp4_e2m1fn", k=64, frac_bits=35, e_zero=-139, block_format="mxfp4",
       group=16),
    _p("nv-blackwell-nvfp4", _NVF4, a_format="fp4_e2m1fn", k=64, frac_bits=35, e_zero=-139, block_format="nvfp4",
       group=16),
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


# -- block-scaled operands --------------------------------------------------------------------------
def scale_exponents(scales: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """E(s) = max(floor(log2 s), emin of the scale format) as int32 (0 for a zero or NaN scale): the exponent a
    scale adds to its products (a UE4M3 subnormal sits at -6 with a significand below 1)."""
    s = np.asarray(scales, dtype=np.float64)
    ok = np.isfinite(s) & (s > 0)
    e = np.frexp(np.where(ok, s, 1.0))[1].astype(np.int64) - 1
    return np.where(ok, np.maximum(e, fmt.emin), 0).astype(np.int32)


def _expand(s: np.ndarray, block: int, axis: int, n: int) -> np.ndarray:
    return np.repeat(s, block, axis=axis).take(np.arange(n), axis=axis)


def _check_scales(s: np.ndarray, fmt: FloatFormat, name: str) -> None:
    from ..core import round_to

    bad = ~np.isnan(s) & ((s < 0) | (np.asarray(round_to(np.where(np.isnan(s), 0.0, s), fmt.replace(saturate=False)),
                                                  dtype=np.float64) != s))
    if fmt == E8M0:
        bad |= (s == 0)
    if bad.any():
        v = float(s[bad].flat[0])
        raise ValueError(f"{name} must hold {fmt.name} scale values (or NaN), got {v!r} at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])}")


def _check_values(v: np.ndarray, sfull: np.ndarray, fmt: FloatFormat, name: str) -> None:
    """Each value divided by its scale is a value of the element format (blocks with a NaN scale: any)."""
    from ..core import round_to

    live = ~np.isnan(sfull)
    with np.errstate(all="ignore"):
        q = np.where(live & (sfull != 0), v / np.where(sfull == 0, 1.0, sfull), v)
        rq = np.asarray(round_to(np.where(np.isfinite(q), q, 0.0), fmt), dtype=np.float64)
        exact = (rq == q) & (q * sfull == v) & (np.abs(q) <= float(fmt.max))
        special = ~np.isfinite(q) & (np.isnan(q) & (fmt.nan != "none") | np.isinf(q) & fmt.has_inf)
        bad = live & ~(exact | special) & ~((sfull == 0) & (v == 0))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}[{', '.join(map(str, idx))}] = {float(v[idx])!r} divided by its scale {float(sfull[idx])!r} is not "
                         f"a value of {fmt.name}: pass element x scale for elements of the unit's format")


def block_unit_array(A3, SA3, B3, SB3, C3, ia, ib, unit, backend) -> np.ndarray:
    """``C3[t] + A3[ia[t]] @ B3[ib[t]]`` on a block-scaled unit: values (element x scale, float64), scale values
    (SA3 (.., M, blocks), SB3 (.., blocks, N)); a NaN scale makes its block NaN. The one kernel entry of
    block-scaled units: :func:`block_matmul` and lowprec.linalg.matmul's block-scaled path call it (operands
    checked by their callers)."""
    from ..kernels import dispatch

    blk = unit.block
    K = A3.shape[-1]
    if np.isnan(SA3).any():
        A3 = np.where(np.isnan(np.repeat(SA3, blk, axis=-1)[..., :K]), np.nan, A3)
    if np.isnan(SB3).any():
        B3 = np.where(np.isnan(np.repeat(SB3, blk, axis=-2)[..., :K, :]), np.nan, B3)
    sf = unit.block_format.scale
    return dispatch.matrix_unit_array(backend, A3, B3, C3, ia, ib, unit._kernel_params(),
                                      sa=scale_exponents(SA3, sf), sb=scale_exponents(SB3, sf))


def block_matmul(a_values, a_scales, b_values, b_scales, unit, *, c=None, backend: str = "auto") -> np.ndarray:
    """``a @ b (+ c)`` on a block-scaled matrix unit, for operands the caller has already block-quantized.

    Parameters
    ----------
    a_values : array_like (M, K), float32 or float64
        The dequantized elements ``q * s`` (``q`` of ``unit.a_format``, ``s`` its block's scale).
    a_scales : array_like (M, ceil(K / block))
        The scale of each block of ``block = unit.block`` elements along K: values of the unit's scale
        format (powers of two 2**-127 .. 2**127 for E8M0, 0 .. 448 for UE4M3) or NaN (the NaN scale, 0xFF:
        every product of the block is NaN, whatever its values hold).
    b_values : array_like (K, N); b_scales : array_like (ceil(K / block), N)
        The same for ``b``, blocks along K (axis 0).
    unit : MatrixUnit or preset name
        A block-scaled unit (``nv-blackwell-mxfp8``, ``-mxfp4``, ``-nvfp4`` or one with a ``block_format``).
    c : array_like, optional
        The addend, broadcast to (M, N) and rounded nearest-even to fp32: the chain's first ``c``.
    backend : {"auto", "cpu", "cuda"}

    Other scale layouts map onto this one: a 16 x 16 weight tile's scale is the scale of every (k-block,
    column) pair it covers, so expand it to per-(k-block, column) scales. NVFP4's per-tensor fp32 scales
    are not part of the instruction: pass ``q * s_block`` and ``s_block`` (UE4M3), then multiply the result
    by ``alpha = fp32(s_a * s_b)`` as the GEMM epilogue does (``lowprec.linalg.matmul`` with an ``nvfp4``
    unit computes ``fp32(alpha * D + c)`` with one rounding, ``D`` the chain from ``c = 0``).

    Returns
    -------
    ndarray (M, N), dtype ``numpy.result_type(a_values, b_values)``: values of the unit's output format.

    Raises
    ------
    TypeError, ValueError
        Not a block-scaled unit, shapes that do not match, scales outside the scale format, a value whose
        quotient by its scale is not an element (the message names the argument and the index).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.full((1, 32), 2.0**-120)       # elements 1.0 with the scale 2**-120
    >>> b = np.full((32, 1), 2.0**100)        # elements 1.0 with the scale 2**100
    >>> float(block_matmul(a, np.full((1, 1), 2.0**-120), b, np.full((1, 1), 2.0**100), "nv-blackwell-mxfp8")[0, 0])
    3.0517578125e-05
    """
    from ..core import as_float_input, round_to
    from ..kernels import dispatch

    u = get_matrix_unit(unit)
    if u.block_format is None:
        raise ValueError(f"unit must be block-scaled (nv-blackwell-mxfp8, -mxfp4, -nvfp4 or a MatrixUnit with a "
                         f"block_format), got {u.name or u!r}")
    backend = dispatch.resolve_backend(backend)
    arrays = {}
    for nm, x in (("a_values", a_values), ("a_scales", a_scales), ("b_values", b_values), ("b_scales", b_scales)):
        arr = as_float_input(x, nm)[0]
        if arr.ndim != 2:
            raise ValueError(f"{nm} must be a 2-D array, got shape {arr.shape}")
        arrays[nm] = arr
    A, B = arrays["a_values"], arrays["b_values"]
    M, K = A.shape
    if B.shape[0] != K:
        raise ValueError(f"block_matmul shape mismatch: a_values has shape {A.shape} and b_values {B.shape}; "
                         f"a_values' K ({K}) must equal b_values' rows ({B.shape[0]})")
    N = B.shape[1]
    blk = u.block
    nb = -(-K // blk)
    SA = np.asarray(arrays["a_scales"], dtype=np.float64)
    SB = np.asarray(arrays["b_scales"], dtype=np.float64)
    if SA.shape != (M, nb):
        raise ValueError(f"a_scales must have shape {(M, nb)} (one scale per {blk} elements of each row of a), "
                         f"got {SA.shape}")
    if SB.shape != (nb, N):
        raise ValueError(f"b_scales must have shape {(nb, N)} (one scale per {blk} elements of each column of b), "
                         f"got {SB.shape}")
    sf = u.block_format.scale
    _check_scales(SA, sf, "a_scales")
    _check_scales(SB, sf, "b_scales")
    A64, B64 = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    _check_values(A64, _expand(SA, blk, 1, K), u.a_format, "a_values")
    _check_values(B64, _expand(SB, blk, 0, K), u.b_format, "b_values")
    if c is None:
        C = np.zeros((M, N))
    else:
        c_in = as_float_input(c, "c")[0]
        try:
            c_in = np.broadcast_to(c_in, (M, N))
        except ValueError:
            raise ValueError(f"c with shape {c_in.shape} does not broadcast to the result's shape {(M, N)}") from None
        C = np.asarray(round_to(np.array(c_in), u.c_format, backend="cpu"), dtype=np.float64)  # (writable: one signature)
    out = block_unit_array(A64[None], SA[None], B64[None], SB[None], C[None], np.zeros(1, np.int64),
                          np.zeros(1, np.int64), u, backend)[0]
    return out.astype(np.result_type(A, B), copy=False)

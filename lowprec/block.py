"""Block-scaled formats: MX (OCP), NVFP4 and tile-scaled fp8, with every scale rule.

A :class:`BlockFormat` is ``(element format, scale format, block size or tile, scale rule, optional
per-tensor scale, element rounding, saturation)`` (NUMERICS.md section 6). A block of elements shares
one scale ``X``; each element is ``x / X`` rounded once to the element format, saturating at
``+-max_elem``. The scale rules, for a block of largest magnitude ``amax`` and an element format of
largest value ``max_elem`` whose top binade is ``2**emax_elem``:

=========  ===========================================================================  ============
rule       scale                                                                        clips?
=========  ===========================================================================  ============
floor      ``2**(floor(log2 amax) - emax_elem)`` (OCP MX v1.0)                           when amax's
                                                                                        significand
                                                                                        exceeds
                                                                                        max_elem's
ceil       ``2**(ceil(log2 amax) - emax_elem)``                                          never
even       ``2**(floor(log2 round(amax, m_elem bits)) - emax_elem)`` (torchao EVEN)       e4m3 only
rceil      ``2**ceil(log2(fp32(amax / max_elem)))`` (cuBLAS UE8M0 rule, torchao RCEIL)    never
amax       ``round(amax / max_elem, scale format)`` (not a power of two: NVFP4, DeepSeek)
=========  ===========================================================================  ============

Power-of-two scales are E8M0 codes ``e + 127`` with ``e`` clamped to [-127, 127] (an all-zero block
gets ``2**-127``); a block holding a NaN gets the NaN scale (code 255) and decodes to NaN. A block
holding an Inf is left undefined by the OCP specification: the format's ``on_inf`` says what happens
(``"error"``, the default: ValueError; ``"nan"``: the NaN scale, as torchao does).

NVFP4 (``tensor_scale=True``): the per-tensor fp32 scale is ``s_t = fp32(amax_t / (max_scale *
max_elem))`` with ``amax_t`` the largest finite magnitude of the tensor (``s_t = 1`` when that is 0),
the block scale ``S_b = round(amax / (max_elem * s_t), UE4M3)``, the elements ``round(fl64(x / (S_b *
s_t)), E2M1)``.

Counter stream: element ``i`` (C-order flat index of ``x``) of stochastic rounding draws counter
``offset + i`` of the seed's stream (docs/rounding.md), whatever the thread count.

Example: the block maximum 960 in MXFP8-E4M3 (microxcaling issue 4)

>>> import numpy as np, lowprec.block as lb
>>> x = np.array([960.0, 957.0] + [1.0] * 30, dtype=np.float32)
>>> lb.quantize(x, "mxfp8_e4m3")[:2].tolist()          # floor: X = 2, 960/2 = 480 saturates to 448
[896.0, 896.0]
>>> lb.quantize(x, "mxfp8_e4m3", scale_rule="rceil")[:2].tolist()   # X = 4: no clipping
[960.0, 960.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np

from .core import decode as _decode_codes
from .core import encode as _encode_values
from .formats import (E8M0, FP4_E2M1FN, FP6_E2M3FN, FP6_E3M2FN, FP8_E4M3FN, FP8_E5M2, FP32, UE4M3,
                      FixedFormat, FloatFormat, get_format)
from .kernels import block_cpu, dispatch
from .rng import resolve_seed
from .rounding import DEFAULT_RANDOM_BITS, Rounding, get_rounding

__all__ = ["BlockFormat", "BlockEncoding", "BlockStats", "get_block_format", "block_preset_names", "BLOCK_PRESETS",
           "SCALE_RULES", "quantize", "encode", "decode", "analyze", "explain", "MXINT8_ELEMENT"]

#: The scale rules, in the order of the table in the module docstring.
SCALE_RULES = ("floor", "ceil", "even", "rceil", "amax")
_POW2_RULES = ("floor", "ceil", "even", "rceil")
_ON_INF = ("error", "nan")

#: OCP MXINT8 elements: 8-bit two's complement with an implicit scale 2**-6 (codes -128 .. 127). The
#: ``mxint8`` preset is ``symmetric``: it produces -127 .. 127 only (-1.984375 .. 1.984375), as the
#: specification allows (section 5.3.4) and microxcaling does; code 0x80 (-2) still decodes to -2.
MXINT8_ELEMENT = FixedFormat(8, 6, name="mxint8_element")


_MODES = (Rounding.NEAREST_EVEN, Rounding.STOCHASTIC)


def _check_mode(mode) -> Rounding:
    mode = get_rounding(mode)
    if mode not in _MODES:
        raise ValueError(f"block formats round elements nearest_even or stochastic, got {mode.name.lower()!r}")
    return mode


def _block_tuple(block) -> tuple:
    if isinstance(block, (int, np.integer)) and not isinstance(block, bool):
        block = (int(block),)
    if not isinstance(block, tuple) or not 1 <= len(block) <= 2 or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 for b in block):
        raise ValueError(f"block must be a positive int or a pair of them (a 2-D tile such as (128, 128)), got {block!r}")
    return tuple(int(b) for b in block)


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format.

    Parameters
    ----------
    element : format or str
        The element format (fp8, fp6, fp4 or a fixed-point format such as :data:`MXINT8_ELEMENT`).
    scale : format or str
        The scale format: ``"e8m0"`` for the power-of-two rules, ``"ue4m3"`` or ``"fp32"`` for ``amax``.
    block : int or (int, int)
        Elements per block along one axis (32, 16, 128), or a 2-D tile (``(128, 128)``) of the last two axes.
    scale_rule : str
        One of :data:`SCALE_RULES` (module docstring).
    tensor_scale : bool
        NVFP4's second level: one fp32 scale per tensor, ``amax_t / (scale.max * element.max)``.
    rounding : str
        Element rounding: ``"nearest_even"`` or ``"stochastic"`` (for gradients).
    saturate : bool
        Elements beyond ``+-max_elem`` saturate (True, as the OCP and NVIDIA specifications require).
    on_inf : {"error", "nan"}
        A block holding an Inf: raise ValueError, or give it the NaN scale.
    name, source : str
        Display name and where the format is specified.
    symmetric : bool
        A signed integer element uses ``-kmax .. kmax`` only: values below ``-max_elem`` saturate there and
        the most negative code is never produced (MXINT8: OCP MX v1.0 section 5.3.4 encodes elements in two's
        complement with that code, -2, left unused for symmetry; microxcaling does the same). Only for
        signed, saturating fixed-point elements.

    Examples
    --------
    >>> BlockFormat("fp8_e4m3fn", "e8m0", 32, "rceil").name
    'fp8_e4m3fn/e8m0x32-rceil'
    """

    element: object
    scale: object
    block: object
    scale_rule: str
    tensor_scale: bool = False
    rounding: object = "nearest_even"
    saturate: bool = True
    on_inf: str = "error"
    name: str = field(default=None, compare=False)  # type: ignore[assignment]
    source: str = field(default="", compare=False)
    symmetric: bool = False

    def __post_init__(self):
        el = get_format(self.element)
        sc = get_format(self.scale)
        object.__setattr__(self, "element", el)
        object.__setattr__(self, "scale", sc)
        object.__setattr__(self, "block", _block_tuple(self.block))
        object.__setattr__(self, "rounding", _check_mode(self.rounding))
        _check_rule(self.scale_rule, sc)
        for flag in ("tensor_scale", "saturate", "symmetric"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}")
        if self.symmetric and not (isinstance(el, FixedFormat) and el.signed and el.saturate):
            raise ValueError(f"symmetric=True is for signed, saturating fixed-point elements, got {el.name}")
        if self.on_inf not in _ON_INF:
            raise ValueError(f"on_inf must be one of {_ON_INF}, got {self.on_inf!r}")
        if isinstance(el, FloatFormat) and (not el.signed or not el.has_zero):
            raise ValueError(f"element format {el.name} must be signed and have zero")
        if self.tensor_scale and self.scale_rule != "amax":
            raise ValueError("tensor_scale=True needs scale_rule='amax' (a per-tensor scale over power-of-two "
                             f"block scales changes nothing), got {self.scale_rule!r}")
        if not self.saturate and isinstance(el, FloatFormat) and el.nan == "none":
            raise ValueError(f"{el.name} has no Inf or NaN: its elements can only saturate")
        if self.name is None:
            tile = "x".join(str(b) for b in self.block)
            object.__setattr__(self, "name", f"{el.name}/{sc.name}x{tile}-{self.scale_rule}")

    @property
    def max_elem(self) -> float:
        """Largest element value."""
        return float(self.element.max)

    @property
    def emax_elem(self) -> int:
        """floor(log2(max_elem)): the exponent of the element format's top binade."""
        return _floor_log2(Fraction(self.element.max) if isinstance(self.element, FixedFormat)
                           else self.element.max_exact)

    @property
    def default_axis(self):
        """-1 for 1-D blocks, (-2, -1) for 2-D tiles."""
        return -1 if len(self.block) == 1 else (-2, -1)

    def replace(self, **changes) -> "BlockFormat":
        """A copy with some fields changed (the name is re-derived unless given)."""
        fields = dict(element=self.element, scale=self.scale, block=self.block, scale_rule=self.scale_rule,
                      tensor_scale=self.tensor_scale, rounding=self.rounding, saturate=self.saturate,
                      on_inf=self.on_inf, name=None, source=self.source, symmetric=self.symmetric)
        fields.update(changes)
        return BlockFormat(**fields)


def _floor_log2(v: Fraction) -> int:
    n = v.numerator.bit_length() - v.denominator.bit_length()
    return n if Fraction(2) ** n <= v else n - 1


def _check_rule(rule, scale_fmt) -> None:
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown scale_rule {rule!r}; expected one of {', '.join(SCALE_RULES)}")
    if rule in _POW2_RULES and scale_fmt != E8M0:
        raise ValueError(f"scale_rule {rule!r} makes power-of-two scales: the scale format must be e8m0, "
                         f"got {scale_fmt.name}")
    if rule == "amax" and scale_fmt == E8M0:
        raise ValueError("scale_rule 'amax' makes scales that are not powers of two: use scale 'ue4m3' or "
                         "'fp32', or a power-of-two rule (floor, ceil, even, rceil) with e8m0")


_OCP = "OCP Microscaling Formats (MX) v1.0, sections 5 and 6"
_MX = {name: BlockFormat(el, E8M0, 32, "floor", name=name, source=_OCP, symmetric=name == "mxint8")
       for name, el in (("mxfp8_e4m3", FP8_E4M3FN), ("mxfp8_e5m2", FP8_E5M2), ("mxfp6_e3m2", FP6_E3M2FN),
                        ("mxfp6_e2m3", FP6_E2M3FN), ("mxfp4", FP4_E2M1FN), ("mxint8", MXINT8_ELEMENT))}
BLOCK_PRESETS: dict = dict(_MX)
BLOCK_PRESETS["nvfp4"] = BlockFormat(
    FP4_E2M1FN, UE4M3, 16, "amax", tensor_scale=True, name="nvfp4",
    source="NVIDIA NVFP4: E2M1 elements in blocks of 16, UE4M3 block scale amax_b / 6 / s_t, "
           "fp32 tensor scale s_t = amax_t / (448 x 6) (cuBLAS and TensorRT documentation)")
BLOCK_PRESETS["fp8_1x128"] = BlockFormat(
    FP8_E4M3FN, FP32, 128, "amax", name="fp8_1x128",
    source="DeepSeek-V3 technical report (arXiv 2412.19437), section 3.3: activations in 1x128 tiles, "
           "fp32 scale amax / 448")
BLOCK_PRESETS["fp8_128x128"] = BlockFormat(
    FP8_E4M3FN, FP32, (128, 128), "amax", name="fp8_128x128",
    source="DeepSeek-V3 technical report (arXiv 2412.19437), section 3.3: weights in 128x128 blocks, "
           "fp32 scale amax / 448")


def block_preset_names() -> list:
    """Names of the preset block formats."""
    return list(BLOCK_PRESETS)


def get_block_format(fmt) -> BlockFormat:
    """A :class:`BlockFormat` from itself or a preset name (case-insensitive).

    Raises
    ------
    TypeError
        ``fmt`` is neither a BlockFormat nor a string.
    ValueError
        Unknown name; the message lists the presets.
    """
    if isinstance(fmt, BlockFormat):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a BlockFormat or a block preset name, got {type(fmt).__name__}")
    key = fmt.strip().lower().replace("-", "_")
    if key in BLOCK_PRESETS:
        return BLOCK_PRESETS[key]
    raise ValueError(f"unknown block format {fmt!r}; expected one of {', '.join(BLOCK_PRESETS)} (or a BlockFormat)")


# ---------------------------------------------------------------------------------------------------
# validation and layout
# ---------------------------------------------------------------------------------------------------
def _as_array(x) -> np.ndarray:
    if isinstance(x, (str, bytes)):
        raise TypeError(f"x must be a float array, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    if arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        if arr.dtype.kind == "f" and arr.dtype.itemsize in (4, 8):  # non-native byte order
            return arr.astype(arr.dtype.newbyteorder("="))
        raise TypeError(f"x must be float32 or float64, got an array of dtype {arr.dtype}")
    return arr


def _layout(shape, block, axis):
    """(P, A, Q, TA, TQ, scale shape) for blocks ``block`` along ``axis`` of an array of ``shape``."""
    nd = len(shape)
    if len(block) == 1:
        if isinstance(axis, tuple) or isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int for 1-D blocks, got {axis!r}")
        if not -nd <= axis < nd or nd == 0:
            raise ValueError(f"axis {axis} is out of range for x of shape {tuple(shape)}")
        k = axis % nd
        if k == nd - 1:  # the contiguous case: tiles 1 x B of (rows, N)
            N = shape[-1]
            return math.prod(shape[:-1]), 1, N, 1, block[0], tuple(shape[:-1]) + (-(-N // block[0]),)
        A = shape[k]
        P = math.prod(shape[:k])
        Q = math.prod(shape[k + 1:])
        nA = -(-A // block[0])
        return P, A, Q, block[0], 1, tuple(shape[:k]) + (nA,) + tuple(shape[k + 1:])
    if nd < 2:
        raise ValueError(f"a 2-D tile needs x with at least 2 dimensions, got shape {tuple(shape)}")
    if not isinstance(axis, tuple) or tuple(a % nd for a in axis) != (nd - 2, nd - 1):
        raise ValueError(f"2-D tiles run along the last two axes: axis must be (-2, -1), got {axis!r} "
                         "(move the axes there with np.moveaxis)")
    M, N = shape[-2], shape[-1]
    return (math.prod(shape[:-2]), M, N, block[0], block[1],
            tuple(shape[:-2]) + (-(-M // block[0]), -(-N // block[1])))


def _element_params(bf: BlockFormat):
    el = bf.element
    if isinstance(el, FixedFormat):
        return el._kernel_params(), el.bits - 2
    return el.replace(saturate=bool(bf.saturate), name=el.name)._kernel_params(), el.man_bits


def _scale_params(bf: BlockFormat):
    if bf.scale_rule != "amax":
        return FP32._kernel_params()  # unused by the power-of-two rules
    return bf.scale.replace(saturate=True, name=bf.scale.name)._kernel_params()


class _Derived(NamedTuple):
    """What the kernels take of a :class:`BlockFormat` (:func:`_derived`)."""

    pe: tuple  # element format's kernel parameters (saturating as the block format says)
    m_elem: int
    ps: tuple  # scale format's kernel parameters
    rule: int  # block_cpu.RULES code
    emax_elem: int
    max_elem: float
    lo: float  # the smallest element value produced (symmetric integers), else -inf
    tensor_den: float  # scale.max * max_elem: NVFP4's per-tensor scale is amax_t / tensor_den
    clip_edge: tuple  # _clip_edge(bf)


@lru_cache(maxsize=256)
def _derived(bf: BlockFormat) -> _Derived:
    """The kernel parameters of a block format, computed once per (hashable, frozen) format: deriving them
    builds formats and Fractions, which cost more than quantizing a small array."""
    pe, m_elem = _element_params(bf)
    max_elem = bf.max_elem
    return _Derived(pe, m_elem, _scale_params(bf), block_cpu.RULES[bf.scale_rule], bf.emax_elem, max_elem,
                    -max_elem if bf.symmetric else -math.inf, float(bf.scale.max) * max_elem, _clip_edge(bf))


class BlockEncoding(NamedTuple):
    """What :func:`encode` returns.

    elements : uint8 (or uint16/uint32 for wider element formats) element bit patterns, of ``x``'s
        shape; fp4 and fp6 packed along the last axis (``packed=True``): fp4 two per byte, element 2j in
        the low nibble; fp6 four per three bytes, element 4j + t at bits 6t..6t+5 of a little-endian 24-bit
        word (the OCP layout: a block's elements as one bit string, element i at bits k*i..k*i+k-1).
    scales : E8M0 codes (uint8), UE4M3 patterns (uint8) or fp32 values (float32), one per block.
    tensor_scale : the fp32 per-tensor scale (NVFP4), or None.
    """

    elements: np.ndarray
    scales: np.ndarray
    tensor_scale: Optional[np.float32]


def _prepare(x, fmt, axis, scale_rule, rounding):
    bf = get_block_format(fmt)
    if scale_rule is not None and scale_rule != bf.scale_rule:
        _check_rule(scale_rule, bf.scale)
        if bf.tensor_scale and scale_rule != "amax":
            raise ValueError(f"{bf.name} has a per-tensor scale: only scale_rule 'amax' applies, got {scale_rule!r}")
        bf = bf.replace(scale_rule=scale_rule)
    mode = _check_mode(bf.rounding if rounding is None else rounding)
    arr = _as_array(x)
    axis = bf.default_axis if axis is None else axis
    if isinstance(axis, list):
        axis = tuple(axis)
    lay = _layout(arr.shape, bf.block, axis)
    return bf, mode, arr, lay


def _tensor_scale(bf, flat_int, CW, CM) -> float:
    """NVFP4's fp32 per-tensor scale (1.0 when the tensor has no finite nonzero value)."""
    bits = block_cpu.finite_amax(flat_int, CW, CM)
    amax = float(np.array([bits], dtype=np.int32 if CW == 32 else np.int64).view(
        np.float32 if CW == 32 else np.float64)[0])
    den = _derived(bf).tensor_den
    with np.errstate(over="ignore"):
        s_t = np.float32(amax / den)
    if np.isfinite(amax) and not np.isfinite(s_t):
        raise ValueError(f"x's largest finite magnitude {amax:.6g} needs a {bf.name} tensor scale amax / {den:g} "
                         f"beyond fp32's range (amax at most {float(np.finfo(np.float32).max) * den:.6g}); "
                         "scale x down first")
    return float(s_t) if s_t > 0 and np.isfinite(s_t) else 1.0


def _element_dtype(bits: int):
    """The unsigned dtype of an element format's patterns (as lowprec.encode's)."""
    return np.dtype(np.uint8 if bits <= 8 else (np.uint16 if bits <= 16 else np.uint32))


def _run(op, bf, mode, arr, lay, seed, stream, offset, random_bits, backend="auto", dest=None):
    P, A, Q, TA, TQ, scale_shape = lay
    flat = np.ascontiguousarray(arr).reshape(-1)
    if arr.dtype == np.float32:
        CW, CM, CB, ity = 32, 23, 127, np.int32
    else:
        CW, CM, CB, ity = 64, 52, 1023, np.int64
    xi = flat.view(ity)
    n = flat.size
    nblocks = math.prod(scale_shape)
    d = _derived(bf)
    s_t = _tensor_scale(bf, xi, CW, CM) if bf.tensor_scale else 1.0
    stochastic = mode is Rounding.STOCHASTIC
    k0, k1, off = resolve_seed(seed, n, stream, offset) if stochastic else (0, 0, 0)
    # encode writes the element patterns in their own unsigned dtype (uint8 for 8-bit and narrower elements)
    out = (np.empty(n, dtype=ity if op == block_cpu.QUANTIZE else _element_dtype(bf.element.bits)) if dest is None
           else dest.view(ity))
    scale_code = np.empty(nblocks, dtype=np.int64)
    scale_val = np.empty(nblocks, dtype=np.float64)
    _, n_inf = dispatch.block_array(backend, op, xi, out, scale_code, scale_val, P, A, Q, TA, TQ, CW, CM, CB, d.pe,
                                    d.ps, d.rule, d.emax_elem, d.m_elem, d.max_elem, s_t, d.lo,
                                    int(mode), np.uint32(k0), np.uint32(k1), np.int64(off), int(random_bits))
    if n_inf and bf.on_inf == "error":
        raise ValueError(f"x holds Inf in {n_inf} block(s) without NaN: the OCP specification leaves their scale "
                         f"undefined; choose a policy with {bf.name}'s on_inf ('nan' gives them the NaN scale)")
    return out, scale_code.reshape(scale_shape), scale_val.reshape(scale_shape), s_t


@lru_cache(maxsize=1024)
def _layout_of(shape: tuple, block: tuple, axis) -> tuple:
    return _layout(shape, block, axis)


def _run_internal(op, arr: np.ndarray, bf: BlockFormat, axis, mode: Rounding, seed):
    """:func:`_run` for lowprec's own callers (:mod:`lowprec.amp.blockscaled`), without the argument checks of the
    public entry points: ``arr`` a float32 or float64 ndarray, ``bf`` a BlockFormat, ``axis`` valid for both (an
    int, or (-2, -1) for tiles), ``mode`` a block rounding. Same results as :func:`quantize` / :func:`encode` with
    these arguments (default stream, offset and random bits)."""
    return _run(op, bf, mode, arr, _layout_of(arr.shape, bf.block, axis), seed, 0, 0, DEFAULT_RANDOM_BITS)


def _quantize_internal(arr: np.ndarray, bf: BlockFormat, axis, mode: Rounding, seed=None) -> np.ndarray:
    """``quantize(arr, bf, axis=axis, rounding=mode, seed=seed)`` for lowprec's own operands (:func:`_run_internal`)."""
    res = _run_internal(block_cpu.QUANTIZE, arr, bf, axis, mode, seed)[0]
    return res.view(arr.dtype).reshape(arr.shape)


@lru_cache(maxsize=64)
def _value_table(fmt) -> np.ndarray:
    """The float32 value of every bit pattern of a format of at most 8 bits (:func:`lowprec.decode`), read-only."""
    t = np.asarray(_decode_codes(np.arange(1 << fmt.bits, dtype=np.int64), fmt), dtype=np.float32)
    t.flags.writeable = False
    return t


def _operands_internal(arr: np.ndarray, bf: BlockFormat, axis, mode: Rounding, seed=None) -> tuple:
    """What a block-scaled matrix unit takes of ``arr`` (:func:`_run_internal`'s arguments): ``(element values,
    scale values, tensor scale)`` -- float32 element values of ``arr``'s shape (``decode`` of :func:`encode`'s
    patterns; 0 in a block with the NaN scale), float32 block scales of the scales' shape (E8M0 codes as powers
    of two, NaN for code 255; UE4M3 and fp32 scales as values; the tensor scale not applied) and the fp32
    tensor scale or None. One pass of the encoding kernel; elements of at most 8 bits decode by table."""
    codes, _, scale_val, s_t = _run_internal(block_cpu.ENCODE, arr, bf, axis, mode, seed)
    if bf.element.bits <= 8:
        el = _value_table(bf.element)[codes].reshape(arr.shape)
    else:
        el = np.asarray(_decode_codes(codes, bf.element), dtype=np.float32).reshape(arr.shape)
    return el, scale_val.astype(np.float32), (np.float32(s_t) if bf.tensor_scale else None)


def _check_rbits(random_bits) -> int:
    if isinstance(random_bits, bool) or not isinstance(random_bits, (int, np.integer)) or not 1 <= random_bits <= 64:
        raise ValueError(f"random_bits must be an int in 1..64, got {random_bits!r}")
    return int(random_bits)


def quantize(x, fmt, *, axis=None, scale_rule=None, rounding=None, seed=None, stream: int = 0, offset: int = 0,
             random_bits: int = DEFAULT_RANDOM_BITS, backend: str = "auto", out=None) -> np.ndarray:
    """Block-quantize ``x`` (fake-quant): every element replaced by its block's value ``q * X``.

    Parameters
    ----------
    x : array_like
        float32 or float64 values (Python numbers and integer arrays are taken as float64).
    fmt : BlockFormat or str
        A block format or preset name (:func:`block_preset_names`).
    axis : int or (int, int), optional
        The axis the blocks run along (default -1), or (-2, -1) for 2-D tiles. An axis whose length
        the block size does not divide ends with one shorter block (as if padded with zeros).
    scale_rule : str, optional
        Override the format's rule (:data:`SCALE_RULES`); None keeps it (``floor`` for the MX presets).
    rounding : str or Rounding, optional
        Element rounding; None keeps the format's (nearest-even for every preset).
    seed, stream, offset, random_bits
        The counter stream of stochastic rounding, as :func:`lowprec.round_to` takes it.
    backend : {"auto", "cpu", "cuda"}
        As :func:`lowprec.round_to` (the same bits on both).
    out : ndarray, optional
        Where to write the result (then returned): a writable, C-contiguous array of ``x``'s shape and dtype
        (``x`` itself quantizes in place). Saves allocating, and first touching, a new array for large inputs.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``. float64 results are exact block values; a float32 result is the
        block value rounded to float32 when it is not one (``amax`` scales: ``q * S_b`` can need more
        than 24 bits; and a power-of-two value above float32's range is Inf).

    Raises
    ------
    TypeError, ValueError
        Bad ``x``, ``fmt``, ``axis``, rule or rounding; a block holding Inf under ``on_inf="error"``.

    Examples
    --------
    >>> import numpy as np, lowprec.block as lb
    >>> lb.quantize(np.array([0.3, 1.0, -2.5, 5.0]), "mxfp4").tolist()  # X = 2**(2 - 2): ties to even
    [0.5, 1.0, -2.0, 4.0]
    """
    bf, mode, arr, lay = _prepare(x, fmt, axis, scale_rule, rounding)
    rbits = _check_rbits(random_bits)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy ndarray, got {type(out).__name__}")
        if out.dtype != arr.dtype or out.shape != arr.shape or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable, C-contiguous {arr.dtype} array of shape {arr.shape}, got "
                             f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ', not C-contiguous'}"
                             f"{'' if out.flags.writeable else ', read-only'}")
        if np.may_share_memory(out, arr) and not (arr.flags.c_contiguous and arr.ctypes.data == out.ctypes.data):
            arr = arr.copy()  # a partial overlap: read x from a copy (x itself is read block by block, then written)
    res, _, _, _ = _run(block_cpu.QUANTIZE, bf, mode, arr, lay, seed, stream, offset, rbits, backend,
                        None if out is None else out.reshape(-1))
    return out if out is not None else res.view(arr.dtype).reshape(arr.shape)


def _ml_dtype(fmt, what: str):
    """The ml_dtypes type holding ``fmt``'s bytes (E8M0: float8_e8m0fnu; UE4M3: float8_e4m3fn, whose byte of the
    same value it is; fp8/fp6/fp4: float8_e4m3fn ... float4_e2m1fn), numpy's int8 for 8-bit two's complement
    elements, None for fp32 scales."""
    if fmt == FP32:
        return None
    if isinstance(fmt, FixedFormat):
        if fmt.bits == 8 and fmt.signed:
            return np.dtype(np.int8)
        raise ValueError(f"{what} format {fmt.name} has no ml_dtypes or numpy byte type")
    name = {E8M0.name: "float8_e8m0fnu", UE4M3.name: "float8_e4m3fn"}.get(fmt.name, "float" + fmt.name[2:])
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
        raise ImportError("as_ml_dtypes=True needs the ml_dtypes package") from None
    dt = getattr(ml_dtypes, name, None)
    if dt is None:
        raise ValueError(f"the installed ml_dtypes {ml_dtypes.__version__} has no {name} (for {what} format "
                         f"{fmt.name}); upgrade it, or use the bit patterns (as_ml_dtypes=False)")
    return np.dtype(dt)


def _from_ml_dtypes(a: np.ndarray, fmt, what: str):
    """Bit patterns (uint8) of an array of ``fmt``'s ml_dtypes (or int8) type; other arrays unchanged."""
    if (a.dtype.type.__module__.split(".")[0] != "ml_dtypes"
            and not (a.dtype == np.int8 and isinstance(fmt, FixedFormat))):
        return a, False
    dt = _ml_dtype(fmt, what)
    if a.dtype != dt:
        raise TypeError(f"{what} of dtype {a.dtype} do not hold {fmt.name}; expected {dt} (or bit patterns)")
    codes = a.view(np.uint8)
    if fmt == UE4M3 and codes.size and codes.max() >= 0x80:
        raise ValueError("UE4M3 scales given as float8_e4m3fn must be non-negative (the top bit is not stored)")
    return codes, True


def encode(x, fmt, *, axis=None, scale_rule=None, rounding=None, seed=None, stream: int = 0, offset: int = 0,
           random_bits: int = DEFAULT_RANDOM_BITS, packed: bool = True, backend: str = "auto",
           as_ml_dtypes: bool = False) -> BlockEncoding:
    """Block-quantize ``x`` and return the element bit patterns, the scales and the tensor scale.

    Arguments as :func:`quantize`; ``packed=False`` returns fp4/fp6 codes one per byte.
    Elements of a block with a NaN scale are encoded as 0 (the scale alone makes them NaN).
    ``as_ml_dtypes=True`` returns the same bytes as ml_dtypes arrays, one element per byte (``packed`` is
    ignored): elements as ``float8_e4m3fn``, ``float8_e5m2``, ``float6_e3m2fn``, ``float6_e2m3fn`` or
    ``float4_e2m1fn`` (MXINT8: numpy int8), E8M0 scales as ``float8_e8m0fnu``, UE4M3 scales as
    ``float8_e4m3fn`` (fp32 scales stay float32); :func:`decode` takes them back. ValueError when the
    installed ml_dtypes lacks the type.

    Examples
    --------
    >>> import numpy as np, lowprec.block as lb
    >>> enc = lb.encode(np.array([960.0, 957.0] + [1.0] * 30, dtype=np.float32), "mxfp8_e4m3")
    >>> int(enc.scales[0]), hex(int(enc.elements[0])), hex(int(enc.elements[2]))
    (128, '0x7e', '0x30')
    """
    bf, mode, arr, lay = _prepare(x, fmt, axis, scale_rule, rounding)
    rbits = _check_rbits(random_bits)
    if as_ml_dtypes:
        el_dt, sc_dt = _ml_dtype(bf.element, "element"), _ml_dtype(bf.scale, "scale")
    codes, scale_code, scale_val, s_t = _run(block_cpu.ENCODE, bf, mode, arr, lay, seed, stream, offset, rbits,
                                             backend)
    bits = bf.element.bits
    elements = codes.reshape(arr.shape)
    if packed and bits in (4, 6) and not as_ml_dtypes:
        elements = _pack(elements, bits)
    if bf.scale == E8M0:
        scales = scale_code.astype(np.uint8)
    elif bf.scale == FP32:
        scales = scale_val.astype(np.float32)
    else:
        nan = np.isnan(scale_val)
        scales = np.asarray(_encode_values(np.where(nan, 0.0, scale_val), bf.scale)).astype(np.uint8).reshape(
            scale_val.shape)
        scales[nan] = (1 << bf.scale.bits) - 1
    if as_ml_dtypes:
        elements = elements.view(el_dt)
        scales = scales if sc_dt is None else scales.view(sc_dt)
    return BlockEncoding(elements, scales, np.float32(s_t) if bf.tensor_scale else None)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    group = 2 if bits == 4 else 4
    if codes.ndim == 0 or codes.shape[-1] % group:
        raise ValueError(f"packing {bits}-bit elements needs the last axis to be a multiple of {group}, "
                         f"got shape {codes.shape}; pass packed=False")
    if bits == 4:
        flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
        out = np.empty(flat.size // 2, np.uint8)
        block_cpu.pack4(flat, out)
        return out.reshape(codes.shape[:-1] + (-1,))
    c = codes.reshape(codes.shape[:-1] + (-1, group)).astype(np.uint32)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = np.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], axis=-1).astype(np.uint8)
    return out.reshape(codes.shape[:-1] + (-1,))


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    p = packed.astype(np.uint32)
    if bits == 4:
        out = np.stack([p & 0xF, p >> 4], axis=-1)
        return out.reshape(packed.shape[:-1] + (-1,)).astype(np.uint8)
    if packed.shape[-1] % 3:
        raise ValueError(f"packed fp6 elements come in groups of 3 bytes; the last axis has {packed.shape[-1]}")
    b = p.reshape(packed.shape[:-1] + (-1, 3))
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    out = np.stack([(word >> (6 * t)) & 0x3F for t in range(4)], axis=-1)
    return out.reshape(packed.shape[:-1] + (-1,)).astype(np.uint8)


def decode(elements, scales, fmt, *, axis=None, tensor_scale=None, packed: bool = True,
           dtype=np.float64, backend: str = "auto") -> np.ndarray:
    """The block values ``q * X`` of encoded elements and scales (what :func:`encode` returned).

    Parameters
    ----------
    elements, scales : ndarray
        Element bit patterns (fp4/fp6 packed along the last axis unless ``packed=False``) and the
        scales (E8M0 codes, UE4M3 patterns or fp32 values); or the ml_dtypes arrays of
        ``encode(..., as_ml_dtypes=True)`` (one element per byte).
    fmt : BlockFormat or str
    axis : as :func:`quantize`
    tensor_scale : float, optional
        The per-tensor scale of a two-level format (NVFP4); required there.
    dtype : float64 (default, exact) or float32
    backend : {"auto", "cpu", "cuda"}
        Where the element patterns are decoded (:func:`lowprec.decode`); the scales multiply in float64 (exact).

    Examples
    --------
    >>> import numpy as np, lowprec.block as lb
    >>> x = np.array([960.0, 957.0] + [1.0] * 30, dtype=np.float32)
    >>> enc = lb.encode(x, "mxfp8_e4m3")
    >>> lb.decode(enc.elements, enc.scales, "mxfp8_e4m3")[:3].tolist()
    [896.0, 896.0, 1.0]
    """
    bf = get_block_format(fmt)
    el, from_ml = _from_ml_dtypes(np.asarray(elements), bf.element, "elements")
    if el.dtype.kind not in "ui":
        raise TypeError(f"elements must be an integer array of bit patterns, got dtype {el.dtype}")
    if packed and bf.element.bits in (4, 6) and not from_ml:
        el = _unpack(el, bf.element.bits)
    values = _decode_codes(el, bf.element, backend=backend)
    axis = bf.default_axis if axis is None else (tuple(axis) if isinstance(axis, list) else axis)
    P, A, Q, TA, TQ, scale_shape = _layout(values.shape, bf.block, axis)
    sc, _ = _from_ml_dtypes(np.asarray(scales), bf.scale, "scales")
    if sc.shape != scale_shape:
        raise ValueError(f"scales must have shape {scale_shape} for elements of shape {values.shape}, got {sc.shape}")
    if bf.scale == E8M0:
        if sc.dtype.kind not in "ui":
            raise TypeError(f"E8M0 scales must be integer codes, got dtype {sc.dtype}")
        sv = np.where(sc == 255, np.nan, np.ldexp(1.0, sc.astype(np.int64) - 127))
    elif bf.scale == FP32:
        sv = sc.astype(np.float64)
    else:
        sv = _decode_codes(sc, bf.scale)
    if bf.tensor_scale:
        if tensor_scale is None:
            raise ValueError(f"{bf.name} has a per-tensor scale: pass tensor_scale= (encode returns it)")
        sv = sv * float(np.float32(tensor_scale))
    s3 = sv.reshape(P, -(-A // TA), -(-Q // TQ))
    full = np.repeat(np.repeat(s3, TA, axis=1)[:, :A], TQ, axis=2)[:, :, :Q]
    out = values.reshape(P, A, Q) * full
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return out.reshape(values.shape).astype(dtype)


@dataclass(frozen=True)
class BlockStats:
    """What block quantization did to each block (:func:`analyze`); arrays of the scales' shape.

    Attributes
    ----------
    amax : float64 block maxima (NaN for a block holding NaN)
    scale : the effective scale ``X`` of each block (``S_b * s_t`` for two-level formats), float64
    clipped : elements that clipped: ``|x| / X`` beyond ``max_elem + ulp(max_elem) / 2`` (or at that tie when
        it rounds up), where saturation, not rounding, decides the element
    max_clipped : whether the block maximum itself clipped
    underflow : nonzero elements that became zero
    max_abs_error, sum_sq_error, sum_sq : per-block max |q - x|, sum (q - x)**2 and sum x**2
    """

    amax: np.ndarray
    scale: np.ndarray
    clipped: np.ndarray
    max_clipped: np.ndarray
    underflow: np.ndarray
    max_abs_error: np.ndarray
    sum_sq_error: np.ndarray
    sum_sq: np.ndarray
    n_elements: int

    @property
    def blocks(self) -> int:
        return int(self.amax.size)

    @property
    def fraction_blocks_max_clipped(self) -> float:
        """Fraction of blocks whose maximum clipped (the OCP floor rule's silent failure)."""
        return float(self.max_clipped.mean()) if self.blocks else 0.0

    @property
    def fraction_clipped(self) -> float:
        """Fraction of all elements that clipped."""
        return float(self.clipped.sum() / self.n_elements) if self.n_elements else 0.0

    @property
    def fraction_underflow(self) -> float:
        """Fraction of all elements that were nonzero and became zero."""
        return float(self.underflow.sum() / self.n_elements) if self.n_elements else 0.0

    @property
    def relative_rms_error(self) -> float:
        """sqrt(sum (q - x)**2 / sum x**2) over the finite blocks."""
        ok = np.isfinite(self.sum_sq_error)
        den = self.sum_sq[ok].sum()
        return float(np.sqrt(self.sum_sq_error[ok].sum() / den)) if den > 0 else 0.0


def _clip_edge(bf: BlockFormat) -> tuple:
    """(max_elem + ulp(max_elem) / 2, whether that tie itself rounds beyond max_elem): an element clips when
    x / X lies beyond it, where saturation and not rounding decides the result."""
    el = bf.element
    if isinstance(el, FixedFormat):
        return float(Fraction(2 * el.kmax + 1, 2) * Fraction(2) ** -el.frac_bits), el.kmax % 2 == 1
    half_ulp = Fraction(2) ** (el.emax - el.man_bits - 1)
    return float(el.max_exact + half_ulp), el.tmax % 2 == 1


def analyze(x, fmt, *, axis=None, scale_rule=None, rounding=None, seed=None) -> BlockStats:
    """Quantize ``x`` and report per block: amax, scale, clipped and underflowed elements, errors.

    Arguments as :func:`quantize`. The errors are computed in float64 against the float64 block values
    (``x`` taken exactly), so a float32 ``x`` is analysed as its float64 copy.

    Examples
    --------
    >>> import numpy as np, lowprec.block as lb
    >>> x = np.array([960.0, 957.0] + [1.0] * 30)
    >>> st = lb.analyze(x, "mxfp8_e4m3")
    >>> int(st.clipped[0]), bool(st.max_clipped[0]), lb.analyze(x, "mxfp8_e4m3", scale_rule="rceil").fraction_blocks_max_clipped
    (2, True, 0.0)
    """
    bf, mode, arr, lay = _prepare(x, fmt, axis, scale_rule, rounding)
    arr = arr.astype(np.float64)
    P, A, Q, TA, TQ, scale_shape = lay
    q, _, scale_val, s_t = _run(block_cpu.QUANTIZE, bf, mode, arr, lay, seed, 0, 0, DEFAULT_RANDOM_BITS)
    q = q.view(np.float64).reshape(P, A, Q)
    X = scale_val.reshape(P, -(-A // TA), -(-Q // TQ)) * s_t
    nA, nQ = X.shape[1], X.shape[2]
    pad_a, pad_q = nA * TA - A, nQ * TQ - Q
    xv = np.pad(arr.reshape(P, A, Q), ((0, 0), (0, pad_a), (0, pad_q)))
    qv = np.pad(q, ((0, 0), (0, pad_a), (0, pad_q)))
    xb = xv.reshape(P, nA, TA, nQ, TQ)
    qb = qv.reshape(P, nA, TA, nQ, TQ)
    edge, tie_clips = _derived(bf).clip_edge
    lim = (edge * X)[:, :, None, :, None]
    with np.errstate(invalid="ignore", over="ignore"):
        ax = np.abs(xb)
        amax = ax.max(axis=(2, 4))
        over = (ax >= lim) if tie_clips else (ax > lim)
        clipped = over.sum(axis=(2, 4))
        underflow = ((xb != 0) & (qb == 0)).sum(axis=(2, 4))
        err = qb - xb
        max_abs = np.abs(err).max(axis=(2, 4))
        sse = (err * err).sum(axis=(2, 4))
        ss = (xb * xb).sum(axis=(2, 4))
    shape = scale_shape
    max_clipped = (amax >= edge * X) if tie_clips else (amax > edge * X)
    return BlockStats(amax.reshape(shape), X.reshape(shape), clipped.reshape(shape), max_clipped.reshape(shape), underflow.reshape(shape), max_abs.reshape(shape),
                      sse.reshape(shape), ss.reshape(shape), int(arr.size))


def explain(x, fmt, *, rules=None, axis=None) -> str:
    """A text view of block quantization of a small array, one table per scale rule.

    For each rule: each block's amax and scale, then every element's value, ``x / X``, element code,
    block value, error, and whether it clipped (as :class:`BlockStats` counts it). ``rules`` defaults to the four
    power-of-two rules for E8M0 formats, to the format's own rule otherwise.

    Examples
    --------
    >>> import lowprec.block as lb
    >>> print(lb.explain([960.0, 957.0, 1.0], "mxfp8_e4m3", rules=["floor"]).splitlines()[1])
    block 0: amax 960, scale code 128 = 2^1 (X = 2), 2 clipped (the maximum clipped)
    """
    bf = get_block_format(fmt)
    arr = _as_array(x)
    if arr.size > 4096:
        raise ValueError(f"explain is for small arrays (at most 4096 values), got {arr.size}")
    if rules is None:
        rules = list(_POW2_RULES) if bf.scale == E8M0 else [bf.scale_rule]
    lines = []
    for rule in rules:
        enc = encode(arr, bf, axis=axis, scale_rule=rule, packed=False)
        q = quantize(arr, bf, axis=axis, scale_rule=rule)
        st = analyze(arr, bf, axis=axis, scale_rule=rule)
        lines.append(f"{bf.name}, scale rule {rule}" + (f", tensor scale {float(enc.tensor_scale)!r}"
                                                         if enc.tensor_scale is not None else ""))
        bf_r = bf if rule == bf.scale_rule else bf.replace(scale_rule=rule)
        P, A, Q, TA, TQ, _ = _layout(arr.shape, bf_r.block, bf_r.default_axis if axis is None else axis)
        flat_x, flat_q, codes = arr.reshape(P, A, Q), q.reshape(P, A, Q), enc.elements.reshape(P, A, Q)
        scales = enc.scales.reshape(-1)
        for b, X in enumerate(st.scale.reshape(-1)):
            nA, nQ = -(-A // TA), -(-Q // TQ)
            p, rest = divmod(b, nA * nQ)
            ba, bq = divmod(rest, nQ)
            amax = st.amax.reshape(-1)[b]
            if bf.scale == E8M0:
                code = int(scales[b])
                sdesc = "NaN" if code == 255 else f"2^{code - 127} (X = {X:g})"
                sdesc = f"scale code {code} = {sdesc}"
            else:
                sdesc = f"scale {float(scales[b])!r} (X = {X!r})"
            ncl = int(st.clipped.reshape(-1)[b])
            lines.append(f"block {b}: amax {amax:g}, {sdesc}, {ncl} clipped"
                         + (" (the maximum clipped)" if st.max_clipped.reshape(-1)[b] else ""))
            lines.append("  index | x | x / X | code | value | error | clipped")
            for a in range(ba * TA, min(ba * TA + TA, A)):
                for qq in range(bq * TQ, min(bq * TQ + TQ, Q)):
                    xv, qv = float(flat_x[p, a, qq]), float(flat_q[p, a, qq])
                    idx = np.unravel_index((p * A + a) * Q + qq, arr.shape) if arr.ndim else ()
                    edge, tie_clips = _clip_edge(bf)
                    clip = abs(xv) >= edge * X if tie_clips else abs(xv) > edge * X
                    lines.append(f"  {tuple(int(i) for i in idx)} | {xv:g} | {xv / X:g} | "
                                 f"0x{int(codes[p, a, qq]):02X} | {qv:g} | {qv - xv:+g} | {'yes' if clip else ''}")
        lines.append("")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """``lowprec explain-block VALUES --format mxfp8_e4m3 [--rule floor ...]``."""
    p = sub.add_parser("explain-block", help="show how a block format quantizes a few values, rule by rule",
                       description="Show amax, the scale each rule picks, and every element's code, value, "
                                   "error and clipping.")
    p.add_argument("values", nargs="+", type=float, help="the values (one axis, blocks along it)")
    p.add_argument("--format", default="mxfp8_e4m3", help=f"block format ({', '.join(BLOCK_PRESETS)})")
    p.add_argument("--rule", action="append", choices=SCALE_RULES, help="scale rule (repeatable; default: all)")
    p.set_defaults(func=lambda args: print(explain(np.array(args.values, dtype=np.float32), args.format,
                                                   rules=args.rule)) or 0)

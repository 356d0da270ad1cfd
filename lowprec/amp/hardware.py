"""The matrix unit that runs a policy's matmuls: ``--hardware`` resolution and the scaled products on it.

``lowprec train --precision P --hardware H`` (``Precision(P, hardware=H)``, ``Policy(hardware=H)``)
runs the policy's matmuls on a matrix unit of :mod:`lowprec.matrix_units` instead of the ideal
accumulation the policy names. ``H`` is ``"ideal"`` (the default: the policy's own accumulation),
a hardware family (:data:`FAMILIES`: ``nv-volta`` .. ``nv-blackwell``), which resolves to the preset
that matches the policy's operand formats, or a full preset name. :func:`resolve_hardware` gives
one unit per product (forward ``X @ W``, dgrad ``dY @ W.T``, wgrad ``dY.T @ X``):

======================================  ====================================================
policy                                  on family F
======================================  ====================================================
fp16 / bf16 / tf32 operands             ``F-fp16`` / ``F-bf16`` / ``F-tf32``
fp8 operands (fp8-mixed, fp8-current,   ``F-fp8`` with each product's operand formats: e4m3 x
fp8-delayed)                            e4m3 forward, e5m2 x e4m3 for both gradient products
fp8-deepseek                            ``F-fp8``, the tiles' scales applied at a promotion to
                                        fp32 every 128 elements of K (``nv-hopper`` ->
                                        ``nv-hopper-fp8-promote128``)
mxfp8 / mxfp4 / nvfp4                   ``nv-blackwell-mxfp8`` / ``-mxfp4`` / ``-nvfp4`` (the
                                        last layer of the fp4 recipes: ``F-bf16``)
======================================  ====================================================

A family without the unit a policy needs (fp8 on ``nv-ampere``, block scales before Blackwell,
fp32 operands anywhere) is a one-line ValueError.

Per-tensor scaled fp8 on a unit (``fp8-current``, ``fp8-delayed``): the unit multiplies the scaled fp8
values ``q = round(sat(fl32(x * s)))`` themselves, and the output is scaled back in fp32::

    Y = fl32(P * fl32(d_a * d_b)),   P = the unit's result for q_a @ q_b,   d = fl32(1 / s)

(``d`` is Transformer Engine's ``scale_inv``; the product of the two inverse scales is one fp32
rounding, the scaling of the output a second one.) ``fp8-rowwise`` scales run along the contraction
axis of the gradient products, so they cannot be applied to the output: a ValueError.

Tile-scaled fp8 (``fp8-deepseek``), as DeepSeek-V3 section 3.3.2 describes it: the unit computes each
128-long chunk ``c`` of K from the fp8 elements (a chain of its fused steps), and the chunk is added
to an fp32 accumulator on the CUDA cores with the two tiles' scales::

    acc = fma(fl32(S_a[i, c] * S_b[c, j]), P_c[i, j], acc)     (one rounding, nearest-even; acc starts at +0)

(:func:`promoted_block_matmul`; with all scales 1 this is exactly ``nv-hopper-fp8-promote128``.)

Block-scaled formats on Blackwell: the operands as the policy quantized them (the values ``q * S_b``
and per-(row, K-block) scale values ``S_b``; a 16x16 weight tile's scale repeated for each of its 16
columns) go to the block-scaled unit as :func:`lowprec.matrix_units.block_matmul` takes them, which folds the
scales into the exponents (its kernel entry ``block_unit_array`` is called directly: the operand checks of
``block_matmul``, each value over its scale an element of the unit's format, hold by construction here).
NVFP4's per-tensor fp32 scales are not part of the instruction: the result ``D`` is scaled as the GEMM
epilogue does, ``Y = fl32(D * fl32(s_a * s_b))`` (:func:`scaled_output`). So on hardware an nvfp4
operand is ``q * S_b`` with the tensor scale applied to the output, where the ideal route multiplies
the float32 values ``fl32(q * S_b * s_t)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..formats import FP8_E4M3FN, FP8_E5M2, FP32, get_format

__all__ = ["FAMILIES", "Hardware", "resolve_hardware", "split_compare_entry", "promoted_block_matmul",
           "scaled_output", "run_product", "TensorScaledUnitMatmul"]

_F32 = np.dtype(np.float32)
_PRODUCTS = ("forward", "dgrad", "wgrad")
_IDEAL = ("ideal", "none", "")


def _presets() -> dict:
    from .. import matrix_units

    return matrix_units.PRESETS


def families() -> list:
    """The hardware families: the preset names without their operand suffix (``nv-hopper`` ...)."""
    out = []
    for name in _presets():
        fam = "-".join(name.split("-")[:2])
        if fam not in out:
            out.append(fam)
    return out


#: The hardware families ``--hardware`` accepts besides the ideal accumulation and full preset names.
FAMILIES = ("nv-volta", "nv-turing", "nv-ampere", "nv-ada", "nv-hopper", "nv-blackwell")


@dataclass(frozen=True)
class Hardware:
    """A resolved ``--hardware``: the unit of each product of a policy.

    Attributes
    ----------
    spec : str
        What was asked (a family or a preset name).
    route : {"plain", "tensor", "deepseek", "block"}
        How the policy's operands reach the unit (module docstring).
    units : dict
        ``{"forward"|"dgrad"|"wgrad": MatrixUnit}``.
    last_units : dict or None
        The units of the last layer's products where the policy keeps it in another format.
    name : str
        The preset the policy runs on (for run records and tables).
    """

    spec: str
    route: str
    units: dict
    last_units: Optional[dict] = None
    name: str = ""
    block_unit: Optional[str] = field(default=None)

    def describe(self) -> str:
        parts = []
        for p in _PRODUCTS:
            u = self.units[p]
            parts.append(f"{p} {u.a_format.name} x {u.b_format.name}")
        return f"{self.name} ({', '.join(parts)})"


def _fp8(f) -> bool:
    return f == FP8_E4M3FN or f == FP8_E5M2


def _kind(a, b, policy_name: str) -> str:
    if _fp8(a) and _fp8(b):
        return "fp8"
    if a == b and a.name in ("fp16", "bf16", "tf32"):
        return a.name
    if a == FP32 or b == FP32:
        raise ValueError(f"--hardware: policy {policy_name!r} multiplies fp32 operands, which no matrix unit takes "
                         "(units take fp16, bf16, tf32 or fp8); pick a policy with such operands or --hardware ideal")
    raise ValueError(f"--hardware: policy {policy_name!r} multiplies {a.name} by {b.name}, a pair no matrix-unit "
                     "preset takes")


def _family_unit(family: str, kind: str, policy_name: str):
    presets = _presets()
    name = f"{family}-{kind}"
    if name not in presets:
        have = ", ".join(n for n in presets if n.startswith(family + "-"))
        raise ValueError(f"--hardware {family}: policy {policy_name!r} needs a {kind} matrix unit, which {family} "
                         f"does not have (its presets: {have})")
    return presets[name]


def _with_formats(unit, a, b):
    if unit.a_format == a and unit.b_format == b:
        return unit
    return unit.replace(a_format=a, b_format=b, name=unit.name, source=unit.source)


def _pick(spec, family, a, b, policy_name):
    """The unit for one product with operand formats a, b."""
    kind = _kind(a, b, policy_name)
    if family is not None:
        return _with_formats(_family_unit(family, kind, policy_name), a, b)
    unit = _presets()[spec]
    if getattr(unit, "block_format", None) is not None:
        raise ValueError(f"--hardware {spec}: a block-scaled unit; policy {policy_name!r} has no block scales "
                         "(use mxfp8, mxfp4 or nvfp4 with it)")
    if kind == "fp8" and _fp8(unit.a_format):
        return _with_formats(unit, a, b)
    if unit.a_format == a and unit.b_format == b:
        return unit
    raise ValueError(f"--hardware {spec}: the unit takes {unit.a_format.name} x {unit.b_format.name} operands, "
                     f"policy {policy_name!r} multiplies {a.name} x {b.name}")


def _split(spec: str):
    """(family, preset) with one of them None."""
    s = spec.strip().lower()
    if s in FAMILIES:
        return s, None
    if s in _presets():
        return None, s
    raise ValueError(f"unknown --hardware {spec!r}; expected 'ideal', a family ({', '.join(FAMILIES)}) or a "
                     f"matrix-unit preset ({', '.join(_presets())})")


def resolve_hardware(policy, spec) -> Optional[Hardware]:
    """The units that run ``policy``'s matmuls on ``spec`` (None or ``"ideal"``: the policy's own accumulation).

    Raises
    ------
    ValueError
        Unknown spec, or a unit the hardware does not have for this policy (one line naming both).

    Examples
    --------
    >>> from lowprec.amp import get_policy
    >>> resolve_hardware(get_policy("fp8-delayed"), "nv-hopper").describe()
    'nv-hopper-fp8 (forward fp8_e4m3fn x fp8_e4m3fn, dgrad fp8_e5m2 x fp8_e4m3fn, wgrad fp8_e5m2 x fp8_e4m3fn)'
    >>> resolve_hardware(get_policy("fp8-deepseek"), "nv-hopper").name
    'nv-hopper-fp8-promote128'
    """
    from .blockscaled import _BlockFactory
    from .scaling import _Factory

    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(f"hardware must be a str (a family, a preset name or 'ideal'), got {type(spec).__name__}")
    if spec.strip().lower() in _IDEAL:
        return None
    s = spec.strip().lower()
    family, preset = _split(s)
    pname = policy.name
    mq = policy.matmul_quant
    if isinstance(mq, _BlockFactory):
        return _resolve_block(s, family, preset, mq.recipe, pname)
    aq = policy.act_fake_quant
    if isinstance(aq, _Factory):
        rec = aq.recipe
        if rec.granularity != "tensor":
            raise ValueError(f"--hardware {s}: policy {pname!r} scales rows and columns along the contraction axis of "
                             "its gradient products, which the unit's output cannot undo; use a per-tensor policy "
                             "(fp8-current, fp8-delayed) or --hardware ideal")
        fw, gr = get_format(rec.forward_format), get_format(rec.grad_format)
        units = {"forward": _pick(s, family, fw, fw, pname), "dgrad": _pick(s, family, gr, fw, pname),
                 "wgrad": _pick(s, family, gr, fw, pname)}
        return Hardware(s, "tensor", units, name=units["forward"].name)
    if policy.weight_fake_quant is not None or aq is not None:
        raise ValueError(f"--hardware {s}: policy {pname!r} fake-quantizes its operands to values no matrix unit "
                         "takes as they are; use --hardware ideal")
    from ..accumulation import get_accumulation

    fa, ba = get_accumulation(policy.forward_accumulation), get_accumulation(policy.backward_accumulation)
    units = {"forward": _pick(s, family, fa.a_format, fa.b_format, pname),
             "dgrad": _pick(s, family, ba.a_format, ba.b_format, pname),
             "wgrad": _pick(s, family, ba.a_format, ba.b_format, pname)}
    return Hardware(s, "plain", units, name=units["forward"].name)


def _block_name(recipe) -> str:
    from ..formats import E8M0, FP4_E2M1FN

    el, sc = recipe.x.element, recipe.x.scale
    if el == FP8_E4M3FN and sc == E8M0:
        return "mxfp8"
    if el == FP4_E2M1FN and sc == E8M0:
        return "mxfp4"
    if el == FP4_E2M1FN:
        return "nvfp4"
    return el.name


def _resolve_block(s, family, preset, recipe, pname) -> Hardware:
    presets = _presets()
    last = None
    if recipe.x.scale == FP32:  # fp32 tile scales: DeepSeek's promotion on an fp8 unit
        if family is not None:
            base = _family_unit(family, "fp8", pname)
            if base.frac_bits >= 24:
                shown = base.name  # (a unit that accumulates with fp32's precision needs no promotion to show)
            else:
                shown = f"{family}-fp8-promote128"
        else:
            unit = presets[preset]
            if not _fp8(unit.a_format) or getattr(unit, "block_format", None) is not None:
                raise ValueError(f"--hardware {s}: policy {pname!r} needs an fp8 unit (e.g. nv-hopper-fp8-promote128)")
            if unit.promote_every not in (None, 128):
                raise ValueError(f"--hardware {s}: policy {pname!r} applies its 128-wide tile scales at a promotion "
                                 f"every 128 elements of K, the unit promotes every {unit.promote_every}")
            if unit.promote_every is None and unit.frac_bits < 24:
                raise ValueError(f"--hardware {s}: policy {pname!r} applies its tile scales when it promotes to "
                                 f"fp32 every 128 elements of K; use {s}-promote128 (or the family name)")
            base, shown = unit.replace(promote_every=None, name=unit.name.replace("-promote128", ""),
                                       source=unit.source), unit.name
        units = {p: base for p in _PRODUCTS}
        return Hardware(s, "deepseek", units, name=shown)
    want = _block_name(recipe)
    name = f"nv-blackwell-{want}"
    fam = family if family is not None else "-".join(preset.split("-")[:2])
    if family is not None and family != "nv-blackwell":
        raise ValueError(f"--hardware {s}: policy {pname!r} needs a block-scaled ({want}) matrix unit, which only "
                         "nv-blackwell has")
    if preset is not None and preset != name:
        raise ValueError(f"--hardware {s}: policy {pname!r} needs the {name} unit")
    from .. import matrix_units

    if name not in presets or not hasattr(matrix_units, "block_matmul"):
        raise ValueError(f"--hardware {s}: this build has no {name} unit (lowprec.matrix_units.block_matmul); "
                         "use --hardware ideal")
    unit = presets[name]
    units = {p: unit for p in _PRODUCTS}
    if recipe.last_layer is not None:
        k = get_format(recipe.last_layer)
        last = {p: _with_formats(_family_unit(fam, _kind(k, k, pname), pname), k, k) for p in _PRODUCTS}
    return Hardware(s, "block", units, last_units=last, name=name)


def split_compare_entry(entry: str) -> tuple:
    """``"POLICY@HARDWARE"`` -> ``(policy, hardware or None)``; ``"POLICY"`` -> ``(policy, None)``."""
    p, sep, h = entry.partition("@")
    p, h = p.strip(), h.strip()
    if not p or (sep and not h):
        raise ValueError(f"--compare entries are POLICY or POLICY@HARDWARE, got {entry!r}")
    return p, (h if sep else None)


# ------------------------------------------------------------------------------------------------
# products on a unit
# ------------------------------------------------------------------------------------------------
def _unit_matmul(a, b, unit) -> np.ndarray:
    from ..linalg import matmul

    return np.asarray(matmul(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32),
                             unit), dtype=np.float32)


def _unit_product(a, b, unit) -> np.ndarray:
    """:func:`_unit_matmul` for operands that are values of the unit's operand formats already (a scaled cast's
    ``q``, decoded fp8 elements): ``lowprec.linalg.matmul(a, b, unit)`` without its input rounding, which would
    return them unchanged, straight to the kernel entry (dispatch.matrix_unit_array)."""
    if unit.truncate_inputs or unit.block_format is not None:
        return _unit_matmul(a, b, unit)
    from ..kernels import dispatch

    A3 = np.asarray(a, dtype=np.float64)[None]
    B3 = np.asarray(b, dtype=np.float64)[None]
    M, N = A3.shape[1], B3.shape[2]
    if A3.shape[2] != B3.shape[1]:
        raise ValueError(f"matmul shape mismatch: a has shape {np.shape(a)} and b has shape {np.shape(b)}")
    zero = np.zeros(1, dtype=np.int64)
    out = dispatch.matrix_unit_array(dispatch.resolve_backend("auto"), np.ascontiguousarray(A3),
                                     np.ascontiguousarray(B3), np.zeros((1, M, N)), zero, zero, unit._kernel_params())
    return np.asarray(out[0], dtype=np.float32)


def scaled_output(p, d_a, d_b) -> np.ndarray:
    """``fl32(p * fl32(d_a * d_b))`` (float32): a unit's result scaled back by the operands' inverse scales."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        d = (np.float32(d_a) * np.float32(d_b)).astype(np.float32)
        return (np.asarray(p, dtype=np.float32) * d).astype(np.float32)


def _fma32(s, p, acc) -> np.ndarray:
    """fl32(s * p + acc) rounded once (nearest-even) for float32 arrays: the product is exact in float64,
    the sum's error is recovered (two-sum) and breaks the ties that float64 rounding could have made."""
    s64, p64, a64 = (np.asarray(v, dtype=np.float64) for v in (s, p, acc))
    with np.errstate(over="ignore", invalid="ignore"):
        prod = s64 * p64
        tot = prod + a64
        bp = tot - a64
        err = (prod - bp) + (a64 - (tot - bp))
        r = tot.astype(np.float32)
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(tot > r64, np.float32(np.inf), np.float32(-np.inf))).astype(np.float64)
        tie = np.isfinite(tot) & (tot != r64) & ((tot - r64) == (other - tot)) & (err != 0)
        if np.any(tie):
            pick = np.where(err > 0, np.maximum(r64, other), np.minimum(r64, other))
            r = np.where(tie, pick.astype(np.float32), r)
    return r.astype(np.float32)


def promoted_block_matmul(a_elem, a_scales, b_elem, b_scales, unit, block: int = 128) -> np.ndarray:
    """DeepSeek-V3's promoted product: per ``block``-long chunk ``c`` of K, ``P_c`` = the unit's result for
    the elements of the chunk, and ``acc = fma(fl32(a_scales[:, c] * b_scales[c, :]), P_c, acc)`` in fp32.

    ``a_elem`` (M, K), ``b_elem`` (K, N): element values (e.g. e4m3); ``a_scales`` (M, ceil(K / block)),
    ``b_scales`` (ceil(K / block), N): fp32 scale values.
    """
    return _promoted(a_elem, a_scales, b_elem, b_scales, unit, block, _unit_matmul)


def _promoted(a_elem, a_scales, b_elem, b_scales, unit, block, product) -> np.ndarray:
    """:func:`promoted_block_matmul` with the unit's chunk products computed by ``product(a, b, unit)``."""
    a_elem = np.asarray(a_elem, dtype=np.float32)
    b_elem = np.asarray(b_elem, dtype=np.float32)
    M, K = a_elem.shape
    N = b_elem.shape[1]
    acc = np.zeros((M, N), dtype=np.float32)
    sa = np.asarray(a_scales, dtype=np.float32)
    sb = np.asarray(b_scales, dtype=np.float32)
    for c, k0 in enumerate(range(0, K, block)):
        p = product(a_elem[:, k0:k0 + block], b_elem[k0:k0 + block], unit)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            s = (sa[:, c:c + 1] * sb[c:c + 1, :]).astype(np.float32)
        acc = _fma32(s, p, acc)
    return acc


def _backend() -> str:
    from ..kernels import dispatch

    return dispatch.resolve_backend("auto")


def _ideal(a, b) -> np.ndarray:
    """``lowprec.linalg.matmul(a, b, "fp32")`` of float32 operands of any strides (the CPU tile kernel reads them
    in place)."""
    from ..linalg import matmul, prepare_matmul

    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if _backend() == "cpu":
        mm = prepare_matmul("fp32", "cpu")
        # float32 values are fp32 values; the tile kernel's NaN results are canonical whatever NaNs its inputs
        # hold, so its input rounding is the identity (as lowprec.autograd's products skip it)
        return mm(a, b, inputs_rounded=mm.kernel != "general")
    return np.asarray(matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), "fp32"), dtype=np.float32)


def run_product(ctx, product: str, a, b, *, plain: Optional[str] = None, ops=None) -> np.ndarray:
    """One product of a block-scaled policy: ``a @ b`` of the quantized operands (float32, (M, K) @ (K, N)).

    ``plain``: a format the operands are rounded to (the last layer of the fp4 recipes), fp32 accumulation
    or its family's unit. ``ops``: ``((a_elem, a_scales, a_tensor_scale), (b_elem, ...))`` for the hardware
    routes: element values, block scales per (row, K block) of ``a`` and per (K block, column) of ``b``,
    and the fp32 tensor scale (or None).
    """
    hw = getattr(ctx, "hardware", None)
    if plain is not None:
        if hw is not None and hw.last_units is not None:
            return _unit_matmul(a, b, hw.last_units[product])
        from ..linalg import matmul

        return np.asarray(matmul(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32),
                                 f"{get_format(plain).name}-fp32"), dtype=np.float32)
    if hw is None:
        return _ideal(a, b)
    (ae, asc, ats), (be, bsc, bts) = ops
    unit = hw.units[product]
    if hw.route == "deepseek":
        return _promoted(ae, asc, be, bsc, unit, 128, _unit_product)  # (decoded fp8 elements: the unit's values)
    from ..matrix_units import block_unit_array

    blk = unit.block_format.block[0]
    K = ae.shape[1]
    av = ae * np.repeat(asc, blk, axis=1)[:, :K]  # q * S_b: exact (a few bits times a power of two or UE4M3)
    bv = be * np.repeat(bsc, blk, axis=0)[:K]
    # lowprec.matrix_units.block_matmul(av, asc, bv, bsc, unit) without its operand checks (each value over its
    # scale an element of the unit's format, each scale one of its scale format): the policy's quantization
    # made them so, and the checks cost as much as the product
    zero = np.zeros(1, dtype=np.int64)
    d = block_unit_array(av.astype(np.float64)[None], asc.astype(np.float64)[None], bv.astype(np.float64)[None],
                         bsc.astype(np.float64)[None], np.zeros((1, av.shape[0], bv.shape[1])), zero, zero, unit,
                         _backend())[0].astype(np.float32)
    if ats is None and bts is None:
        return d
    return scaled_output(d, 1.0 if ats is None else ats, 1.0 if bts is None else bts)  # NVFP4's epilogue alpha


class TensorScaledUnitMatmul:
    """Per-tensor scaled fp8 on a unit (the ``qmm`` of :func:`lowprec.autograd.quantized_matmul`): the layer's
    scaled casts (:mod:`lowprec.amp.scaling`) keep their last ``(values, q, scale)``, and the unit multiplies
    the ``q``; the output is :func:`scaled_output`. The operands are the casts' outputs (checked)."""

    def __init__(self, act_quant, weight_quant):
        self.act_quant = act_quant
        self.weight_quant = weight_quant

    @staticmethod
    def _last(cast, values, what):
        if cast is None or not (cast[0] is values or np.array_equal(cast[0], values)):
            raise RuntimeError(f"the {what} of a scaled fp8 product on hardware is not the last scaled cast")
        return cast[1], np.float32(1.0) / np.float32(cast[2])

    def forward(self, ctx, a, b) -> np.ndarray:
        qx, dx = self._last(self.act_quant.last_cast, a.data, "input")
        qw, dw = self._last(self.weight_quant.last_cast, b.data, "weight")
        return scaled_output(_unit_product(qx, qw, ctx.hardware.units["forward"]), dx, dw)

    def backward(self, ctx, g, a, b, need_a: bool, need_b: bool) -> tuple:
        qg, dg = self._last(self.act_quant.last_grad, g, "output gradient")
        qx, dx = self._last(self.act_quant.last_cast, a.data, "input")
        qw, dw = self._last(self.weight_quant.last_cast, b.data, "weight")
        u = ctx.hardware.units
        da = db = None
        if need_a:
            da = scaled_output(_unit_product(qg, qw.T, u["dgrad"]), dg, dw)
        if need_b:
            db = np.ascontiguousarray(scaled_output(_unit_product(qg.T, qx, u["wgrad"]), dg, dx).T)
        return da, db

"""Block- and tile-scaled training policies: ``fp8-deepseek``, ``mxfp8``, ``nvfp4``, ``mxfp4``.

A per-tensor scaled cast (:mod:`lowprec.amp.scaling`) gives a tensor one scale, so the same cast
serves every matmul it enters. A block scale is shared by a block of elements *along the contraction
axis* of a matmul, so the same tensor is quantized differently for each matmul it enters. These
policies therefore quantize inside the matmul (:func:`lowprec.autograd.quantized_matmul`, the
:class:`BlockScaledMatmul` of each layer), each of a layer's three products quantizing its two
operands along its own K:

==============  =====================  ==============================  ==========================
product         K                      left operand                    right operand
==============  =====================  ==============================  ==========================
forward         in_features            ``X`` blocks along axis 1       ``W`` blocks along axis 0
dgrad (dX)      out_features           ``dY`` blocks along axis 1      ``W.T``: ``W`` along axis 1
wgrad (dW)      batch                  ``dY.T``: ``dY`` along axis 0   ``X`` blocks along axis 0
==============  =====================  ==============================  ==========================

(``dW = X.T @ dY`` is computed as ``(dY.T @ X).T``: the gradient is the left operand, as in every
lowprec policy.) 2-D weight tiles (``128x128``, ``16x16``) are the same tiles for ``W`` and ``W.T``,
so the weight is quantized once per step and both products see the same values. Each product is

    ``Q_a(a) @ Q_b(b)``   with ``Q = lowprec.block.quantize`` (the values ``q * X`` as float32)

computed by ``lowprec.linalg.matmul(..., "fp32")`` (ideal fp32 accumulation), or by a hardware
matrix unit (:mod:`lowprec.amp.hardware`); nothing else rounds (every other role of these policies
is fp32, the master weights included). The recipes:

``fp8-deepseek`` (DeepSeek-V3 technical report, arXiv 2412.19437, section 3.3.2)
    activations and output gradients in 1x128 tiles along K, weights in 128x128 tiles; e4m3 for
    every operand, gradients included ("we adopt the E4M3 format on all tensors"); fp32 scales
    ``S = fl32(amax / 448)`` per tile (``lowprec.block`` presets ``fp8_1x128``, ``fp8_128x128``).
    On hardware the fp8 products are promoted into fp32 every 128 elements of K with the two tiles'
    scales (:func:`lowprec.amp.hardware.promoted_block_matmul`).
``mxfp8`` (OCP Microscaling Formats v1.0; NVIDIA, "Recipes for pre-training LLMs with MXFP8",
arXiv 2506.08027, and Transformer Engine's MXFP8BlockScaling: e4m3 for every tensor)
    blocks of 32 along K with an E8M0 scale by the OCP rule ``2**(floor(log2 amax) - 8)`` (preset
    ``mxfp8_e4m3``), in the forward and both backward products.
``nvfp4`` (NVIDIA, "Pretraining large language models with NVFP4", arXiv 2509.25149)
    E2M1 elements in 1x16 blocks along K with UE4M3 block scales and an fp32 per-tensor scale
    (preset ``nvfp4``; the tensor scale is the operand's own, ``amax_t / (448 * 6)``), weights in
    2-D 16x16 tiles; output gradients rounded stochastically (the policy's ``activation_grad``
    stream), activations and weights nearest-even; the two operands of the weight-gradient product
    go through a random Hadamard transform (:func:`hadamard_matrix`) of size 16 along K; the last
    layer computes in bf16 (operands rounded to bf16, fp32 accumulation).
``mxfp4`` (OCP MXFP4: E2M1 elements, blocks of 32, E8M0 scales by the OCP floor rule)
    the ``nvfp4`` recipe with the MXFP4 format (1-D blocks of 32 for the weights too, as MX
    defines no 2-D tiles): stochastic rounding of gradients, the Hadamard transform before the
    weight-gradient product, the last layer in bf16, so that a comparison with ``nvfp4`` isolates
    the format, as NVIDIA's comparison does. :meth:`BlockRecipe.replace` and
    :func:`block_policy` make variants (without SR, without the transform, ...).

The random Hadamard transform: ``T = H16 @ diag(d) / 4`` with ``H16`` Sylvester's 16x16 Hadamard
matrix (entries +-1) and ``d`` 16 random signs drawn once per run from numpy's PCG64 seeded with
``[run seed, 200]`` (:func:`hadamard_signs`), shared by all layers and steps (NVIDIA found one fixed
sign vector sufficient). ``T`` is orthogonal, so ``(T dY).T (T X) = dY.T X`` in exact arithmetic. K
(the batch) is padded with zeros to a multiple of 16 and each column of 16 is transformed:
``out[i] = fl32(sum_j T[i, j] x[j])``, the sum in float64 in ``j`` order, rounded once to float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import block as _block
from ..rounding import Rounding

__all__ = ["BlockRecipe", "BlockScaledMatmul", "block_policy", "get_recipe", "hadamard_matrix", "hadamard_signs",
           "hadamard_transform", "RECIPES", "BLOCK_POLICIES", "HADAMARD_STREAM"]

#: The numpy seed ``[run seed, HADAMARD_STREAM]`` of the Hadamard sign vector.
HADAMARD_STREAM = 200

_ROUNDINGS = ("nearest_even", "stochastic")
_SR = Rounding.STOCHASTIC


@dataclass(frozen=True)
class BlockRecipe:
    """How a block-scaled policy quantizes the operands of each product (see the module docstring).

    Parameters
    ----------
    x, w, g : BlockFormat or preset name
        The block formats of activations, weights and output gradients. A 2-D tile format for ``w``
        quantizes the weight once per step for both products it enters. Their ``on_inf`` becomes
        ``"nan"``: a block holding an Inf gets the NaN scale, so an overflowed step yields NaN gradients
        (which dynamic loss scaling skips) instead of an exception.
    grad_rounding : {"nearest_even", "stochastic"}
        Element rounding of the output gradients (stochastic: the policy's ``activation_grad`` stream).
    hadamard : int
        Size of the random Hadamard transform applied along K to both weight-gradient operands
        (0: none; otherwise a power of two, 2..256).
    last_layer : str or None
        A format whose operands the last layer's products take instead (fp32 accumulation), e.g.
        ``"bf16"``; None: the last layer is block-scaled too.
    source : str
        Where the recipe comes from.
    """

    x: object
    w: object
    g: object
    grad_rounding: str = "nearest_even"
    hadamard: int = 0
    last_layer: Optional[str] = None
    source: str = ""

    def __post_init__(self):
        for nm in ("x", "w", "g"):
            f = _block.get_block_format(getattr(self, nm))
            if f.on_inf != "nan":  # a block holding Inf gets the NaN scale: the step's NaN is then seen (and
                f = f.replace(on_inf="nan", name=f.name)  # skipped by dynamic loss scaling), not an exception
            object.__setattr__(self, nm, f)
        if self.grad_rounding not in _ROUNDINGS:
            raise ValueError(f"grad_rounding must be one of {_ROUNDINGS}, got {self.grad_rounding!r}")
        h = self.hadamard
        bad = isinstance(h, bool) or not isinstance(h, (int, np.integer))
        if bad or (h != 0 and (h < 2 or h > 256 or h & (h - 1))):
            raise ValueError(f"hadamard must be 0 or a power of two in 2..256, got {h!r}")
        for nm, f in (("x", self.x), ("g", self.g)):
            if len(f.block) != 1:
                raise ValueError(f"{nm} must be a 1-D block format (blocks along K), got {f.name} with tile {f.block}")
        if self.last_layer is not None:
            from ..formats import get_format

            get_format(self.last_layer)

    @property
    def weight_tiles(self) -> bool:
        """Whether weights are quantized in 2-D tiles (once per step for both products)."""
        return len(self.w.block) == 2

    def replace(self, **changes) -> "BlockRecipe":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def hadamard_matrix(n: int) -> np.ndarray:
    """Sylvester's ``n x n`` Hadamard matrix (entries +-1, ``H @ H.T = n I``), float64; ``n`` a power of two.

    Examples
    --------
    >>> hadamard_matrix(2).tolist()
    [[1.0, 1.0], [1.0, -1.0]]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n!r}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_signs(seed: int, n: int = 16) -> np.ndarray:
    """The run's random sign vector (+-1.0, float64): numpy PCG64 seeded with ``[seed, HADAMARD_STREAM]``."""
    bits = np.random.default_rng([int(seed), HADAMARD_STREAM]).integers(0, 2, size=int(n))
    return 1.0 - 2.0 * bits


def hadamard_transform(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``T @ x`` per group of ``n = len(signs)`` rows of ``x`` (axis 0 padded with zeros to a multiple of n),
    ``T = hadamard_matrix(n) @ diag(signs) / sqrt(n)``: float64 sums in column order, rounded once to float32.

    Returns a float32 array of shape ``(ceil(K / n) * n, N)`` for ``x`` of shape ``(K, N)``.
    """
    n = len(signs)
    t = hadamard_matrix(n) * np.asarray(signs, dtype=np.float64)[None, :] / np.sqrt(n)
    x = np.asarray(x, dtype=np.float32)
    K, N = x.shape
    kp = -(-K // n) * n
    xp = np.zeros((kp, N), dtype=np.float64)
    xp[:K] = x
    g = xp.reshape(kp // n, n, N)
    acc = np.zeros_like(g)
    for j in range(n):  # a fixed order of the sums: the same bits on any machine
        acc += t[None, :, j, None] * g[:, j:j + 1, :]
    return acc.reshape(kp, N).astype(np.float32)


class BlockScaledMatmul:
    """The products of one layer under a :class:`BlockRecipe` (the ``qmm`` of
    :func:`lowprec.autograd.quantized_matmul`).

    Telemetry (when the runtime's telemetry is active): for every quantized operand, one
    :meth:`~lowprec.telemetry.Telemetry.record_scale` row named ``layer{i}.{product}.{operand}``
    (``fwd.x``, ``fwd.w``, ``dgrad.dy``, ``dgrad.w``, ``wgrad.dy``, ``wgrad.x``) with the median
    block scale (the effective ``X``, tensor scale included), the operand's amax, the fraction of
    blocks whose maximum clipped (:func:`lowprec.block.analyze`) and the fraction of elements that
    were nonzero and became zero.
    """

    def __init__(self, recipe: BlockRecipe, layer_index: int, last: bool = False):
        self.recipe = recipe
        self.index = int(layer_index)
        self.last = bool(last)
        self.plain = last and recipe.last_layer is not None  # the last layer in a plain format
        self._w_cache = None  # (weight array, its tile quantization) for 2-D tiles
        self._signs = None

    # -- quantization -----------------------------------------------------------------------------
    def _q(self, ctx, x, fmt, axis, role, name, stochastic=False):
        """``(values, ops)``: ``x`` block-quantized along ``axis`` (:func:`lowprec.block.quantize`'s float32
        values), and for the hardware routes ``(element values, scale values, tensor scale)`` (None otherwise).
        On the hardware routes the values are computed only when telemetry needs them (None otherwise): the
        unit multiplies the elements and scales."""
        x = np.asarray(x, dtype=np.float32)
        seed = ctx.streams[role] if stochastic else None
        mode = _SR if stochastic else fmt.rounding  # (as quantize(..., rounding=None) takes the format's)
        hw = getattr(ctx, "hardware", None)
        tel = ctx.telemetry
        tel = tel if tel is not None and tel.active else None
        ops = None
        # nearest-even blocks along axis 0 of a matrix: the same blocks of the contiguous transpose, along its
        # rows (3-4x faster; stochastic rounding keeps axis 0: its counters follow x's C order)
        flip = axis == 0 and not stochastic and x.ndim == 2
        xa, ax = (np.ascontiguousarray(x.T), -1) if flip else (np.ascontiguousarray(x), axis)
        # (the operands are lowprec's own float32 arrays: the internal entry points skip the argument checks)
        if hw is None:
            q = _block._quantize_internal(xa, fmt, ax, mode, seed)
        else:  # the same values (same random counters), with the elements and scales the unit takes
            el, sc, ts = _block._operands_internal(xa, fmt, ax, mode, seed)
            q = None
            if tel is not None:  # lowprec.block.decode's arithmetic: elements times (scale times tensor scale),
                full = _expand(sc.astype(np.float64), fmt.block, ax, xa.shape)  # in float64, to float32
                if ts is not None:
                    full = full * float(ts)
                q = (el.astype(np.float64) * full).astype(np.float32)
            ops = (el.T, sc.T, ts) if flip else (el, sc, ts)
        if flip and q is not None:
            q = q.T
        if tel is not None:
            st = _block.analyze(xa, fmt, axis=ax, rounding="nearest_even")
            scales = st.scale[np.isfinite(st.scale)]
            under = int(np.count_nonzero((x != 0) & (q == 0)))
            tel.record_scale(f"layer{self.index}.{name}", role, fmt.name,
                             float(np.median(scales)) if scales.size else 1.0,
                             float(np.max(st.amax)) if st.amax.size else 0.0,
                             st.fraction_blocks_max_clipped, under / max(x.size, 1))
        return q, ops

    def _weight(self, ctx, w, product):
        """The weight quantized for ``product`` ("fwd": along axis 0; "dgrad": along axis 1) as ``(values, ops)``,
        ``ops`` oriented as the product's right operand (``W`` forward, ``W.T`` in dgrad)."""
        r = self.recipe
        if r.weight_tiles:
            c = self._w_cache
            if c is None or c[0] is not w or product == "fwd":
                self._w_cache = c = (w, self._q(ctx, w, r.w, (-2, -1), "weight_used", "fwd.w"))
            q, ops = c[1]
            if ops is not None:  # one scale per (K block, column): the tile's scale repeated
                tk, tn = r.w.block
                K, N = w.shape
                el, sc, ts = ops
                ops = (el, np.repeat(sc, tn, axis=1)[:, :N], ts) if product == "fwd" else \
                    (np.ascontiguousarray(el.T), np.repeat(sc.T, tk, axis=1)[:, :K], ts)
            return q, ops
        q, ops = self._q(ctx, w, r.w, 0 if product == "fwd" else -1, "weight_used", f"{product}.w")
        if ops is not None and product != "fwd":
            ops = (np.ascontiguousarray(ops[0].T), np.ascontiguousarray(ops[1].T), ops[2])
        return q, ops

    def signs(self, ctx) -> np.ndarray:
        """The run's Hadamard sign vector (:func:`hadamard_signs` of the runtime's seed)."""
        if self._signs is None:
            self._signs = hadamard_signs(ctx.seed, self.recipe.hadamard)
        return self._signs

    # -- the three products -----------------------------------------------------------------------
    def forward(self, ctx, a, b) -> np.ndarray:
        from .hardware import run_product

        x, w = a.data, b.data
        if self.plain:
            return run_product(ctx, "forward", x, w, plain=self.recipe.last_layer)
        r = self.recipe
        xq, xo = self._q(ctx, x, r.x, -1, "activation", "fwd.x")
        wq, wo = self._weight(ctx, w, "fwd")
        return run_product(ctx, "forward", xq, wq, ops=(xo, wo))

    def backward(self, ctx, g, a, b, need_a: bool, need_b: bool) -> tuple:
        from .hardware import run_product

        x, w = a.data, b.data
        g = np.ascontiguousarray(g, dtype=np.float32)
        da = db = None
        if self.plain:
            if need_a:
                da = run_product(ctx, "dgrad", g, np.ascontiguousarray(w.T), plain=self.recipe.last_layer)
            if need_b:
                db = run_product(ctx, "wgrad", np.ascontiguousarray(g.T), x, plain=self.recipe.last_layer).T
            return da, None if db is None else np.ascontiguousarray(db)
        r = self.recipe
        sr = r.grad_rounding == "stochastic"
        if need_a:  # dX = dY @ W.T, K = out_features
            gq, go = self._q(ctx, g, r.g, -1, "activation_grad", "dgrad.dy", sr)
            wq, wo = self._weight(ctx, w, "dgrad")
            da = run_product(ctx, "dgrad", gq, None if wq is None else wq.T, ops=(go, wo))  # (any strides)
        self._w_cache = None
        if need_b:  # dW = (dY.T @ X).T, K = batch
            gk, xk = g, x
            if r.hadamard:
                s = self.signs(ctx)
                gk, xk = hadamard_transform(g, s), hadamard_transform(x, s)
            gq, go = self._q(ctx, gk, r.g, 0, "activation_grad", "wgrad.dy", sr)
            xq, xo = self._q(ctx, xk, r.x, 0, "activation", "wgrad.x")
            if go is not None:
                go = (np.ascontiguousarray(go[0].T), np.ascontiguousarray(go[1].T), go[2])
            if getattr(ctx, "hardware", None) is None:
                # (dY.T @ X).T computed as X.T @ dY: each output has the same products (a product does not depend
                # on the order of its factors) summed in the same k order, and it comes out C-contiguous
                db = run_product(ctx, "wgrad", xq.T, gq)
            else:
                db = np.ascontiguousarray(run_product(ctx, "wgrad", _t(gq), xq, ops=(go, xo)).T)
        return da, db


def _t(a):
    """The contiguous transpose of a product's operand values (None on the hardware routes without telemetry)."""
    return None if a is None else np.ascontiguousarray(a.T)


def _expand(scales, block, axis, shape) -> np.ndarray:
    """Per-block scales repeated over their blocks' elements (2-D: blocks along ``axis``, or tiles)."""
    if len(block) == 2:
        return np.repeat(np.repeat(scales, block[0], axis=0)[:shape[0]], block[1], axis=1)[:, :shape[1]]
    if axis in (-1, 1):
        return np.repeat(scales, block[0], axis=1)[:, :shape[1]]
    return np.repeat(scales, block[0], axis=0)[:shape[0]]


@dataclass(frozen=True)
class _BlockFactory:
    recipe: BlockRecipe

    def __call__(self, layer_index, out_features, last=False):
        return BlockScaledMatmul(self.recipe, layer_index, last)


def block_policy(name: str, recipe: BlockRecipe, description: str = ""):
    """A :class:`~lowprec.amp.Policy` whose products are block-scaled by ``recipe``: every other role fp32
    (the weights are the fp32 master weights, quantized at each use), ideal fp32 accumulation, no loss
    scaling.

    Examples
    --------
    >>> p = block_policy("nvfp4-no-sr", get_recipe("nvfp4").replace(grad_rounding="nearest_even"))
    >>> p.matmul_quant.recipe.g.name, p.matmul_quant.recipe.hadamard
    ('nvfp4', 16)
    """
    from .policies import Policy

    table = {"weight": "fp32", "weight_used": "fp32", "activation": "fp32", "activation_grad": "fp32",
             "weight_grad": "fp32", "optimizer_state": "fp32", "master": None}
    return Policy(name, table, "fp32", "fp32", "none", matmul_quant=_BlockFactory(recipe), description=description)


_NVFP4_W = _block.BlockFormat("fp4_e2m1fn", "ue4m3", (16, 16), "amax", tensor_scale=True, name="nvfp4_16x16",
                              source="NVIDIA arXiv 2509.25149: 2-D 16x16 weight blocks")

#: The recipes by policy name.
RECIPES = {
    "fp8-deepseek": BlockRecipe("fp8_1x128", "fp8_128x128", "fp8_1x128",
                                source="DeepSeek-V3 technical report, arXiv 2412.19437, section 3.3.2"),
    "mxfp8": BlockRecipe("mxfp8_e4m3", "mxfp8_e4m3", "mxfp8_e4m3",
                         source="OCP Microscaling Formats v1.0; NVIDIA arXiv 2506.08027 (e4m3 for all tensors)"),
    "nvfp4": BlockRecipe("nvfp4", _NVFP4_W, "nvfp4", grad_rounding="stochastic", hadamard=16, last_layer="bf16",
                         source="NVIDIA, Pretraining LLMs with NVFP4, arXiv 2509.25149, section 4"),
    "mxfp4": BlockRecipe("mxfp4", "mxfp4", "mxfp4", grad_rounding="stochastic", hadamard=16, last_layer="bf16",
                         source="OCP Microscaling Formats v1.0 (MXFP4), with the nvfp4 recipe's SR, RHT and bf16 "
                                "last layer"),
}


def get_recipe(name: str) -> BlockRecipe:
    """The :class:`BlockRecipe` of a block-scaled policy name."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown block-scaled recipe {name!r}; expected one of {', '.join(RECIPES)}") from None


#: The block-scaled policies (registered by :mod:`lowprec.amp.registry`).
BLOCK_POLICIES = (
    block_policy("fp8-deepseek", RECIPES["fp8-deepseek"],
                 "DeepSeek-V3 fp8: 1x128 activation/gradient tiles, 128x128 weight tiles, e4m3 everywhere, fp32 "
                 "scales amax/448 (arXiv 2412.19437 sec. 3.3)"),
    block_policy("mxfp8", RECIPES["mxfp8"],
                 "MXFP8: e4m3 blocks of 32 along each product's K, E8M0 OCP scales, forward and backward"),
    block_policy("nvfp4", RECIPES["nvfp4"],
                 "NVFP4 (arXiv 2509.25149): 1x16 blocks, UE4M3 + fp32 tensor scales, 16x16 weight tiles, SR "
                 "gradients, Hadamard-16 on wgrad operands, last layer bf16"),
    block_policy("mxfp4", RECIPES["mxfp4"],
                 "MXFP4: E2M1 blocks of 32, E8M0 OCP scales; nvfp4's SR gradients, Hadamard-16 on wgrad, bf16 "
                 "last layer"),
)

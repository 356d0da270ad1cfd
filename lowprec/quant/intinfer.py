"""Integer-only inference of an MLP (Jacob et al., CVPR 2018; gemmlowp/TFLite arithmetic).

Numeric model
-------------
A layer maps int8 input codes ``q_x`` (scale ``s_x``, zero point ``z_x``)
to int8 output codes (``s_y``, ``z_y``) with int8 weights ``q_w`` (symmetric,
per output channel ``c``: scale ``s_w[c]``, zero point 0, codes in
``[-127, 127]``) and an int32 bias ``q_b[c] = round(b[c] / (s_x s_w[c]))``:

1. accumulate, in a 32-bit two's complement accumulator,
   ``acc[c] = q_b[c] - z_x * sum_k q_w[k, c] + sum_k q_x[k] * q_w[k, c]``;
   the zero-point term is folded into the bias at export (Jacob et al.
   eq. 7-8), so the products are int8 x int8. The first two terms form the
   accumulator's start value (computed exactly, then brought into int32);
   products are added in order ``k = 0, 1, ...``. ``accumulator="wrap"``
   (default): every addition wraps modulo 2**32 (as integer SIMD adds do;
   the result does not depend on the order). ``"saturate"``: every addition
   clamps to ``[-2**31, 2**31 - 1]`` (order-dependent, hence the stated order);
2. requantize with the real multiplier ``M[c] = s_x s_w[c] / s_y``, stored
   as ``M0[c]`` in ``[2**30, 2**31)`` and ``shift[c]`` with ``M ~= M0 * 2**-31
   * 2**-shift`` (:func:`quantize_multiplier`):
   ``y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2**max(-shift, 0), M0), max(shift, 0))``
   (the left shift, for M >= 1, saturates to int32), following gemmlowp's
   ``fixedpoint.h`` and TFLite's ``MultiplyByQuantizedMultiplier``;
3. add ``z_y``, clamp to ``[qmin, 127]`` where ``qmin = max(-128, z_y)`` after
   a ReLU (the ReLU is the clamp) and ``-128`` for the last layer.

The only float operation is quantizing the network input (and, for
reading out, dequantizing the logits). :func:`reference_forward` recomputes
the network with Python ints element by element, through different code
(per-step wraps, ``divmod``-based rounding) and must agree bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .affine import _check_scale, quantize

__all__ = ["INT32_MIN", "INT32_MAX", "quantize_multiplier", "saturating_rounding_doubling_high_mul",
           "rounding_divide_by_pot", "multiply_by_quantized_multiplier", "IntLayer", "IntegerMLP",
           "export_mlp", "reference_forward", "ref_srdhm", "ref_rounding_divide_by_pot",
           "ref_multiply_by_quantized_multiplier"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
_ACCUMULATORS = ("wrap", "saturate")


def quantize_multiplier(m: float):
    """``(M0, shift)`` with ``M0`` in ``[2**30, 2**31)`` and ``m ~= M0 * 2**(-31 - shift)``.

    ``M0 = round(frac * 2**31)`` for ``m = frac * 2**e``, ``frac`` in [0.5, 1),
    rounded half away from zero as TFLite's ``QuantizeMultiplier`` does
    (``std::round``; a round-up to 2**31 moves to 2**30 and ``e + 1``), and
    ``shift = -e``: positive values are right shifts (TFLite stores ``e``,
    the left shift). Accepted: ``2**-32 <= m < 2**31`` whose rounded
    ``(M0, shift)`` has ``shift`` in -31..31; TFLite instead flushes smaller
    multipliers to ``M0 = 0``, lowprec refuses them.

    Ties are the only place where the rounding rule matters: ``frac * 2**31``
    is exact, and it is a half-integer exactly when ``m`` has 32 significant
    bits, e.g. ``m = 0.5 + 2**-32``, which gives
    ``2**30 + 1`` (ties to even would give ``2**30``), bit for bit TFLite's.

    Examples
    --------
    >>> quantize_multiplier(0.5), quantize_multiplier(0.75), quantize_multiplier(3.0)
    ((1073741824, 0), (1610612736, 0), (1610612736, -2))
    >>> quantize_multiplier(0.5 + 2.0 ** -32)       # a tie, rounded away from zero
    (1073741825, 0)
    """
    m = float(m)
    if not (math.isfinite(m) and m > 0):
        raise ValueError(f"multiplier must be finite and > 0, got {m}")
    frac, e = math.frexp(m)
    # frac * 2**31 is exact, with at most 22 fraction bits, so + 0.5 is exact too:
    # floor(v + 0.5) is std::round (half away from zero) for v > 0
    m0 = math.floor(frac * (1 << 31) + 0.5)
    if m0 == 1 << 31:
        m0, e = 1 << 30, e + 1
    shift = -e
    if not -31 <= shift <= 31:
        raise ValueError(f"multiplier {m} needs a shift of {shift}; supported are multipliers in [2**-32, 2**31)")
    return int(m0), int(shift)


# ----------------------------------------------------------------------------- numpy (vectorised)
def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 arrays: ``a * b / 2**31`` rounded.

    The nudge ``2**30`` (``1 - 2**30`` for negative products) and C's
    truncating division make it ``floor((a*b + 2**30) / 2**31)``: nearest,
    ties toward +inf (1.5 -> 2, -1.5 -> -1). The one overflow,
    ``INT32_MIN * INT32_MIN`` (the result 2**31 does not fit), gives ``INT32_MAX``.

    Examples
    --------
    >>> saturating_rounding_doubling_high_mul(np.int32([-2**31, 3, -3]), np.int32([-2**31, 2**30, 2**30]))
    array([2147483647,          2,         -1], dtype=int32)
    """
    a64 = np.asarray(a).astype(np.int64)
    b64 = np.asarray(b).astype(np.int64)
    overflow = (a64 == b64) & (a64 == INT32_MIN)
    ab = a64 * b64  # |ab| <= 2**62: no int64 overflow
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # C's (s / 2**31) truncates toward zero: shift the magnitude
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))
    return np.where(overflow, np.int64(INT32_MAX), high).astype(np.int32)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    Examples
    --------
    >>> rounding_divide_by_pot(np.int32([5, -5, 6, -6, 7]), 1)
    array([ 3, -3,  3, -3,  4], dtype=int32)
    """
    x64 = np.asarray(x).astype(np.int64)
    e = np.asarray(exponent).astype(np.int64)
    if np.any((e < 0) | (e > 31)):
        raise ValueError("exponent must be in 0..31")
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return ((x64 >> e) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(x, m0, shift) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier``: ``x * M0 * 2**(-31 - shift)`` rounded, in int32.

    A negative ``shift`` is a left shift of ``x`` that saturates to int32.
    """
    x64 = np.asarray(x).astype(np.int64)
    shift = np.asarray(shift).astype(np.int64)
    left = np.maximum(-shift, 0)
    right = np.maximum(shift, 0)
    xl = np.clip(x64 << left, INT32_MIN, INT32_MAX)  # |x| < 2**31, left <= 31: fits in int64
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xl, m0), right)


# ----------------------------------------------------------------------------- pure Python reference
def _wrap32(v: int) -> int:
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def _sat32(v: int) -> int:
    return INT32_MIN if v < INT32_MIN else (INT32_MAX if v > INT32_MAX else v)


def ref_srdhm(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul with Python ints (C truncating division emulated by divmod)."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    s = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    q, r = divmod(s, 1 << 31)  # floor division
    if r != 0 and s < 0:  # C truncates toward zero
        q += 1
    return q


def ref_rounding_divide_by_pot(x: int, exponent: int) -> int:
    """RoundingDivideByPOT with Python ints: half away from zero, written with divmod."""
    if exponent == 0:
        return x
    d = 1 << exponent
    q, r = divmod(abs(x), d)
    if 2 * r >= d:
        q += 1
    return q if x >= 0 else -q


def ref_multiply_by_quantized_multiplier(x: int, m0: int, shift: int) -> int:
    left, right = max(-shift, 0), max(shift, 0)
    return ref_rounding_divide_by_pot(ref_srdhm(_sat32(x * (1 << left)), m0), right)


# ----------------------------------------------------------------------------- the model
@dataclass
class IntLayer:
    """One integer layer (see the module docstring for the arithmetic).

    ``weight`` is int8 of shape (in, out); ``bias`` int32 (out,) *already
    including* ``-z_x * sum_k q_w[k, c]``; ``multiplier``/``shift`` per output channel.
    """

    weight: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    in_scale: float
    in_zero_point: int
    weight_scale: np.ndarray
    out_scale: float
    out_zero_point: int
    out_min: int
    out_max: int = 127


@dataclass
class IntegerMLP:
    """An exported MLP that runs on integers only (see the module docstring).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> w = [rng.normal(size=(4, 6)), rng.normal(size=(6, 3))]
    >>> b = [rng.normal(size=6) * 0.1, rng.normal(size=3) * 0.1]
    >>> x = rng.normal(size=(5, 4))
    >>> model = export_mlp(w, b, calib_x=x)
    >>> q = model.quantize_input(x)
    >>> out = model.forward(q)
    >>> out.dtype, out.shape, out.tolist() == reference_forward(model, q.tolist())
    (dtype('int8'), (5, 3), True)
    """

    layers: List[IntLayer]
    accumulator: str = "wrap"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.accumulator not in _ACCUMULATORS:
            raise ValueError(f"accumulator must be one of {_ACCUMULATORS}, got {self.accumulator!r}")

    @property
    def input_scale(self) -> float:
        return self.layers[0].in_scale

    @property
    def input_zero_point(self) -> int:
        return self.layers[0].in_zero_point

    def quantize_input(self, x) -> np.ndarray:
        """Float inputs to int8 codes (the only float step): nearest-even on the exact quotient."""
        return quantize(x, self.input_scale, self.input_zero_point, bits=8)

    def accumulate(self, layer: IntLayer, q: np.ndarray) -> np.ndarray:
        """The int32 accumulators of one layer for int8 inputs ``q`` of shape (N, in)."""
        qx = q.astype(np.int64)
        qw = layer.weight.astype(np.int64)
        start = layer.bias.astype(np.int64)
        if self.accumulator == "wrap":
            v = qx @ qw + start  # exact in int64 (|v| < 2**62); wrapping each step = wrapping once
            return (((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)).astype(np.int32)
        acc = np.broadcast_to(start, (qx.shape[0], qw.shape[1])).copy()
        for k in range(qx.shape[1]):  # sequential order k = 0, 1, ...; clamp after every add
            acc = np.clip(acc + qx[:, k:k + 1] * qw[k:k + 1, :], INT32_MIN, INT32_MAX)
        return acc.astype(np.int32)

    def forward(self, q, return_accumulators: bool = False):
        """int8 logits for int8 input codes of shape (N, in)."""
        q = np.asarray(q)
        if q.dtype.kind not in "iu" or q.ndim != 2:
            raise TypeError(f"q must be a 2-D integer array of input codes, got {q.dtype} of shape {q.shape}")
        accs = []
        for layer in self.layers:
            acc = self.accumulate(layer, q)
            accs.append(acc)
            y = multiply_by_quantized_multiplier(acc, layer.multiplier, layer.shift).astype(np.int64)
            q = np.clip(y + layer.out_zero_point, layer.out_min, layer.out_max).astype(np.int8)
        return (q, accs) if return_accumulators else q

    def dequantize_output(self, q) -> np.ndarray:
        last = self.layers[-1]
        return (np.asarray(q, dtype=np.float64) - last.out_zero_point) * last.out_scale

    def predict(self, x) -> np.ndarray:
        """Class predictions: argmax of the int8 logits (first index on ties)."""
        return np.argmax(self.forward(self.quantize_input(x)), axis=1)


def reference_forward(model: IntegerMLP, q_in: Sequence[Sequence[int]]) -> list:
    """The integer network recomputed with Python ints, element by element.

    Independent of the numpy path: the zero-point correction is recomputed
    from the weights, the accumulator wraps (or saturates) after *every*
    addition, and the requantization uses :func:`ref_srdhm` /
    :func:`ref_rounding_divide_by_pot`.
    """
    rows = [[int(v) for v in r] for r in q_in]
    for layer in model.layers:
        w = [[int(v) for v in r] for r in layer.weight.tolist()]
        bias = [int(v) for v in layer.bias.tolist()]
        m0 = [int(v) for v in layer.multiplier.tolist()]
        sh = [int(v) for v in layer.shift.tolist()]
        n_in, n_out = len(w), len(w[0])
        step = _wrap32 if model.accumulator == "wrap" else _sat32
        out_rows = []
        for r in rows:
            out = []
            for c in range(n_out):
                acc = bias[c]
                for k in range(n_in):
                    acc = step(acc + r[k] * w[k][c])
                y = ref_multiply_by_quantized_multiplier(acc, m0[c], sh[c]) + layer.out_zero_point
                out.append(min(max(y, layer.out_min), layer.out_max))
            out_rows.append(out)
        rows = out_rows
    return rows


def _act_qparams(lo: float, hi: float):
    """Asymmetric int8 (scale, zero point) for the range [lo, hi] (0 included, exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(np.clip(-128 - round(lo / scale), -128, 127))
    return scale, zp


def export_mlp(weights: Sequence, biases: Sequence, *, act_qparams: Optional[Sequence] = None,
               weight_scales: Optional[Sequence] = None, calib_x=None, activation: str = "relu",
               accumulator: str = "wrap") -> IntegerMLP:
    """Export float weights (shape (in, out) per layer) and quantization parameters to an :class:`IntegerMLP`.

    Parameters
    ----------
    weights, biases : sequences of arrays
        Layer ``l`` computes ``x @ weights[l] + biases[l]``, ReLU between layers.
    act_qparams : sequence of (scale, zero_point), optional
        int8 parameters of each layer's input and of the logits (``L + 1``
        entries). Default: min-max calibration on ``calib_x`` through the
        float model.
    weight_scales : sequence of arrays, optional
        Per-output-channel weight scales (symmetric, codes -127..127);
        default ``max|w[:, c]| / 127``.
    calib_x : array_like, optional
        Calibration inputs (needed when ``act_qparams`` is None).
    activation : {"relu"}
        Only ReLU networks are exported (the ReLU becomes the clamp).
    accumulator : {"wrap", "saturate"}

    Raises
    ------
    ValueError
        Mismatched shapes, NaN or Inf in the weights, biases or ``calib_x``,
        missing calibration data, bad scales or zero points.
    """
    if activation != "relu":
        raise ValueError(f"integer-only export supports ReLU MLPs, got activation {activation!r}")
    if accumulator not in _ACCUMULATORS:
        raise ValueError(f"accumulator must be one of {_ACCUMULATORS}, got {accumulator!r}")
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    bs = [np.asarray(b, dtype=np.float64) for b in biases]
    if len(ws) != len(bs) or not ws:
        raise ValueError(f"need one bias per weight matrix, got {len(ws)} weights and {len(bs)} biases")
    for i, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2 or b.shape != (w.shape[1],) or (i and w.shape[0] != ws[i - 1].shape[1]):
            raise ValueError(f"layer {i}: weight shape {w.shape} and bias shape {b.shape} do not chain")
        for name, v in (("weights", w), ("biases", b)):
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name}[{i}] must be finite, got {int(np.isnan(v).sum())} NaN and "
                                 f"{int(np.isinf(v).sum())} infinite value(s)")
    L = len(ws)
    if weight_scales is None:
        weight_scales = [np.where(np.max(np.abs(w), axis=0) > 0, np.max(np.abs(w), axis=0) / 127.0, 1.0)
                         for w in ws]
    weight_scales = [_check_scale(s).reshape(-1) for s in weight_scales]
    if act_qparams is None:
        if calib_x is None:
            raise ValueError("pass act_qparams or calib_x (calibration inputs) to choose activation scales")
        h = np.asarray(calib_x, dtype=np.float64)
        if h.size == 0 or not np.all(np.isfinite(h)):
            raise ValueError(f"calib_x must be non-empty and finite, got {h.size} value(s), "
                             f"{int(np.isnan(h).sum())} NaN and {int(np.isinf(h).sum())} infinite")
        ranges = []
        for i, (w, b) in enumerate(zip(ws, bs)):
            ranges.append((h.min(), h.max()))
            h = h @ w + b
            if i < L - 1:
                h = np.maximum(h, 0.0)
        ranges.append((h.min(), h.max()))
        act_qparams = [_act_qparams(lo, hi) for lo, hi in ranges]
    if len(act_qparams) != L + 1:
        raise ValueError(f"act_qparams needs {L + 1} (scale, zero_point) pairs, got {len(act_qparams)}")
    layers = []
    for i in range(L):
        s_x, z_x = float(_check_scale(act_qparams[i][0])), int(act_qparams[i][1])
        s_y, z_y = float(_check_scale(act_qparams[i + 1][0])), int(act_qparams[i + 1][1])
        for z in (z_x, z_y):
            if not -128 <= z <= 127:
                raise ValueError(f"activation zero points must be in -128..127, got {z}")
        sw = weight_scales[i]
        if sw.shape != (ws[i].shape[1],):
            raise ValueError(f"layer {i}: weight scales need shape ({ws[i].shape[1]},), got {sw.shape}")
        qw = quantize(ws[i], sw, 0, bits=8, narrow_range=True, axis=1)
        bias_scale = s_x * sw
        qb = np.clip(np.rint(bs[i] / bias_scale), INT32_MIN, INT32_MAX).astype(np.int64)
        start = qb - z_x * qw.astype(np.int64).sum(axis=0)
        start = (((start + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)) if accumulator == "wrap" else \
            np.clip(start, INT32_MIN, INT32_MAX)
        mult = [quantize_multiplier(m) for m in bias_scale / s_y]
        layers.append(IntLayer(
            weight=qw, bias=start.astype(np.int32),
            multiplier=np.array([m for m, _ in mult], dtype=np.int32),
            shift=np.array([s for _, s in mult], dtype=np.int32),
            in_scale=s_x, in_zero_point=z_x, weight_scale=sw, out_scale=s_y, out_zero_point=z_y,
            out_min=max(-128, z_y) if i < L - 1 else -128))
    return IntegerMLP(layers, accumulator)


def fake_quant_forward(weights, biases, model: IntegerMLP, x) -> np.ndarray:
    """The float (fake-quantized) network that ``model`` implements, for comparison.

    Inputs and hidden activations are fake-quantized with the exported
    activation parameters, weights with the per-channel weight scales; the
    bias stays float and the logits are not quantized.
    """
    h = np.asarray(x, dtype=np.float64)
    for i, (w, b, layer) in enumerate(zip(weights, biases, model.layers)):
        hq = (quantize(h, layer.in_scale, layer.in_zero_point, bits=8).astype(np.float64)
              - layer.in_zero_point) * layer.in_scale
        wq = layer.weight.astype(np.float64) * layer.weight_scale
        h = hq @ wq + np.asarray(b, dtype=np.float64)
        if i < len(model.layers) - 1:
            h = np.maximum(h, 0.0)
    return h

"""Quantization-aware training policies and the export of a QAT-trained MLP to integer-only inference.

Importing this module registers, with :func:`lowprec.amp.register_policy`:

================== ==================================================================
``int8-qat``        int8 weights per output channel (LSQ step per channel, symmetric
                    -127..127), 8-bit activations per tensor (LSQ, unsigned after a
                    ReLU, signed for the network input); fp32 everything else
``int8-qat-minmax`` the same widths with min-max scales: weights per channel from their
                    current max |w|, activations from an EMA of the batch min/max
                    (asymmetric, int8 codes with a zero point)
``int4-qat``        4-bit weights per channel and 4-bit activations per tensor (LSQ)
================== ==================================================================

so that ``lowprec train --precision int8-qat`` trains with fake quantization.
The QAT policies keep no separate master copy: their fp32 weights are the
master (an LSQ step is initialised from data on the first forward pass,
after the optimizer has been built).

:func:`export_qat_mlp` turns a trained model into a
:class:`lowprec.quant.intinfer.IntegerMLP` with exactly the quantizers'
scales and zero points (LSQ unsigned codes ``0..255`` become int8 codes with
zero point -128), and :func:`compare_integer` reports the accuracy of the
fake-quant model next to the integer-only one.

Examples
--------
>>> from lowprec import amp
>>> import lowprec.quant.qat
>>> p = amp.get_policy("int8-qat")
>>> p.master_weights, p.weight_fake_quant is not None
(False, True)
"""

from __future__ import annotations

import numpy as np

from ..amp import Policy, get_policy, register_policy
from .fake_quant import LSQQuantizer, MinMaxQuantizer
from .intinfer import IntegerMLP, _act_qparams, export_mlp

__all__ = ["qat_policy", "export_qat_mlp", "compare_integer", "QAT_POLICIES"]

_FP32_TABLE = {"weight": "fp32", "weight_used": "fp32", "activation": "fp32", "activation_grad": "fp32",
               "weight_grad": "fp32", "optimizer_state": "fp32", "master": None}


class _LSQWeights:
    def __init__(self, bits):
        self.bits = bits

    def __call__(self, layer_index, out_features):
        return LSQQuantizer(self.bits, True, channels=out_features, axis=-1, narrow_range=True,
                            name=f"layer{layer_index}.weight_quant")

    def __eq__(self, other):
        return type(other) is type(self) and other.bits == self.bits

    def __hash__(self):
        return hash((type(self).__name__, self.bits))


class _LSQActs(_LSQWeights):
    def __call__(self, layer_index, out_features):
        return LSQQuantizer(self.bits, "auto", name=f"layer{layer_index}.act_quant")


class _MinMaxWeights(_LSQWeights):
    def __call__(self, layer_index, out_features):
        return MinMaxQuantizer(self.bits, "weight", axis=-1, name=f"layer{layer_index}.weight_quant")


class _MinMaxActs(_LSQWeights):
    def __call__(self, layer_index, out_features):
        return MinMaxQuantizer(self.bits, "activation", name=f"layer{layer_index}.act_quant")


def qat_policy(name: str, bits_w: int = 8, bits_a: int = 8, method: str = "lsq", description: str = "") -> Policy:
    """A fp32 policy with fake-quantized weights (per channel) and activations (per tensor).

    ``method`` is ``"lsq"`` (trainable steps) or ``"minmax"``.
    """
    if method not in ("lsq", "minmax"):
        raise ValueError(f"method must be 'lsq' or 'minmax', got {method!r}")
    wq, aq = (_LSQWeights(bits_w), _LSQActs(bits_a)) if method == "lsq" else \
        (_MinMaxWeights(bits_w), _MinMaxActs(bits_a))
    return Policy(name, dict(_FP32_TABLE), "fp32", "fp32", "none", weight_fake_quant=wq, act_fake_quant=aq,
                  description=description or f"QAT: int{bits_w} weights per channel, {bits_a}-bit activations "
                                             f"per tensor ({method}), fp32 otherwise")


QAT_POLICIES = (
    qat_policy("int8-qat", 8, 8, "lsq",
               "QAT: int8 weights per channel and 8-bit activations per tensor, LSQ steps; fp32 otherwise"),
    qat_policy("int8-qat-minmax", 8, 8, "minmax",
               "QAT: int8 weights per channel (max |w|) and 8-bit activations (EMA min-max); fp32 otherwise"),
    qat_policy("int4-qat", 4, 4, "lsq",
               "QAT: 4-bit weights per channel and 4-bit activations per tensor, LSQ steps; fp32 otherwise"),
)
for _p in QAT_POLICIES:
    register_policy(_p)


def _weight_scales(layer) -> np.ndarray:
    wq = layer.weight_quant
    if isinstance(wq, LSQQuantizer):
        if wq.bits != 8:
            raise ValueError("integer-only export needs 8-bit weights")
        return np.asarray(wq.qparams()[0], dtype=np.float64)
    w = np.asarray(layer.weight.data, dtype=np.float64)
    amax = np.max(np.abs(w), axis=0)
    return np.where(amax > 0, amax / 127.0, 1.0)


def export_qat_mlp(model, calib_x, *, accumulator: str = "wrap") -> IntegerMLP:
    """Export an MLP trained under ``int8-qat`` / ``int8-qat-minmax`` to integer-only inference.

    Weight scales and activation scales/zero points are those of the model's
    quantizers; the logits' int8 range is calibrated (min-max) on ``calib_x``
    through the fake-quant model.

    Raises
    ------
    ValueError
        Not a ReLU MLP with 8-bit weight and activation quantizers on every layer.
    """
    from ..autograd import no_grad

    if getattr(model, "activation", None) != "relu":
        raise ValueError("integer-only export needs a ReLU MLP")
    for i, layer in enumerate(model.layers):
        if layer.weight_quant is None or layer.act_quant is None:
            raise ValueError(f"layer {i} has no fake quantizer: train under an int8 QAT policy first")
        if layer.act_quant.bits != 8:
            raise ValueError("integer-only export needs 8-bit activations")
    calib_x = np.asarray(calib_x, dtype=np.float32)
    if calib_x.size == 0 or np.isnan(calib_x).any():
        raise ValueError("calib_x must be non-empty and NaN-free")
    for layer in model.layers:
        if isinstance(layer.act_quant, MinMaxQuantizer):
            layer.act_quant.training = False
    with no_grad():
        logits = np.asarray(model(calib_x).data, dtype=np.float64)
    acts = []
    for layer in model.layers:
        s, z, _signed = layer.act_quant.qparams()
        acts.append((float(s), int(z)))
    acts.append(_act_qparams(logits.min(), logits.max()))
    ws = [np.asarray(layer.weight.data, dtype=np.float64) for layer in model.layers]
    bs = [np.asarray(layer.bias.data, dtype=np.float64) for layer in model.layers]
    return export_mlp(ws, bs, act_qparams=acts, weight_scales=[_weight_scales(layer) for layer in model.layers],
                      accumulator=accumulator)


def compare_integer(model, int_model: IntegerMLP, x, y) -> dict:
    """Accuracies of the fake-quant model and of its integer-only export on ``(x, y)``.

    Also reports how often their predictions agree.
    """
    from ..autograd import no_grad

    for layer in model.layers:
        if isinstance(layer.act_quant, MinMaxQuantizer):
            layer.act_quant.training = False
    with no_grad():
        fq = np.argmax(model(np.asarray(x, dtype=np.float32)).data, axis=1)
    iq = int_model.predict(np.asarray(x, dtype=np.float64))
    y = np.asarray(y)
    return {"fake_quant_accuracy": float(np.mean(fq == y)), "integer_accuracy": float(np.mean(iq == y)),
            "agreement": float(np.mean(fq == iq))}


def policy_is_qat(policy) -> bool:
    """Whether a policy fake-quantizes weights or activations."""
    p = get_policy(policy)
    return p.weight_fake_quant is not None or p.act_fake_quant is not None

"""Quantizers: affine integer, codebook, companding, learned step size, and integer-only inference.

The numpy-level API is imported here. The autograd parts live in
:mod:`lowprec.quant.fake_quant` (fake-quantization ops and trainable
quantizer modules) and :mod:`lowprec.quant.qat` (importing it registers the
``int8-qat``, ``int8-qat-minmax`` and ``int4-qat`` training policies); they
are imported on demand so that ``lowprec.quant`` does not pull in the
training stack. See ``docs/quantization.md``.

Examples
--------
>>> import numpy as np
>>> from lowprec import quant
>>> quant.quantize(np.array([0.3, -2.0]), 0.25, bits=4).tolist()
[1, -8]
"""

from .affine import AffineQuantizer, choose_qparams, dequantize, fake_quantize, qrange, quantize
from .calibration import EMAObserver, calibrate, minmax_range, mse_range, percentile_range
from .codebook import Codebook, lloyd_max, uniform_codebook
from .companding import CompandingQuantizer, compand, expand
from .intinfer import IntegerMLP, export_mlp, reference_forward
from .lsq import lsq_backward, lsq_forward, lsq_init_step

__all__ = ["quantize", "dequantize", "fake_quantize", "qrange", "choose_qparams", "AffineQuantizer",
           "calibrate", "minmax_range", "percentile_range", "mse_range", "EMAObserver", "Codebook",
           "uniform_codebook", "lloyd_max", "compand", "expand", "CompandingQuantizer", "lsq_forward",
           "lsq_backward", "lsq_init_step", "IntegerMLP", "export_mlp", "reference_forward"]

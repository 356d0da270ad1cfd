"""lowprec: bit-exact simulation of low-precision arithmetic on CPU and CUDA.

    >>> import lowprec
    >>> float(lowprec.round_to(1 + 2**-8 + 2**-40, "bf16"))
    1.0078125
"""

from .core import PreparedRounding, decode, encode, prepare_rounding, round_to
from .formats import (BF16, E8M0, FP4_E2M1FN, FP6_E2M3FN, FP6_E3M2FN, FP8_E4M3FN, FP8_E5M2, FP16, FP32,
                      INT4, INT8, PRESETS, TF32, UE4M3, UINT8, FixedFormat, FloatFormat, all_values,
                      get_format, preset_names)
from .rng import RandomStream
from .rounding import Rounding, get_rounding

__version__ = "0.1.0"

__all__ = [
    "round_to", "encode", "decode", "prepare_rounding", "PreparedRounding", "FloatFormat", "FixedFormat",
    "get_format", "preset_names", "all_values", "PRESETS", "Rounding", "get_rounding", "RandomStream", "FP32", "TF32", "FP16",
    "BF16", "FP8_E4M3FN", "FP8_E5M2", "FP6_E3M2FN", "FP6_E2M3FN", "FP4_E2M1FN", "INT8", "UINT8",
    "INT4", "E8M0", "UE4M3", "__version__",
]

"""Numba kernels: the one definition of each rule, and the compiled loops built from it.

- ``scalar.py``: rounding, encoding and decoding of one value, the random bits (the definition);
  ``rules.py``: the accumulation kernels' arithmetic rules, each implementation with its proof;
  ``events.py``: what a rounding did (telemetry's events);
- ``cpu.py`` (element loops), ``accum.py`` / ``accumulate_cpu.py`` (the general accumulation kernel),
  ``narrow.py``, ``linalg_narrow.py``, ``linalg_fp32.py`` (fast matmul tiles), ``operands.py`` (packing,
  operand statistics), ``optim_cpu.py``, ``activations.py``: loops built from those;
- ``plain.py``: scalar.py's definitions and the runtime-argument loops run by the Python interpreter
  (first calls on a few values, no compiler);
- ``mma.py`` (a matrix unit's fused step, the definition) and ``mma_cpu.py``: the hardware matrix units
  (lowprec.matrix_units);
- ``block_cpu.py`` (block-scaled formats: the scale and element steps, their loops) and ``block_cuda.py``
  (its CUDA twin) (lowprec.block);
- ``cuda.py`` / ``linalg_cuda.py``: the CUDA twins (cuda.py is the only module that imports numba.cuda);
- ``dispatch.py``: every backend and kernel choice (with the fast kernels' tables); ``linalg_cpu.py``: the
  predicates those tables call; ``jit.py``: numba plumbing (the kernel decorator, cache keys, source
  digests, parallel launches); ``vectors.py``: LLVM vector intrinsics of the tile kernels.

docs/kernels.md is the map for maintainers.
"""

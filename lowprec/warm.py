"""``lowprec warm``: compile the kernels that common calls use into numba's cache, in parallel processes.

A new installation has an empty numba cache: the first calls of each kind of kernel compile it (seconds
each, once; later processes load it from the cache). ``lowprec warm`` does that compiling up front,
spreading the groups of kernels over ``--jobs`` processes (each process compiles on one core), so that
a later test run, study or training run starts with everything it needs. CI runs it before the tests:
the test workers then load kernels instead of each compiling the same ones.

Each group runs public entry points on small data, so it compiles exactly what those calls use.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

__all__ = ["warm", "GROUPS"]


def _elements() -> None:
    """round_to / encode / decode of float32 and float64 arrays (the runtime-argument loops), the specialised
    parallel loops of the common formats at nearest-even and of bf16's stochastic rounding, and fp8/fp16 encode and
    decode of large arrays."""
    from . import core
    from .kernels import dispatch

    n = dispatch.INTERPRET_UPTO + 1  # a few values would run interpreted: compile the loops
    for dtype in (np.float32, np.float64):
        x = np.resize(np.array([0.1, -2.5, 3e4], dtype=dtype), n)
        core.round_to(x, "bf16")
        core.round_to(x, "int8")
        core.encode(x, "fp8_e4m3fn")
        core.decode(np.arange(n), "fp16", dtype=dtype)
    big = np.linspace(-10, 10, 1 << 18, dtype=np.float32)
    for fmt in ("fp16", "int8", "fp8_e4m3fn"):
        core.round_to(big, fmt)
    core.round_to(big, "bf16", "stochastic", seed=0)  # (gradients, studies: the parallel stochastic loop)
    for fmt in ("fp8_e4m3fn", "fp16"):  # the encode loops and the decode table's gather (uint8, uint16 patterns)
        core.decode(core.encode(big, fmt), fmt, dtype=np.float32)


def _training() -> None:
    """A short training run per kind of policy (matmul tile kernels, optimizer steps, telemetry)."""
    from .data import load_digits
    from .train import TrainConfig, train

    ds = load_digits()
    for precision, optimizer in (("fp32", "sgd"), ("bf16-mixed", "sgd"), ("fp16-mixed", "adam")):
        train(TrainConfig(precision=precision, epochs=1, hidden=(32,), optimizer=optimizer), dataset=ds)


def _accumulation() -> None:
    """sum / dot / matmul with the accumulation presets (general and fast kernels), and lowprec.ops' loop (with
    it, the compiled steps that numba's CUDA simulator calls from Python: kernels/accum.py)."""
    from . import accumulation, linalg, ops

    rng = np.random.default_rng(0)
    small_a, small_b = rng.standard_normal((4, 8)), rng.standard_normal((8, 3))
    big_a, big_b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))
    for name in accumulation.preset_names():
        linalg.matmul(small_a, small_b, name, seed=0)
        linalg.matmul(big_a, big_b, name, seed=0)
        linalg.sum(small_a, None, name, seed=0)
    ops.add(small_a, small_a, "fp16")


def _matrix_units() -> None:
    """The matrix-unit kernels (kernels/mma_cpu.py): the tile under one preset per input kind (fp16, bf16, tf32,
    fp8, promoted fp8), float64 and float32 operands; the block-scaled units (the scale-shifted exponents and
    the group-sum tile, with their block quantization); and the one-output functions of kernels/mma.py with the
    argument types the CUDA kernel passes them (numba's CUDA simulator calls them compiled, from Python)."""
    from . import linalg
    from .kernels import mma

    rng = np.random.default_rng(0)
    big_a, big_b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))
    for name in ("nv-ampere-fp16", "nv-ampere-bf16", "nv-hopper-tf32", "nv-hopper-fp8", "nv-hopper-fp8-promote128",
                 "nv-blackwell-mxfp8", "nv-blackwell-nvfp4"):
        linalg.matmul(big_a, big_b, name)
        linalg.matmul(big_a.astype(np.float32), big_b.astype(np.float32), name)
    i64, f64 = np.int64, np.float64
    a, b, s = np.ones((2, 32)), np.ones((32, 2)), np.zeros((2, 2), dtype=np.int32)
    mma.output(a, b, f64(0.0), s, s, i64(0), 0, 0, i64(32), i64(32), i64(25), i64(-133), i64(-6), i64(-6), i64(-126),
               i64(23), i64(-126), f64(2.0**128), True, i64(0))
    mma.output_groups(a, b, f64(0.0), s, s, 0, 0, i64(32), i64(32), i64(16), i64(35), i64(-139), i64(-126), i64(23),
                      i64(-126), f64(2.0**128), True, i64(0))


def _block_loops() -> None:
    """lowprec.block's runtime-argument loop (its float32 quantize and encode and float64 signatures), which
    small arrays and first calls run. (The specialised loops, :func:`_block_large`, compile in the other
    process: this group's calls come first, long before that process can have cached a specialised loop that
    would make these small calls load it instead.)"""
    from . import block

    small = np.linspace(-3, 3, 64, dtype=np.float32)
    block.quantize(small, "mxfp8_e4m3")
    block.encode(small, "mxfp8_e4m3")
    block.quantize(small.astype(np.float64), "mxfp4")


def _block_large() -> None:
    """lowprec.block's specialised loops of large arrays that the tests and docs use (float32 mxfp8_e4m3 and
    nvfp4, float32 mxfp4 with stochastic rounding; float64 mxfp4, which ``analyze`` runs). Once cached, calls
    of any size run them (kernels/dispatch.block_array)."""
    from . import block
    from .kernels import dispatch

    big = np.linspace(-3, 3, dispatch.BLOCK_SPECIALISE_FROM, dtype=np.float32)
    for name in ("mxfp8_e4m3", "nvfp4"):
        block.quantize(big, name)
    block.quantize(big, "mxfp4", rounding="stochastic", seed=0)
    block.analyze(big, "mxfp4")


#: the groups, longest first (a process takes the next group when it is free)
GROUPS = {"block-large": _block_large, "block": _block_loops, "matrix-units": _matrix_units, "elements": _elements,
          "accumulation": _accumulation, "training": _training}


def warm(jobs: int = 2, groups=None, quiet: bool = True) -> dict:
    """Compile the groups' kernels into numba's cache in up to ``jobs`` processes; returns seconds per group."""
    names = list(GROUPS) if groups is None else list(groups)
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown warm group(s) {unknown}; expected some of {list(GROUPS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    pending = list(names)
    running: dict = {}
    took: dict = {}
    while pending or running:
        while pending and len(running) < jobs:
            g = pending.pop(0)
            cmd = [sys.executable, "-c", f"from lowprec.warm import GROUPS; GROUPS[{g!r}]()"]
            running[g] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None,
                                           stderr=subprocess.PIPE, text=True), time.perf_counter())
        for g, (p, t0) in list(running.items()):
            if p.poll() is not None:
                err = p.stderr.read()
                del running[g]
                if p.returncode != 0:
                    raise RuntimeError(f"warm group {g!r} failed:\n{err[-2000:]}")
                took[g] = time.perf_counter() - t0
        time.sleep(0.05)
    return took


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("warm", help="compile the common kernels into numba's cache, in parallel",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: the CPU count)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    t = time.perf_counter()
    took = warm(args.jobs, [g for g in args.groups.split(",") if g])
    for g, s in took.items():
        print(f"{g:<14} {s:6.1f} s")
    print(f"{'all':<14} {time.perf_counter() - t:6.1f} s ({args.jobs} processes)")
    return 0

"""Block quantization throughput: lowprec.block.quantize vs a parallel copy, ml_dtypes casts and gfloat.

2**24 float32 values (normal random data) quantized to mxfp8_e4m3, mxfp4 and nvfp4 (and the
1x128 fp8 tiles), on the threads numba has (2 on the reference machine). Columns:

* copy: a parallel numba copy of the same array into a preallocated output (the floor; the target is
  lowprec >= 0.5x of it);
* lowprec: ``lowprec.block.quantize`` (allocates its result), nearest-even and stochastic, and nearest-even
  into a preallocated ``out=`` (as the copy writes); ``lowprec.block.encode`` (element patterns, fp4 packed two
  per byte, and encoded scales);
* ml_dtypes: the element cast alone (``x.astype(float8_e4m3fn).astype(float32)``,
  ``float4_e2m1fn``), no scales: a lower bound on any numpy-level block quantizer built on it;
* gfloat: ``gfloat.quantize_block`` (pure Python, MX), when it is installed, on 2**12 values.

Every number is Melem/s (best of N) and a ratio to the copy: the median, over N repetitions, of the copy's
time over the method's, each repetition timing a copy right before the method (so that other work on the
machine slows both alike), and the best such ratio. Run: ``python benchmarks/bench_block.py``. On a machine
that other work loads, ``--cpu-time`` measures CPU seconds on one numba thread instead (process time, which a
descheduled process does not accumulate). The first call of each kind of format compiles its loop (seconds;
then cached on disk).
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
from numba import njit, prange

import lowprec.block as lb


@njit(parallel=True, cache=True)
def _pcopy(a, b):
    for i in prange(a.size):
        b[i] = a[i]


def _best(f, repeat):
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def _gfloat_rate(x):
    try:
        import gfloat
        from gfloat.formats import format_info_ocp_e4m3, format_info_ocp_e8m0
    except ImportError:
        return None
    fmt = gfloat.BlockFormatInfo("mxfp8_e4m3", format_info_ocp_e4m3, 32, format_info_ocp_e8m0)
    v = x[: 1 << 12].astype(np.float64)
    t0 = time.perf_counter()
    list(gfloat.quantize_block(fmt, v, gfloat.compute_scale_amax))
    return v.size / (time.perf_counter() - t0) / 1e6


def _best_cpu(f, repeat):
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu-time", action="store_true", help="CPU time on one numba thread (a loaded machine)")
    args = ap.parse_args(argv)
    import ml_dtypes

    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.cpu_time:
        numba.set_num_threads(1)

    n = 1 << args.log2n
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    copy_out = np.empty_like(x)

    def timed(f):
        t0 = clock()
        f()
        return clock() - t0

    def paired(f, repeat):
        """(best seconds of f, median and best of copy time / f time over repetitions of copy-then-f)."""
        f()
        _pcopy(x, copy_out)
        pairs = [(timed(lambda: _pcopy(x, copy_out)), timed(f)) for _ in range(repeat)]
        ratios = [tc / tf for tc, tf in pairs]
        return min(tf for _, tf in pairs), float(np.median(ratios)), max(ratios)

    t_copy = _best(lambda: _pcopy(x, copy_out), args.repeat) if not args.cpu_time else _best_cpu(
        lambda: _pcopy(x, copy_out), args.repeat)
    copy = n / t_copy / 1e6
    print(f"{n} float32 values, {numba.get_num_threads()} numba threads"
          + (", CPU time (process time), not wall time" if args.cpu_time else "")
          + f", load average {os.getloadavg()[0]:.1f} (other work on the machine distorts wall times)")
    print("| method | Melem/s | vs copy (median) | vs copy (best) |")
    print("|---|---|---|---|")
    print(f"| parallel copy | {copy:.0f} | 1.00 | 1.00 |")
    for name in ("mxfp8_e4m3", "mxfp4", "nvfp4", "fp8_1x128"):
        for mode in ("nearest_even", "stochastic"):
            t, med, top = paired(lambda name=name, mode=mode: lb.quantize(x, name, rounding=mode, seed=1), args.repeat)
            print(f"| lowprec {name} {mode} | {n / t / 1e6:.0f} | {med:.2f} | {top:.2f} |")
        t, med, top = paired(lambda name=name: lb.quantize(x, name, out=out), args.repeat)  # no new array to touch
        print(f"| lowprec {name} nearest_even, out= | {n / t / 1e6:.0f} | {med:.2f} | {top:.2f} |")
        t, med, top = paired(lambda name=name: lb.encode(x, name), args.repeat)  # patterns (fp4 packed) and scales
        print(f"| lowprec {name} encode | {n / t / 1e6:.0f} | {med:.2f} | {top:.2f} |")
    for label, dt in (("e4m3fn", ml_dtypes.float8_e4m3fn), ("e2m1fn", ml_dtypes.float4_e2m1fn)):
        t, med, top = paired(lambda dt=dt: x.astype(dt).astype(np.float32), max(1, args.repeat // 2))
        print(f"| ml_dtypes {label} cast only | {n / t / 1e6:.0f} | {med:.2f} | {top:.2f} |")
    g = _gfloat_rate(x)
    print(f"| gfloat quantize_block mxfp8_e4m3 | {g:.3f} | {g / copy:.5f} | - |" if g is not None
          else "| gfloat | not installed | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

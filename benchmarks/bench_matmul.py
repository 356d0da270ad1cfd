"""Matmul speed: lowprec's bit-exact accumulations against numpy's BLAS sgemm, side by side.

Run:  python benchmarks/bench_matmul.py [--sizes 512 1024] [--threads 2] [--repeat 3]

For each size n the script times numpy float32 ``a @ b`` (BLAS, with the
same thread count) and lowprec.linalg.matmul for several accumulations on
the same inputs, and prints seconds and the ratio BLAS time / lowprec time
(1.0 = as fast as BLAS; higher is faster). Every lowprec result is
bit-reproducible; BLAS's is not (its order is unspecified). Compilation is
excluded (warm-up calls per case and size). BLAS and lowprec calls alternate and
each time is the best of ``--repeat`` calls, so that a load that comes and
goes on a shared machine hits both alike (a call slower than 2 s is not
repeated). Every timed call starts after ``--settle`` seconds (0.3) of idle:
OpenBLAS's threads keep spinning for about 0.1-0.2 s after a call, and a
lowprec call started in that time shares the cores with them (measured: the
fp16-fp32 product at 1024^3 on 2 threads took 0.03-0.06 s right after a BLAS
call, 0.017 s after 0.2 s of idle). Targets (issue 3): fp16/bf16 inputs with fp32 accumulation >= 0.5,
fp16/bf16 accumulators >= 0.1, stochastic accumulation >= 0.05; hardware matrix units
(``lowprec.matrix_units``: alignment, truncation and one rounding per fused step) >= 0.05; the
block-scaled ``nv-blackwell-mxfp8`` is timed with its block quantization of float32 inputs (lowprec.block,
OCP floor rule) included.
"""

from __future__ import annotations

import argparse
import os
import time


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


CASES = ["fp16-fp32", "bf16-fp32", "fp32", "e4m3-fp32", "fp16", "bf16", "fp16-sr", "bf16-sr", "e4m3-chunk128",
         "nv-ampere-bf16", "nv-hopper-fp8", "nv-hopper-fp8-promote128", "nv-blackwell-mxfp8"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many alternating calls")
    ap.add_argument("--cases", nargs="+", default=CASES)
    ap.add_argument("--settle", type=float, default=0.3, help="seconds of idle before each timed call")
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    import numpy as np

    from lowprec.accumulation import get_accumulation
    from lowprec.linalg import matmul
    from lowprec.matrix_units import get_matrix_unit, is_matrix_unit

    def timed(fn):
        time.sleep(args.settle)  # let the other library's threads stop spinning
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    rng = np.random.default_rng(0)
    print(f"threads={args.threads}  (ratio = BLAS sgemm time / lowprec time; measured on a shared machine; load: the "
          "1-minute load average when the case finished, with the CPU count)")
    print(f"{'n':>5} {'accumulation':>16} {'lowprec s':>10} {'BLAS s':>9} {'ratio':>7} {'load':>10}")
    warm = {}
    rows = []
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        a @ b
        for name in args.cases:
            acc = get_matrix_unit(name) if is_matrix_unit(name) else get_accumulation(name)
            if (name, n) not in warm:  # compile outside the timing (at this size: kernels differ by size)
                matmul(a[:64, :64], b[:64, :64], acc, seed=1, backend="cpu")
                matmul(a, b, acc, seed=1, backend="cpu")
                warm[name, n] = True
            t_lp, t_blas = [], []
            for _ in range(args.repeat):  # alternate, so that a passing load hits both alike
                t_blas.append(timed(lambda: a @ b))
                t_lp.append(timed(lambda: matmul(a, b, acc, seed=1, backend="cpu")))
                t_blas.append(timed(lambda: a @ b))
                if t_lp[-1] > 2.0:
                    break
            lp, blas = min(t_lp), min(t_blas)
            rows.append((n, name, lp, blas))
            load = f"{os.getloadavg()[0]:.1f}/{os.cpu_count()}"
            print(f"{n:>5} {name:>16} {lp:>10.4f} {blas:>9.4f} {blas / lp:>7.3f} {load:>10}", flush=True)
    print("\n| accumulation | " + " | ".join(f"{n}^3" for n in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for name in args.cases:
        cells = [f"{blas / lp:.3f}" for n in args.sizes for (m, nm, lp, blas) in rows if m == n and nm == name]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

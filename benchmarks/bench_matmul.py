"""Matmul speed: lowprec's bit-exact accumulations against numpy's BLAS sgemm, side by side.

Run:  python benchmarks/bench_matmul.py [--sizes 512 1024] [--threads 2] [--repeat 3]

For each size n the script times numpy float32 ``a @ b`` (BLAS, with the
same thread count) and lowprec.linalg.matmul for several accumulations on
the same inputs, and prints seconds and the ratio BLAS time / lowprec time
(1.0 = as fast as BLAS; higher is faster). Every lowprec result is
bit-reproducible; BLAS's is not (its order is unspecified). Compilation is
excluded (one warm-up call per case). Targets (issue 3): fp16/bf16 inputs
with fp32 accumulation >= 0.5, fp16/bf16 accumulators >= 0.1, stochastic
accumulation >= 0.05.
"""

from __future__ import annotations

import argparse
import os
import time


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


CASES = ["fp16-fp32", "bf16-fp32", "fp32", "e4m3-fp32", "fp16", "bf16", "bf16-sr", "e4m3-chunk128"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timed calls (fast cases)")
    ap.add_argument("--cases", nargs="+", default=CASES)
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    import numpy as np

    from lowprec.accumulation import get_accumulation
    from lowprec.linalg import matmul

    def best(fn, repeat):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    rng = np.random.default_rng(0)
    print(f"threads={args.threads}  (ratio = BLAS sgemm time / lowprec time; measured on a shared machine)")
    print(f"{'n':>5} {'accumulation':>16} {'lowprec s':>10} {'BLAS s':>9} {'ratio':>7}")
    warm = {}
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        a @ b
        for name in args.cases:
            acc = get_accumulation(name)
            if name not in warm:  # compile outside the timing
                matmul(a[:64, :64], b[:64, :64], acc, seed=1, backend="cpu")
                warm[name] = True
            slow = acc.acc_format.name != "fp32" or acc.is_stochastic or acc.order != "sequential"
            reps = 1 if slow else args.repeat
            t_lp = best(lambda: matmul(a, b, acc, seed=1, backend="cpu"), reps)
            t_blas = best(lambda: a @ b, args.repeat)
            print(f"{n:>5} {name:>16} {t_lp:>10.4f} {t_blas:>9.4f} {t_blas / t_lp:>7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One short check that CUDA gives the CPU's bits, then CUDA throughput.

    python scripts/gpu_check.py                  # on a machine with a GPU
    python scripts/gpu_check.py --quick --simulator   # tiny sizes, numba's CUDA simulator

Checks, each CPU (backend="cpu") against CUDA (backend="cuda"), bit for bit:
  1. lowprec.round_to for every format preset x every rounding mode, float32
     and float64 inputs (random values over a wide exponent range, plus
     zeros, subnormals, Inf, NaN and ties);
  2. lowprec.linalg.matmul for every accumulation preset at a few shapes
     (batched, K across chunk boundaries), stochastic ones with a seed;
     and every hardware matrix-unit preset (lowprec.matrix_units) with an addend, and the block-scaled
     units on pre-quantized operands (block_matmul: E8M0's whole range, a NaN scale);
  3. the elementwise ops in bf16 and fp16, nearest and stochastic.
Then it times the CUDA matmul kernels (no throughput under the simulator).
Exit status 0 when every comparison is bit-identical, 1 otherwise.

Each line is printed as it happens, with the seconds since the start: on a
real GPU each kernel specialisation takes ~20-30 s to compile (measured on an
H200 with numba-cuda 0.30.4), so a run is dominated by compilation. A
comparison that raises is reported and counted as a failure; the run goes on.
numba-cuda 0.30.4 fails to import with numpy 2.5 (np.row_stack is gone):
use numpy <= 2.4 there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _bits(x):
    import numpy as np

    x = np.atleast_1d(np.asarray(x))
    return x.view(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the simulator)")
    ap.add_argument("--simulator", action="store_true", help="use numba's CUDA simulator (no GPU needed)")
    args = ap.parse_args(argv)
    if args.simulator:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        if "numba" in sys.modules:
            print("warning: numba was imported before --simulator took effect", file=sys.stderr)

    import numpy as np

    import lowprec
    import lowprec.ops as ops
    from lowprec.accumulation import PRESETS
    from lowprec.kernels.cuda import cuda, is_available, is_simulator
    from lowprec.linalg import matmul

    if not is_available():
        print("no CUDA device (and the simulator is off): nothing to check")
        return 1
    sim = is_simulator()
    print(f"device: {'CUDA simulator' if sim else cuda.get_current_device().name}")
    rng = np.random.default_rng(2024)
    failures = []

    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    def check(label, cpu_fn, gpu_fn):
        try:
            cpu, gpu = cpu_fn(), gpu_fn()
        except Exception as exc:  # report and go on: one broken kernel must not hide the others
            failures.append(label)
            log(f"ERROR {label}: {type(exc).__name__}: {str(exc)[-500:]}")
            return False
        ok = np.asarray(cpu).shape == np.asarray(gpu).shape and np.array_equal(_bits(cpu), _bits(gpu))
        if not ok:
            failures.append(label)
            log(f"MISMATCH {label}")
        return ok

    # 1. round_to: every format x every mode, both carriers
    n = 8 if args.quick else 200_000
    x64 = rng.standard_normal(n) * 2.0 ** rng.integers(-40, 40, n)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 2.0 ** -149, 1 + 2.0 ** -11,
                         1 + 2.0 ** -8, 65520.0, 464.0, -448.0, 2.0 ** -24, 3 * 2.0 ** -25])
    x64 = np.concatenate([specials, x64])
    count = 0
    for fmt_name in lowprec.preset_names():
        fmt = lowprec.get_format(fmt_name)
        for mode in lowprec.Rounding:
            for x in (x64, x64.astype(np.float32)):
                if not fmt.fits_in(x.dtype):
                    continue
                kw = dict(seed=7) if mode is lowprec.Rounding.STOCHASTIC else {}
                with np.errstate(over="ignore"):
                    check(f"round_to {fmt_name} {mode.label} {x.dtype}",
                          lambda: lowprec.round_to(x, fmt, mode, backend="cpu", **kw),
                          lambda: lowprec.round_to(x, fmt, mode, backend="cuda", **kw))
                count += 1
        log(f"round_to {fmt_name}: done")
    log(f"round_to: {count} format/mode/dtype combinations checked")

    # 2. every accumulation preset at a few shapes
    shapes = [((2, 3, 5), (5, 2)), ((1, 130), (130, 3))] if args.quick else \
        [((3, 17, 300), (300, 9)), ((64, 260), (260, 48)), ((1, 1000), (1000, 1))]
    for name, acc in PRESETS.items():
        for sa, sb in shapes:
            a = rng.standard_normal(sa) * 3
            b = rng.standard_normal(sb) * 2
            if name == "int8-int32":
                a, b = np.round(a * 40), np.round(b * 60)
            else:
                a, b = a.astype(np.float32), b.astype(np.float32)
            check(f"matmul {name} {sa}x{sb}", lambda: matmul(a, b, acc, seed=11, backend="cpu"),
                  lambda: matmul(a, b, acc, seed=11, backend="cuda"))
        log(f"matmul {name}: done")
    log(f"matmul: {len(PRESETS)} presets x {len(shapes)} shapes checked")

    # 2b. every hardware matrix-unit preset (lowprec.matrix_units), with an addend
    from lowprec.matrix_units import PRESETS as UNITS

    for name in UNITS:
        for sa, sb in shapes:
            a = (rng.standard_normal(sa) * 3).astype(np.float32)
            b = (rng.standard_normal(sb) * 2).astype(np.float32)
            c = np.float32(rng.standard_normal())
            check(f"matrix unit {name} {sa}x{sb}", lambda: matmul(a, b, name, c=c, backend="cpu"),
                  lambda: matmul(a, b, name, c=c, backend="cuda"))
    log(f"matrix units: {len(UNITS)} presets x {len(shapes)} shapes checked")

    # 2c. the block-scaled units on operands quantized elsewhere (block_matmul): scales over the whole scale
    # format (E8M0 from 2**-127 to 2**127), a NaN scale, a zero block
    from lowprec.matrix_units import block_matmul

    for name, u in UNITS.items():
        if u.block_format is None:
            continue
        M, K, N = (3, 2 * u.step_k + 5, 2) if args.quick else (64, 1000, 48)
        nb = -(-K // u.block)
        qa = np.asarray(lowprec.round_to(rng.uniform(-1, 1, (M, K)) * float(u.a_format.max), u.a_format))
        qb = np.asarray(lowprec.round_to(rng.uniform(-1, 1, (K, N)) * float(u.b_format.max), u.b_format))
        if u.block_format.scale.name == "e8m0":
            sa, sb = 2.0 ** rng.integers(-127, 128, (M, nb)), 2.0 ** rng.integers(-127, 128, (nb, N))
        else:
            sa = np.asarray(lowprec.round_to(rng.uniform(0, 448, (M, nb)), "ue4m3"), dtype=np.float64)
            sb = np.asarray(lowprec.round_to(rng.uniform(0, 448, (nb, N)), "ue4m3"), dtype=np.float64)
        sa[0, 0] = np.nan
        qa[1, :u.block] = 0.0
        av = qa * np.where(np.isnan(np.repeat(sa, u.block, 1)[:, :K]), 1.0, np.repeat(sa, u.block, 1)[:, :K])
        bv = qb * np.repeat(sb, u.block, 0)[:K]
        c = rng.standard_normal((M, N)).astype(np.float32)
        check(f"block_matmul {name} {M}x{K}x{N}", lambda: block_matmul(av, sa, bv, sb, u, c=c, backend="cpu"),
              lambda: block_matmul(av, sa, bv, sb, u, c=c, backend="cuda"))
    log("block-scaled matrix units: block_matmul checked")

    # 3. ops
    m = 16 if args.quick else 100_000
    x, y, z = (rng.standard_normal((3, m)) * 10).astype(np.float32)
    for op in ("add", "sub", "mul", "div", "sqrt", "fma"):
        fn = getattr(ops, op)
        operands = (np.abs(x),) if op == "sqrt" else (x, y, z) if op == "fma" else (x, y)
        for fmt in ("bf16", "fp16"):
            for mode in ("nearest_even", "stochastic"):
                check(f"ops.{op} {fmt} {mode}", lambda: fn(*operands, fmt, mode, seed=3, backend="cpu"),
                      lambda: fn(*operands, fmt, mode, seed=3, backend="cuda"))
    log("ops: 6 ops x 2 formats x 2 modes checked")

    # throughput (real GPU only)
    if not sim:
        size = 1024
        a = rng.standard_normal((size, size)).astype(np.float32)
        b = rng.standard_normal((size, size)).astype(np.float32)
        for name in ("fp16-fp32", "fp16", "bf16-sr", "e4m3-chunk128"):
            matmul(a[:64, :64], b[:64, :64], name, seed=1, backend="cuda")
            t = time.perf_counter()
            matmul(a, b, name, seed=1, backend="cuda")
            dt = time.perf_counter() - t
            log(f"CUDA matmul {name:>14} {size}^3: {dt:.3f} s, {size ** 3 / dt / 1e9:.2f} G multiply-adds/s "
                  "(including transfers)")
        xs = rng.standard_normal(1 << 24).astype(np.float32)
        for mode in ("nearest_even", "stochastic"):
            lowprec.round_to(xs[:1024], "bf16", mode, seed=1, backend="cuda")
            t = time.perf_counter()
            lowprec.round_to(xs, "bf16", mode, seed=1, backend="cuda")
            dt = time.perf_counter() - t
            log(f"CUDA round_to bf16 {mode}: {xs.size / dt / 1e6:.0f} Melem/s (including transfers)")

    print("ALL BIT-IDENTICAL" if not failures else f"{len(failures)} MISMATCHES")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())

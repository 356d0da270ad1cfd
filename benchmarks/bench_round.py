"""Rounding throughput: lowprec.round_to vs the memory floor and peers, in one run, as ratios.

2**24 float32 values (normal random data), on 1 and 2 threads, and the same values as float64 (numpy's
default dtype; against a copy of float64 values). Columns:

* copy: a parallel numba copy of the same array into a preallocated output (the floor);
* lowprec: ``round_to(..., out=preallocated)`` against that floor, and ``round_to``
  allocating its result (as numpy's astype does: a new 64 MiB array costs page
  faults on first touch) against the peers, per preset and mode;
* numpy f16: ``x.astype(float16).astype(float32)``;
* ml_dtypes: bf16 and fp8 e4m3fn round trips;
* encode (bit patterns) and decode (to float32) of fp16 and fp8 e4m3fn, allocating, against numpy's and
  ml_dtypes' casts to and from those dtypes.

Every number is Melem/s (best of N). Against the copy floor: the median, over N repetitions, of the
copy's time over lowprec's, each repetition timing a copy right before the call (so that other work on
the machine, or a memory bandwidth that varies from minute to minute, slows both alike), and the best such
ratio; against the peer for the same format: best rate over best rate. Run:
``python benchmarks/bench_round.py``.
Also reports the first-call time of a fresh process (numba's on-disk cache).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numba
import numpy as np
from numba import njit, prange

import lowprec


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


def _first_call_seconds() -> float:
    code = ("import time, numpy as np, lowprec; x = np.ones(1 << 16, np.float32); "
            "t = time.perf_counter(); lowprec.round_to(x, 'bf16'); print(time.perf_counter() - t)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # fill the cache
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def _paired(f, copy, repeat):
    """(best seconds of f, median and best of copy time / f time over repetitions of copy-then-f)."""
    def timed(g):
        t0 = time.perf_counter()
        g()
        return time.perf_counter() - t0

    f()
    copy()
    pairs = [(timed(copy), timed(f)) for _ in range(repeat)]
    ratios = [tc / tf for tc, tf in pairs]
    return min(tf for _, tf in pairs), float(np.median(ratios)), max(ratios)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    import ml_dtypes

    n = 1 << args.log2n
    x64 = np.random.default_rng(0).standard_normal(n)
    x = x64.astype(np.float32)
    out = np.empty_like(x)
    out64 = np.empty_like(x64)
    peers = {
        "numpy f16": lambda: x.astype(np.float16).astype(np.float32),
        "ml_dtypes bf16": lambda: x.astype(ml_dtypes.bfloat16).astype(np.float32),
        "ml_dtypes e4m3fn": lambda: x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32),
    }
    peer_rate = {k: n / _best(f, args.repeat) / 1e6 for k, f in peers.items()}
    cases = [("fp16", "nearest_even", "numpy f16"), ("bf16", "nearest_even", "ml_dtypes bf16"),
             ("fp8_e4m3fn", "nearest_even", "ml_dtypes e4m3fn"), ("fp8_e5m2", "nearest_even", None),
             ("fp16", "stochastic", None), ("bf16", "stochastic", None), ("fp8_e4m3fn", "stochastic", None),
             ("int8", "nearest_even", None)]
    print(f"n = 2^{args.log2n} float32, best of {args.repeat}; rates in Melem/s\n")
    for k, v in peer_rate.items():
        print(f"peer {k:<18} {v:8.0f}")
    print()
    print("| threads | format | rounding | Melem/s, out= | vs copy (median) | vs copy (best) | Melem/s, new array "
          "| vs peer (same format) |")
    print("|---|---|---|---|---|---|---|---|")
    before = numba.get_num_threads()
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        copy = n / _best(lambda: _pcopy(x, out), args.repeat) / 1e6
        print(f"| {threads} | (parallel copy) | - | {copy:.0f} | 1.00 | 1.00 | - | - |")
        for fmt, mode, peer in cases:
            t, med, top = _paired(lambda: lowprec.round_to(x, fmt, mode, seed=1, out=out), lambda: _pcopy(x, out),
                                  args.repeat)
            rate = n / t / 1e6
            alloc = n / _best(lambda: lowprec.round_to(x, fmt, mode, seed=1), args.repeat) / 1e6
            vs_peer = f"{alloc / peer_rate[peer]:.1f}x {peer}" if peer else "-"
            print(f"| {threads} | {fmt} | {mode} | {rate:.0f} | {med:.2f} | {top:.2f} | {alloc:.0f} | {vs_peer} |")
        # float64 data (numpy's default dtype), against a copy of float64 values
        copy64 = n / _best(lambda: _pcopy(x64, out64), args.repeat) / 1e6
        print(f"| {threads} | (parallel copy, float64) | - | {copy64:.0f} | 1.00 | 1.00 | - | - |")
        for fmt, mode in (("fp16", "nearest_even"), ("bf16", "nearest_even"), ("fp16", "stochastic"),
                          ("bf16", "stochastic")):
            t, med, top = _paired(lambda: lowprec.round_to(x64, fmt, mode, seed=1, out=out64),
                                  lambda: _pcopy(x64, out64), args.repeat)
            alloc = n / _best(lambda: lowprec.round_to(x64, fmt, mode, seed=1), args.repeat) / 1e6
            print(f"| {threads} | {fmt}, float64 data | {mode} | {n / t / 1e6:.0f} | {med:.2f} | {top:.2f} "
                  f"| {alloc:.0f} | - |")
    # encode (bit patterns in the smallest unsigned dtype) and decode, both allocating, against the peers' casts
    pats = {"fp16": lowprec.encode(x, "fp16"), "fp8_e4m3fn": lowprec.encode(x, "fp8_e4m3fn")}
    ml = {"fp16": np.float16, "fp8_e4m3fn": ml_dtypes.float8_e4m3fn}
    peer_ops = {("encode", f): (lambda f=f: x.astype(ml[f])) for f in ml}
    peer_ops.update({("decode", f): (lambda f=f: pats[f].view(ml[f]).astype(np.float32)) for f in ml})
    peer_codec = {k: n / _best(g, args.repeat) / 1e6 for k, g in peer_ops.items()}
    print("\n| threads | op | format | Melem/s | peer (numpy / ml_dtypes cast) Melem/s | vs peer |")
    print("|---|---|---|---|---|---|")
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        for (op, fmt), peer in peer_codec.items():
            if op == "encode":
                rate = n / _best(lambda: lowprec.encode(x, fmt), args.repeat) / 1e6
            else:
                rate = n / _best(lambda: lowprec.decode(pats[fmt], fmt, np.float32), args.repeat) / 1e6
            print(f"| {threads} | {op} | {fmt} | {rate:.0f} | {peer:.0f} | {rate / peer:.1f}x |")
    numba.set_num_threads(before)
    print(f"\nfirst call in a fresh process (cache warm): {_first_call_seconds():.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

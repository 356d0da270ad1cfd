"""Exhaustive check: every one of the 2**32 float32 bit patterns, rounded to nearest-even.

Compares lowprec.round_to with numpy's float16 cast (fp16) and ml_dtypes
(bf16, fp8 e4m3fn, fp8 e5m2), and int8/uint8 with ``np.clip(np.rint(x), lo, hi)``
(a fixed-point result has no negative zero), and prints the mismatch counts. About 7 minutes
on a 2-core machine; not part of CI. Run: ``python scripts/exhaustive_float32.py``.
"""

import argparse
import sys
import time

import numpy as np

import lowprec


def main(argv=None) -> int:
    import ml_dtypes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp16,bf16,fp8_e4m3fn,fp8_e5m2,int8,uint8")
    ap.add_argument("--chunk-log2", type=int, default=24)
    args = ap.parse_args(argv)
    def cast(dtype):
        return lambda x: x.astype(dtype).astype(np.float32)

    def integer(lo, hi):
        return lambda x: np.clip(np.rint(x), np.float32(lo), np.float32(hi)) + np.float32(0.0)

    refs = {"fp16": cast(np.float16), "bf16": cast(ml_dtypes.bfloat16), "fp8_e4m3fn": cast(ml_dtypes.float8_e4m3fn),
            "fp8_e5m2": cast(ml_dtypes.float8_e5m2), "int8": integer(-128, 127), "uint8": integer(0, 255)}
    names = args.formats.split(",")
    mismatches = {n: 0 for n in names}
    chunk = 1 << args.chunk_log2
    t0 = time.time()
    for start in range(0, 1 << 32, chunk):
        bits = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        for n in names:
            ours = lowprec.round_to(x, n)
            with np.errstate(all="ignore"):
                ref = refs[n](x)
            same = (ours.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(ours) & np.isnan(ref))
            mismatches[n] += int(same.size - same.sum())
        if (start // chunk) % 32 == 31:
            print(f"{(start + chunk) / 2 ** 32:6.1%} done, {time.time() - t0:.0f} s, mismatches {mismatches}",
                  flush=True)
    print(f"all 2^32 float32 inputs checked in {time.time() - t0:.0f} s")
    for n in names:
        print(f"{n}: {mismatches[n]} mismatches")
    return 0 if not any(mismatches.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

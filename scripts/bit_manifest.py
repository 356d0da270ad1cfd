"""A manifest of the bits lowprec computes: one sha256 per case over a broad grid.

Kernel changes that promise identical bits are checked with it: build the manifest before the change
(for example in a ``git worktree`` of the old commit), again after, on 1 and 2 threads, and compare.

    python scripts/bit_manifest.py --out before.json            # on the old code
    python scripts/bit_manifest.py --check before.json          # on the new code: exit 1 on any difference
    NUMBA_NUM_THREADS=1 python scripts/bit_manifest.py --check before.json

Cases (all through public entry points):
- ``round_to`` / ``encode`` of every preset format x every rounding mode (stochastic with several seeds,
  stream offsets and random-bit counts; saturation on and off), float32 and float64 inputs of edge and
  random data, at a small size and at one above the parallel-loop threshold; ``decode`` of every bit
  pattern of the formats up to 16 bits;
- ``ops.add/sub/mul/div/sqrt/fma`` of every float preset x every mode;
- ``linalg.matmul/dot/sum`` of every accumulation preset on edge data (NaN, Inf, subnormals, signed
  zeros, overflow) and random data at sizes below and above each fast path's threshold;
- complete training runs for every policy x optimizer x loss-scaling mode (weights, optimizer state,
  step rows and telemetry).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np


def _h(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
            continue
        a = np.asarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:24]


def _try(fn) -> str:
    """The hash of fn()'s result, or the start of the error it raises (a case that must keep failing)."""
    try:
        with np.errstate(all="ignore"):
            return _h(fn())
    except (ValueError, TypeError) as exc:
        return "error: " + str(exc)[:80]


def _edge(dtype) -> np.ndarray:
    f = np.finfo(dtype)
    vals = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 3.0, 1e-3, 1e-8, 1e-30,
            65504.0, 65520.0, 65536.0, 57344.0, 61440.0, 448.0, 464.0, 480.0, 127.5, 128.0, -128.5, 255.5,
            6.0, 7.0, 28.0, 30.0, 7.5, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 2.0 ** -15,
            2.0 ** -9, 2.0 ** -10, 2.0 ** -16, 2.0 ** -17, 2.0 ** -126, 2.0 ** -133, 2.0 ** -134,
            2.0 ** -149, float(f.tiny), float(f.max), -float(f.max), 1 + 2.0 ** -8, 1 + 2.0 ** -11,
            1 + 2.0 ** -12 + 2.0 ** -20, 3.3895313892515355e38, 3.4e38, 0.1, -0.1, 1 / 3]
    with np.errstate(over="ignore"):
        return np.array(vals, dtype=dtype)


def _data(dtype, n, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp2(rng.integers(-30, 20, n))
    x = x.astype(dtype)
    e = _edge(dtype)
    x[: e.size] = e
    return x


def rounding_cases(out: dict) -> None:
    import lowprec
    from lowprec import Rounding

    fmts = lowprec.preset_names()
    for dtype in (np.float32, np.float64):
        for n in (257, 1 << 16):
            x = _data(dtype, n, 1)
            for name in fmts:
                fmt = lowprec.get_format(name)
                for mode in Rounding:
                    seeds = [0, 1, 12345] if mode == Rounding.STOCHASTIC else [None]
                    for seed in seeds:
                        for rb in ((32, 8, 64) if mode == Rounding.STOCHASTIC and seed == 0 else (32,)):
                            for sat in (None, True):
                                tag = f"round/{dtype.__name__}/{n}/{name}/{mode.name}/{seed}/{rb}/{sat}"
                                try:
                                    r = lowprec.round_to(x, fmt, mode, seed=seed, random_bits=rb, saturate=sat,
                                                         offset=(2**32 - 100) if seed == 1 else 0)
                                    out[tag] = _h(r)
                                except (ValueError, TypeError) as exc:
                                    out[tag] = "error: " + str(exc)[:80]
                    if n == 257:
                        tag = f"encode/{dtype.__name__}/{name}/{mode.name}"
                        xx = x[~np.isnan(x)] if not fmt.has_nan else x
                        try:
                            out[tag] = _h(lowprec.encode(xx, fmt, mode, seed=3))
                        except (ValueError, TypeError) as exc:
                            out[tag] = "error: " + str(exc)[:80]
    for name in fmts:
        fmt = lowprec.get_format(name)
        if fmt.bits <= 16:
            bits = np.arange(2 ** fmt.bits)
            try:
                out[f"decode/{name}"] = _h(lowprec.decode(bits, fmt))
            except (ValueError, TypeError) as exc:
                out[f"decode/{name}"] = "error: " + str(exc)[:80]


def ops_cases(out: dict) -> None:
    from lowprec import Rounding, ops

    x = _data(np.float64, 300, 2)
    y = _data(np.float64, 300, 3)[::-1].copy()
    z = _data(np.float64, 300, 4)
    for name in ("fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1fn", "int8"):
        for mode in Rounding:
            seed = 5 if mode == Rounding.STOCHASTIC else None
            for op, args in (("add", (x, y)), ("sub", (x, y)), ("mul", (x, y)), ("div", (x, y)),
                             ("sqrt", (np.abs(x),)), ("fma", (x, y, z))):
                tag = f"ops/{name}/{mode.name}/{op}"
                try:
                    with np.errstate(all="ignore"):
                        out[tag] = _h(getattr(ops, op)(*args, name, mode, seed=seed))
                except (ValueError, TypeError) as exc:
                    out[tag] = "error: " + str(exc)[:80]


def _mat(rng, shape, kind):
    if kind == "edge":
        e = _edge(np.float64)
        e = e[np.abs(e) < 1e6]
        a = rng.choice(np.concatenate([e, [np.nan, np.inf, -np.inf, 60000.0, -60000.0]]), size=shape)
        return a
    return rng.standard_normal(shape) * np.exp2(rng.integers(-4, 4, shape))


def linalg_cases(out: dict) -> None:
    from lowprec import accumulation, linalg

    rng = np.random.default_rng(7)
    shapes = [(3, 5, 4), (17, 33, 9), (64, 96, 80), (96, 200, 160), (160, 160, 192)]
    for preset in accumulation.preset_names():
        for (m, k, n) in shapes:
            for kind in ("rand", "edge", "rand32"):
                if kind == "edge" and m * n * k > 2_000_000:
                    continue
                a = _mat(rng, (m, k), "edge" if kind == "edge" else "rand")
                b = _mat(rng, (k, n), "edge" if kind == "edge" else "rand")
                if kind == "rand32":
                    a, b = a.astype(np.float32), b.astype(np.float32)
                tag = f"matmul/{preset}/{m}x{k}x{n}/{kind}"
                out[tag] = _try(lambda: linalg.matmul(a, b, preset, seed=11))
        a = _mat(rng, (5, 300), "rand")
        b = _mat(rng, (300,), "rand")
        e = _mat(rng, (4, 40), "edge")
        out[f"dot/{preset}"] = _try(lambda: linalg.dot(a[0], b, preset, seed=1))
        out[f"matvec/{preset}"] = _try(lambda: linalg.matmul(a, b, preset, seed=2))
        out[f"sum/{preset}/all"] = _try(lambda: linalg.sum(a, None, preset, seed=3))
        out[f"sum/{preset}/ax0"] = _try(lambda: linalg.sum(a, 0, preset, seed=3))
        out[f"sum/{preset}/ax1"] = _try(lambda: linalg.sum(a, 1, preset, seed=3))
        out[f"sum/{preset}/zeros"] = _try(lambda: linalg.sum(np.array([1.0, -1.0]), None, preset, seed=3))
        out[f"sum/{preset}/edge"] = _try(lambda: linalg.sum(e, 1, preset, seed=3))


def training_cases(out: dict) -> None:
    from lowprec import amp, train
    import dataclasses

    from lowprec.data import load_digits

    ds = load_digits()
    ds = dataclasses.replace(ds, x_train=ds.x_train[:256], y_train=ds.y_train[:256], x_test=ds.x_test[:128],
                             y_test=ds.y_test[:128])
    for policy in amp.policy_names():
        for opt in ("sgd", "adam"):
            for ls in ("none", "static:1024", "dynamic"):
                for mom, wd in ((0.9, 0.0), (0.0, 1e-3)):
                    if opt == "adam" and mom == 0.0:
                        continue
                    cfg = train.TrainConfig(precision=policy, epochs=2, seed=3, batch_size=64, lr=0.05,
                                            hidden=(32,), loss_scale=ls, optimizer=opt, momentum=mom,
                                            weight_decay=wd)
                    try:
                        r = train.train(cfg, dataset=ds)
                    except (ValueError, TypeError) as exc:
                        out[f"train/{policy}/{opt}/{ls}/m{mom}/wd{wd}"] = "error: " + str(exc)[:80]
                        continue
                    sd = r.optimizer.state_dict()
                    st = [s for st in sd["state"] for s in st if s is not None]
                    rows = np.array([[float(v) for v in row.values()] for row in r.step_rows])
                    tel = json.dumps(r.telemetry.state_dict(), sort_keys=True, default=str) if r.telemetry else ""
                    tag = f"train/{policy}/{opt}/{ls}/m{mom}/wd{wd}"
                    out[tag] = _h(*r.weights(), *st, rows) + "/" + hashlib.sha256(tel.encode()).hexdigest()[:12]


def build(parts) -> dict:
    out: dict = {}
    for part in parts:
        t = time.perf_counter()
        {"round": rounding_cases, "ops": ops_cases, "linalg": linalg_cases, "train": training_cases}[part](out)
        print(f"{part}: {time.perf_counter() - t:.1f} s, {len(out)} cases", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the manifest (JSON) here")
    ap.add_argument("--check", help="compare with this manifest; exit 1 on any difference")
    ap.add_argument("--parts", default="round,ops,linalg,train")
    args = ap.parse_args(argv)
    import numba

    print(f"numba threads: {numba.get_num_threads()}", file=sys.stderr)
    got = build(args.parts.split(","))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(got, fh, indent=0, sort_keys=True)
    if args.check:
        with open(args.check) as fh:
            want = json.load(fh)
        bad = [k for k in want if k in got and want[k] != got[k]]
        missing = [k for k in want if k not in got and k.split("/")[0] in _prefixes(args.parts)]
        for k in bad[:50]:
            print(f"DIFFERS {k}: {want[k]} -> {got[k]}")
        for k in missing[:20]:
            print(f"MISSING {k}")
        print(f"{len(got)} cases, {len(bad)} differ, {len(missing)} missing")
        return 1 if bad or missing else 0
    return 0


def _prefixes(parts):
    m = {"round": ("round", "encode", "decode"), "ops": ("ops",), "linalg": ("matmul", "dot", "matvec", "sum"),
         "train": ("train",)}
    return [p for part in parts.split(",") for p in m[part]]


if __name__ == "__main__":
    sys.exit(main())

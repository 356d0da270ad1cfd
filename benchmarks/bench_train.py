"""One training epoch of a 64-256-256-10 MLP (batch 64, SGD momentum) on digits, several ways.

1. plain numpy float32 (hand-written forward/backward, BLAS matmuls): the floor;
2. lowprec with the ``fp32`` policy (bit-exact fixed-order matmuls, telemetry on);
3. lowprec with ``bf16-mixed`` (every tensor rounded by role, fp32 master weights),
   with telemetry on and off;
4. the scaled recipes with the ideal fp32 accumulation, ``fp8-delayed`` and ``mxfp8``
   (issue 15's target: within 4x of numpy), and on a hardware matrix unit,
   ``fp8-delayed@nv-hopper`` and ``mxfp8@nv-blackwell`` (target: within 20x), telemetry off
   (``--variants`` picks others: ``POLICY`` or ``POLICY@HARDWARE``, ``+tel`` for telemetry on).

Compilation is excluded (a warm-up epoch of each variant runs first); then
each variant runs ``--repeat`` epochs in a row, twice over (a second pass
samples the machine's load again), and its best epoch is reported. Epochs are
not interleaved one by one: OpenBLAS's threads keep spinning for a while after
a call and would slow the epoch that follows a numpy one. Run: ``python benchmarks/bench_train.py [--threads N] [--repeat R]``;
for a like-for-like single-thread comparison also set ``OPENBLAS_NUM_THREADS=1``
(numpy's BLAS) with ``--threads 1`` (lowprec's kernels). Timings on a machine
shared with other jobs are pessimistic and noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowprec.amp import Precision
from lowprec.telemetry import Telemetry
from lowprec.autograd import MLP, SGD, softmax_cross_entropy
from lowprec.data import load_digits

SIZES = [64, 256, 256, 10]
BATCH = 64
LR, MOMENTUM = 0.05, 0.9


def numpy_epoch(ds, params, bufs, perm):
    """SGD-momentum epoch in float32 numpy; params = [W1, b1, W2, b2, W3, b3] (W: in x out)."""
    x_all, y_all = ds.x_train, ds.y_train
    lr, mu = np.float32(LR), np.float32(MOMENTUM)
    for b in range(0, len(perm), BATCH):
        idx = perm[b:b + BATCH]
        x, y = x_all[idx], y_all[idx]
        hs, pre = [x], []
        n_layers = len(params) // 2
        for i in range(n_layers):
            z = hs[-1] @ params[2 * i] + params[2 * i + 1]
            pre.append(z)
            if i < n_layers - 1:
                hs.append(np.maximum(z, 0))
        z = pre[-1] - pre[-1].max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        g = p / np.float32(len(y))
        for i in reversed(range(n_layers)):
            grads = (hs[i].T @ g, g.sum(axis=0))
            if i:
                g = (g @ params[2 * i].T) * (pre[i - 1] > 0)
            for j, gr in zip((2 * i, 2 * i + 1), grads):
                bufs[j] = gr if bufs[j] is None else mu * bufs[j] + gr
                params[j] -= lr * bufs[j]


def lowprec_epoch(ds, model, opt, perm):
    for b in range(0, len(perm), BATCH):
        idx = perm[b:b + BATCH]
        if model.ctx.telemetry is not None:
            model.ctx.telemetry.begin_step(b)
        loss = softmax_cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if model.ctx.telemetry is not None:
            model.ctx.telemetry.end_step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: numba's)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--variants", default="fp32+tel,bf16-mixed+tel,bf16-mixed,fp8-delayed,mxfp8,"
                    "fp8-delayed@nv-hopper,mxfp8@nv-blackwell",
                    help="comma list of POLICY[@HARDWARE][+tel] (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
    ds = load_digits(seed=0)
    perm = np.random.default_rng(0).permutation(len(ds.y_train))
    print(f"one epoch = {-(-len(perm) // BATCH)} steps of batch {BATCH}, MLP {'-'.join(map(str, SIZES))}")

    ref = MLP(SIZES, seed=0)
    params = [p.data.astype(np.float32) for p in ref.parameters()]
    bufs = [None] * len(params)
    variants = [("numpy float32", lambda: numpy_epoch(ds, params, bufs, perm))]
    targets = [None]
    for spec in (v.strip() for v in args.variants.split(",") if v.strip()):
        tel = spec.endswith("+tel")
        name, _, hw = spec.removesuffix("+tel").partition("@")
        ctx = Precision(name, seed=0, telemetry=Telemetry(keep_steps=False) if tel else None, hardware=hw or None)
        model = MLP(SIZES, seed=0, ctx=ctx)
        opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        variants.append((f"lowprec {name}" + (f"@{hw}" if hw else "") + ("" if tel else " (no telemetry)"),
                         lambda model=model, opt=opt: lowprec_epoch(ds, model, opt, perm)))
        targets.append(20.0 if hw else (4.0 if name in ("fp8-delayed", "mxfp8") else None))
    for _, fn in variants:
        fn()  # warm-up: compiles the kernels
    best = [float("inf")] * len(variants)
    for _ in range(2):  # two passes over the variants, --repeat epochs in a row each
        for i, (_, fn) in enumerate(variants):
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t)
    t_np = best[0]
    print(f"{'variant':<44} {'epoch s':>9} {'x numpy':>9} {'target':>8}")
    for (label, _), t, target in zip(variants, best, targets):
        goal = "" if target is None else f"<= {target:g}x" + (" ok" if t / t_np <= target else " MISSED")
        print(f"{label:<44} {t:9.4f} {t / t_np:9.2f} {goal:>8}")


if __name__ == "__main__":
    main()

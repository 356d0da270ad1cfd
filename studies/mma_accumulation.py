"""mma-accumulation: the relative error of an fp8 GEMM against K on the Hopper matrix unit, with and without promotion.

What it shows: the relative error of C = A B, A (M x K) and B (K x N) of
e4m3 values, against K = 256 .. 16384, computed (1) by the modelled Hopper
fp8 tensor core (``nv-hopper-fp8``: each 32-product step aligns the terms to
the largest exponent, keeps 13 fractional bits and cuts the output to e8m13,
the running sum fed back as the addend), (2) by the same unit with
DeepSeek's promotion every 128 elements of K into an fp32 accumulator on the
CUDA cores (``nv-hopper-fp8-promote128``) and (3) by an ideal fp32
accumulator (``e4m3-fp32``: exact products, every addition rounded to
nearest in fp32). The reference is exact: the e4m3 values times 2^9 are
integers, their products and sums are exact in int64, and the relative error
of each output is taken against that. Unpromoted truncation always loses
magnitude, so where the products share a sign the error grows linearly with
K; promotion restarts the short-accumulator chain every 128 elements and
keeps the error at that of one 128-element block, whatever K.

Input distributions (stated, because the number depends on them): A and B
hold i.i.d. samples, rounded to e4m3 after one power-of-two per-tensor scale
that brings the largest magnitude to 448 or just below (relative errors do
not depend on it): ``uniform`` on [0, 1) (all products positive: the worst
case for truncation) and ``normal`` N(0, 1) (zero mean: truncation errors of
both signs partly cancel). The second panel sweeps the mean mu of N(mu, 1)
inputs at K = 4096: the error grows with the share of same-sign products.
Error measures: the normwise relative error ||C - C_exact||_F / ||C_exact||_F
(plotted), the mean and the largest elementwise relative error (CSV and
table).

What it reproduces: DeepSeek-AI, "DeepSeek-V3 technical report", arXiv
2412.19437 (2024), section 3.3.2: the fp8 GEMM accumulation of H800 tensor
cores keeps about 14 bits, which for K = 4096 gives "a maximum relative error
of nearly 2%" on random matrices; promoting partial sums to fp32 every N_C =
128 elements fixes it. The model is that of Xie et al. (MMA-Sim, arXiv
2511.10909, 2025): 13 fractional bits plus the leading one are DeepSeek's
14 bits. lowprec's number depends on the inputs: with all-positive inputs
the error at K = 4096 is 6.6% (every measure), with zero-mean Gaussian inputs
0.13% normwise (while elementwise relative errors are unbounded: outputs
near zero from cancellation carry the truncation error of larger partial
sums; over 64 x 64 outputs their mean is 2.4%, but 1.4% with promotion too,
so that measure shows cancellation, not accumulation); about 2% normwise or
largest elementwise needs inputs N(mu, 1) with mu between 0.75 and 1 (1.8%
and 2.9% normwise). DeepSeek do not state their distribution or error
measure, so their 2% lies inside the range lowprec spans, not on one
distribution; the promoted error stays 10-100x lower in every case.

Outputs: ``mma_accumulation.png``, ``mma_accumulation.csv`` (one row per
distribution x K x accumulation: normwise, mean and max relative error),
``mma_accumulation.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "mma_accumulation"

#: label -> the accumulation given to lowprec.linalg.matmul.
CONFIGS = {
    "nv-hopper-fp8": "nv-hopper-fp8",
    "nv-hopper-fp8-promote128": "nv-hopper-fp8-promote128",
    "ideal fp32 accumulator": "e4m3-fp32",
}
DISTS = ("uniform", "normal")
DEEPSEEK = (4096, 0.02)  # arXiv 2412.19437, sec. 3.3.2: about 2% at K = 4096 without promotion
E4M3_MAX = 448.0
_INT_SHIFT = 9  # every e4m3 value times 2**9 is an integer (the smallest subnormal is 2**-9)


def sizes(quick: bool) -> dict:
    if quick:
        return {"ks": [256, 1024, 4096], "m": 16, "n": 16, "mus": [0.0, 0.5, 1.0, 2.0], "mu_k": 4096}
    return {"ks": [256, 512, 1024, 2048, 4096, 8192, 16384], "m": 64, "n": 64,
            "mus": [0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0], "mu_k": 4096}


def _sample(dist: str, shape, rng) -> np.ndarray:
    """Samples of ``dist``: "uniform" ([0, 1)), "normal" (N(0, 1)) or "normal:MU" (N(MU, 1))."""
    if dist == "uniform":
        return rng.uniform(0.0, 1.0, shape)
    if dist == "normal" or dist.startswith("normal:"):
        mu = float(dist.split(":", 1)[1]) if ":" in dist else 0.0
        return rng.standard_normal(shape) + mu
    raise ValueError(f"dist must be 'uniform', 'normal' or 'normal:MU', got {dist!r}")


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """``x`` times the power of two that brings max|x| to at most 448, rounded to nearest e4m3 (a
    per-tensor scaled cast, as an fp8 GEMM's operands are made)."""
    from lowprec import round_to

    amax = float(np.max(np.abs(x)))
    s = 2.0 ** np.floor(np.log2(E4M3_MAX / amax)) if amax > 0 else 1.0
    return np.asarray(round_to(x * s, "fp8_e4m3fn"), dtype=np.float64)


def operands(dist: str, k: int, m: int, n: int, seed: int) -> tuple:
    """The e4m3 operands A (m x k) and B (k x n) of one GEMM."""
    rng = np.random.default_rng([seed, k, m, n])
    return to_e4m3(_sample(dist, (m, k), rng)), to_e4m3(_sample(dist, (k, n), rng))


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A @ B exactly, for e4m3 values A and B, as float64 (exact while |sum| < 2**53 * 2**-18).

    e4m3 values times 2**9 are integers below 2**18, so the products are integers below 2**36 and K of
    them sum exactly in int64 for K < 2**27; the integer result (below 2**50 for K <= 2**14) is exact in
    float64 and the power-of-two scale back is exact too.
    """
    ai = np.ldexp(a, _INT_SHIFT)
    bi = np.ldexp(b, _INT_SHIFT)
    if not (np.array_equal(ai, np.round(ai)) and np.array_equal(bi, np.round(bi))):
        raise ValueError("exact_matmul takes e4m3 values (multiples of 2**-9)")
    if a.shape[-1] >= 2 ** 27 or max(np.abs(ai).max(initial=0), np.abs(bi).max(initial=0)) >= 2 ** 18:
        raise ValueError("exact_matmul: K below 2**27 and |values| <= 448 (e4m3) are required")
    prod = ai.astype(np.int64) @ bi.astype(np.int64)
    if np.abs(prod).max(initial=0) >= 2 ** 53:
        raise ValueError("exact_matmul: the integer sums exceed float64's 53 bits")
    return np.ldexp(prod.astype(np.float64), -2 * _INT_SHIFT)


def gemm_task(dist: str, k: int, m: int, n: int, seed: int) -> dict:
    """One GEMM in every configuration: normwise, mean and max elementwise relative error vs the exact product."""
    from lowprec.linalg import matmul

    a, b = operands(dist, k, m, n, seed)
    exact = exact_matmul(a, b)
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for label, acc in CONFIGS.items():
            got = np.asarray(matmul(a, b, acc), dtype=np.float64)
            err = np.abs(got - exact)
            rel = err / np.abs(exact)
            rel = rel[np.isfinite(rel)]  # (an exact zero output: no relative error)
            out[label] = {"normwise": float(np.linalg.norm(got - exact) / np.linalg.norm(exact)),
                          "mean_rel": float(rel.mean()), "max_rel": float(rel.max())}
    return out


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """GEMMs over K for each distribution, and over the input mean at one K; write figure, CSV and table."""
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    tasks = [{"dist": d, "k": k, "m": sz["m"], "n": sz["n"], "seed": 0} for d in DISTS for k in sz["ks"]]
    tasks += [{"dist": f"normal:{mu}", "k": sz["mu_k"], "m": sz["m"], "n": sz["n"], "seed": 0} for mu in sz["mus"]]
    res = run_sweep(gemm_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = [{"dist": t["dist"], "k": t["k"], "m": t["m"], "n": t["n"], "accumulation": label, **r[label]}
            for t, r in zip(tasks, res) for label in CONFIGS]
    csv_path = write_csv(out / "mma_accumulation.csv", rows)

    plotted = plot_data(rows, sz)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"nv-hopper-fp8": "tab:red", "nv-hopper-fp8-promote128": "tab:blue", "ideal fp32 accumulator": "k"}
    ax = axes[0]
    for dist, ls, marker in (("uniform", "-", "o"), ("normal", "--", "s")):
        for label in CONFIGS:
            ax.plot(plotted["ks"], plotted["error"][dist][label], ls, marker=marker, ms=4, color=colors[label],
                    label=f"{label}, {DIST_LABELS[dist]}")
    ax.plot(*DEEPSEEK, marker="*", ms=16, color="gold", mec="k", ls="none",
            label="DeepSeek-V3 (H800, no promotion): ~2% at K = 4096")
    ax.set(xscale="log", yscale="log", xlabel="K (inner dimension)",
           ylabel="relative error ||C - C_exact||_F / ||C_exact||_F",
           title=f"fp8 (e4m3) GEMM, {sz['m']} x {sz['n']} outputs: error vs K")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    ax = axes[1]
    mus = plotted["mus"]
    for label in CONFIGS:
        ax.plot(mus, plotted["mu_error"][label], "-o", ms=4, color=colors[label], label=f"{label} (normwise)")
    ax.plot(mus, plotted["mu_max_rel"], ":", marker="x", color="tab:red", label="nv-hopper-fp8, max elementwise")
    ax.axhline(DEEPSEEK[1], color="goldenrod", lw=1.2, ls="-.", label="DeepSeek-V3: ~2%")
    ax.set(yscale="log", xlabel="mean mu of the inputs N(mu, 1)", ylabel="relative error",
           title=f"K = {sz['mu_k']}: error vs the inputs' mean (same-sign products)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Hopper fp8 matrix unit (13 fractional bits, e8m13 output) with and without promotion every 128"
                 + (" (quick run)" if quick else ""))
    fig.tight_layout()
    figures = [save_figure(fig, out / "mma_accumulation.png")]

    summary = []
    for dist in DISTS:
        for label in CONFIGS:
            r = {x["k"]: x for x in rows if x["dist"] == dist and x["accumulation"] == label}
            kk = sz["mu_k"] if sz["mu_k"] in r else max(r)
            summary.append({"dist": DIST_LABELS[dist], "accumulation": label,
                            "first": r[min(r)]["normwise"], "at": r[kk]["normwise"], "mean_at": r[kk]["mean_rel"],
                            "max_at": r[kk]["max_rel"], "last": r[max(r)]["normwise"]})
    kmin, kmax = min(sz["ks"]), max(sz["ks"])
    cols = ["dist", "accumulation", "first", "at", "mean_at", "max_at"] + (["last"] if kmax != sz["mu_k"] else [])
    text = (f"e4m3 operands ({sz['m']} x K) x (K x {sz['n']}), exact reference (integer arithmetic). "
            "Normwise: ||C - C_exact||_F / ||C_exact||_F; mean/max: elementwise relative errors. "
            f"DeepSeek-V3 (arXiv 2412.19437, sec. 3.3.2): about 2% at K = 4096 without promotion.\n\n"
            + markdown_table(summary, cols,
                             ["inputs", "accumulation", f"normwise K={kmin}", f"normwise K={sz['mu_k']}",
                              f"mean rel. K={sz['mu_k']}", f"max rel. K={sz['mu_k']}", f"normwise K={kmax}"][:len(cols)],
                             3))
    mu_rows = [{"mu": mu, **{label: plotted["mu_error"][label][i] for label in CONFIGS},
                "max_rel": plotted["mu_max_rel"][i]} for i, mu in enumerate(mus)]
    text += (f"\nInputs N(mu, 1), K = {sz['mu_k']} (normwise; last column: nv-hopper-fp8's largest elementwise "
             "relative error):\n\n"
             + markdown_table(mu_rows, ["mu", *CONFIGS, "max_rel"], ["mu", *CONFIGS, "nv-hopper-fp8 max rel."], 3))
    md = write_markdown(out / "mma_accumulation.md", "fp8 GEMM accumulation error on the Hopper matrix unit", text)
    return {"name": "mma-accumulation", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


DIST_LABELS = {"uniform": "U[0,1)", "normal": "N(0,1)"}


def plot_data(rows: list, sz: dict) -> dict:
    """What mma_accumulation.png draws: normwise error per distribution, accumulation and K (left); at
    K = mu_k, the normwise error per input mean mu and nv-hopper-fp8's largest elementwise error (right)."""
    def get(dist, k, label, key="normwise"):
        return next(r[key] for r in rows if (r["dist"], r["k"], r["accumulation"]) == (dist, k, label))

    error = {d: {label: [get(d, k, label) for k in sz["ks"]] for label in CONFIGS} for d in DISTS}
    mu_error = {label: [get(f"normal:{mu}", sz["mu_k"], label) for mu in sz["mus"]] for label in CONFIGS}
    mu_max = [get(f"normal:{mu}", sz["mu_k"], "nv-hopper-fp8", "max_rel") for mu in sz["mus"]]
    return {"ks": list(sz["ks"]), "error": error, "mus": list(sz["mus"]), "mu_error": mu_error, "mu_max_rel": mu_max}

"""accumulation: dot-product error vs length for accumulator formats, chunking, fusing and stochastic rounding.

What it shows: the relative error of dot products of fp16 vectors (entries
uniform in [0, 1), so the running sum grows and later terms are *swamped* by
it) as the length n grows, for: an fp32 accumulator (what tensor cores do);
an fp16 accumulator, fused (one rounding per multiply-add) and unfused (the
product rounded first); fp16 with stochastic rounding; fp16 with chunk-based
accumulation (chunks of C terms summed from zero in fp16, the chunk sums
added in fp16); pairwise fp16 summation; and bf16 with nearest and stochastic
rounding. With a sequential fp16 accumulator the error grows like n u and the
sum eventually stagnates; chunking cuts the error by about the chunk size;
stochastic rounding grows like sqrt(n) u; fp32 accumulation stays near the
rounding of the inputs.

What it reproduces: Wang, Choi, Brand, Chen and Gopalakrishnan 2018
("Training deep neural networks with 8-bit floating point numbers", NeurIPS),
Sec. 3 and Fig. 2(b): chunk-based accumulation with a 16-bit accumulator
removes most of the swamping error of long dot products; the deterministic
bound gamma_n (Higham 2002, eq. 3.5) and the probabilistic sqrt(n) u
behaviour of stochastic rounding (Connolly, Higham and Mary 2021).

Every dot product is computed by :func:`lowprec.linalg.dot` with an explicit
:class:`lowprec.accumulation.Accumulation`; the reference is the exact dot
product of the fp16 inputs (products are exact in float64; ``math.fsum``
adds them with one final rounding).

Outputs: ``accumulation.png``, ``accumulation.csv`` (one row per
configuration x n x seed: mean, median and max relative error),
``accumulation.md``.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "accumulation"

#: label -> keyword arguments of Accumulation (inputs are fp16 in every case).
CONFIGS = {
    "fp32 acc": dict(acc_format="fp32"),
    "fp16 acc (fused)": dict(acc_format="fp16"),
    "fp16 acc (unfused)": dict(acc_format="fp16", fused=False),
    "fp16 acc, stochastic": dict(acc_format="fp16", acc_rounding="stochastic"),
    "fp16 chunk 32": dict(acc_format="fp16", order="blocked", chunk=32, chunk_format="fp16"),
    "fp16 chunk 256": dict(acc_format="fp16", order="blocked", chunk=256, chunk_format="fp16"),
    "fp16 pairwise": dict(acc_format="fp16", order="pairwise"),
    "bf16 acc": dict(acc_format="bf16"),
    "bf16 acc, stochastic": dict(acc_format="bf16", acc_rounding="stochastic"),
}


def sizes(quick: bool) -> dict:
    if quick:
        return {"ns": [16, 128, 1024, 4096], "trials": 8, "seeds": 1}
    return {"ns": [2 ** k for k in range(4, 17)], "trials": 64, "seeds": 3}


def accumulation_of(label: str):
    from lowprec.accumulation import Accumulation

    return Accumulation(a_format="fp16", out_format="fp32", name=label, **CONFIGS[label])


def dot_task(config: str, n: int, trials: int, seed: int) -> dict:
    """``trials`` dot products of length n in one configuration: relative errors vs the exact value."""
    from lowprec import round_to
    from lowprec.linalg import dot

    rng = np.random.default_rng([seed, n])
    a = round_to(rng.random((trials, n)), "fp16")
    b = round_to(rng.random((trials, n)), "fp16")
    exact = np.array([math.fsum(row) for row in (a * b).tolist()])  # fp16 products are exact in float64
    got = np.asarray(dot(a, b, accumulation_of(config), seed=seed), dtype=np.float64)
    err = np.abs(got - exact) / exact
    return {"mean": float(err.mean()), "median": float(np.median(err)), "max": float(err.max())}


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Run configurations x lengths x seeds; write figure, CSV and table."""
    from lowprec.sweep import grid, run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    tasks = grid(config=list(CONFIGS), n=sz["ns"], trials=[sz["trials"]], seed=list(range(sz["seeds"])))
    res = run_sweep(dot_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = [{**t, **r} for t, r in zip(tasks, res)]
    csv_path = write_csv(out / "accumulation.csv", rows)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"fp32 acc": ("k", "-"), "fp16 acc (fused)": ("tab:blue", "-"), "fp16 acc (unfused)": ("tab:blue", ":"),
              "fp16 acc, stochastic": ("tab:red", "-"), "fp16 chunk 32": ("tab:green", "-"),
              "fp16 chunk 256": ("tab:green", "--"), "fp16 pairwise": ("tab:olive", "-"),
              "bf16 acc": ("tab:purple", "-"), "bf16 acc, stochastic": ("tab:purple", "--")}
    ns = np.array(sz["ns"], dtype=float)
    for label in CONFIGS:
        m = [np.mean([r["mean"] for r in rows if r["config"] == label and r["n"] == n]) for n in sz["ns"]]
        color, ls = styles[label]
        ax.plot(ns, np.maximum(m, 1e-9), ls, color=color, marker=".", label=label)
    u = 2.0 ** -11
    ax.plot(ns, [k * u / (1 - k * u) if k * u < 1 else np.nan for k in ns], color="0.6", lw=0.8,
            label="gamma_n, fp16")
    ax.plot(ns, np.sqrt(ns) * u, color="0.6", lw=0.8, ls="--", label="sqrt(n) u, fp16")
    ax.set(xscale="log", yscale="log", xlabel="dot product length n", ylabel="mean relative error",
           title="Dot products of fp16 vectors (uniform [0,1)): error vs length by accumulation", ylim=(1e-8, 2))
    ax.legend(fontsize=7, ncol=2)
    figures = [save_figure(fig, out / "accumulation.png")]

    nmax = max(sz["ns"])
    summary = []
    for label in CONFIGS:
        r = [x for x in rows if x["config"] == label]
        summary.append({"config": label, **{f"n{n}": np.mean([x["mean"] for x in r if x["n"] == n])
                                             for n in sz["ns"] if n in (min(sz["ns"]), 1024, nmax)}})
    cols = [k for k in summary[0] if k != "config"]
    text = (f"Mean relative error over {sz['trials']} dot products x {sz['seeds']} seed(s); inputs fp16, "
            "output fp32. Columns: length n.\n\n"
            + markdown_table(summary, ["config"] + cols, ["accumulation"] + [f"n = {c[1:]}" for c in cols], 3))
    md = write_markdown(out / "accumulation.md", "Dot-product accumulation error", text)
    return {"name": "accumulation", "figures": figures, "csv": csv_path, "table": md, "summary": summary}

"""rounding-error: the error distribution and the bias of each rounding mode.

What it shows: the relative error delta = (fl(x) - x) / x of one rounding,
in units of the unit roundoff u = 2^-p, for random real inputs (float64,
log-uniform over eight binades) rounded to fp16, bf16 and fp8 e4m3 with
every mode. Round-to-nearest keeps |delta| <= u and has mean ~0 on such
data; directed modes have |delta| < 2u and a bias of about -+u (toward zero:
always shrinks |x|); stochastic rounding has |delta| < 2u, a wider
distribution, and mean exactly zero *per value*: for a fixed x, the average
of many stochastic roundings converges to x like 1/sqrt(M), while
round-to-nearest keeps the same error however often it is repeated.

What it reproduces: the standard model fl(x) = x(1 + delta), |delta| <= u
for round-to-nearest (Higham 2002, "Accuracy and Stability of Numerical
Algorithms", Thm 2.2) and |delta| < 2u for directed and stochastic rounding;
the unbiasedness E[fl(x)] = x of stochastic rounding (Connolly, Higham and
Mary 2021, Lemma 5.1; Croci et al. 2022, "Stochastic rounding:
implementation, error analysis and applications", R. Soc. Open Sci.).

Outputs: ``rounding_error.png`` (histograms of delta/u, nearest vs
stochastic, per format), ``rounding_error_bias.png`` (|mean of M roundings
of a fixed x - x| vs M), ``rounding_error.csv`` (one row per format x mode x
seed: mean, std, max of delta/u, and the histogram),
``rounding_error_bias.csv``, ``rounding_error.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import markdown_table, merge_identical, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "rounding_error"
FORMATS = ["fp16", "bf16", "fp8_e4m3fn"]
MODES = ["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd", "stochastic"]
EDGES = np.linspace(-2.0, 2.0, 81)  # histogram bins of delta / u


def sizes(quick: bool) -> dict:
    return {"samples": 20_000 if quick else 1_000_000, "seeds": 2 if quick else 5,
            "repeats": [1, 4, 16, 64, 256, 1024] + ([] if quick else [4096, 16384, 65536])}


def _inputs(fmt, samples: int, seed: int) -> np.ndarray:
    """Positive log-uniform reals over 8 binades in the normal range (float64, not values of fmt)."""
    rng = np.random.default_rng([seed, 7])
    return 2.0 ** rng.uniform(-3.0, 5.0, samples)


def error_task(fmt: str, rounding: str, samples: int, seed: int) -> dict:
    """delta/u statistics and histogram for one format, mode and seed."""
    from lowprec import get_format, round_to

    f = get_format(fmt)
    x = _inputs(f, samples, seed)
    y = round_to(x, f, rounding, seed=seed)
    d = (y - x) / x / f.unit_roundoff  # exact enough: float64 error ~1e-16 relative to u >= 2^-11
    hist, _ = np.histogram(d, bins=EDGES)
    return {"mean": float(d.mean()), "std": float(d.std()), "max_abs": float(np.abs(d).max()),
            "mean_abs": float(np.abs(d).mean()), "hist": hist.tolist()}


def bias_task(fmt: str, rounding: str, repeats: list, seed: int) -> dict:
    """|mean of M roundings of the fixed value x0 = 1 + ulp(1)/3 (float64) - x0| in ulps, for each M."""
    from lowprec import RandomStream, get_format, round_to

    f = get_format(fmt)
    ulp = f.eps
    x0 = 1.0 + ulp / 3
    m = max(repeats)
    y = round_to(np.full(m, x0), f, rounding, seed=RandomStream(seed))
    c = np.cumsum(y - x0)
    return {"abs_bias_ulps": [float(abs(c[k - 1] / k) / ulp) for k in repeats]}


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Run formats x modes x seeds; write figures, CSV and table."""
    from lowprec.sweep import grid, run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    workers = 1 if quick else None
    tasks = grid(fmt=FORMATS, rounding=MODES, samples=[sz["samples"]], seed=list(range(sz["seeds"])))
    res = run_sweep(error_task, tasks, out / "sweep", name="rounding_error", scheduler=scheduler,
                    workers=workers, progress=not quick)
    btasks = grid(fmt=FORMATS, rounding=["nearest_even", "stochastic"], repeats=[sz["repeats"]],
                  seed=list(range(sz["seeds"])))
    bres = run_sweep(bias_task, btasks, out / "sweep", name="rounding_bias", scheduler=scheduler,
                     workers=workers, progress=not quick)

    rows = [{**{k: t[k] for k in ("fmt", "rounding", "seed", "samples")},
             **{k: r[k] for k in ("mean", "std", "max_abs", "mean_abs")},
             "hist": " ".join(map(str, r["hist"]))} for t, r in zip(tasks, res)]
    csv_path = write_csv(out / "rounding_error.csv", rows)
    brows = [{"fmt": t["fmt"], "rounding": t["rounding"], "seed": t["seed"], "M": m, "abs_bias_ulps": b}
             for t, r in zip(btasks, bres) for m, b in zip(t["repeats"], r["abs_bias_ulps"])]
    write_csv(out / "rounding_error_bias.csv", brows)

    plt = pyplot()
    centers = (EDGES[:-1] + EDGES[1:]) / 2
    fig, axes = plt.subplots(1, len(FORMATS), figsize=(12, 3.4), sharey=True)
    for ax, fmt in zip(axes, FORMATS):
        for mode, color in (("nearest_even", "tab:blue"), ("toward_zero", "tab:orange"),
                            ("stochastic", "tab:red")):
            h = sum(np.array(r["hist"]) for t, r in zip(tasks, res) if t["fmt"] == fmt and t["rounding"] == mode)
            ax.step(centers, h / h.sum() / (EDGES[1] - EDGES[0]), where="mid", color=color, label=mode)
        ax.axvline(-1, color="0.6", ls=":", lw=0.8)
        ax.axvline(1, color="0.6", ls=":", lw=0.8)
        ax.set(title=fmt, xlabel="relative error delta / u")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle("One rounding of random reals: nearest stays within u, toward-zero is biased, "
                 "stochastic is wider but centred")
    fig.tight_layout()
    figures = [save_figure(fig, out / "rounding_error.png")]

    plotted = bias_plot_data(btasks, bres, sz["repeats"])
    fig, ax = plt.subplots(figsize=(7, 4.4))
    styles = {"nearest_even": ("tab:blue", "o"), "stochastic": ("tab:red", "s")}
    lss = ["-", "--", ":"]
    for mode, groups in plotted["lines"].items():
        color, marker = styles[mode]
        for (fmts, b), ls in zip(groups, lss):
            label = f"{mode}, {' = '.join(fmts)}" + (" (identical: one line)" if len(fmts) > 1 else "")
            ax.plot(sz["repeats"], np.maximum(b, 1e-7), ls, color=color, marker=marker, ms=4, label=label)
    ms = np.array(sz["repeats"], dtype=float)
    ax.plot(ms, 0.47 / np.sqrt(ms), color="0.5", lw=0.8, label="sqrt(2/9) / sqrt(M)")
    ax.set(xscale="log", yscale="log", xlabel="M, number of roundings averaged",
           ylabel="|mean(fl(x0)) - x0| / ulp",
           title="x0 = 1 + ulp/3 rounded M times: nearest keeps its error,\nstochastic averages it away")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7, loc="lower left")
    if any(len(fmts) > 1 for groups in plotted["lines"].values() for fmts, _ in groups):
        fig.text(0.5, -0.03, "x0 sits at the same place between its two neighbours in every format, so the "
                 "formats give the same numbers: one line each", ha="center", va="top", fontsize=8, color="0.3")
    figures.append(save_figure(fig, out / "rounding_error_bias.png"))

    summary = []
    for fmt in FORMATS:
        for mode in MODES:
            rs = [r for t, r in zip(tasks, res) if t["fmt"] == fmt and t["rounding"] == mode]
            summary.append({"fmt": fmt, "rounding": mode,
                            "mean": float(np.mean([r["mean"] for r in rs])),
                            "std": float(np.mean([r["std"] for r in rs])),
                            "mean_abs": float(np.mean([r["mean_abs"] for r in rs])),
                            "max_abs": float(np.max([r["max_abs"] for r in rs]))})
    text = (f"delta = (fl(x) - x)/x in units of u, for {sz['samples']} log-uniform float64 inputs per "
            f"seed ({sz['seeds']} seeds). Theory: |delta| <= u (nearest), < 2u (directed, odd, "
            "stochastic); mean delta ~ 0 for nearest and stochastic, ~ -u/2 .. -u for toward zero "
            "(its sign follows |x|, hence mean |delta|).\n\n"
            + markdown_table(summary, ["fmt", "rounding", "mean", "std", "mean_abs", "max_abs"],
                             ["format", "rounding", "mean delta/u", "std delta/u", "mean abs delta/u",
                              "max abs delta/u"], 4))
    md = write_markdown(out / "rounding_error.md", "Rounding error distributions and bias", text)
    return {"name": "rounding-error", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


def bias_plot_data(btasks: list, bres: list, repeats: list) -> dict:
    """What rounding_error_bias.png draws: per mode, the bias curves (mean over seeds) grouped by format
    where they are the same numbers: ``{"lines": {mode: [(formats, values), ...]}}``."""
    lines = {}
    for mode in ("nearest_even", "stochastic"):
        curves = {fmt: np.mean([r["abs_bias_ulps"] for t, r in zip(btasks, bres)
                                if t["fmt"] == fmt and t["rounding"] == mode], axis=0) for fmt in FORMATS}
        lines[mode] = merge_identical(curves, rtol=1e-9)  # the same numbers at each format's scale
    return {"repeats": list(repeats), "lines": lines}

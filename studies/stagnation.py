"""stagnation: recursive sums in fp16, bf16 and fp8 with each rounding mode.

What it shows: summing s <- fl(s + x_i) left to right in a low-precision
format, the sum *stagnates* under round-to-nearest: once the terms fall below
half an ulp of s, every addition rounds back to s. The harmonic series in
fp16 stops growing at 7.0859375 after 513 terms, in bf16 at 5.0625 after 65.
Round-toward-zero stagnates earlier, round-up overshoots, and stochastic
rounding keeps tracking the exact sum (its errors have mean zero). Sums of
uniform random data show the same effect for long sums. The measured errors
are drawn against the deterministic bound gamma_{n-1} sum|x_i| (Higham 2002,
Thm 4.8 / eq. 4.4) and the probabilistic bound lambda sqrt(n-1) u sum|x_i|
to first order (Higham and Mary 2019, Thm 3.1, independence assumed for
round-to-nearest; Connolly, Higham and Mary 2021 for stochastic rounding,
where it holds without that assumption, with the per-operation error bound
2u of stochastic rounding in place of u).

What it reproduces: the harmonic-series stagnation values of Higham and
Pranesh 2019 ("Simulating low precision floating-point arithmetic", SIAM J.
Sci. Comput. 41(5), Sec. 6, Table 6.1: fp16 7.0859, bfloat16 5.0625 with
round to nearest) and the observation of Connolly, Higham and Mary 2021
("Stochastic rounding and its probabilistic backward error analysis", SIAM
J. Sci. Comput. 43(1)) that stochastic rounding avoids stagnation.

The terms are x_i = fl(1/i) (harmonic) or fl(U[0,1)) (uniform), rounded to
nearest in the format, so every mode sums the same data and the exact
reference is sum x_i computed with integers/fractions.Fraction. The sums
are the engine's: ``lowprec.linalg.sum`` with a sequential accumulation in
the format (``studies/_common.recursive_sum``). The
deterministic modes are also re-run by :func:`reference_recursive_sum`, an
independent pure-Python implementation of s <- round(s + x_i) in exact
rational arithmetic; the CSV carries its value next to the engine's.

Outputs: ``stagnation.png`` (partial sums vs n for the harmonic series),
``stagnation_error.png`` (relative error vs n against the bounds),
``stagnation.csv`` (one row per format x mode x data x seed),
``stagnation_trace.csv`` (the plotted partial sums), ``stagnation.md``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np

from ._common import markdown_table, merge_identical, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "stagnation"
FORMATS = ["fp16", "bf16", "fp8_e5m2", "fp8_e4m3fn"]
MODES = ["nearest_even", "toward_zero", "up", "stochastic"]
DATA = ["harmonic", "uniform"]
LAMBDA = 3.0  # probabilistic bound parameter (failure probability ~ 2 n exp(-lambda^2/2))
DATA_SEED = 2019


def sizes(quick: bool) -> dict:
    return {"n": 4096 if quick else 1 << 20, "seeds": 3 if quick else 10,
            "reference_n": 4096 if quick else 1 << 16}


# --------------------------------------------------------------------------
# data and exact references
# --------------------------------------------------------------------------
def terms(data: str, n: int, fmt: str) -> np.ndarray:
    """The n addends, values of ``fmt`` (rounded to nearest even), as float64."""
    from lowprec import round_to

    if data == "harmonic":
        x = 1.0 / np.arange(1, n + 1, dtype=np.float64)
    elif data == "uniform":
        x = np.random.default_rng(DATA_SEED).random(n)
    else:
        raise ValueError(f"data must be 'harmonic' or 'uniform', got {data!r}")
    return round_to(x, fmt)


def exact_prefix_sums(x: np.ndarray, checkpoints) -> list:
    """Exact sums of x[:k] for each k in the sorted ``checkpoints``, as Fractions.

    Every value is scaled to an integer by the smallest power of two that
    makes all of them integers; int64 holds the sums when they fit, Python
    ints otherwise."""
    x = np.asarray(x, dtype=np.float64)
    nz = x[x != 0]
    if nz.size == 0:
        return [Fraction(0)] * len(checkpoints)
    _, e = np.frexp(nz)
    mant_bits = 53
    shift = int(mant_bits - int(e.min()))  # 2**shift * x is an integer for every x
    bound = float(np.abs(x).sum()) * 2.0 ** shift
    if bound < 2.0 ** 62:
        ints = np.ldexp(x, shift).astype(np.int64)
        csum = np.cumsum(ints)
        return [Fraction(int(csum[k - 1]), 1 << shift) if k else Fraction(0) for k in checkpoints]
    out, acc, j, cps = [], Fraction(0), 0, list(checkpoints)
    for i, v in enumerate(x.tolist(), start=1):
        acc += Fraction(v)
        while j < len(cps) and cps[j] == i:
            out.append(acc)
            j += 1
    while j < len(cps):
        out.append(acc)
        j += 1
    return out


def round_fraction(q: Fraction, fmt, rounding: str) -> Fraction:
    """Round an exact rational to a FloatFormat (subnormals on), in pure Python.

    An independent reference for the engine: nearest_even, toward_zero, up,
    down. Overflow gives the float ``+-math.inf`` (nearest modes from
    ``max + ulp/2`` on; directed modes as IEEE 754 says) and ``+-max`` when
    rounding toward zero.
    """
    from lowprec import get_format

    fmt = get_format(fmt)
    if q == 0:
        return Fraction(0)
    sign = -1 if q < 0 else 1
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, fmt.emin)
    quantum = Fraction(2) ** (e - fmt.man_bits)
    k = a / quantum
    if rounding == "nearest_even":
        r = round(k)  # Fraction.__round__ rounds ties to even
    elif rounding == "toward_zero":
        r = math.floor(k)
    elif rounding in ("up", "down"):
        r = math.ceil(k) if (rounding == "up") == (sign > 0) else math.floor(k)
    else:
        raise ValueError(f"round_fraction supports nearest_even, toward_zero, up, down; got {rounding!r}")
    v = r * quantum
    half_ulp_max = Fraction(2) ** (fmt.emax - fmt.man_bits - 1)
    if v > fmt.max_exact:
        if rounding == "nearest_even" and a < fmt.max_exact + half_ulp_max:
            return sign * fmt.max_exact  # cannot happen: round() gives max below the midpoint
        if rounding == "toward_zero" or (rounding == "up" and sign < 0) or (rounding == "down" and sign > 0):
            v = fmt.max_exact
        else:
            return sign * math.inf
    return sign * v


def reference_recursive_sum(x, fmt, rounding: str = "nearest_even") -> tuple:
    """s <- round(s + x_i) in exact rational arithmetic: (final sum, index of the last change).

    Slow (pure Python) and independent of the engine: the study's exact reference.
    """
    s = Fraction(0)
    last = 0
    for i, v in enumerate(np.asarray(x, dtype=np.float64).tolist(), start=1):
        if not isinstance(s, Fraction):  # overflowed to +-inf: inf + finite stays inf
            break
        t = round_fraction(s + Fraction(v), fmt, rounding)
        if t != s:
            last = i
        s = t
    return float(s), last


# --------------------------------------------------------------------------
# bounds
# --------------------------------------------------------------------------
def gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u) (Higham 2002, Lemma 3.1); inf once n u >= 1."""
    return n * u / (1 - n * u) if n * u < 1 else math.inf


def gamma_tilde(n: int, u: float, lam: float = LAMBDA) -> float:
    """exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1 (Higham and Mary 2019, Thm 3.1); inf if that overflows."""
    t = lam * math.sqrt(n) * u + n * u * u / (1 - u)
    return math.expm1(t) if t < 700 else math.inf


def checkpoints(n: int) -> np.ndarray:
    return np.unique(np.round(np.logspace(0, math.log10(n), 120)).astype(np.int64))


@lru_cache(maxsize=16)
def _data(data: str, n: int, fmt: str):
    x = terms(data, n, fmt)
    cps = checkpoints(n)
    exact = exact_prefix_sums(x, cps)
    return x, cps, exact


def stagnation_task(fmt: str, rounding: str, data: str, n: int, seed: int, reference_n: int) -> dict:
    """One recursive sum: final value, where it last changed, exact value, errors, bounds."""
    from lowprec import get_format

    from ._common import recursive_sum

    f = get_format(fmt)
    x, cps, exact = _data(data, n, fmt)
    s, last, trace = recursive_sum(x, f, rounding, seed=seed, checkpoints=cps)
    u = f.unit_roundoff
    exact_n = exact[-1]
    ref = None
    if rounding != "stochastic" and n <= reference_n:
        ref, ref_last = reference_recursive_sum(x, f, rounding)
        ref = {"value": ref, "last_change": ref_last}
    u_op = 2 * u if rounding == "stochastic" else u
    err = [abs(float(Fraction(t) - ex) / float(ex)) if ex != 0 and math.isfinite(t) else math.nan
           for t, ex in zip(trace.tolist(), exact)]
    return {
        "value": s, "last_change": last, "exact": float(exact_n),
        "rel_error": abs(float(Fraction(s) - exact_n) / float(exact_n)) if math.isfinite(s) else math.inf,
        "reference_value": None if ref is None else ref["value"],
        "reference_last_change": None if ref is None else ref["last_change"],
        "det_bound": gamma(n - 1, u_op), "prob_bound": gamma_tilde(n - 1, u_op),
        "checkpoints": cps.tolist(), "trace": trace.tolist(), "trace_rel_error": err,
        "trace_exact": [float(e) for e in exact],
    }


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Run the grid formats x modes x data (x seeds for stochastic); write figures, CSV, table."""
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    tasks = []
    for data in DATA:
        for fmt in FORMATS:
            for mode in MODES:
                for seed in (range(sz["seeds"]) if mode == "stochastic" else [0]):
                    tasks.append({"fmt": fmt, "rounding": mode, "data": data, "n": sz["n"],
                                  "seed": seed, "reference_n": sz["reference_n"]})
    results = run_sweep(stagnation_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                        workers=1 if quick else None, progress=not quick)
    rows = []
    for t, r in zip(tasks, results):
        rows.append({**{k: t[k] for k in ("data", "fmt", "rounding", "seed", "n")},
                     **{k: r[k] for k in ("value", "last_change", "exact", "rel_error", "reference_value",
                                          "reference_last_change", "det_bound", "prob_bound")}})
    csv_path = write_csv(out / "stagnation.csv", rows)
    trace_rows = [{"data": t["data"], "fmt": t["fmt"], "rounding": t["rounding"], "seed": t["seed"],
                   "k": k, "partial_sum": v, "exact": e, "rel_error": re}
                  for t, r in zip(tasks, results)
                  for k, v, e, re in zip(r["checkpoints"], r["trace"], r["trace_exact"], r["trace_rel_error"])]
    write_csv(out / "stagnation_trace.csv", trace_rows)

    plt = pyplot()
    colors = {"nearest_even": "tab:blue", "toward_zero": "tab:orange", "up": "tab:green",
              "stochastic": "tab:red"}
    fig, axes = plt.subplots(1, len(FORMATS), figsize=(13, 3.6))
    for ax, fmt in zip(axes, FORMATS):
        shown = set()
        for t, r in zip(tasks, results):
            if t["fmt"] != fmt or t["data"] != "harmonic":
                continue
            lab = None if t["rounding"] in shown else t["rounding"]
            shown.add(t["rounding"])
            ax.plot(r["checkpoints"], r["trace"], color=colors[t["rounding"]], lw=1,
                    alpha=0.6 if t["rounding"] == "stochastic" else 1, label=lab)
            if t["rounding"] == "nearest_even":
                ax.axhline(r["value"], color="tab:blue", ls=":", lw=0.8)
                ax.annotate(f"{r['value']:g} (n={r['last_change']})", (1, r["value"]),
                            fontsize=7, color="tab:blue", va="bottom")
        r0 = next(r for t, r in zip(tasks, results) if t["fmt"] == fmt and t["data"] == "harmonic")
        det = {t["rounding"]: r["trace"] for t, r in zip(tasks, results)
               if t["fmt"] == fmt and t["data"] == "harmonic" and t["rounding"] != "stochastic"}
        same = [" = ".join(g) for g, _ in merge_identical(det) if len(g) > 1]
        if same:  # one line hides the other: say so
            ax.text(0.98, 0.02, "identical: " + "; ".join(same), transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=7, color="0.3")
        ax.plot(r0["checkpoints"], r0["trace_exact"], "k--", lw=1, label="exact")
        ax.set(xscale="log", title=f"{fmt}", xlabel="n")
        if fmt == FORMATS[0]:
            ax.set_ylabel("partial sum of fl(1/i)")
            ax.legend(fontsize=7)
        finite = [v for v in r0["trace_exact"] if math.isfinite(v)]
        ax.set_ylim(0, max(finite) * 1.3)
    fig.suptitle("Harmonic series summed recursively: round-to-nearest stagnates, stochastic rounding does not")
    fig.tight_layout()
    figures = [save_figure(fig, out / "stagnation.png")]

    from lowprec import get_format

    plotted = error_plot_data(tasks, results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), sharex=True, sharey=True)
    for row, data in zip(axes, DATA):
        for ax, fmt in zip(row, ERROR_FORMATS):
            d = plotted[f"{data} {fmt}"]
            n = np.array(d["n"], dtype=float)
            ax.plot(n, d["det_bound"], color="0.25", lw=1, label="gamma_(n-1) (deterministic bound)")
            ax.plot(n, d["prob_bound"], "--", color="0.55", lw=1, label="lambda sqrt(n-1) u (probabilistic)")
            ax.plot(n, d["nearest_even"], color=colors["nearest_even"], lw=1.4, label="nearest_even")
            ax.fill_between(n, d["stochastic_lo"], d["stochastic_hi"], color=colors["stochastic"], alpha=0.2, lw=0,
                            label=f"stochastic, range over {d['seeds']} seeds")
            ax.plot(n, d["stochastic_mean"], color=colors["stochastic"], lw=1.2,
                    label=f"stochastic, mean over {d['seeds']} seeds")
            sm = np.array(d["stochastic_mean"], dtype=float)
            if not np.isfinite(sm).all() and np.isfinite(sm).any():  # a sum overflowed: its curve ends there
                k = int(np.flatnonzero(np.isfinite(sm))[-1])
                ax.annotate(f"stochastic sums pass {get_format(fmt).max:g},\n{fmt}'s largest value, and overflow",
                            (n[k], sm[k]), xytext=(0.98, 0.06), textcoords="axes fraction", ha="right", fontsize=8,
                            color=colors["stochastic"], arrowprops={"arrowstyle": "->", "color": "0.5"})
            ax.set(xscale="log", yscale="log", title=f"{fmt}, {data} data", ylim=(1e-6, 10))
            if data == DATA[-1]:
                ax.set_xlabel("n, terms summed")
            if fmt == ERROR_FORMATS[0]:
                ax.set_ylabel("|s_n - S_n| / S_n")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle("Relative error of recursive summation vs the deterministic and probabilistic bounds")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    figures.append(save_figure(fig, out / "stagnation_error.png"))

    summary = []
    for data in DATA:
        for fmt in FORMATS:
            for mode in MODES:
                rs = [r for t, r in zip(tasks, results)
                      if t["fmt"] == fmt and t["data"] == data and t["rounding"] == mode]
                vals = np.array([r["value"] for r in rs])
                errs = np.array([r["rel_error"] for r in rs])
                summary.append({"data": data, "fmt": fmt, "rounding": mode,
                                "value": float(vals.mean()) if mode == "stochastic" else float(vals[0]),
                                "last_change": rs[0]["last_change"] if mode != "stochastic" else "",
                                "exact": rs[0]["exact"], "rel_error": float(errs.mean()),
                                "det_bound": rs[0]["det_bound"], "prob_bound": rs[0]["prob_bound"]})
    text = (f"n = {sz['n']} terms of each series, summed left to right in the format; stochastic rows "
            f"are means over {sz['seeds']} seeds. `last change` is the index of the last addition that "
            "changed the sum (the stagnation point). Bounds are relative to sum|x_i| with lambda = 3.\n\n"
            + markdown_table(summary, ["data", "fmt", "rounding", "value", "last_change", "exact",
                                       "rel_error", "det_bound", "prob_bound"],
                             ["data", "format", "rounding", "computed sum", "last change", "exact sum",
                              "rel. error", "gamma_(n-1)", "prob. bound"], 6))
    md = write_markdown(out / "stagnation.md", "Stagnation of recursive sums", text)
    return {"name": NAME, "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


ERROR_FORMATS = ["fp16", "bf16"]


def error_plot_data(tasks: list, results: list) -> dict:
    """What stagnation_error.png draws, per ``"data fmt"``: the checkpoints n, the relative error of the
    round-to-nearest sum, the mean, min and max over the seeds of the stochastic sums' errors (a zero
    error is drawn at 1e-7, below the axis), and both bounds."""
    from lowprec import get_format

    out = {}
    for data in DATA:
        for fmt in ERROR_FORMATS:
            pick = [(t, r) for t, r in zip(tasks, results) if t["fmt"] == fmt and t["data"] == data]
            rn = next(r for t, r in pick if t["rounding"] == "nearest_even")
            sr = np.array([r["trace_rel_error"] for t, r in pick if t["rounding"] == "stochastic"], dtype=float)
            sr = np.maximum(sr, 1e-7)
            u = get_format(fmt).unit_roundoff
            ks = rn["checkpoints"]
            out[f"{data} {fmt}"] = {
                "n": list(ks), "nearest_even": list(rn["trace_rel_error"]), "seeds": int(sr.shape[0]),
                "stochastic_mean": sr.mean(axis=0).tolist(), "stochastic_lo": sr.min(axis=0).tolist(),
                "stochastic_hi": sr.max(axis=0).tolist(),
                "det_bound": [gamma(int(k) - 1, u) for k in ks], "prob_bound": [gamma_tilde(int(k) - 1, u) for k in ks]}
    return out

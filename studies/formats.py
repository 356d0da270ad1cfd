"""formats: where each format's values lie.

What it shows: for fp32, tf32, bf16, fp16, fp8 (e5m2, e4m3fn), fp6 and fp4,
the absolute spacing (ulp) and relative spacing of consecutive values over
the whole range, the subnormal region (where relative spacing grows), the
largest finite value and the smallest subnormal: one picture a teacher can
put on a slide. A second figure puts every value of the 8-bit formats on a
number line.

What it reproduces: the format tables of IEEE 754-2019 (binary16, binary32),
of the bfloat16 definition (Kalamkar et al. 2019, "A study of BFLOAT16 for
deep learning training") and of the OCP 8-bit floating point specification
(Micikevicius et al. 2022, "FP8 formats for deep learning", Table 1: e4m3
max 448, min subnormal 2^-9; e5m2 max 57344, min subnormal 2^-16). The
values are *measured* from lowprec by enumerating bit patterns (formats of
<= 16 bits) or rounding probes (fp32, tf32), not copied from the
definitions: the CSV is a check of the engine as much as a table.

Outputs: ``formats.png`` (spacing and relative spacing), ``formats_fp8_line.png``,
``formats.csv`` (one row per format), ``formats_spacing.csv`` (the plotted
points), ``formats.md``.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import (markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown)

NAME = "formats"
#: The formats of the lower, zoomed panels of formats.png (on the full range they are a few pixels wide).
ZOOM_FORMATS = ["fp16", "fp8_e5m2", "fp8_e4m3fn", "fp6_e3m2fn", "fp6_e2m3fn", "fp4_e2m1fn"]
ZOOM_RANGE = (2.0 ** -18, 2.0 ** 17)

FORMATS = ["fp32", "tf32", "bf16", "fp16", "fp8_e5m2", "fp8_e4m3fn", "fp6_e3m2fn", "fp6_e2m3fn",
           "fp4_e2m1fn"]


def _positive_values(fmt) -> np.ndarray:
    """All positive finite values of a <= 16-bit format, measured by decoding every pattern."""
    from lowprec import all_values

    v = all_values(fmt)
    v = v[np.isfinite(v) & (v > 0)]
    return np.unique(v)


def _measure_wide(fmt) -> dict:
    """max, tiny, smallest subnormal, eps of a > 16-bit format, measured by rounding probes."""
    from lowprec import round_to

    big = float(round_to(np.float64(fmt.max) * (1 + 2.0 ** -30), fmt, "toward_zero"))
    one_up = float(round_to(1.0 + 2.0 ** -40, fmt, "up"))
    sub = float(round_to(2.0 ** -1074, fmt, "up"))
    tiny = float(round_to(2.0 ** (fmt.emin) * (1 - 2.0 ** -40), fmt, "up"))
    return {"max": big, "eps": one_up - 1.0, "smallest_subnormal": sub, "tiny": tiny}


def _row(name: str) -> dict:
    from lowprec import get_format

    fmt = get_format(name)
    if fmt.bits <= 16:
        v = _positive_values(fmt)
        measured = {"max": float(v[-1]), "smallest_subnormal": float(v[0]),
                    "tiny": float(v[v >= fmt.tiny][0]),
                    "eps": float(v[v > 1.0][0] - 1.0) if (v > 1.0).any() else float("nan"),
                    "finite_values": int(2 * v.size + 1 + (1 if fmt.has_negative_zero else 0))}
    else:
        measured = _measure_wide(fmt)
        n_sub = (1 << fmt.man_bits) - 1
        n_pos = (fmt.tmax if fmt.has_subnormals else fmt.tmax - n_sub)
        measured["finite_values"] = int(2 * n_pos + 2)
    return {
        "format": fmt.name, "bits": fmt.bits, "exp_bits": fmt.exp_bits, "man_bits": fmt.man_bits,
        "max": measured["max"], "tiny": measured["tiny"],
        "smallest_subnormal": measured["smallest_subnormal"], "eps": measured["eps"],
        "unit_roundoff": measured["eps"] / 2,
        "decades": math.log10(measured["max"] / measured["smallest_subnormal"]),
        "finite_values": measured["finite_values"],
        "has_inf": bool(fmt.has_inf),
    }


def _spacing_curve(name: str, quick: bool) -> tuple:
    """(x, ulp(x)) over the positive range, measured with round_to.

    Sample points log-spaced from the smallest subnormal to max are rounded
    down to format values x; the next value up is ``round_to(nextafter(x),
    fmt, "up")``; ulp(x) is the difference. Every value of the 4- to 8-bit
    formats is included, so their sawtooth is complete.
    """
    from lowprec import get_format, round_to

    fmt = get_format(name)
    n = 700 if quick else 4000
    lo, hi = math.log2(fmt.smallest_subnormal), math.log2(fmt.max)
    probe = 2.0 ** np.linspace(lo, hi, n)
    if fmt.bits <= 8:
        probe = np.concatenate([probe, _positive_values(fmt)])
    x = np.unique(round_to(probe, fmt, "down"))
    x = x[(x > 0) & (x < fmt.max)]
    nxt = round_to(np.nextafter(x, np.inf), fmt, "up")
    return x, nxt - x


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Measure every format's range and spacing; write figures, CSV and table.

    ``scheduler`` is accepted for a uniform interface; this study is one
    quick task and always runs in-process.
    """
    out = out_path(out_dir)
    rows = [_row(n) for n in FORMATS]
    plt = pyplot()

    from lowprec import get_format

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.6))
    curves, plotted = [], {"curves": {}, "zoom": ZOOM_FORMATS, "zoom_range": ZOOM_RANGE}
    for i, name in enumerate(FORMATS):
        x, ulp = _spacing_curve(name, quick)
        fmt = get_format(name)
        color = f"C{i}"
        plotted["curves"][name] = {"points": int(x.size), "max": float(fmt.max), "last_ulp": float(ulp[-1])}
        rows_ax = (axes[0], axes[1]) if name in ZOOM_FORMATS else (axes[0],)
        for ax1, ax2 in rows_ax:
            ax1.step(x, ulp, where="post", color=color, label=name if ax1 is axes[0][0] else None, lw=1.0)
            ax1.plot([fmt.max], [ulp[-1]], "o", color=color, ms=4)
            ax2.plot(x, ulp / x, color=color, lw=0.7)
            ax2.axvspan(fmt.smallest_subnormal, fmt.tiny, color=color, alpha=0.06)
        curves += [{"format": name, "x": float(a), "ulp": float(b), "relative_spacing": float(b / a)}
                   for a, b in zip(x[:: max(1, x.size // 400)], ulp[:: max(1, x.size // 400)])]
    (top1, top2), (zoom1, zoom2) = axes
    top1.set(title="Absolute spacing, whole range; dots: largest finite value")
    top2.set(title="Relative spacing, whole range; shaded: subnormals", ylim=(2.0 ** -25, 1.5))
    zoom1.set(title="Zoom on the 8-, 6- and 4-bit formats (and fp16)", xlim=ZOOM_RANGE)
    zoom2.set(title="Relative spacing, same zoom", xlim=ZOOM_RANGE, ylim=(2.0 ** -12, 1.5))
    for ax in (top1, zoom1):
        ax.set(xscale="log", yscale="log", xlabel="value x", ylabel="spacing to the next value (ulp)")
    for ax in (top2, zoom2):
        ax.set(xscale="log", yscale="log", xlabel="value x", ylabel="ulp(x) / x")
    zoom1.set_xscale("log", base=2)
    zoom2.set_xscale("log", base=2)
    zoom1.set_yscale("log", base=2)
    zoom2.set_yscale("log", base=2)
    fig.legend(*top1.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               title="format (colours\nas in every panel)", title_fontsize=8)
    fig.suptitle("Where the values of each format lie (measured from lowprec)")
    fig.tight_layout()
    figures = [save_figure(fig, out / "formats.png")]

    fig, axes = plt.subplots(3, 1, figsize=(10, 3.6))
    for ax, name in zip(axes, ["fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1fn"]):
        from lowprec import get_format

        fmt = get_format(name)
        v = _positive_values(name)
        sub = v < fmt.tiny
        ax.plot(v[~sub], np.zeros(int((~sub).sum())), "|", ms=12, mew=0.8, label="normal")
        ax.plot(v[sub], np.zeros(int(sub.sum())), "|", ms=12, mew=0.8, color="tab:red",
                label="subnormal")
        ax.set_xscale("log", base=2)
        ax.set_yticks([])
        ax.set_title(f"{name}: the {v.size} positive finite values, {v[0]:g} .. {v[-1]:g} "
                     f"(log scale; red: subnormals)", fontsize=9, loc="left")
    fig.tight_layout()
    figures.append(save_figure(fig, out / "formats_fp8_line.png"))

    csv_path = write_csv(out / "formats.csv", rows)
    write_csv(out / "formats_spacing.csv", curves)
    cols = ["format", "bits", "exp_bits", "man_bits", "max", "tiny", "smallest_subnormal", "eps",
            "unit_roundoff", "decades", "finite_values"]
    heads = ["format", "bits", "exp", "man", "max finite", "min normal", "min subnormal", "eps",
             "u", "range (decades)", "finite values"]
    text = ("Measured from lowprec by enumerating bit patterns (<= 16 bits) or by rounding probes "
            "(fp32, tf32). eps = gap above 1; u = eps/2.\n\n" + markdown_table(rows, cols, heads, 5))
    md = write_markdown(out / "formats.md", "Formats: range and spacing", text)
    return {"name": NAME, "figures": figures, "csv": csv_path, "table": md,
            "rows": rows, "plotted": plotted}

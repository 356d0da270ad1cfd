"""The record of a training run: run.json, steps.csv, telemetry.csv, plots, tables and text summaries.

:func:`run_record` builds the run record (configuration, policy table, summary,
per-epoch metrics, telemetry totals) and :func:`step_row` one row of
``steps.csv``; :func:`write_run` writes a finished run's files,
:func:`format_table` the table of :func:`lowprec.train.compare` and
:func:`summary_text` the summary that ``lowprec train`` prints.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from ..amp import get_policy, policy_bytes
from ..telemetry import EVENTS, Telemetry

if TYPE_CHECKING:
    from .loop import RunResult

__all__ = ["write_run", "format_table", "plot_compare", "check_out_dir"]

#: The roles whose rounding counts steps.csv has columns for, in column order.
_CSV_ROLES = ("activation", "activation_grad", "weight_grad", "weight_used", "weight", "master", "optimizer_state")


def check_out_dir(out, flag: str = "--out") -> None:
    """Refuse an output directory that cannot be one (before anything runs or is written).

    ``out`` may exist as a directory or not exist yet (it is created); an
    existing file there, or a file in place of one of its parent folders, is
    refused with a ValueError naming ``flag``.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     check_out_dir(f.name)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --out ... is an existing file, not a directory: pass a directory (it is created if missing)
    """
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {os.fspath(out)} is an existing file, not a directory: pass a directory "
                         "(it is created if missing)")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if parent and not os.path.isdir(parent):
        raise ValueError(f"{flag} {os.fspath(out)} lies under {parent}, which is a file: pass a directory path")


def step_row(step, epoch, loss, acc, scale, skipped, tel: Telemetry) -> dict:
    """One row of steps.csv: the step's metrics and its telemetry counts per role and event."""
    row = {"step": step, "epoch": epoch, "loss": loss, "accuracy": acc, "loss_scale": scale,
           "skipped": int(skipped)}
    totals = tel.step_totals(tel.last_step) if tel.last_step is not None else {}
    for role in _CSV_ROLES:
        counts = totals.get(role, dict.fromkeys(EVENTS, 0))
        for k in EVENTS:
            row[f"{role}_{k}"] = counts[k]
    return row


def run_label(config) -> str:
    """``POLICY`` (ideal accumulation) or ``POLICY@HARDWARE``: how tables and figures name a run."""
    hw = getattr(config, "hardware", None)
    return config.precision if hw is None else f"{config.precision}@{hw}"


def run_record(config, model, opt, scaler, tel, epochs_rows, step_rows, wall, ds) -> dict:
    """The run record (what run.json holds): configuration, policy table, summary, epochs, telemetry."""
    policy = get_policy(config.precision)
    n_params = sum(p.data.size for p in model.parameters())
    nbytes = policy_bytes(policy, n_params, model.n_activations(config.batch_size), opt.state_values())
    last = epochs_rows[-1] if epochs_rows else {}
    totals = tel.totals()
    summary = {
        "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
        "wall_time_s": wall, "steps": len(step_rows),
        "skipped_steps": int(sum(r["skipped"] for r in step_rows)), "final_loss_scale": scaler.scale,
        "bytes_per_role": nbytes, "n_params": int(n_params),
        "grad_underflow": sum(totals.get(r, {}).get("underflow", 0) for r in ("activation_grad", "weight_grad")),
        "grad_subnormal": sum(totals.get(r, {}).get("subnormal", 0) for r in ("activation_grad", "weight_grad")),
        "grad_overflow": sum(totals.get(r, {}).get("overflow", 0) for r in ("activation_grad", "weight_grad")),
    }
    return {
        "lowprec_train": 1, "config": dataclasses.asdict(config), "dataset": ds.name,
        "policy": {"name": policy.name, "description": policy.description,
                   "table": {r: [f.name if f is not None else None, rnd.label] for r, (f, rnd) in policy.table.items()},
                   "forward_accumulation": policy.forward_accumulation,
                   "backward_accumulation": policy.backward_accumulation,
                   "loss_scale": config.loss_scale_spec,
                   "hardware": _hardware_text(model)},
        "summary": summary, "epochs": epochs_rows, "telemetry_totals_per_role": totals,
        "telemetry_totals_per_tensor": tel.tensor_totals,
        "loss_scale_trace": [r["loss_scale"] for r in step_rows],
    }


def _hardware_text(model) -> str:
    """The matrix unit of the run's matmuls, as the run record states it."""
    hw = getattr(getattr(model, "ctx", None), "hardware", None)
    return "ideal (the policy's accumulations)" if hw is None else hw.describe()


def write_run(out: str, result: RunResult, plots: bool = True) -> None:
    """Write run.json, steps.csv, telemetry.csv (and scales.csv for scaled fp8 policies) and the PNG plots
    (unless ``plots`` is False) of a finished run into ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(result.record, f, indent=1)
    rows = result.step_rows
    if rows:
        with open(os.path.join(out, "steps.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if result.telemetry is not None:
        with open(os.path.join(out, "telemetry.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "tensor", "role", "format", *EVENTS])
            w.writerows(result.telemetry.events)
        if getattr(result.telemetry, "scales", None):  # scaled fp8 policies: the scale trajectories
            with open(os.path.join(out, "scales.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "tensor", "role", "format", "scale", "amax", "clipped", "underflow"])
                w.writerows(result.telemetry.scales)
    if plots:
        _plots(out, result)


def _plots(out: str, result: RunResult) -> dict:
    """loss.png, accuracy.png, loss_scale.png, underflow.png (and scales.png for scaled fp8 policies) of a
    finished run; returns ``{file: Figure}``.

    A panel that is empty by design says so: underflow.png of a run in which
    no value was flushed to zero, loss_scale.png of a run whose scale never
    changed (its value is written on the figure, and the axis is in powers of two).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows, eps = result.step_rows, result.record["epochs"]
    steps = np.array([r["step"] for r in rows])
    name = run_label(result.config)
    figures = {}

    def save(fig, fname):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=90)
        figures[fname] = fig

    def new_axes():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are integers
        return fig, ax

    fig, ax = new_axes()
    ax.plot(steps, [r["loss"] for r in rows], lw=0.6, label="train (batch)")
    spe = max(len(rows) // max(len(eps), 1), 1)
    ax.plot([e["epoch"] * spe for e in eps], [e["test_loss"] for e in eps], "o-", label="test")
    ax.set(xlabel="step", ylabel="cross-entropy", title=f"loss ({name})", yscale="log")
    ax.legend()
    save(fig, "loss.png")

    fig, ax = new_axes()
    ax.plot([e["epoch"] for e in eps], [e["train_accuracy"] for e in eps], "o-", label="train")
    ax.plot([e["epoch"] for e in eps], [e["test_accuracy"] for e in eps], "s-", label="test")
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"accuracy ({name})")
    ax.legend()
    save(fig, "accuracy.png")

    fig, ax = new_axes()
    scales = np.array([r["loss_scale"] for r in rows], dtype=float)
    ax.plot(steps, scales, drawstyle="steps-post", label="loss scale")
    skipped = [r["step"] for r in rows if r["skipped"]]
    if skipped:
        ax.plot(skipped, [rows[s - rows[0]["step"]]["loss_scale"] for s in skipped], "rx", label="skipped step")
        ax.legend()
    _pow2_axis(ax, scales)
    if scales.size and scales.min() == scales.max():
        ax.text(0.5, 0.62, f"constant loss scale {scales[0]:g} (loss scaling: {result.config.loss_scale_spec})",
                transform=ax.transAxes, ha="center", color="0.3")
    ax.set(xlabel="step", ylabel="loss scale", title=f"loss scale ({name})")
    save(fig, "loss_scale.png")

    fig, ax = new_axes()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of values
    for role, ys in _underflow_series(rows).items():
        ax.plot(steps, ys, lw=0.7, label=role)
    ax.set(xlabel="step", ylabel="values flushed to zero", title=f"underflow per step ({name})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.set_ylim(0, 1)
        if len(steps):
            ax.set_xlim(steps[0], max(steps[-1], steps[0] + 1))
        ax.text(0.5, 0.5, f"no value was flushed to zero\nin any of the {len(rows)} steps ({name})",
                transform=ax.transAxes, ha="center", va="center", color="0.3")
    save(fig, "underflow.png")
    tel_scales = getattr(getattr(result, "telemetry", None), "scales", None)
    if tel_scales:  # scaled fp8 policies: scale trajectories and clipped / underflowed fractions per tensor
        fig = Figure(figsize=(9.5, 8.5))
        ax, ax_a, ax2 = fig.add_subplot(3, 1, 1), fig.add_subplot(3, 1, 2), fig.add_subplot(3, 1, 3)
        by: dict = {}
        for row in tel_scales:
            by.setdefault(row[1], []).append(row)
        blocked = any(".fwd." in t or ".dgrad." in t or ".wgrad." in t for t in by)
        for tname, trows in by.items():
            st = [r[0] for r in trows]
            line, = ax.plot(st, [r[4] for r in trows], lw=0.8, drawstyle="steps-post", label=tname)
            amax = [r[5] if np.isfinite(r[5]) and r[5] > 0 else np.nan for r in trows]
            ax_a.plot(st, amax, lw=0.8, drawstyle="steps-post", color=line.get_color())
            ax2.plot(st, [r[6] for r in trows], lw=0.8, color=line.get_color())
            ax2.plot(st, [r[7] for r in trows], lw=0.8, ls=":", color=line.get_color())
        ax.set(ylabel="median block scale" if blocked else "scale",
               title=f"{'block' if blocked else 'tensor'} scales per operand ({name})")
        ax.set_yscale("log", base=2)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax_a.set(ylabel="amax", title="amax per operand and step")
        ax_a.set_yscale("log", base=2)
        what = "blocks whose maximum clipped" if blocked else "values clipped"
        ax2.set(xlabel="step", ylabel="fraction", title=f"{what} (solid), values underflowed to zero (dotted)")
        save(fig, "scales.png")
    return figures


#: The roles whose underflow counts underflow.png draws.
_UNDERFLOW_ROLES = ("activation_grad", "weight_grad", "activation", "weight")


def _underflow_series(rows: list) -> dict:
    """``{role: values flushed to zero per step}`` for the roles with any underflow (empty: none had)."""
    series = {role: np.array([r[f"{role}_underflow"] for r in rows]) for role in _UNDERFLOW_ROLES}
    return {role: ys for role, ys in series.items() if ys.any()}


def _pow2_axis(ax, values) -> None:
    """A base-2 log y axis labelled 2^k, spanning at least a factor of 4 around ``values``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return
    ax.set_yscale("log", base=2)
    lo, hi = np.log2(v.min()), np.log2(v.max())
    pad = max(0.0, (2.0 - (hi - lo)) / 2)
    ax.set_ylim(2.0 ** (lo - pad - 0.1), 2.0 ** (hi + pad + 0.1))
    ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"$2^{{{round(float(np.log2(y)))}}}$" if y > 0 else ""))
    ax.yaxis.set_minor_formatter(NullFormatter())


def format_table(rows: list) -> str:
    """The rows of :func:`lowprec.train.compare` as a Markdown table.

    ``compile s`` is the time spent compiling the kernels (or loading them
    from numba's cache) before training; ``train s`` is the training alone.

    Examples
    --------
    >>> row = {"policy": "fp16-mixed", "loss_scale": "dynamic", "test_accuracy": 0.9625, "train_loss": 0.125,
    ...        "skipped_steps": 2, "final_loss_scale": 16384.0, "grad_underflow": 7, "grad_subnormal": 40,
    ...        "compile_time_s": 31.0, "wall_time_s": 1.25, "param_bytes": 12000}
    >>> print(format_table([row]).splitlines()[-1])
    | fp16-mixed | dynamic | 96.25% | 0.1250 | 2 | 16384 | 7 | 40 | 31.0 | 1.2 | 12000 |
    """
    head = ("| policy | loss scale | test acc | train loss | skipped | final scale | grad underflow "
            "| grad subnormal | compile s | train s | param bytes |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        compile_s = r.get("compile_time_s")
        lines.append(f"| {r['policy']} | {r['loss_scale']} | {100 * r['test_accuracy']:.2f}% | {r['train_loss']:.4f} "
                     f"| {r['skipped_steps']} | {r['final_loss_scale']:g} | {r['grad_underflow']} "
                     f"| {r['grad_subnormal']} | {'-' if compile_s is None else f'{compile_s:.1f}'} "
                     f"| {r['wall_time_s']:.1f} | {r['param_bytes']} |")
    return "\n".join(lines)


#: One colour, line style and marker per policy of a comparison, so that curves that coincide stay visible.
_STYLES = [("C0", "-", "o"), ("C1", "--", "s"), ("C2", "-.", "^"), ("C3", ":", "D"), ("C4", "-", "v"),
           ("C5", "--", "P"), ("C6", "-.", "X"), ("C7", ":", "*")]


def plot_compare(path: str, results: list):
    """The figure of :func:`lowprec.train.compare`: every policy on shared axes.

    Top: test accuracy and train loss per epoch (the legend gives each
    policy's final values, since mixed-precision curves often lie on top of
    fp32's). Bottom, side by side: the loss scale per step (x marks a skipped
    step) and the gradient values flushed to zero, summed over the steps;
    policies that end on the same value are named together at the end of
    their line. Returns the matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    (acc_ax, loss_ax), (scale_ax, under_ax) = axes
    ends_scale: dict = {}
    ends_under: dict = {}
    last_step = 0
    for i, res in enumerate(results):
        color, ls, marker = _STYLES[i % len(_STYLES)]
        name = run_label(res.config)
        eps = res.record["epochs"]
        ep = [e["epoch"] for e in eps]
        label = name
        if eps:
            final = eps[-1]["train_loss"]
            label = (f"{name}: {100 * eps[-1]['test_accuracy']:.2f}%, loss {final:.4f}"
                     + ("" if np.isfinite(final) else " (not drawn)"))
        kw = dict(color=color, ls=ls, marker=marker, ms=5, lw=1.4, label=label, alpha=0.9)
        acc_ax.plot(ep, [100 * e["test_accuracy"] for e in eps], **kw)
        loss_ax.plot(ep, [e["train_loss"] for e in eps], **kw)
        rows = res.step_rows
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows])
        last_step = max(last_step, int(steps[-1]))
        scales = [r["loss_scale"] for r in rows]
        scale_ax.plot(steps, scales, color=color, ls=ls, lw=1.6, drawstyle="steps-post")
        skipped = [(r["step"], r["loss_scale"]) for r in rows if r["skipped"]]
        if skipped:
            scale_ax.plot(*zip(*skipped), ls="none", marker="x", color=color, ms=6)
        ends_scale.setdefault(scales[-1], []).append(name)
        under = np.cumsum([r["activation_grad_underflow"] + r["weight_grad_underflow"] for r in rows])
        under_ax.plot(steps, under, color=color, ls=ls, lw=1.6)
        ends_under.setdefault(int(under[-1]), []).append(name)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy per epoch")
    loss_ax.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title="train loss per epoch", yscale="log")
    scale_ax.set(xlabel="step", ylabel="loss scale", title="loss scale per step (x: skipped step)", yscale="log")
    under_ax.set(xlabel="step", ylabel="gradient values flushed to zero, so far",
                 title="gradient underflow, summed over the steps")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    for ax, ends, fmt, log in ((scale_ax, ends_scale, "{:g}", True), (under_ax, ends_under, "{:,d}", False)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for value, text in _end_labels(ends, fmt, log):
            ax.annotate(text, (last_step, value), xytext=(-4, 4), textcoords="offset points", ha="right",
                        va="bottom", fontsize=8)
    if ends_scale:  # room for the labels above the highest line and below the lowest
        ymin, ymax = scale_ax.get_ylim()
        span = max(np.log10(ymax / ymin), 1.0)
        scale_ax.set_ylim(10 ** (np.log10(ymin) - 0.04 * span), 10 ** (np.log10(ymax) + 0.12 * span))
    if ends_under:
        under_ax.set_ylim(bottom=0, top=max(1, max(ends_under)) * 1.15)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.suptitle("policies compared: " + ", ".join(run_label(r.config) for r in results), fontsize=11)
    overlaps = _coinciding(results)
    if overlaps:
        fig.text(0.5, 0.005, "identical accuracy and loss at every epoch: "
                 + "; ".join(" = ".join(g) for g in overlaps), ha="center", va="bottom", fontsize=9, color="0.3")
    fig.tight_layout(rect=(0, 0.03 if overlaps else 0, 1, 1))
    fig.savefig(path, dpi=90)
    return fig


def _end_labels(ends: dict, fmt: str, log: bool) -> list:
    """``(y, text)`` labels for the end values of lines: values closer than 8% of the range (in log
    space for a log axis) share one label, so that labels never overlap."""
    def pos(v):
        return np.log10(v) if log and v > 0 else float(v)

    values = sorted(ends)
    if not values:
        return []
    span = max(pos(values[-1]) - pos(values[0]), 1.0 if log else max(values[-1], 1))
    clusters = [[values[0]]]
    for v in values[1:]:
        if pos(v) - pos(clusters[-1][0]) < 0.08 * span:
            clusters[-1].append(v)
        else:
            clusters.append([v])
    out = []
    for c in clusters:
        if len(c) == 1:
            text = f"{fmt.format(c[0])}: {', '.join(ends[c[0]])}"
        else:
            text = ", ".join(f"{name} {fmt.format(v)}" for v in reversed(c) for name in ends[v])
        out.append((c[-1], text))
    return out


def _coinciding(results: list) -> list:
    """Groups of policies whose per-epoch accuracy and loss are the same numbers (their curves coincide)."""
    groups: dict = {}
    for res in results:
        key = tuple((e["test_accuracy"], e["train_loss"]) for e in res.record["epochs"])
        groups.setdefault(key, []).append(run_label(res.config))
    return [g for g in groups.values() if len(g) > 1]


def summary_text(res: RunResult) -> str:
    """The summary of one run that ``lowprec train`` prints."""
    s = res.record["summary"]
    if s.get("compile_time_s") is not None:
        time_text = (f"training time {s['wall_time_s']:.1f} s (compiling kernels {s['compile_time_s']:.1f} s "
                     "before it)")
    else:
        time_text = f"wall time {s['wall_time_s']:.1f} s"
    lines = [
        (f"policy {run_label(res.config)} (loss scaling {res.config.loss_scale_spec}) on "
         f"{res.record['dataset']}: test accuracy {100 * s['test_accuracy']:.2f}%, train loss "
         f"{s['train_loss']:.4f}, {time_text}, {s['steps']} steps "
         f"({s['skipped_steps']} skipped), final loss scale {s['final_loss_scale']:g}"),
        (f"gradient values flushed to zero: {s['grad_underflow']}, subnormal: {s['grad_subnormal']}, "
         f"overflowed: {s['grad_overflow']}"),
    ]
    for text in s.get("diagnosis") or []:
        lines.append(f"warning: {text}")
    lines.append("bytes held per tensor role (one batch of activations):")
    for role, nb in s["bytes_per_role"].items():
        lines.append(f"  {role:<16} {nb:>12,d}")
    return "\n".join(lines)

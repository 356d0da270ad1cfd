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

__all__ = ["write_run", "format_table"]

#: The roles whose rounding counts steps.csv has columns for, in column order.
_CSV_ROLES = ("activation", "activation_grad", "weight_grad", "weight_used", "weight", "master", "optimizer_state")


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
                   "loss_scale": config.loss_scale_spec},
        "summary": summary, "epochs": epochs_rows, "telemetry_totals_per_role": totals,
        "telemetry_totals_per_tensor": tel.tensor_totals,
        "loss_scale_trace": [r["loss_scale"] for r in step_rows],
    }


def write_run(out: str, result: RunResult) -> None:
    """Write run.json, steps.csv, telemetry.csv and the PNG plots of a finished run into ``out``."""
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
    _plots(out, result)


def _plots(out: str, result: RunResult) -> None:
    """loss.png, accuracy.png, loss_scale.png and underflow.png of a finished run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, eps = result.step_rows, result.record["epochs"]
    steps = np.array([r["step"] for r in rows])
    name = result.config.precision

    def save(fig, fname):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=90)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(steps, [r["loss"] for r in rows], lw=0.6, label="train (batch)")
    spe = max(len(rows) // max(len(eps), 1), 1)
    ax.plot([e["epoch"] * spe for e in eps], [e["test_loss"] for e in eps], "o-", label="test")
    ax.set(xlabel="step", ylabel="cross-entropy", title=f"loss ({name})", yscale="log")
    ax.legend()
    save(fig, "loss.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([e["epoch"] for e in eps], [e["train_accuracy"] for e in eps], "o-", label="train")
    ax.plot([e["epoch"] for e in eps], [e["test_accuracy"] for e in eps], "s-", label="test")
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"accuracy ({name})")
    ax.legend()
    save(fig, "accuracy.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(steps, [r["loss_scale"] for r in rows], drawstyle="steps-post")
    skipped = [r["step"] for r in rows if r["skipped"]]
    if skipped:
        ax.plot(skipped, [rows[s - rows[0]["step"]]["loss_scale"] for s in skipped], "rx", label="skipped step")
        ax.legend()
    ax.set(xlabel="step", ylabel="loss scale", title=f"loss scale ({name})", yscale="log")
    save(fig, "loss_scale.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for role in ("activation_grad", "weight_grad", "activation", "weight"):
        ys = np.array([r[f"{role}_underflow"] for r in rows])
        if ys.any():
            ax.plot(steps, ys, lw=0.7, label=role)
    ax.set(xlabel="step", ylabel="values flushed to zero", title=f"underflow per step ({name})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, "underflow.png")


def format_table(rows: list) -> str:
    """The rows of :func:`lowprec.train.compare` as a Markdown table.

    Examples
    --------
    >>> row = {"policy": "fp16-mixed", "loss_scale": "dynamic", "test_accuracy": 0.9625, "train_loss": 0.125,
    ...        "skipped_steps": 2, "final_loss_scale": 16384.0, "grad_underflow": 7, "grad_subnormal": 40,
    ...        "wall_time_s": 1.25, "param_bytes": 12000}
    >>> print(format_table([row]).splitlines()[-1])
    | fp16-mixed | dynamic | 96.25% | 0.1250 | 2 | 16384 | 7 | 40 | 1.2 | 12000 |
    """
    head = ("| policy | loss scale | test acc | train loss | skipped | final scale | grad underflow "
            "| grad subnormal | wall s | param bytes |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['loss_scale']} | {100 * r['test_accuracy']:.2f}% | {r['train_loss']:.4f} "
                     f"| {r['skipped_steps']} | {r['final_loss_scale']:g} | {r['grad_underflow']} "
                     f"| {r['grad_subnormal']} | {r['wall_time_s']:.1f} | {r['param_bytes']} |")
    return "\n".join(lines)


def summary_text(res: RunResult) -> str:
    """The summary of one run that ``lowprec train`` prints."""
    s = res.record["summary"]
    lines = [f"policy {res.config.precision} (loss scaling {res.config.loss_scale_spec}) on "
             f"{res.record['dataset']}: test accuracy {100 * s['test_accuracy']:.2f}%, train loss "
             f"{s['train_loss']:.4f}, wall time {s['wall_time_s']:.1f} s, {s['steps']} steps "
             f"({s['skipped_steps']} skipped), final loss scale {s['final_loss_scale']:g}",
             f"gradient values flushed to zero: {s['grad_underflow']}, subnormal: {s['grad_subnormal']}, "
             f"overflowed: {s['grad_overflow']}",
             "bytes held per tensor role (one batch of activations):"]
    for role, nb in s["bytes_per_role"].items():
        lines.append(f"  {role:<16} {nb:>12,d}")
    return "\n".join(lines)

"""fp8-scaling: fp8 training with no tensor scaling, per-tensor current and delayed scaling, and rowwise scaling.

What it shows: the default MLP (64-128-10, ReLU, SGD with momentum) trained
on the digits data under ``fp32`` and ``bf16-mixed`` (the baselines), under
``fp8-mixed`` (e4m3 forward, e5m2 gradients, no tensor scaling; with its
dynamic loss scaling and without any), and under the scaled fp8 recipes of
:mod:`lowprec.amp.scaling`: ``fp8-current`` (per-tensor current scaling),
``fp8-delayed`` with amax histories of 1, 16 and 1024 steps (Transformer
Engine's delayed scaling, ``max`` over the history) and ``fp8-rowwise`` (one
power-of-two scale per row / column, as torchao). The figure shows the
training-loss curves, the final training loss (with the test accuracy),
and the final training loss against the scale of the input tensor.

The setup, and why: the standardised digits (|x| <= 38, std 1) and this
small network's activations lie inside e4m3's range (2^-9 .. 448), so on
the default setup unscaled fp8 trains as well as bf16 (the third panel at
input scale 2^0) -- unlike the large networks of the paper, whose
activations and gradients span more binades than e4m3 holds. To show what
per-tensor scaling is for, the main runs feed the network its inputs in
other units: x * 2^-11 (std 2^-11, below e4m3's smallest normal 2^-6 and
mostly below its smallest subnormal 2^-9), with the first layer's initial
weights multiplied by 2^11 so that the network computes the same function at
initialisation and the fp32 and bf16 runs train normally (the first layer
learns slowly at that scale, in every policy alike). Unscaled e4m3 rounds
most of the input to zero or one subnormal step; a per-tensor scale moves it
into range. The third panel sweeps the exponent of the input scale.

What it reproduces: Micikevicius et al. 2022 ("FP8 formats for deep
learning", arXiv 2209.05433), section 4.3: per-tensor scaling decides fp8
training; with it fp8 results are close to the 16-bit baseline, without it
they are far off where tensors leave the format's range. Delayed scaling
with amax histories follows NVIDIA Transformer Engine's ``DelayedScaling``
(2022); rowwise scaling torchao's float8 rowwise recipe (2024).

The loop is that of ``lowprec.train`` (``studies._common.train_mlp``: the same
calls in the same order), written out so that the first layer's weights can
be rescaled before training.

Outputs: ``fp8_scaling.png``, ``fp8_scaling.csv`` (one row per policy x
input scale x seed: final train and test loss, test accuracy, skipped
steps), ``fp8_scaling_epochs.csv`` (per epoch: train loss, test loss and
accuracy), ``fp8_scaling.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import (integer_axis, markdown_table, merge_identical, out_path, pyplot, save_figure, train_mlp, write_csv,
                      write_markdown)

NAME = "fp8_scaling"
MAIN_LOG2_SCALE = -11  # inputs times 2**-11: below e4m3's normal range (the main runs)
HISTORIES = (1, 16, 1024)
#: label -> (policy name, or "delayed:N" for fp8-delayed with history N; loss scaling or None for the default)
RUNS = {
    "fp32": ("fp32", None),
    "bf16-mixed": ("bf16-mixed", None),
    "fp8-mixed, unscaled": ("fp8-mixed", None),
    "fp8-mixed, unscaled, no loss scale": ("fp8-mixed", "none"),
    "fp8-current": ("fp8-current", None),
    "fp8-delayed, history 1": ("delayed:1", None),
    "fp8-delayed, history 16": ("delayed:16", None),
    "fp8-delayed, history 1024": ("delayed:1024", None),
    "fp8-rowwise": ("fp8-rowwise", None),
}
SWEEP_RUNS = ["bf16-mixed", "fp8-mixed, unscaled", "fp8-current", "fp8-delayed, history 1024"]
BASELINE = "bf16-mixed"
UNSCALED = ("fp8-mixed, unscaled", "fp8-mixed, unscaled, no loss scale")


def sizes(quick: bool) -> dict:
    if quick:
        # (the quick sweep keeps the scales the claim needs: in range, leaving it, and beyond the main scale)
        return {"epochs": 6, "seeds": 1, "hidden": [128], "batch_size": 64, "log2_scales": [0, -10, -12]}
    return {"epochs": 20, "seeds": 3, "hidden": [128], "batch_size": 64, "log2_scales": [0, -4, -8, -10, -12, -14]}


def policy_of(spec: str):
    """The Policy of a RUNS entry: a registered name, or ``delayed:N`` (fp8-delayed with an amax history of N)."""
    from lowprec.amp import ScalingRecipe, get_policy
    from lowprec.amp.scaling import scaled_policy

    if spec.startswith("delayed:"):
        n = int(spec.split(":", 1)[1])
        return scaled_policy(f"fp8-delayed-h{n}", ScalingRecipe("delayed", history_len=n, amax_compute="max"),
                             f"fp8-delayed with an amax history of {n}")
    return get_policy(spec)


def train_task(run: str, log2_scale: int, seed: int, epochs: int, hidden: list, batch_size: int) -> dict:
    """One training run on the digits data, inputs times 2**log2_scale and first-layer weights times its inverse."""
    spec, loss_scale = RUNS[run]
    r = train_mlp(policy_of(spec), seed, epochs, hidden, batch_size, loss_scale=loss_scale,
                  log2_input_scale=log2_scale)
    r.pop("steps")
    return r


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Every run at the main input scale, the sweep runs at the other scales; write figure, CSVs and table."""
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    common = {"epochs": sz["epochs"], "hidden": sz["hidden"], "batch_size": sz["batch_size"]}
    tasks = [{"run": r, "log2_scale": MAIN_LOG2_SCALE, "seed": s, **common} for r in RUNS for s in range(sz["seeds"])]
    tasks += [{"run": r, "log2_scale": k, "seed": s, **common} for k in sz["log2_scales"] if k != MAIN_LOG2_SCALE
              for r in SWEEP_RUNS for s in range(sz["seeds"])]
    res = run_sweep(train_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows, epoch_rows = [], []
    for t, r in zip(tasks, res):
        rows.append({"run": t["run"], "log2_scale": t["log2_scale"], "seed": t["seed"],
                     "final_train_loss": r["final_train_loss"], "test_loss": r["test_loss"],
                     "test_accuracy": r["test_accuracy"], "skipped_steps": r["skipped_steps"]})
        epoch_rows += [{"run": t["run"], "log2_scale": t["log2_scale"], "seed": t["seed"], **e} for e in r["epochs"]]
    csv_path = write_csv(out / "fp8_scaling.csv", rows)
    write_csv(out / "fp8_scaling_epochs.csv", epoch_rows)

    plotted = plot_data(rows, epoch_rows, sz)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw={"width_ratios": [1, 1.15, 1]})
    styles = _styles()
    ax = axes[0]
    for labels, curve in merge_identical(plotted["curves"]):
        color, ls = styles[labels[0]]
        ax.plot(np.arange(1, len(curve) + 1), curve, ls, color=color, lw=1.4,
                label=labels[0] if len(labels) == 1 else " = ".join(labels) + " (identical)")
    integer_axis(ax, "x")
    ax.set(yscale="log", xlabel="epoch", ylabel="training loss (mean over the epoch)",
           title=f"inputs x 2^{MAIN_LOG2_SCALE}: training curves (mean of {sz['seeds']} seed(s))")
    ax.legend(fontsize=6.5, loc="center right")

    ax = axes[1]
    labels = list(RUNS)
    vals = [plotted["final_train_loss"][r] for r in labels]
    bars = ax.barh(np.arange(len(labels)), vals, color=[styles[r][0] for r in labels])
    accs = [plotted["final_test_accuracy"][r] for r in labels]
    ax.bar_label(bars, [f"{v:.3f} (acc {100 * a:.1f}%)" for v, a in zip(vals, accs)], fontsize=7, padding=2)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(vals) * 1.45)
    ax.axvline(plotted["final_train_loss"][BASELINE], color="0.4", ls=":", lw=1)
    ax.set(xlabel="final training loss (bars start at 0; dotted: bf16-mixed)",
           title=f"after {sz['epochs']} epochs, inputs x 2^{MAIN_LOG2_SCALE}")

    ax = axes[2]
    ks = plotted["sweep_scales"]
    for label in SWEEP_RUNS:
        color, ls = styles[label]
        ax.plot(ks, plotted["sweep"][label], ls, marker="o", ms=4, color=color, label=label)
    ax.axvline(-6, color="0.6", ls=":", lw=1)
    ax.axvline(-9, color="0.6", ls="--", lw=1)
    ax.text(-6, 0.02, " e4m3's smallest normal", rotation=90, va="bottom", fontsize=7, color="0.4",
            transform=ax.get_xaxis_transform())
    ax.text(-9, 0.02, " e4m3's smallest subnormal", rotation=90, va="bottom", fontsize=7, color="0.4",
            transform=ax.get_xaxis_transform())
    integer_axis(ax, "x")
    ax.set(yscale="log", xlabel="log2 of the input scale (inputs have std 2^k)", ylabel="final training loss",
           title="unscaled fp8 fails once the inputs leave e4m3's range")
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("fp8 training with and without tensor scaling (Micikevicius et al. 2022, sec. 4.3)"
                 + (" (quick run)" if quick else ""))
    fig.tight_layout()
    figures = [save_figure(fig, out / "fp8_scaling.png")]

    summary = [{"run": r, "train": plotted["final_train_loss"][r], "test": plotted["final_test_loss"][r],
                "acc": 100 * plotted["final_test_accuracy"][r],
                "skipped": float(np.mean([x["skipped_steps"] for x in rows
                                          if x["run"] == r and x["log2_scale"] == MAIN_LOG2_SCALE]))}
               for r in RUNS]
    text = (f"Default MLP on digits, {sz['epochs']} epochs, mean of {sz['seeds']} seed(s); inputs times "
            f"2^{MAIN_LOG2_SCALE} and first-layer initial weights times 2^{-MAIN_LOG2_SCALE} (see the study's "
            "docstring for why).\n\n"
            + markdown_table(summary, ["run", "train", "test", "acc", "skipped"],
                             ["policy", "final train loss", "final test loss", "test acc %", "skipped steps"], 4))
    sweep_rows = [{"k": k, **{r: plotted["sweep"][r][i] for r in SWEEP_RUNS}} for i, k in enumerate(ks)]
    text += ("\nFinal training loss against the input scale 2^k:\n\n"
             + markdown_table(sweep_rows, ["k", *SWEEP_RUNS], ["k", *SWEEP_RUNS], 4))
    md = write_markdown(out / "fp8_scaling.md", "fp8 training with and without tensor scaling", text)
    return {"name": "fp8-scaling", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


def _styles() -> dict:
    return {"fp32": ("k", "-"), "bf16-mixed": ("0.5", "--"),
            "fp8-mixed, unscaled": ("tab:red", "-"),
            "fp8-mixed, unscaled, no loss scale": ("tab:pink", "--"),
            "fp8-current": ("tab:blue", "-"), "fp8-delayed, history 1": ("tab:cyan", ":"),
            "fp8-delayed, history 16": ("tab:green", "-."), "fp8-delayed, history 1024": ("tab:olive", "--"),
            "fp8-rowwise": ("tab:purple", ":")}


def plot_data(rows: list, epoch_rows: list, sz: dict) -> dict:
    """What fp8_scaling.png draws (means over seeds): per run at the main input scale the training loss per
    epoch, the final train/test loss and accuracy; per sweep run the final training loss at each input scale."""
    def mean(key, run, k):
        return float(np.mean([x[key] for x in rows if x["run"] == run and x["log2_scale"] == k]))

    curves = {}
    for r in RUNS:
        ep = [x for x in epoch_rows if x["run"] == r and x["log2_scale"] == MAIN_LOG2_SCALE]
        curves[r] = [float(np.mean([x["train_loss"] for x in ep if x["epoch"] == e]))
                     for e in range(1, sz["epochs"] + 1)]
    ks = sorted(set(sz["log2_scales"]) | {MAIN_LOG2_SCALE}, reverse=True)
    return {"curves": curves,
            "final_train_loss": {r: mean("final_train_loss", r, MAIN_LOG2_SCALE) for r in RUNS},
            "final_test_loss": {r: mean("test_loss", r, MAIN_LOG2_SCALE) for r in RUNS},
            "final_test_accuracy": {r: mean("test_accuracy", r, MAIN_LOG2_SCALE) for r in RUNS},
            "sweep_scales": ks, "sweep": {r: [mean("final_train_loss", r, k) for k in ks] for r in SWEEP_RUNS}}

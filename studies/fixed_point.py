"""fixed-point: training with 16-bit fixed point <IL, FL>, round-to-nearest vs stochastic rounding.

What it shows: an MLP on handwritten digits trained with every tensor (weights,
activations, gradients, and the weight update itself, which is rounded
straight into the fixed-point weights: no float master copy) in a 16-bit
fixed-point format <IL, FL> (IL integer bits including the sign, FL = 16 - IL
fraction bits), with round-to-nearest or stochastic rounding, against an fp32
baseline. With round-to-nearest every update smaller than half the quantum
2^-FL is lost, so training stalls as FL shrinks; stochastic rounding keeps
those updates in expectation and stays close to fp32 accuracy.

What it reproduces: Gupta, Agrawal, Gopalakrishnan and Narayanan 2015 ("Deep
learning with limited numerical precision", ICML), Sec. 4 and Fig. 1 (MNIST,
fully connected network): with 16-bit fixed point, round-to-nearest training
degrades or fails for small FL, while stochastic rounding reaches the
accuracy of float training.

Measured (full run, 3 seeds): fp32 93.7%; <8,8> nearest 79.6% vs stochastic
93.3%; <6,10> and <4,12> within a point of fp32 either way. <2,14> (range
+-2) saturates activations and gradients here and collapses to ~51% with
both roundings: this network's values exceed +-2 where Gupta et al.'s did
not, so the FL = 14 row is a range failure, not a rounding one.

The policy is a user-defined ``lowprec.amp.Policy`` whose roles are
``FixedFormat(16, FL)``; matmuls accumulate in fp32 (as Gupta et al. assume
a wide accumulator) and plain SGD (no momentum) is used, as in the paper.
Inputs are standardised and divided by 8 to sit inside the smallest range
(+-2 for FL = 14).

Outputs: ``fixed_point.png`` (test accuracy vs FL, per rounding; training
curves), ``fixed_point.csv`` (one row per FL x rounding x seed),
``fixed_point.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import (integer_axis, markdown_table, merge_identical, out_path, pyplot, save_figure, write_csv,
                      write_markdown)

NAME = "fixed_point"
MODES = ["nearest_even", "stochastic"]
INPUT_DIVISOR = 8.0


def sizes(quick: bool) -> dict:
    if quick:
        # 25 epochs on 384 images (300 steps, a few seconds): long enough for round-to-nearest at FL = 8 to
        # fall well behind stochastic rounding, as in the full run. Too short for the <2,14> range failure.
        return {"fls": [8, 10, 12, 14], "epochs": 25, "seeds": 2, "n_train": 384, "hidden": [32], "lr": 0.1}
    return {"fls": [8, 10, 12, 14], "epochs": 10, "seeds": 3, "n_train": 0, "hidden": [64], "lr": 0.1}


def fixed_policy(frac_bits: int, rounding: str):
    """The policy: every role in FixedFormat(16, frac_bits) with ``rounding``; no master weights."""
    from lowprec import FixedFormat
    from lowprec.amp import Policy

    fx = (FixedFormat(16, frac_bits), rounding)
    table = {"weight": fx, "weight_used": fx, "activation": fx, "activation_grad": fx, "weight_grad": fx,
             "optimizer_state": "fp32", "master": None}
    return Policy(f"fixed16-fl{frac_bits}-{rounding}", table, "fp32", "fp32", "none",
                  description=f"16-bit fixed point <{16 - frac_bits},{frac_bits}>, {rounding}")


def fixed_task(frac_bits: int, rounding: str, seed: int, epochs: int, n_train: int, hidden: list, lr: float) -> dict:
    """Train once; frac_bits = 0 means the fp32 baseline."""
    from lowprec.amp import register_policy
    from lowprec.data import Dataset, load_digits
    from lowprec.train import TrainConfig, train

    ds = load_digits(seed=0)
    k = n_train or len(ds.y_train)
    ds = Dataset((ds.x_train[:k] / INPUT_DIVISOR).astype(np.float32), ds.y_train[:k],
                 (ds.x_test / INPUT_DIVISOR).astype(np.float32), ds.y_test, name="digits/8")
    if frac_bits:
        name = register_policy(fixed_policy(frac_bits, rounding), overwrite=True).name
    else:
        name = "fp32"
    cfg = TrainConfig(precision=name, epochs=epochs, seed=seed, hidden=tuple(hidden), lr=lr, momentum=0.0,
                      loss_scale="none", batch_size=32)
    res = train(cfg, dataset=ds)
    return {"test_accuracy": res.test_accuracy,
            "epoch_test_accuracy": [e["test_accuracy"] for e in res.record["epochs"]],
            "train_loss": [e["train_loss"] for e in res.record["epochs"]],
            "grad_underflow": res.record["summary"]["grad_underflow"]}


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Run FL x rounding x seeds plus fp32; write figure, CSV and table."""
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    common = {k: sz[k] for k in ("epochs", "n_train", "hidden", "lr")}
    tasks = [{"frac_bits": 0, "rounding": "nearest_even", "seed": s, **common} for s in range(sz["seeds"])]
    tasks += [{"frac_bits": fl, "rounding": m, "seed": s, **common}
              for fl in sz["fls"] for m in MODES for s in range(sz["seeds"])]
    res = run_sweep(fixed_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = [{"format": "fp32" if t["frac_bits"] == 0 else f"<{16 - t['frac_bits']},{t['frac_bits']}>",
             "frac_bits": t["frac_bits"], "rounding": "fp32" if t["frac_bits"] == 0 else t["rounding"],
             "seed": t["seed"], "epochs": t["epochs"], "test_accuracy": r["test_accuracy"],
             "final_train_loss": r["train_loss"][-1], "grad_underflow": r["grad_underflow"]}
            for t, r in zip(tasks, res)]
    csv_path = write_csv(out / "fixed_point.csv", rows)

    base = [r["test_accuracy"] for r in rows if r["rounding"] == "fp32"]
    summary = [{"format": "fp32", "rounding": "-", "acc": 100 * np.mean(base), "std": 100 * np.std(base),
                "loss": np.mean([r["final_train_loss"] for r in rows if r["rounding"] == "fp32"])}]
    for fl in sz["fls"]:
        for m in MODES:
            rs = [r for r in rows if r["frac_bits"] == fl and r["rounding"] == m]
            summary.append({"format": f"<{16 - fl},{fl}>", "rounding": m,
                            "acc": 100 * np.mean([r["test_accuracy"] for r in rs]),
                            "std": 100 * np.std([r["test_accuracy"] for r in rs]),
                            "loss": np.mean([r["final_train_loss"] for r in rs])})
    text = (f"{sz['epochs']} epoch(s), {sz['seeds']} seed(s), plain SGD lr {sz['lr']}, batch 32, MLP hidden "
            f"{sz['hidden']}. Every tensor and the weight update are rounded to 16-bit fixed point <IL,FL>.\n\n"
            + markdown_table(summary, ["format", "rounding", "acc", "std", "loss"],
                             ["format <IL,FL>", "rounding", "test acc % (mean)", "std", "final train loss"], 4))
    md = write_markdown(out / "fixed_point.md", "16-bit fixed-point training (Gupta et al. 2015)", text)

    plotted = plot_data(sz["fls"], summary, tasks, res)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, color in zip(MODES, ("tab:blue", "tab:red")):
        ax1.errorbar(sz["fls"], plotted["acc"][m], yerr=plotted["std"][m], marker="o", color=color, capsize=3,
                     label=m)
    ax1.axhline(plotted["fp32"], color="k", ls="--", lw=1, label="fp32")
    ax1.set_xticks(sz["fls"], [f"{fl}\n<{16 - fl},{fl}>" for fl in sz["fls"]])
    ax1.set(xlabel="FL (fraction bits of 16)", ylabel="test accuracy (%)",
            title=f"accuracy vs FL, mean ± std over {sz['seeds']} seeds")
    ax1.legend(fontsize=8, loc="best")
    curves = plotted["curves"]
    for labels, losses in merge_identical({k: v[2] for k, v in curves.items()}, rtol=0.01):
        color, ls, _ = curves[labels[-1]]
        label = labels[0] if len(labels) == 1 else " = ".join(labels) + " (within 1%: one line)"
        ax2.plot(range(1, len(losses) + 1), losses, ls, color=color, marker="." if len(losses) < 30 else None,
                 label=label)
    integer_axis(ax2, "x")
    ax2.set(xlabel="epoch", ylabel="training loss", title="training curves (seed 0)")
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axes: off the data
    note = (f"quick run: {sz['n_train']} training images, {sz['epochs']} epochs; the <2,14> range failure "
            "shows only in the full run" if quick else f"{sz['epochs']} epochs on all training images")
    fig.suptitle("16-bit fixed-point training: stochastic rounding keeps the updates round-to-nearest loses"
                 f"\n({note})", fontsize=10)
    fig.tight_layout()
    figures = [save_figure(fig, out / "fixed_point.png")]
    return {"name": "fixed-point", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


def plot_data(fls: list, summary: list, tasks: list, res: list) -> dict:
    """What fixed_point.png draws: mean and std accuracy (%) per rounding and FL, the fp32 mean, and the
    seed-0 loss curves of fp32 and of the smallest and largest FL with each rounding."""
    def stat(key, fl, m):
        return next(s[key] for s in summary if s["format"] == f"<{16 - fl},{fl}>" and s["rounding"] == m)

    curves = {}
    for t, r in zip(tasks, res):
        if t["seed"] != 0 or t["frac_bits"] not in (0, min(fls), max(fls)):
            continue
        color = "k" if t["frac_bits"] == 0 else ("tab:blue" if t["rounding"] == "nearest_even" else "tab:red")
        ls = "-" if t["frac_bits"] in (0, min(fls)) else ":"
        lab = "fp32" if t["frac_bits"] == 0 else f"<{16 - t['frac_bits']},{t['frac_bits']}> {t['rounding']}"
        curves[lab] = (color, ls, list(r["train_loss"]))
    return {"fls": list(fls), "fp32": summary[0]["acc"],
            "acc": {m: [stat("acc", fl, m) for fl in fls] for m in MODES},
            "std": {m: [stat("std", fl, m) for fl in fls] for m in MODES}, "curves": curves}

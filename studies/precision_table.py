"""precision-table: full precision vs mixed precision on handwritten digits.

What it shows: the same MLP trained under each precision policy (fp32,
fp16-mixed, bf16-mixed, fp8-mixed, pure-fp16, and int8-qat when lowprec's
quantization module registers it): test accuracy as mean and standard
deviation over seeds, emulated time per epoch, and the bytes each tensor role
(weights, master weights, gradients, optimizer state, activations, activation
gradients) would occupy at its format's width.

Be careful reading the time column: lowprec *emulates* the formats on a CPU,
so every low-precision policy is slower than fp32 here (rounding costs extra
work; fp32 itself is slower than BLAS because its summation order is fixed).
The speed-up of real fp16/bf16/fp8 hardware is not something an emulator can
measure. What the formats would save on hardware is memory, reported in bytes.

What it reproduces: the central result of Micikevicius et al. 2018 ("Mixed
precision training", ICLR): fp16 storage and arithmetic with fp32 master
weights and loss scaling reach the accuracy of fp32 training; bf16-mixed
matches fp32 without loss scaling (Kalamkar et al. 2019); fp8 training with
e4m3 forward / e5m2 backward tensors (Micikevicius et al. 2022, "FP8 formats
for deep learning") stays close to the baseline. The paper's warning about
pure fp16 (no master copy: updates below half an ulp of a weight vanish)
needs updates much smaller than the weights; on this small, fast-learning
problem it may not show, and the table says so rather than hiding it.

Data: scikit-learn's 8x8 digits (bundled, offline) unless a directory with the
MNIST IDX files is passed (``run(..., data=PATH)`` or ``LOWPREC_MNIST=PATH``).

Outputs: ``precision_table.png`` (accuracy with error bars, and bytes per role),
``precision_table.csv`` (one row per policy x seed), ``precision_table.md``.
"""

from __future__ import annotations

import os

import numpy as np

from ._common import markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "precision_table"
POLICIES = ["fp32", "fp16-mixed", "bf16-mixed", "fp8-mixed", "pure-fp16", "int8-qat"]
ROLE_ORDER = ["weight", "master", "weight_grad", "optimizer_state", "activation", "activation_grad"]


def sizes(quick: bool) -> dict:
    if quick:
        return {"epochs": 1, "seeds": 3, "hidden": [32], "n_train": 320, "n_test": 300, "batch_size": 32}
    return {"epochs": 15, "seeds": 3, "hidden": [64], "n_train": 0, "n_test": 0, "batch_size": 64}


def available_policies() -> list:
    """The policies of POLICIES that this build registers (int8-qat comes with lowprec.quant)."""
    from lowprec import train as _train  # noqa: F401  (imports the modules that register policies)
    from lowprec.amp import policy_names

    names = policy_names()
    return [p for p in POLICIES if p in names]


def _dataset(data: str, n_train: int, n_test: int):
    from lowprec.data import Dataset, load_digits, load_mnist

    ds = load_digits(seed=0) if data == "digits" else load_mnist(data)
    if n_train:
        ds = Dataset(ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test or None],
                     ds.y_test[:n_test or None], name=ds.name + f"[:{n_train}]")
    return ds


def train_task(policy: str, seed: int, epochs: int, hidden: list, data: str, n_train: int, n_test: int,
               batch_size: int) -> dict:
    """Train one policy with one seed; return accuracy, time per epoch and bytes per role."""
    from lowprec.train import TrainConfig, train

    ds = _dataset(data, n_train, n_test)
    cfg = TrainConfig(precision=policy, epochs=epochs, seed=seed, hidden=tuple(hidden),
                      batch_size=batch_size, data=data)
    res = train(cfg, dataset=ds)
    s = res.record["summary"]
    return {"test_accuracy": s["test_accuracy"], "train_loss": s["train_loss"],
            "time_per_epoch_s": s["wall_time_s"] / epochs, "bytes_per_role": s["bytes_per_role"],
            "skipped_steps": s["skipped_steps"], "grad_underflow": s["grad_underflow"],
            "loss_scale": res.record["policy"]["loss_scale"], "dataset": ds.name,
            "n_params": s["n_params"]}


def run(out_dir, quick: bool = False, scheduler=None, data: str | None = None) -> dict:
    """Train every available policy over the seeds; write the table, CSV and figure."""
    from lowprec.sweep import grid, run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    data = data or os.environ.get("LOWPREC_MNIST") or "digits"
    policies = available_policies()
    tasks = grid(policy=policies, seed=list(range(sz["seeds"])), epochs=[sz["epochs"]], hidden=[sz["hidden"]],
                 data=[data], n_train=[sz["n_train"]], n_test=[sz["n_test"]], batch_size=[sz["batch_size"]])
    res = run_sweep(train_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = []
    for t, r in zip(tasks, res):
        rows.append({"policy": t["policy"], "seed": t["seed"], "epochs": t["epochs"], "dataset": r["dataset"],
                     "test_accuracy": r["test_accuracy"], "train_loss": r["train_loss"],
                     "time_per_epoch_s": r["time_per_epoch_s"], "loss_scale": r["loss_scale"],
                     "skipped_steps": r["skipped_steps"], "grad_underflow": r["grad_underflow"],
                     **{f"bytes_{k}": r["bytes_per_role"][k] for k in ROLE_ORDER + ["total"]}})
    csv_path = write_csv(out / "precision_table.csv", rows)

    summary = []
    fp32_time = None
    for p in policies:
        rs = [r for r in rows if r["policy"] == p]
        acc = np.array([r["test_accuracy"] for r in rs])
        # median over seeds: the first run in a process also pays for compiling the kernels
        tpe = float(np.median([r["time_per_epoch_s"] for r in rs]))
        if p == "fp32":
            fp32_time = tpe
        b = rs[0]
        summary.append({"policy": p, "acc": f"{100 * acc.mean():.2f} ± {100 * acc.std(ddof=1) if len(acc) > 1 else 0:.2f}",
                        "acc_mean": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                        "time": tpe, "slowdown": tpe / fp32_time if fp32_time else float("nan"),
                        "loss_scale": b["loss_scale"], **{k: b[f"bytes_{k}"] for k in ROLE_ORDER + ["total"]}})
    base_total = next((s["total"] for s in summary if s["policy"] == "fp32"), None)
    for s in summary:
        s["mem"] = f"{s['total'] / base_total:.2f}x" if base_total else ""
    text = (f"{sz['epochs']} epoch(s), {sz['seeds']} seeds, MLP hidden {sz['hidden']}, data {rows[0]['dataset']}, "
            f"batch {sz['batch_size']}. Accuracy: mean ± std over seeds (%). Time: median emulated seconds per epoch "
            "on this CPU; emulation is *slower* than native fp32 and says nothing about hardware speed. Bytes: "
            "what each tensor role would occupy at its format's width (activations: one batch).\n\n"
            + markdown_table(summary, ["policy", "acc", "time", "slowdown", "loss_scale"] + ROLE_ORDER
                             + ["total", "mem"],
                             ["policy", "test acc %", "s/epoch (emulated)", "x fp32 time", "loss scale",
                              "weight B", "master B", "weight grad B", "optim state B", "activation B",
                              "act grad B", "total B", "memory vs fp32"], 3))
    md = write_markdown(out / "precision_table.md", "Full vs mixed precision on handwritten digits", text)

    plotted = plot_data(policies, summary, rows)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1.15]})
    xs = np.arange(len(policies))
    bars = ax1.bar(xs, plotted["acc_mean"], yerr=plotted["acc_std"], color="tab:blue", capsize=4)
    ax1.bar_label(bars, [f"{m:.1f}\n± {d:.1f}" for m, d in zip(plotted["acc_mean"], plotted["acc_std"])],
                  label_type="center", color="white", fontsize=8)
    for p_i, accs in enumerate(plotted["acc_seeds"]):
        ax1.plot([p_i] * len(accs), accs, "k.", ms=4)
    ax1.set_ylim(*plotted["acc_ylim"])  # bars start at 0: their lengths compare the accuracies honestly
    ax1.set_xticks(xs, policies, rotation=20)
    ax1.set(ylabel="test accuracy (%)", title=f"accuracy, mean ± std over {sz['seeds']} seeds (dots: seeds)")
    bottom = np.zeros(len(policies))
    for role in ROLE_ORDER:
        vals = np.array(plotted["kib"][role])
        ax2.bar(xs, vals, bottom=bottom, label=role)
        bottom += vals
    ax2.set_xticks(xs, policies, rotation=20)
    ax2.set(ylabel="KiB held (at each format's width)", title="bytes per tensor role")
    ax2.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="tensor role", title_fontsize=8)
    fig.suptitle(f"{sz['epochs']} epoch(s) on {rows[0]['dataset']}" + (" (quick run)" if quick else ""), fontsize=10)
    fig.tight_layout()
    figures = [save_figure(fig, out / "precision_table.png")]
    return {"name": "precision-table", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


def plot_data(policies: list, summary: list, rows: list) -> dict:
    """What precision_table.png draws: accuracy (%) mean, std and per seed for each policy, the accuracy
    axis limits (from 0), and the KiB each tensor role holds per policy."""
    return {"policies": list(policies),
            "acc_mean": [100 * s["acc_mean"] for s in summary], "acc_std": [100 * s["acc_std"] for s in summary],
            "acc_seeds": [[100 * r["test_accuracy"] for r in rows if r["policy"] == p] for p in policies],
            "acc_ylim": (0.0, 100.0),
            "kib": {role: [s[role] / 1024 for s in summary] for role in ROLE_ORDER}}

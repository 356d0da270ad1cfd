"""loss-scaling: gradient magnitudes against the fp16/bf16/fp8 ranges, and what scaling saves.

What it shows: (1) histograms of the magnitudes of activation gradients and
weight gradients seen while training an MLP on handwritten digits in fp32,
drawn against the representable ranges of fp16, bf16, fp8 e5m2 and e4m3:
the small end of the gradient distribution lies below fp16's smallest
subnormal (2^-24) and far below e5m2's (2^-16), so those values round to
zero; (2) the fraction of gradient values lost to underflow when training in
fp16-mixed and fp8-mixed with no loss scaling, a static scale (2^10) and
dynamic loss scaling, with the training curves and the dynamic scale trace
(grows every N good steps, halves and skips the step on overflow).

What it reproduces: Micikevicius et al. 2018 ("Mixed precision training",
ICLR), Sec. 3.2 and Fig. 3: in fp16 a large share of activation-gradient
values underflow to zero without scaling, multiplying the loss by a constant
moves them into range, and dynamic scaling finds a working scale on its own.
bf16 needs no scaling because its exponent range is fp32's (Kalamkar et al.
2019).

Outputs: ``loss_scaling_hist.png``, ``loss_scaling.png`` (underflow fraction,
loss curves, scale trace), ``loss_scaling.csv`` (one row per policy x scaling
x seed), ``loss_scaling_steps.csv`` (per step: loss, scale, skipped, underflow
fraction), ``loss_scaling_hist.csv``, ``loss_scaling.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import (integer_axis, markdown_table, merge_identical, out_path, pow2_axis, pyplot, save_figure,
                      write_csv, write_markdown)

NAME = "loss_scaling"
POLICIES = ["fp16-mixed", "fp8-mixed"]
SCALINGS = ["none", "static:1024", "dynamic"]
LOG2_EDGES = np.arange(-60, 9, 1.0)  # histogram bins of log2 |g|
GRAD_ROLES = ("activation_grad", "weight_grad")


def sizes(quick: bool) -> dict:
    if quick:
        # 96 steps on 256 images: enough for the loss to fall and the late, small gradients to underflow
        # (about 3% of fp16's activation gradients, 7% of fp8's), as in the full run.
        return {"epochs": 12, "seeds": 1, "n_train": 256, "hidden": [32], "batch_size": 32, "growth_interval": 10}
    return {"epochs": 8, "seeds": 3, "n_train": 0, "hidden": [64], "batch_size": 64, "growth_interval": 50}


class _CaptureTelemetry:
    """A Telemetry that also counts values per role and histograms log2 |gradient / scale|."""

    def __init__(self, hist: bool):
        from lowprec.telemetry import Telemetry

        self.inner = Telemetry(enabled=True, keep_steps=False)
        self.hist = {r: np.zeros(LOG2_EDGES.size - 1, dtype=np.int64) for r in GRAD_ROLES} if hist else None
        self.zeros = dict.fromkeys(GRAD_ROLES, 0)
        self.size = dict.fromkeys(GRAD_ROLES, 0)
        self.underflow = dict.fromkeys(GRAD_ROLES, 0)
        self.scale = 1.0
        self.step_size = 0
        self.step_underflow = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def begin_step(self, step):
        self.step_size = self.step_underflow = 0
        self.inner.begin_step(step)

    def record(self, name, role, before, after, fmt):
        self.inner.record(name, role, before, after, fmt)
        if role not in GRAD_ROLES or self.inner._current is None:
            return
        b = np.asarray(before, dtype=np.float64) / self.scale
        a = np.asarray(after)
        lost = int(np.count_nonzero((b != 0) & np.isfinite(b) & (a == 0)))
        self.size[role] += b.size
        self.underflow[role] += lost
        self.step_size += b.size
        self.step_underflow += lost
        if self.hist is not None:
            nz = np.abs(b[(b != 0) & np.isfinite(b)])
            self.zeros[role] += int(b.size - nz.size)
            h, _ = np.histogram(np.log2(nz), bins=LOG2_EDGES)
            self.hist[role] += h


def _train(policy: str, scaling: str, seed: int, epochs: int, n_train: int, hidden: list, batch_size: int,
           growth_interval: int, hist: bool) -> dict:
    """The loop of lowprec.train with a capturing telemetry (same calls, same order)."""
    from lowprec.amp import LossScaler, Precision, parse_loss_scale
    from lowprec.autograd import MLP, SGD, softmax_cross_entropy
    from lowprec.data import load_digits
    from lowprec.train import evaluate

    ds = load_digits(seed=0)
    xtr, ytr = (ds.x_train[:n_train], ds.y_train[:n_train]) if n_train else (ds.x_train, ds.y_train)
    tel = _CaptureTelemetry(hist)
    ctx = Precision(policy, seed=seed, telemetry=tel)
    model = MLP([ds.n_features, *hidden, ds.n_classes], seed=seed, ctx=ctx)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, ctx=ctx)
    mode, value = parse_loss_scale(scaling)
    scaler = (LossScaler(mode, init_scale=value) if mode == "static"
              else LossScaler(mode, init_scale=2.0 ** 16, growth_interval=growth_interval))
    n = len(ytr)
    steps = []
    step = 0
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        for b in range(-(-n // batch_size)):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            tel.begin_step(step)
            tel.scale = scaler.scale
            logits = model(xtr[idx])
            loss = softmax_cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            scale = scaler.scale
            loss.backward(scale)
            scaler.unscale_(opt)
            stepped = scaler.step(opt)
            scaler.update()
            tel.end_step(loss_scale=scale, skipped=not stepped)
            steps.append({"step": step, "loss": float(loss.data), "scale": scale, "skipped": int(not stepped),
                          "underflow_fraction": tel.step_underflow / max(tel.step_size, 1)})
            step += 1
    _, acc = evaluate(model, ds.x_test, ds.y_test)
    out = {"test_accuracy": acc, "steps": steps,
           "underflow": {r: tel.underflow[r] for r in GRAD_ROLES}, "size": {r: tel.size[r] for r in GRAD_ROLES}}
    if hist:
        out["hist"] = {r: tel.hist[r].tolist() for r in GRAD_ROLES}
        out["zeros"] = dict(tel.zeros)
    return out


def scaling_task(policy: str, scaling: str, seed: int, epochs: int, n_train: int, hidden: list,
                 batch_size: int, growth_interval: int) -> dict:
    """One training run; underflow counts use the gradient values before rounding (divided by the scale)."""
    return _train(policy, scaling, seed, epochs, n_train, hidden, batch_size, growth_interval,
                  hist=(policy == "fp32"))


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """fp32 histograms, then policies x scalings x seeds; write figures, CSVs and table."""
    from lowprec import get_format
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    common = {k: sz[k] for k in ("epochs", "n_train", "hidden", "batch_size", "growth_interval")}
    tasks = [{"policy": "fp32", "scaling": "none", "seed": 0, **common}]
    tasks += [{"policy": p, "scaling": s, "seed": seed, **common}
              for p in POLICIES for s in SCALINGS for seed in range(sz["seeds"])]
    res = run_sweep(scaling_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)

    rows, step_rows = [], []
    for t, r in zip(tasks, res):
        size = sum(r["size"].values())
        rows.append({"policy": t["policy"], "scaling": t["scaling"], "seed": t["seed"],
                     "test_accuracy": r["test_accuracy"],
                     "act_grad_underflow": r["underflow"]["activation_grad"] / max(r["size"]["activation_grad"], 1),
                     "weight_grad_underflow": r["underflow"]["weight_grad"] / max(r["size"]["weight_grad"], 1),
                     "grad_underflow": sum(r["underflow"].values()) / max(size, 1),
                     "skipped_steps": sum(s["skipped"] for s in r["steps"]),
                     "final_scale": r["steps"][-1]["scale"], "final_loss": r["steps"][-1]["loss"]})
        step_rows += [{"policy": t["policy"], "scaling": t["scaling"], "seed": t["seed"], **s} for s in r["steps"]]
    csv_path = write_csv(out / "loss_scaling.csv", rows)
    write_csv(out / "loss_scaling_steps.csv", step_rows)
    h = res[0]["hist"]
    write_csv(out / "loss_scaling_hist.csv",
              [{"log2_lo": float(LOG2_EDGES[i]), "log2_hi": float(LOG2_EDGES[i + 1]),
                "activation_grad": h["activation_grad"][i], "weight_grad": h["weight_grad"][i]}
               for i in range(LOG2_EDGES.size - 1)])

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=False)
    ranges = [("fp16", "tab:blue"), ("bf16", "tab:green"), ("fp8_e5m2", "tab:red"), ("fp8_e4m3fn", "tab:purple")]
    for ax, role in zip(axes, GRAD_ROLES):
        counts = np.array(h[role], dtype=float)
        total = counts.sum() + res[0]["zeros"][role]
        ax.bar(LOG2_EDGES[:-1], counts / max(total, 1) * 100, width=1.0, align="edge", color="0.5")
        ymax = max(counts.max() / max(total, 1) * 100, 1)
        for i, (name, color) in enumerate(ranges):
            f = get_format(name)
            lo, hi = np.log2(f.smallest_subnormal), np.log2(f.max)
            y = ymax * (1.08 + 0.07 * i)
            ax.plot([max(lo, LOG2_EDGES[0]), min(hi, LOG2_EDGES[-1])], [y, y], color=color, lw=3, label=name)
            ax.axvline(lo, color=color, ls=":", lw=1)
        below16 = counts[LOG2_EDGES[:-1] < np.log2(get_format("fp16").smallest_subnormal) - 1].sum() / max(total, 1)
        ax.set_xlim(-45, 8)
        ax.set(xlabel="log2 |gradient|", ylabel="% of values",
               title=f"{role} (fp32 training): {100 * below16:.1f}% below fp16's smallest subnormal")
    axes[0].legend(fontsize=7, loc="center left")  # below the range bars, left of the histogram
    fig.suptitle("Gradient magnitudes vs format ranges (bars: range; dotted: smallest subnormal)")
    fig.tight_layout()
    figures = [save_figure(fig, out / "loss_scaling_hist.png")]

    plotted = plot_data(rows, step_rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _draw_underflow(axes[0], plotted["underflow_pct"])
    _draw_losses(axes[1], plotted["loss"])
    _draw_scales(axes[2], plotted["scale"], plotted["skipped"])
    fig.suptitle(f"Loss scaling, {sz['epochs']} epoch(s) on {sz['n_train'] or 'all'} training images"
                 + (" (quick run)" if quick else ""))
    fig.tight_layout()
    figures.append(save_figure(fig, out / "loss_scaling.png"))

    summary = []
    for p in ["fp32"] + POLICIES:
        for s in (["none"] if p == "fp32" else SCALINGS):
            rs = [r for r in rows if (r["policy"], r["scaling"]) == (p, s)]
            summary.append({"policy": p, "scaling": s,
                            "act": 100 * np.mean([r["act_grad_underflow"] for r in rs]),
                            "wgt": 100 * np.mean([r["weight_grad_underflow"] for r in rs]),
                            "skipped": float(np.mean([r["skipped_steps"] for r in rs])),
                            "final_scale": rs[0]["final_scale"],
                            "acc": 100 * np.mean([r["test_accuracy"] for r in rs])})
    text = (f"{sz['epochs']} epoch(s), {sz['seeds']} seed(s); dynamic scaling starts at 2^16, halves on "
            f"Inf/NaN (step skipped), doubles after {sz['growth_interval']} good steps. Underflow: % of "
            "nonzero gradient values that the rounding flushed to zero.\n\n"
            + markdown_table(summary, ["policy", "scaling", "act", "wgt", "skipped", "final_scale", "acc"],
                             ["policy", "loss scaling", "act. grad underflow %", "weight grad underflow %",
                              "skipped steps", "final scale", "test acc %"], 4))
    md = write_markdown(out / "loss_scaling.md", "Loss scaling and gradient underflow", text)
    return {"name": "loss-scaling", "figures": figures, "csv": csv_path, "table": md, "summary": summary,
            "plotted": plotted}


SCALING_LABELS = {"none": "no scaling", "static:1024": "static 2^10", "dynamic": "dynamic"}
POLICY_COLORS = {"fp16-mixed": "tab:blue", "fp8-mixed": "tab:red"}


def plot_data(rows: list, step_rows: list) -> dict:
    """What loss_scaling.png draws: underflow % per (policy, scaling) (mean over seeds), and for seed 0
    the loss per step of every run, the dynamic scale per step and the steps it skipped."""
    under = {(p, s): 100 * float(np.mean([r["grad_underflow"] for r in rows if (r["policy"], r["scaling"]) == (p, s)]))
             for p in POLICIES for s in SCALINGS}
    loss, scale, skipped = {}, {}, {}
    for p in POLICIES:
        for s in SCALINGS:
            st = [x for x in step_rows if (x["policy"], x["scaling"], x["seed"]) == (p, s, 0)]
            loss[f"{p} {SCALING_LABELS[s]}"] = [x["loss"] for x in st]
            if s == "dynamic":
                scale[p] = [x["scale"] for x in st]
                skipped[p] = [x["step"] for x in st if x["skipped"]]
    return {"underflow_pct": under, "loss": loss, "scale": scale, "skipped": skipped}


def _draw_underflow(ax, under: dict) -> None:
    """Grouped bars: one group per scaling, one bar per policy, each labelled with its value."""
    width = 0.38
    for i, p in enumerate(POLICIES):
        xs = np.arange(len(SCALINGS)) + (i - 0.5) * width
        vals = [under[(p, s)] for s in SCALINGS]
        bars = ax.bar(xs, vals, width, color=POLICY_COLORS[p], label=p)
        ax.bar_label(bars, [f"{v:.2g}%" if v else "0%" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(range(len(SCALINGS)), [SCALING_LABELS[s] for s in SCALINGS])
    top = max(under.values())
    ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    if top == 0:
        ax.text(0.5, 0.5, "no gradient value underflowed", transform=ax.transAxes, ha="center", color="0.4")
    ax.set(ylabel="% of gradient values flushed to zero", title="underflow by loss scaling")
    ax.legend(fontsize=8, loc="upper right")


def _draw_losses(ax, loss: dict) -> None:
    """One line per distinct loss curve; runs whose curves are the same numbers share one legend entry."""
    styles = [("tab:gray", "-"), ("tab:orange", "--"), ("tab:green", "-."), ("tab:purple", ":"),
              ("tab:brown", "-"), ("tab:pink", "--")]
    for (labels, values), (color, ls) in zip(merge_identical(loss), styles):
        label = labels[0] if len(labels) == 1 else " = ".join(labels) + " (identical)"
        ax.plot(np.arange(values.size), values, ls, color=color, lw=1, label=label)
    curves = [np.asarray(v, dtype=float) for v in loss.values() if len(v)]
    if len(curves) > 1 and len({c.size for c in curves}) == 1:
        stack = np.vstack(curves)
        spread = float(np.nanmax(stack.max(axis=0) - stack.min(axis=0)))
        if spread < 0.1 * float(np.nanmax(stack) - np.nanmin(stack)):
            ax.text(0.5, 0.6, f"the {len(curves)} curves lie on top of each other\n(they differ by at most "
                    f"{spread:.2g} at any step)", transform=ax.transAxes, ha="center", fontsize=8, color="0.3")
    integer_axis(ax, "x")
    ax.set(xlabel="step", ylabel="training loss", title="training curves (seed 0)")
    ax.legend(fontsize=6, loc="upper right")


def _draw_scales(ax, scale: dict, skipped: dict) -> None:
    """The dynamic scale per step on a 2^k axis; skipped steps marked, one marker shape per policy."""
    markers = {"fp16-mixed": ("x", 7, "-"), "fp8-mixed": ("+", 10, "--")}
    same = len({tuple(v) for v in scale.values()}) == 1
    for p, values in scale.items():
        marker, ms, ls = markers.get(p, ("o", 5, ":"))
        ax.plot(np.arange(len(values)), values, ls, color=POLICY_COLORS.get(p), lw=1.4, drawstyle="steps-post",
                label=p + (" (same trace)" if same and len(scale) > 1 else ""))
        sk = skipped[p]
        ax.plot(sk, [values[k] for k in sk], ls="none", marker=marker, ms=ms, mew=1.5, color=POLICY_COLORS.get(p),
                label=f"{p}: {len(sk)} skipped step(s)")
    integer_axis(ax, "x")
    pow2_axis(ax, "y")
    ax.set(xlabel="step", ylabel="loss scale", title="dynamic scale (markers: skipped steps)")
    ax.legend(fontsize=7, loc="lower right")

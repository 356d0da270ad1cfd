"""block-scale-rules: how often each MX scale rule clips the block maximum, and what each costs in error.

What it shows: for every MX element format (MXFP8 e4m3 and e5m2, MXFP6 e3m2
and e2m3, MXFP4; blocks of 32 along the last axis, E8M0 scales) and every
power-of-two scale rule (``floor``, the OCP rule; ``ceil``; ``even``;
``rceil``, the cuBLAS/torchao rule), the fraction of blocks whose maximum
clips (``x / X`` beyond the element format's largest value, so that
saturation and not rounding decides it) and the block error (relative MSE:
sum (q - x)^2 / sum x^2), on Gaussian and Laplace samples and on real
tensors: the activations and the gradients (activation and weight
gradients) of the default MLP (64-128-10, ReLU) after a short fp32 training
run on the digits data (``lowprec.train``), captured in one more step.
``floor`` takes ``2^(floor(log2 amax) - emax_elem)``: when the block
maximum's significand lies beyond the point halfway between the element
format's largest value and the next step above it (1.8125 for e4m3, 1.875
for e5m2 and e3m2, 1.9375 for e2m3, 1.75 for fp4) it clips, in 3-20% of the
blocks here; ``rceil`` and ``ceil`` never clip;
``even`` clips only for e4m3, whose top binade is incomplete. What
clipping costs depends on the element format. Elements with several binades
(e4m3, e5m2, e3m2) keep their relative precision under a scale twice as
large (only values pushed into the subnormal range lose bits), so
``ceil``'s and ``rceil``'s errors are the same there and floor's clipped
maxima are the whole difference: floor's error is 23-73% above rceil's for
e4m3. Elements with few binades (fp4, e2m3) lose resolution under a larger
scale: there ``ceil``'s error is 1.3-2x floor's, ``rceil`` (the smallest
scale that does not clip) is close to floor's, and ``even`` is the lowest.

What it reproduces: the microxcaling issue 4 example (OCP MX v1.0 scale
rule, 2023: a block maximum 960 in MXFP8-E4M3 gets the scale 2, 957 / 2
saturates to 448 and comes back as 896) as a rate over real data, the scale
rules named by torchao's ``ScaleCalculationMode`` (FLOOR, CEIL, EVEN, RCEIL)
and the cuBLAS documentation (2025, "Computing scaling and conversion
factors for FP8 with UE8M0 scales": the RCEIL rule), and the clipping rates
reported for scale-rule bugs (rMLX: 46.7% of Gaussian blocks, ROCm aiter:
about 37% of fp4 groups; those rules differ from the OCP floor rule, which
clips fewer). Statistics from :func:`lowprec.block.analyze`.

Outputs: ``block_scale_rules.png``, ``block_scale_rules.csv`` (one row per
data x format x rule: blocks, fraction of blocks whose maximum clipped,
fraction of elements clipped, underflowed, relative MSE),
``block_scale_rules.md``.
"""

from __future__ import annotations

import numpy as np

from ._common import markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "block_scale_rules"
FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4"]
RULES = ["floor", "ceil", "even", "rceil"]
DATA = ["gaussian", "laplace", "activations", "gradients"]
DATA_LABELS = {"gaussian": "Gaussian N(0,1)", "laplace": "Laplace(0,1)", "activations": "MLP activations",
               "gradients": "MLP gradients (act. + weight)"}
FORMAT_TICKS = {"mxfp8_e4m3": "fp8\ne4m3", "mxfp8_e5m2": "fp8\ne5m2", "mxfp6_e3m2": "fp6\ne3m2",
                "mxfp6_e2m3": "fp6\ne2m3", "mxfp4": "fp4\ne2m1"}
RULE_COLORS = {"floor": "tab:red", "ceil": "tab:blue", "even": "tab:orange", "rceil": "tab:green"}


def sizes(quick: bool) -> dict:
    if quick:
        return {"samples": 2 ** 14, "epochs": 1, "batch": 128}
    return {"samples": 2 ** 18, "epochs": 10, "batch": 512}


class _Capture:
    """A Telemetry stand-in that keeps a float64 copy of every tensor rounded in the roles it watches."""

    ROLES = ("activation", "activation_grad", "weight_grad")

    def __init__(self):
        from lowprec.telemetry import Telemetry

        self.inner = Telemetry(enabled=True, keep_steps=False)
        self.tensors = {r: [] for r in self.ROLES}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def record(self, name, role, before, after, fmt):
        self.inner.record(name, role, before, after, fmt)
        if role in self.tensors and self.inner._current is not None:
            b = np.array(before, dtype=np.float64)
            if b.ndim == 2 and b.size:
                self.tensors[role].append(b)


def captured_tensors(epochs: int, batch: int) -> dict:
    """``{"activations": [...], "gradients": [...]}``: the 2-D tensors of one fp32 training step (forward
    activations: inputs, pre-activations, ReLU outputs, logits; activation and weight gradients) of the
    default MLP after ``epochs`` epochs of ``lowprec.train`` on the digits data (seed 0)."""
    from lowprec.autograd import softmax_cross_entropy
    from lowprec.data import load_digits
    from lowprec.train import TrainConfig, train

    ds = load_digits(seed=0)
    res = train(TrainConfig(precision="fp32", epochs=epochs, seed=0), dataset=ds, warm_up=False)
    model = res.model
    cap = _Capture()
    model.ctx.telemetry = cap
    cap.begin_step(0)
    xb, yb = ds.x_train[:batch], ds.y_train[:batch]
    loss = softmax_cross_entropy(model(xb), yb)
    res.optimizer.zero_grad()
    loss.backward(1.0)
    cap.end_step(loss_scale=1.0)
    return {"activations": cap.tensors["activation"],
            "gradients": cap.tensors["activation_grad"] + cap.tensors["weight_grad"]}


def _samples(data: str, n: int) -> list:
    rng = np.random.default_rng([0, DATA.index(data)])
    if data == "gaussian":
        return [rng.standard_normal((n // 32, 32))]
    return [rng.laplace(0.0, 1.0, (n // 32, 32))]


def rule_task(data: str, samples: int, epochs: int, batch: int) -> list:
    """Every format x rule on one data kind: block counts, clipping and error (lowprec.block.analyze)."""
    from lowprec.block import analyze

    tensors = _samples(data, samples) if data in ("gaussian", "laplace") else captured_tensors(epochs, batch)[data]
    out = []
    for fmt in FORMATS:
        for rule in RULES:
            blocks = max_clipped = clipped = underflow = n = 0
            sse = ss = 0.0
            for x in tensors:
                st = analyze(x, fmt, axis=-1, scale_rule=rule)
                blocks += st.blocks
                max_clipped += int(st.max_clipped.sum())
                clipped += int(st.clipped.sum())
                underflow += int(st.underflow.sum())
                n += st.n_elements
                ok = np.isfinite(st.sum_sq_error)
                sse += float(st.sum_sq_error[ok].sum())
                ss += float(st.sum_sq[ok].sum())
            out.append({"format": fmt, "rule": rule, "blocks": blocks, "elements": n,
                        "blocks_max_clipped": max_clipped / max(blocks, 1), "elements_clipped": clipped / max(n, 1),
                        "elements_underflow": underflow / max(n, 1), "relative_mse": sse / ss if ss > 0 else 0.0})
    return out


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Data kinds x formats x rules; write figure, CSV and table."""
    from lowprec.sweep import run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    tasks = [{"data": d, "samples": sz["samples"], "epochs": sz["epochs"], "batch": sz["batch"]} for d in DATA]
    res = run_sweep(rule_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = [{"data": t["data"], **r} for t, rs in zip(tasks, res) for r in rs]
    csv_path = write_csv(out / "block_scale_rules.csv", rows)

    plotted = plot_data(rows)
    plt = pyplot()
    fig, axes = plt.subplots(2, len(DATA), figsize=(4.4 * len(DATA), 7.6), sharex=True)
    width = 0.2
    xs = np.arange(len(FORMATS))
    for j, data in enumerate(DATA):
        for i, rule in enumerate(RULES):
            off = xs + (i - 1.5) * width
            clip = [plotted["clip_pct"][data][rule][f] for f in FORMATS]
            bars = axes[0, j].bar(off, clip, width, color=RULE_COLORS[rule], label=rule)
            axes[0, j].bar_label(bars, [f"{v:.0f}" if v >= 0.5 else ("0" if v == 0 else "<1") for v in clip],
                                 fontsize=6, padding=1)
            axes[1, j].bar(off, [plotted["rel_mse"][data][rule][f] for f in FORMATS], width, color=RULE_COLORS[rule],
                           label=rule)
        blocks = next(r["blocks"] for r in rows if r["data"] == data)
        top = max(max(plotted["clip_pct"][data][r].values()) for r in RULES)
        axes[0, j].set_ylim(0, max(top * 1.2, 1))
        axes[0, j].set_title(f"{DATA_LABELS[data]} ({blocks} blocks)", fontsize=10)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xticks(xs, [FORMAT_TICKS[f] for f in FORMATS], fontsize=8)
    axes[0, 0].set_ylabel("% of blocks whose maximum clipped")
    axes[1, 0].set_ylabel("relative MSE  sum (q-x)^2 / sum x^2")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title="scale rule", fontsize=8, ncol=len(RULES), loc="upper right",
               bbox_to_anchor=(1.0, 1.0))
    for ax in axes[1]:
        ax.set_xlabel("element format (MX, blocks of 32)")
    fig.suptitle("MX scale rules: floor (OCP) clips block maxima, rceil never does; what each costs in error"
                 + (" (quick run)" if quick else ""), x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    figures = [save_figure(fig, out / "block_scale_rules.png")]

    table_rows = []
    for data in DATA:
        for fmt in FORMATS:
            row = {"data": data, "format": fmt}
            for rule in RULES:
                row[f"{rule}_clip"] = plotted["clip_pct"][data][rule][fmt]
                row[f"{rule}_mse"] = plotted["rel_mse"][data][rule][fmt]
            table_rows.append(row)
    cols = ["data", "format"] + [f"{r}_clip" for r in RULES] + [f"{r}_mse" for r in RULES]
    heads = ["data", "format"] + [f"{r} % clipped" for r in RULES] + [f"{r} rel. MSE" for r in RULES]
    text = (f"Blocks of 32 along the last axis, E8M0 scales. '% clipped': blocks whose maximum clipped; "
            f"rel. MSE: sum (q - x)^2 / sum x^2. Gaussian and Laplace: {sz['samples']} samples; MLP tensors: one "
            f"step (batch {sz['batch']}) after {sz['epochs']} epoch(s) of fp32 training on digits.\n\n"
            + markdown_table(table_rows, cols, heads, 3))
    md = write_markdown(out / "block_scale_rules.md", "MX scale rules: clipping and error", text)
    return {"name": "block-scale-rules", "figures": figures, "csv": csv_path, "table": md, "plotted": plotted}


def plot_data(rows: list) -> dict:
    """What block_scale_rules.png draws: per data kind, rule and format the % of blocks whose maximum
    clipped (top row) and the relative MSE (bottom row)."""
    clip = {d: {r: {} for r in RULES} for d in DATA}
    mse = {d: {r: {} for r in RULES} for d in DATA}
    for x in rows:
        clip[x["data"]][x["rule"]][x["format"]] = 100 * x["blocks_max_clipped"]
        mse[x["data"]][x["rule"]][x["format"]] = x["relative_mse"]
    return {"clip_pct": clip, "rel_mse": mse}

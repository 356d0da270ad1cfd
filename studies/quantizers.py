"""quantizers: uniform vs Lloyd-Max vs companding vs LSQ error on Gaussian, Laplace and trained-weight data.

What it shows: the signal-to-quantization-noise ratio SQNR = 10 log10(E[x^2] /
E[(x - Q(x))^2]) on held-out data, for b = 2..8 bits, of
(1) a uniform symmetric quantizer with min-max calibration (step = max|x| /
(2^(b-1) - 1)); (2) the Lloyd-Max quantizer designed on training samples
(levels at the centroids of their cells, thresholds at midpoints); (3) a
companding quantizer (uniform grid on a compressed value, the shape parameter
chosen on the training data); (4) a uniform quantizer whose step is learned by
gradient descent with the LSQ straight-through gradient (Esser et al. 2020).
Distributions: unit-variance Gaussian, unit-variance Laplace, and the
first-layer weights of an MLP trained on handwritten digits (standardised).
Min-max uniform wastes its levels on rare large values (worst on heavy-tailed
Laplace data); learning the step (LSQ) or designing the levels (Lloyd-Max)
recovers several dB; companding sits in between.

What it reproduces: Max 1960 ("Quantizing for minimum distortion", IRE
Trans. Inf. Theory, Table I): the minimum mean squared error of a Gaussian
of unit variance is 0.3634, 0.1175, 0.03454, 0.009497 for 2, 4, 8 and 16
levels; the Lloyd-Max rows of the table are checked against these values.
Also the ~6 dB per bit rule of uniform quantization (Bennett 1948) and the
learned-step result of Esser et al. 2020 ("Learned step size quantization",
ICLR) that a learned step beats min-max calibration at low bit widths.

Outputs: ``quantizers.png`` (SQNR vs bits per distribution),
``quantizers.csv`` (one row per distribution x quantizer x bits x seed: MSE,
SQNR), ``quantizers.md``.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import markdown_table, out_path, pyplot, save_figure, write_csv, write_markdown

NAME = "quantizers"
DISTRIBUTIONS = ["gaussian", "laplace", "trained_weights"]
QUANTIZERS = ["uniform_minmax", "lloyd_max", "companding", "lsq"]
#: Max (1960), Table I: minimum MSE of a unit-variance Gaussian, by number of levels.
MAX_1960_GAUSSIAN_MSE = {2: 0.3634, 4: 0.1175, 8: 0.03454, 16: 0.009497}


def sizes(quick: bool) -> dict:
    if quick:
        return {"bits": [2, 3, 4], "samples": 20_000, "seeds": 1, "lsq_iters": 40, "train_epochs": 1}
    return {"bits": [2, 3, 4, 5, 6, 8], "samples": 200_000, "seeds": 3, "lsq_iters": 200, "train_epochs": 10}


_WEIGHTS: dict = {}


def _trained_weights(epochs: int) -> np.ndarray:
    """First-layer weights of an fp32 MLP trained on digits, standardised (cached per process)."""
    if epochs not in _WEIGHTS:
        from lowprec.train import TrainConfig, train

        res = train(TrainConfig(precision="fp32", epochs=epochs, seed=0, hidden=(64,), telemetry=False))
        w = np.asarray(res.model.parameters()[0].data, dtype=np.float64).ravel()
        _WEIGHTS[epochs] = (w - w.mean()) / w.std()
    return _WEIGHTS[epochs]


def samples(dist: str, n: int, seed: int, train_epochs: int) -> tuple:
    """(training sample, held-out sample) of a distribution, unit variance."""
    rng = np.random.default_rng([seed, DISTRIBUTIONS.index(dist)])
    if dist == "gaussian":
        return rng.standard_normal(n), rng.standard_normal(n)
    if dist == "laplace":
        return rng.laplace(0, 1 / math.sqrt(2), n), rng.laplace(0, 1 / math.sqrt(2), n)
    if dist == "trained_weights":
        w = rng.permutation(_trained_weights(train_epochs))
        return w[: w.size // 2], w[w.size // 2:]
    raise ValueError(f"unknown distribution {dist!r}; expected one of {DISTRIBUTIONS}")


def _uniform_minmax(xtr, bits):
    from lowprec.quant.affine import dequantize, quantize

    s = float(np.max(np.abs(xtr))) / ((1 << (bits - 1)) - 1)
    return lambda x: dequantize(quantize(x, s, 0, bits=bits, narrow_range=True), s, 0)


def _lloyd_max(xtr, bits):
    from lowprec.quant.codebook import lloyd_max

    cb = lloyd_max(xtr, 1 << bits)
    return cb.quantize


def _companding(xtr, bits):
    from lowprec.quant.companding import CompandingQuantizer

    x_max = float(np.max(np.abs(xtr)))
    best = None
    for beta in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        q = CompandingQuantizer(alpha=1.0, beta=beta, x_max=x_max, bits=bits)
        mse = float(np.mean((q.fake_quantize(xtr) - xtr) ** 2))
        if best is None or mse < best[0]:
            best = (mse, q)
    return best[1].fake_quantize


def _lsq(xtr, bits, iters):
    """Learn the step on the training sample: gradient descent on log(step) with the LSQ gradient."""
    from lowprec.quant.lsq import lsq_backward, lsq_forward, lsq_init_step

    s = float(lsq_init_step(xtr, bits))
    eta = 0.2
    mse = float(np.mean((lsq_forward(xtr, s, bits=bits) - xtr) ** 2))
    for _ in range(iters):
        xq = lsq_forward(xtr, s, bits=bits)
        _, ds = lsq_backward(xtr, s, 2 * (xq - xtr) / xtr.size, bits=bits, grad_scale=1.0)
        new_s = s * math.exp(-eta * float(ds) * s / max(mse, 1e-300))  # d log MSE / d log s
        new_mse = float(np.mean((lsq_forward(xtr, new_s, bits=bits) - xtr) ** 2))
        if new_mse <= mse:
            s, mse = new_s, new_mse
        else:
            eta /= 2
    return lambda x: lsq_forward(x, s, bits=bits)


def quantizer_task(dist: str, quantizer: str, bits: int, samples_n: int, seed: int, lsq_iters: int,
                   train_epochs: int) -> dict:
    """Design the quantizer on training samples, measure MSE and SQNR on held-out samples."""
    xtr, xte = samples(dist, samples_n, seed, train_epochs)
    if quantizer == "uniform_minmax":
        q = _uniform_minmax(xtr, bits)
    elif quantizer == "lloyd_max":
        q = _lloyd_max(xtr, bits)
    elif quantizer == "companding":
        q = _companding(xtr, bits)
    elif quantizer == "lsq":
        q = _lsq(xtr, bits, lsq_iters)
    else:
        raise ValueError(f"unknown quantizer {quantizer!r}; expected one of {QUANTIZERS}")
    err = np.asarray(q(xte), dtype=np.float64) - xte
    mse = float(np.mean(err ** 2))
    power = float(np.mean(xte ** 2))
    return {"mse": mse, "power": power, "sqnr_db": 10 * math.log10(power / mse) if mse > 0 else math.inf,
            "n_test": int(xte.size)}


def run(out_dir, quick: bool = False, scheduler=None) -> dict:
    """Run distributions x quantizers x bits x seeds; write figure, CSV and table."""
    from lowprec.sweep import grid, run_sweep

    out = out_path(out_dir)
    sz = sizes(quick)
    tasks = grid(dist=DISTRIBUTIONS, quantizer=QUANTIZERS, bits=sz["bits"], samples_n=[sz["samples"]],
                 seed=list(range(sz["seeds"])), lsq_iters=[sz["lsq_iters"]], train_epochs=[sz["train_epochs"]])
    res = run_sweep(quantizer_task, tasks, out / "sweep", name=NAME, scheduler=scheduler,
                    workers=1 if quick else None, progress=not quick)
    rows = [{k: t[k] for k in ("dist", "quantizer", "bits", "seed")} | r for t, r in zip(tasks, res)]
    for r in rows:
        ref = MAX_1960_GAUSSIAN_MSE.get(1 << r["bits"]) if (r["dist"], r["quantizer"]) == ("gaussian", "lloyd_max") else None
        r["max_1960_mse"] = ref if ref is not None else ""
    csv_path = write_csv(out / "quantizers.csv", rows)

    plt = pyplot()
    fig, axes = plt.subplots(1, len(DISTRIBUTIONS), figsize=(13, 3.8), sharey=True)
    colors = {"uniform_minmax": "tab:gray", "lloyd_max": "tab:blue", "companding": "tab:orange", "lsq": "tab:red"}
    for ax, dist in zip(axes, DISTRIBUTIONS):
        for qn in QUANTIZERS:
            ys = [np.mean([r["sqnr_db"] for r in rows if (r["dist"], r["quantizer"], r["bits"]) == (dist, qn, b)])
                  for b in sz["bits"]]
            ax.plot(sz["bits"], ys, marker="o", color=colors[qn], label=qn)
        if dist == "gaussian":
            bs = [b for b in sz["bits"] if (1 << b) in MAX_1960_GAUSSIAN_MSE]
            ax.plot(bs, [-10 * math.log10(MAX_1960_GAUSSIAN_MSE[1 << b]) for b in bs], "k*", ms=9,
                    label="Max 1960 optimum")
        ax.set_xticks(sz["bits"])  # integer bit widths only
        ax.set(title=dist.replace("_", " "), xlabel="bits")
    axes[0].set_ylabel("SQNR (dB), held-out data")
    axes[0].legend(fontsize=7)
    fig.suptitle("Quantizer error by design and data distribution")
    fig.tight_layout()
    figures = [save_figure(fig, out / "quantizers.png")]

    summary = []
    for dist in DISTRIBUTIONS:
        for qn in QUANTIZERS:
            row = {"dist": dist, "quantizer": qn}
            for b in sz["bits"]:
                row[f"b{b}"] = np.mean([r["sqnr_db"] for r in rows if (r["dist"], r["quantizer"], r["bits"]) == (dist, qn, b)])
            summary.append(row)
    gl = {b: np.mean([r["mse"] for r in rows if (r["dist"], r["quantizer"], r["bits"]) == ("gaussian", "lloyd_max", b)])
          for b in sz["bits"]}
    check = ", ".join(f"{1 << b} levels: MSE {gl[b]:.5f} (Max 1960: {MAX_1960_GAUSSIAN_MSE[1 << b]})"
                      for b in sz["bits"] if (1 << b) in MAX_1960_GAUSSIAN_MSE)
    text = (f"SQNR in dB on held-out samples ({sz['samples']} per seed, {sz['seeds']} seed(s)). "
            f"Lloyd-Max on the Gaussian vs Max's table: {check}.\n\n"
            + markdown_table(summary, ["dist", "quantizer"] + [f"b{b}" for b in sz["bits"]],
                             ["data", "quantizer"] + [f"{b} bits" for b in sz["bits"]], 4))
    md = write_markdown(out / "quantizers.md", "Quantizer comparison", text)
    return {"name": "quantizers", "figures": figures, "csv": csv_path, "table": md, "summary": summary}

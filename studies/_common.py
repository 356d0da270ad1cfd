"""Shared plumbing for the studies: output files, figures, recursive sums in a format (via lowprec.linalg).

Every study writes into its ``out_dir``:

* ``<name>.csv``: the raw results, one row per measurement;
* ``<name>.md``: a Markdown table of the headline numbers;
* ``<name>*.png``: figures (matplotlib, Agg backend, small files).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def out_path(out_dir) -> Path:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return str(path)


def write_csv(path: Path, rows: list, columns: list | None = None) -> str:
    columns = columns or list(rows[0]) if rows else (columns or [])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return str(path)


def _csv_value(v):
    if isinstance(v, float):
        return repr(v)  # exact round trip
    return v


def fmt_num(v, digits: int = 3) -> str:
    """A number for a Markdown table: general format, 'inf'/'nan' spelled out."""
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def markdown_table(rows: list, columns: list, headers: list | None = None, digits: int = 3) -> str:
    headers = headers or columns
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(fmt_num(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, title: str, text: str) -> str:
    Path(path).write_text(f"# {title}\n\n{text}")
    return str(path)


def is_png(path) -> bool:
    data = Path(path).read_bytes()
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------
# Recursive summation s <- fl(s + x_i) in a format: lowprec.linalg.sum with a
# sequential Accumulation whose accumulator is that format.
# --------------------------------------------------------------------------
def summation(fmt, rounding="nearest_even"):
    """Recursive summation in ``fmt`` with ``rounding``, as a :class:`lowprec.accumulation.Accumulation`.

    The terms are values of ``fmt`` (others are first rounded to nearest in
    it), the accumulator starts at +0 and every addition ``s + x_i`` is
    rounded once, in ``rounding``, to ``fmt``; the order is sequential, no
    compensation, and the result is the accumulator (``out_format`` is ``fmt``).
    """
    from lowprec.accumulation import Accumulation

    return Accumulation(a_format=fmt, acc_format=fmt, acc_rounding=rounding)


def recursive_sum(x, fmt, rounding="nearest_even", seed=0, checkpoints=()) -> tuple:
    """Sum ``x`` left to right in ``fmt``: ``s = round(s + x_i)``, each add rounded once.

    Every sum is ``lowprec.linalg.sum(x[:k], accumulation=summation(fmt, rounding), seed=seed)``:
    the correctly rounded exact sum at each step, signed zeros as IEEE 754
    gives them (an exact zero sum is -0 when rounding down). Stochastic
    rounding draws the random counters of ``lowprec.linalg`` (add i uses
    counter ``8 i`` of the stream of the integer ``seed``), so the partial
    sums of one seed are prefixes of one sequence.

    Returns ``(s_n, last change index, partial sums at the sorted checkpoints)``:
    the last change is the largest k with ``s_k != s_{k-1}`` (0 when the sum
    never changes; ``n`` when ``s_n`` is NaN, which differs from itself), and a
    checkpoint k holds ``s_k`` for ``0 <= k <= n``.

    Raises
    ------
    ValueError
        A checkpoint outside ``0..n``.
    """
    from lowprec import linalg

    acc = summation(fmt, rounding)
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    n = x.size
    cps = np.asarray(checkpoints, dtype=np.int64).reshape(-1)
    if cps.size and (cps.min() < 0 or cps.max() > n):
        raise ValueError(f"checkpoints must lie in 0..{n} (the number of terms), got {cps.min()}..{cps.max()}")

    def partial(k: int) -> float:
        return float(linalg.sum(x[:k], accumulation=acc, seed=seed))

    s = partial(n)
    trace = np.array([partial(int(k)) for k in cps], dtype=np.float64)
    return s, _last_change(x, acc, s, partial), trace


def _last_change(x, acc, s, partial) -> int:
    """The largest k with s_k != s_{k-1}, found from the final sum ``s`` with few partial sums.

    Deterministic modes: from the last k at which ``round(s + x_k) != s`` on
    (no such k: from 0), the partial sums that equal ``s`` form a suffix
    (once ``s_m == s``, every later add rounds ``s + x_k`` back to ``s``), and
    its first index, found by bisection, is the last change. Stochastic
    rounding draws anew at every add, so that elementwise test does not
    apply; with terms of one sign the partial sums are monotonic and the
    bisection runs from 0; with terms of both signs the partial sums are
    compared with ``s`` from the end backwards (one partial sum per add of the
    final run of unchanged sums).
    """
    from lowprec import linalg

    n = x.size
    if n == 0:
        return 0
    if s != s:
        return n  # NaN differs from itself: every add changes the sum from the first NaN on
    if acc.is_stochastic:
        nz = x[x != 0]
        if (nz > 0).any() and (nz < 0).any():
            k = n
            while k > 0 and partial(k - 1) == s:
                k -= 1
            return k
        lo = 0
    else:
        pairs = np.empty((n, 2), dtype=np.float64)
        pairs[:, 0] = s
        pairs[:, 1] = x
        moved = np.flatnonzero(linalg.sum(pairs, axis=1, accumulation=acc) != s)  # round(s + x_k), each k
        lo = int(moved[-1]) + 1 if moved.size else 0
    hi = n  # partial(hi) == s
    while lo < hi:
        mid = (lo + hi) // 2
        if partial(mid) == s:
            hi = mid
        else:
            lo = mid + 1
    return hi


# --------------------------------------------------------------------------
# Readable axes and lines that coincide
# --------------------------------------------------------------------------
def integer_axis(ax, which: str = "x") -> None:
    """Ticks only at integers on ``ax``'s ``which`` axis (bits, epochs, steps)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{which}axis").set_major_locator(MaxNLocator(integer=True))


def pow2_axis(ax, which: str = "y") -> None:
    """A log axis in base 2 whose ticks read ``2^k`` (loss scales, powers of two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = getattr(ax, f"{which}axis")
    getattr(ax, f"set_{which}scale")("log", base=2)
    axis.set_major_locator(LogLocator(base=2, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"$2^{{{int(round(math.log2(v)))}}}$" if v > 0 else ""))
    axis.set_minor_formatter(NullFormatter())


def merge_identical(series: dict, rtol: float = 0.0) -> list:
    """``[(labels, values), ...]``: the series of ``{label: values}`` grouped where the values are equal.

    Lines that coincide exactly are drawn once, with every label that they
    stand for, so that a legend never lists a line the reader cannot see.
    ``rtol`` > 0 also merges values equal to that relative tolerance (the
    same numbers computed at another scale). NaNs compare equal to NaNs here.
    Groups keep the order of first appearance.
    """
    groups: list = []
    for label, values in series.items():
        v = np.asarray(values, dtype=np.float64)
        for labels, w in groups:
            if v.shape == w.shape and (np.array_equal(v, w, equal_nan=True)
                                       or (rtol > 0 and np.allclose(v, w, rtol=rtol, atol=0, equal_nan=True))):
                labels.append(label)
                break
        else:
            groups.append(([label], v))
    return groups


# --------------------------------------------------------------------------
# A training run of the MLP on the digits data under any Policy object
# --------------------------------------------------------------------------
def train_mlp(policy, seed: int, epochs: int, hidden, batch_size: int = 64, lr: float = 0.05,
              loss_scale=None, log2_input_scale: int = 0, n_train: int = 0) -> dict:
    """Train an MLP on the digits data under ``policy`` (a Policy or a registered name), as ``lowprec.train``
    does: the same calls in the same order (round the inputs, forward, loss, scaled backward, unscale,
    step, loss-scale update), SGD with momentum 0.9, epoch ``e`` shuffled by ``default_rng([seed, e])``.

    ``loss_scale`` overrides the policy's loss scaling (``"none"``, ``"dynamic"``, ...).
    ``log2_input_scale`` = k multiplies the inputs by ``2**k`` and the first layer's initial weights by
    ``2**-k`` (rounded to the policy's weight format), so that the network computes the same function at
    initialisation while its input tensor lies elsewhere in the formats' range. ``n_train`` > 0 trains on
    the first ``n_train`` training images only (the test set is always the whole held-out set).

    Returns ``{"steps": [loss per step], "epochs": [{epoch, train_loss, test_loss, test_accuracy}],
    "final_train_loss", "test_loss", "test_accuracy", "skipped_steps"}``.
    """
    from lowprec.amp import LossScaler, Precision, get_policy
    from lowprec.autograd import MLP, SGD, softmax_cross_entropy
    from lowprec.data import load_digits
    from lowprec.train import evaluate

    policy = get_policy(policy)
    ds = load_digits(seed=0)
    f = 2.0 ** int(log2_input_scale)
    xtr = (ds.x_train * f).astype(np.float32)
    ytr = ds.y_train
    if n_train:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    xte = (ds.x_test * f).astype(np.float32)
    ctx = Precision(policy, seed=seed)
    model = MLP([ds.n_features, *hidden, ds.n_classes], seed=seed, ctx=ctx)
    if log2_input_scale:
        w0 = model.layers[0].weight
        w0.data = ctx.round((w0.data / np.float32(f)).astype(np.float32), "weight")
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, ctx=ctx)
    scaler = LossScaler.from_spec(loss_scale if loss_scale is not None else policy.loss_scale)
    n = len(ytr)
    steps, epochs_rows, skipped = [], [], 0
    with np.errstate(all="ignore"):
        for epoch in range(epochs):
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            total = 0.0
            for b in range(-(-n // batch_size)):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                logits = model(xtr[idx])
                loss = softmax_cross_entropy(logits, ytr[idx])
                opt.zero_grad()
                scale = scaler.scale
                loss.backward(scale)
                scaler.unscale_(opt)
                skipped += int(not scaler.step(opt))
                scaler.update()
                steps.append(float(loss.data))
                total += float(loss.data) * len(idx)
            test_loss, test_acc = evaluate(model, xte, ds.y_test)
            epochs_rows.append({"epoch": epoch + 1, "train_loss": total / n, "test_loss": test_loss,
                                "test_accuracy": test_acc})
    last = epochs_rows[-1]
    return {"steps": steps, "epochs": epochs_rows, "final_train_loss": last["train_loss"],
            "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"], "skipped_steps": skipped}

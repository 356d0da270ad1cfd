"""``lowprec train``: train an MLP classifier under a precision policy, with telemetry.

Programmatic use: :func:`train` takes a :class:`TrainConfig` and returns a
:class:`RunResult` (the model, optimizer, scaler and the run record). The
command line wraps it:

    lowprec train --precision bf16-mixed --epochs 30 --seed 0 --out runs/bf16
    lowprec train --compare fp32,fp16-mixed,bf16-mixed,pure-fp16 --epochs 10 --out runs/cmp
    lowprec train --resume runs/bf16 --epochs 40

What a run writes to ``--out``: ``run.json`` (configuration, policy table,
summary, per-epoch metrics, telemetry totals per tensor), ``steps.csv``
(one row per optimizer step: loss, batch accuracy, loss scale, skipped,
counts per role and event), ``telemetry.csv`` (one row per tensor and step
with a non-zero count), ``loss.png``, ``accuracy.png``,
``loss_scale.png``, ``underflow.png`` and ``checkpoint.ckpt`` (written
atomically at the end of every epoch).

Determinism: the initial weights come from ``seed``; epoch ``e`` is shuffled
by ``numpy.random.default_rng([seed, e])``; stochastic rounding draws from
:class:`lowprec.RandomStream` streams whose offsets are checkpointed, so a
resumed run ends with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import amp
from .amp import LossScaler, Precision, get_policy, policy_bytes, policy_names
from .autograd import MLP, SGD, Adam, clip_grad_norm, no_grad, softmax_cross_entropy
from .data import Dataset, load_digits, load_mnist
from .telemetry import EVENTS, Telemetry

__all__ = ["TrainConfig", "RunResult", "train", "evaluate", "compare", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "add_parser"]


def _load_extra_policies() -> None:
    """Import modules that register more policies (QAT), if this build has them."""
    for name in ("lowprec.quant.qat",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in (name, name.rsplit(".", 1)[0]):
                raise


_load_extra_policies()


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the run record and checkpoints).

    ``loss_scale=None`` uses the policy's default; ``data`` is ``"digits"``
    or a directory with the four MNIST IDX files.
    """

    precision: str = "fp32"
    epochs: int = 30
    seed: int = 0
    batch_size: int = 64
    lr: float = 0.05
    hidden: tuple = (128,)
    data: str = "digits"
    loss_scale: Optional[str] = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_norm: Optional[float] = None
    activation: str = "relu"
    loss_weight: float = 1.0
    telemetry: bool = True

    def validate(self) -> "TrainConfig":
        """Check every field; return self. Raises ValueError/TypeError naming the field."""
        get_policy(self.precision)
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.loss_scale is not None:
            amp.parse_loss_scale(self.loss_scale)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (isinstance(self.loss_weight, (int, float)) and 0 < self.loss_weight < float("inf")):
            raise ValueError(f"loss_weight must be positive and finite, got {self.loss_weight!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm!r}")
        return self

    @property
    def loss_scale_spec(self) -> str:
        return self.loss_scale if self.loss_scale is not None else get_policy(self.precision).loss_scale


@dataclass
class RunResult:
    """What :func:`train` returns."""

    config: TrainConfig
    model: MLP
    optimizer: object
    scaler: LossScaler
    record: dict
    step_rows: list = field(default_factory=list)
    telemetry: Optional[Telemetry] = None

    @property
    def test_accuracy(self) -> float:
        return self.record["summary"]["test_accuracy"]

    def weights(self) -> list:
        """Copies of the stored weights (and master copies if any), for comparisons."""
        out = [p.data.copy() for p in self.model.parameters()]
        if self.optimizer.master is not None:
            out += [m.copy() for m in self.optimizer.master]
        return out


# ---------------------------------------------------------------------------------------------
# checkpoints: magic | payload length (8 bytes, big-endian) | sha256(payload) | payload (npz)

_MAGIC = b"LOWPRECCKPT\x01"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a lowprec checkpoint."""


def _to_tree(obj, arrays: dict):
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {k: _to_tree(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tree(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_tree(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _from_tree(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_tree(v, arrays) for v in obj]
    return obj


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (nested dicts/lists of JSON values and numpy arrays) atomically.

    The bytes go to a temporary file in the same directory, which is
    flushed, fsync'ed and then renamed over ``path`` with ``os.replace``:
    a crash leaves either the old checkpoint or the new one, never a torn file.
    """
    path = os.fspath(path)
    arrays: dict = {}
    meta = json.dumps(_to_tree(state, arrays)).encode()
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(meta, dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    blob = _MAGIC + len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest() + payload
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Not a lowprec checkpoint, truncated, or the checksum does not match.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.ckpt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        blob = f.read()
    head = len(_MAGIC) + 8 + 32
    if not blob.startswith(_MAGIC[:len(blob)]) or len(blob) < len(_MAGIC):
        raise CheckpointError(f"{path} is not a lowprec checkpoint (bad magic bytes)")
    if not blob.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a lowprec checkpoint (bad magic bytes)")
    if len(blob) < head:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(blob)} bytes, shorter than its "
                              f"{head}-byte header")
    n = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 8], "big")
    payload = blob[head:]
    if len(payload) != n:
        raise CheckpointError(f"checkpoint {path} is truncated: header announces {n} bytes of data, "
                              f"the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC) + 8:head]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return _from_tree(meta, arrays)


# ---------------------------------------------------------------------------------------------
# training


def _load_data(spec: str) -> Dataset:
    if spec == "digits":
        return load_digits(seed=0)
    if os.path.isdir(spec):
        return load_mnist(spec)
    raise ValueError(f"--data must be 'digits' or a directory with MNIST IDX files, got {spec!r}")


def _check_dataset(ds: Dataset) -> None:
    for name in ("x_train", "x_test"):
        x = getattr(ds, name)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"dataset {name} contains NaN or Inf values; clean the data before training")


def _build(config: TrainConfig, n_features: int, n_classes: int):
    telemetry = Telemetry(enabled=config.telemetry, keep_steps=False)
    ctx = Precision(config.precision, seed=config.seed, telemetry=telemetry)
    model = MLP([n_features, *config.hidden, n_classes], activation=config.activation, seed=config.seed, ctx=ctx)
    params = model.parameters()
    if config.optimizer == "sgd":
        opt = SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, ctx=ctx)
    else:
        opt = Adam(params, lr=config.lr, weight_decay=config.weight_decay, ctx=ctx)
    scaler = LossScaler.from_spec(config.loss_scale_spec)
    return ctx, telemetry, model, opt, scaler


def evaluate(model: MLP, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple:
    """(mean loss, accuracy) of ``model`` on ``x, y`` in the model's precision, without telemetry."""
    ctx = model.ctx
    saved = ctx.telemetry if ctx is not None else None
    if ctx is not None:
        ctx.telemetry = None
    total_loss, correct = 0.0, 0
    try:
        with no_grad():
            for i in range(0, len(y), batch_size):
                logits = model(x[i:i + batch_size])
                loss = softmax_cross_entropy(logits, y[i:i + batch_size])
                total_loss += float(loss.data) * len(logits.data)
                correct += int(np.sum(np.argmax(logits.data, axis=1) == y[i:i + batch_size]))
    finally:
        if ctx is not None:
            ctx.telemetry = saved
    return total_loss / max(len(y), 1), correct / max(len(y), 1)


_CSV_ROLES = ("activation", "activation_grad", "weight_grad", "weight_used", "weight", "master", "optimizer_state")


def _step_row(step, epoch, loss, acc, scale, skipped, tel: Telemetry) -> dict:
    row = {"step": step, "epoch": epoch, "loss": loss, "accuracy": acc, "loss_scale": scale,
           "skipped": int(skipped)}
    totals = tel.step_totals(tel.last_step) if tel.last_step is not None else {}
    for role in _CSV_ROLES:
        counts = totals.get(role, dict.fromkeys(EVENTS, 0))
        for k in EVENTS:
            row[f"{role}_{k}"] = counts[k]
    return row


def _state(config, epoch, step, model, opt, scaler, ctx, tel, epochs_rows, step_rows, wall) -> dict:
    return {
        "version": 1, "config": dataclasses.asdict(config), "epoch": epoch, "step": step,
        "params": [p.data for p in model.parameters()], "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(), "streams": ctx.stream_state(), "telemetry": tel.state_dict(),
        "epochs": epochs_rows, "steps": step_rows, "wall_time": wall,
    }


def train(config: TrainConfig, out: Optional[str] = None, *, resume: Optional[str] = None, quiet: bool = True,
          dataset: Optional[Dataset] = None, checkpoint_every: int = 1) -> RunResult:
    """Train an MLP on ``config.data`` under ``config.precision``.

    Parameters
    ----------
    config : TrainConfig
    out : str, optional
        Directory for the run record, CSV, plots and checkpoint (None: nothing written).
    resume : str, optional
        A checkpoint file or a run directory: continue from it until
        ``config.epochs`` epochs in total (all other settings come from the
        checkpoint; the result equals an uninterrupted run bit for bit).
    quiet : bool
        No progress bar.
    dataset : Dataset, optional
        Use these arrays instead of loading ``config.data``.
    checkpoint_every : int
        Write ``out/checkpoint.ckpt`` every this many epochs (and at the end).

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        Bad configuration, unknown policy, NaN in the data, a checkpoint
        that does not match.
    CheckpointError
        A truncated or corrupt checkpoint.
    """
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        saved = dict(state["config"])
        saved["epochs"] = config.epochs
        saved["hidden"] = tuple(saved["hidden"])
        config = TrainConfig(**saved)
    config.validate()
    ds = dataset if dataset is not None else _load_data(config.data)
    _check_dataset(ds)
    ctx, tel, model, opt, scaler = _build(config, ds.n_features, ds.n_classes)
    params = model.parameters()
    epochs_rows: list = []
    step_rows: list = []
    start_epoch, step, wall_before = 0, 0, 0.0
    if state is not None:
        if len(state["params"]) != len(params):
            raise ValueError(f"checkpoint {resume} holds {len(state['params'])} parameters, the model "
                             f"{len(params)}")
        for p, a in zip(params, state["params"]):
            if p.data.shape != a.shape:
                raise ValueError(f"checkpoint parameter shape {a.shape} does not match the model's {p.data.shape}")
            p.data = np.array(a, dtype=np.float32)
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ctx.load_stream_state(state["streams"])
        tel.load_state_dict(state["telemetry"])
        epochs_rows, step_rows = list(state["epochs"]), list(state["steps"])
        start_epoch, step, wall_before = int(state["epoch"]), int(state["step"]), float(state["wall_time"])
    if out is not None:
        os.makedirs(out, exist_ok=True)
    n = len(ds.y_train)
    steps_per_epoch = -(-n // config.batch_size)
    t0 = time.perf_counter()
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=(config.epochs - start_epoch) * steps_per_epoch, desc=config.precision, unit="step",
                   leave=False, file=sys.stderr)
    try:
        for epoch in range(start_epoch, config.epochs):
            perm = np.random.default_rng([config.seed, epoch]).permutation(n)
            ep_loss = ep_correct = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                xb, yb = ds.x_train[idx], ds.y_train[idx]
                tel.begin_step(step)
                logits = model(xb)
                loss = softmax_cross_entropy(logits, yb)
                opt.zero_grad()
                scale = scaler.scale
                loss.backward(scale * config.loss_weight)  # the gradient of loss_weight * loss, scaled
                scaler.unscale_(opt)
                if config.clip_norm is not None:
                    clip_grad_norm(params, config.clip_norm)
                stepped = scaler.step(opt)
                scaler.update()
                tel.end_step(loss_scale=scale, skipped=not stepped)
                lval = float(loss.data)
                acc = float(np.mean(np.argmax(logits.data, axis=1) == yb))
                ep_loss += lval * len(yb)
                ep_correct += acc * len(yb)
                step_rows.append(_step_row(step, epoch, lval, acc, scale, not stepped, tel))
                step += 1
                if bar is not None:
                    bar.update(1)
                    if b % 5 == 0 or b == steps_per_epoch - 1:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{lval:.4f}", acc=f"{acc:.3f}", refresh=False)
            test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test)
            epochs_rows.append({"epoch": epoch + 1, "train_loss": ep_loss / n, "train_accuracy": ep_correct / n,
                                "test_loss": test_loss, "test_accuracy": test_acc, "loss_scale": scaler.scale})
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, test_acc=f"{test_acc:.4f}", refresh=True)
            last = epoch + 1 == config.epochs
            if out is not None and ((epoch + 1) % checkpoint_every == 0 or last):
                wall = wall_before + time.perf_counter() - t0
                save_checkpoint(os.path.join(out, "checkpoint.ckpt"),
                                _state(config, epoch + 1, step, model, opt, scaler, ctx, tel, epochs_rows,
                                       step_rows, wall))
    finally:
        if bar is not None:
            bar.close()
    wall = wall_before + time.perf_counter() - t0
    record = _record(config, model, opt, scaler, tel, epochs_rows, step_rows, wall, ds)
    result = RunResult(config, model, opt, scaler, record, step_rows, tel)
    if out is not None:
        write_run(out, result)
    return result


def _record(config, model, opt, scaler, tel, epochs_rows, step_rows, wall, ds) -> dict:
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
    """Write run.json, steps.csv and the PNG plots of a finished run into ``out``."""
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


def compare(names, base: TrainConfig, out: Optional[str] = None, quiet: bool = True,
            dataset: Optional[Dataset] = None) -> list:
    """Train ``base`` under each policy in ``names``; return the summary rows (dicts)."""
    rows = []
    for name in names:
        get_policy(name)
    for name in names:
        cfg = dataclasses.replace(base, precision=name)
        res = train(cfg, None if out is None else os.path.join(out, name), quiet=quiet, dataset=dataset)
        s = res.record["summary"]
        b = s["bytes_per_role"]
        rows.append({"policy": name, "loss_scale": cfg.loss_scale_spec, "test_accuracy": s["test_accuracy"],
                     "train_loss": s["train_loss"], "skipped_steps": s["skipped_steps"],
                     "final_loss_scale": s["final_loss_scale"], "grad_underflow": s["grad_underflow"],
                     "grad_subnormal": s["grad_subnormal"], "wall_time_s": s["wall_time_s"],
                     "param_bytes": b["weight"] + b["master"] + b["optimizer_state"] + b["weight_grad"]})
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "compare.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def format_table(rows: list) -> str:
    """The compare rows as a Markdown table."""
    head = ("| policy | loss scale | test acc | train loss | skipped | final scale | grad underflow "
            "| grad subnormal | wall s | param bytes |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['loss_scale']} | {100 * r['test_accuracy']:.2f}% | {r['train_loss']:.4f} "
                     f"| {r['skipped_steps']} | {r['final_loss_scale']:g} | {r['grad_underflow']} "
                     f"| {r['grad_subnormal']} | {r['wall_time_s']:.1f} | {r['param_bytes']} |")
    return "\n".join(lines)


def _summary_text(res: RunResult) -> str:
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


# ---------------------------------------------------------------------------------------------
# command line


def _number(text: str) -> float:
    """A float, also written as a power of two: ``2^-20`` or ``2**-20``."""
    t = text.strip().replace("**", "^")
    try:
        if t.startswith("2^"):
            return 2.0 ** int(t[2:])
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 2^K, got {text!r}") from None


def _hidden(text: str) -> tuple:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated ints, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden must be positive ints, got {text!r}")
    return sizes


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train an MLP under a precision policy, with telemetry",
        description="Train a small MLP classifier with emulated low-precision arithmetic. Policies: "
                    + ", ".join(policy_names()) + ".")
    p.add_argument("--precision", default="fp32", help="policy name (default fp32)")
    p.add_argument("--compare", default=None, metavar="P1,P2,...",
                   help="train each policy with the same seed and schedule and print one table")
    p.add_argument("--epochs", type=int, default=None, help="epochs in total (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=_number, default=0.05)
    p.add_argument("--hidden", type=_hidden, default=(128,), help="hidden widths, e.g. 256,256 (default 128)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    p.add_argument("--activation", choices=("relu", "tanh", "gelu"), default="relu")
    p.add_argument("--loss-weight", type=_number, default=1.0,
                   help="train on loss_weight * cross-entropy (a small weight makes every gradient small, "
                        "as a loss averaged over many more terms would; see docs/training.md)")
    p.add_argument("--data", default="digits", help="'digits' (bundled) or a directory with MNIST IDX files")
    p.add_argument("--loss-scale", default=None, metavar="none|static:VALUE|dynamic",
                   help="loss scaling (default: the policy's)")
    p.add_argument("--out", default=None, help="directory for run.json, steps.csv, plots, checkpoint")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT|RUN_DIR", help="continue a run bit-exactly (settings come from the checkpoint; --epochs sets the new total)")
    p.add_argument("--no-telemetry", action="store_true", help="do not count rounding events (faster)")
    p.add_argument("--threads", type=int, default=None,
                   help="numba threads for the kernels (1 is fastest for small models on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    epochs = args.epochs if args.epochs is not None else 30
    config = TrainConfig(precision=args.precision, epochs=epochs, seed=args.seed, batch_size=args.batch_size,
                         lr=args.lr, hidden=args.hidden, data=args.data, loss_scale=args.loss_scale,
                         optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                         clip_norm=args.clip_norm, activation=args.activation, loss_weight=args.loss_weight,
                         telemetry=not args.no_telemetry)
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        rows = compare(names, config.validate(), out=args.out, quiet=args.quiet)
        print(format_table(rows))
        return 0
    if args.resume is not None:
        if args.epochs is None:
            config.epochs = int(load_checkpoint(args.resume)["config"]["epochs"])
        out = args.out if args.out is not None else (args.resume if os.path.isdir(args.resume)
                                                     else os.path.dirname(args.resume) or ".")
        res = train(config, out, resume=args.resume, quiet=args.quiet)
    else:
        res = train(config, args.out, quiet=args.quiet)
    print(_summary_text(res))
    if args.out is not None or args.resume is not None:
        print(f"run record written to {args.out or out}")
    return 0

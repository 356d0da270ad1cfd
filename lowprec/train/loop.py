"""The training loop of ``lowprec train``: configuration, :func:`train`, :func:`evaluate`, :func:`compare`.

:func:`train` builds the model, optimizer and loss scaler that a
:class:`TrainConfig` names, runs the epochs (resuming from a checkpoint if
asked), checkpoints at the end of epochs and returns a :class:`RunResult`;
with ``out`` it also writes the run record (:mod:`lowprec.train.report`).
:func:`compare` trains one configuration under several policies.

Importing this module also imports the modules that register more
policies (QAT), so that every policy name works here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..amp import LossScaler, Precision, get_policy, parse_loss_scale
from ..autograd import MLP, SGD, Adam, clip_grad_norm, no_grad, softmax_cross_entropy
from ..data import Dataset, load_digits, load_mnist
from ..telemetry import Telemetry
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .diagnose import diagnose_skips
from .report import check_out_dir, plot_compare, run_record, step_row, write_run

__all__ = ["TrainConfig", "RunResult", "train", "evaluate", "compare", "compare_runs"]


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
    or a directory with the four MNIST IDX files; ``hardware`` names the
    matrix unit that runs the matmuls (:mod:`lowprec.amp.hardware`; None:
    the policy's own, ideal accumulation).
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
    hardware: Optional[str] = None

    def validate(self) -> "TrainConfig":
        """Check every field; return self. Raises ValueError/TypeError naming the field."""
        policy = get_policy(self.precision)
        if self.hardware is not None:
            from ..amp.hardware import resolve_hardware

            resolve_hardware(policy, self.hardware)
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
            parse_loss_scale(self.loss_scale)
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


def load_dataset(spec: str) -> Dataset:
    """The dataset that ``--data SPEC`` names: ``"digits"`` (bundled) or a directory of MNIST IDX files.

    Raises
    ------
    ValueError
        ``spec`` is neither (the message names ``--data``).
    FileNotFoundError
        The directory lacks one of the IDX files.
    """
    if spec == "digits":
        return load_digits(seed=0)
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec):
        return load_mnist(spec)
    raise ValueError(f"--data must be 'digits' or a directory with MNIST IDX files, got {spec!r}")


#: What a checkpoint of :func:`train` holds (``policy_state`` and ``compile_time`` came later: optional).
_STATE_KEYS = ("config", "epoch", "step", "params", "optimizer", "scaler", "streams", "telemetry", "epochs",
               "steps", "wall_time")


def read_resume_state(resume) -> dict:
    """Load the checkpoint that ``resume`` (a file or run directory) names and check that it is one of
    :func:`train`'s; its ``config`` comes back as a :class:`TrainConfig`.

    Raises
    ------
    FileNotFoundError
        No such checkpoint.
    CheckpointError
        Truncated, corrupt, not a training checkpoint (keys missing) or
        settings this version does not know.
    """
    state = load_checkpoint(resume)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {resume} is not a training checkpoint of lowprec train: it holds a "
                              f"{type(state).__name__}, not the training state")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {resume} is not a training checkpoint of lowprec train: it lacks "
                              f"{', '.join(repr(k) for k in missing)} (resume from the checkpoint.ckpt that "
                              "lowprec train wrote)")
    saved = state["config"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(saved, dict) or set(saved) - names:
        extra = sorted(set(saved) - names) if isinstance(saved, dict) else saved
        raise CheckpointError(f"checkpoint {resume} holds settings this version of lowprec does not know: "
                              f"{extra}; resume it with the version that wrote it")
    saved = dict(saved)
    if "hidden" in saved:
        saved["hidden"] = tuple(saved["hidden"])
    state = dict(state)
    state["config"] = TrainConfig(**saved)
    return state


def _quantizers(model) -> list:
    """The fake quantizers of every layer, in a fixed order (None where a layer has none)."""
    return [q for layer in model.layers for q in (layer.weight_quant, layer.act_quant)]


def _policy_state(model) -> list:
    """The state of every stateful part of the policy that the parameters do not hold (EMA observers, the
    signedness of LSQ steps, companding ranges): ``state_dict()`` of each fake quantizer that has one."""
    return [q.state_dict() if q is not None and hasattr(q, "state_dict") else None for q in _quantizers(model)]


def _load_policy_state(model, states, resume) -> None:
    qs = _quantizers(model)
    if states is None:
        if any(q is not None and hasattr(q, "state_dict") for q in qs):
            raise CheckpointError(f"checkpoint {resume} lacks the state of the policy's quantizers (written by "
                                  "an older lowprec): it cannot be resumed bit-exactly; train the run again")
        return
    if len(states) != len(qs):
        raise CheckpointError(f"checkpoint {resume} holds the state of {len(states)} quantizers, the model has "
                              f"{len(qs)}")
    for q, st in zip(qs, states):
        if st is None:
            continue
        if q is None or not hasattr(q, "load_state_dict"):
            raise CheckpointError(f"checkpoint {resume} holds quantizer state for a layer whose policy has no "
                                  "stateful quantizer there")
        q.load_state_dict(st)


def _train_step(config, model, opt, scaler, params, xb, yb, scale):
    """Forward, scaled backward, unscale, clip and (unless the scaler skips it) the update."""
    logits = model(xb)
    loss = softmax_cross_entropy(logits, yb)
    opt.zero_grad()
    loss.backward(scale * config.loss_weight)  # the gradient of loss_weight * loss, scaled
    scaler.unscale_(opt)
    if config.clip_norm is not None:
        clip_grad_norm(params, config.clip_norm)
    return logits, loss, scaler.step(opt)


def _warm_up(config: TrainConfig, ds: Dataset) -> float:
    """Compile (or load from numba's cache) every kernel a step and an evaluation use; return the seconds.

    Runs one training step and one evaluation on a throwaway model, optimizer,
    scaler, runtime and telemetry built from ``config`` (so nothing of the run
    itself changes: it starts from the same bits as without the warm-up). The
    loss is not scaled (scale 1), so that the update is not skipped and its
    kernels compile too.
    """
    t0 = time.perf_counter()
    _, tel, model, opt, scaler = _build(config, ds.n_features, ds.n_classes)
    n, rest = len(ds.y_train), len(ds.y_train) % config.batch_size
    with np.errstate(all="ignore"):
        # a full batch and the epoch's last, shorter one (a smaller product may take another kernel)
        for size in (min(n, config.batch_size), rest) if 0 < rest < n else (min(n, config.batch_size),):
            tel.begin_step(0)
            _train_step(config, model, opt, scaler, model.parameters(), ds.x_train[:size], ds.y_train[:size], 1.0)
            scaler.update()
            tel.end_step(loss_scale=1.0)
        m = len(ds.y_test)
        evaluate(model, ds.x_test[:min(m, 512 + m % 512)], ds.y_test[:min(m, 512 + m % 512)])
    return time.perf_counter() - t0


def _check_dataset(ds: Dataset) -> None:
    for name in ("x_train", "x_test"):
        x = getattr(ds, name)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"dataset {name} contains NaN or Inf values; clean the data before training")


def _build(config: TrainConfig, n_features: int, n_classes: int):
    telemetry = Telemetry(enabled=config.telemetry, keep_steps=False)
    ctx = Precision(config.precision, seed=config.seed, telemetry=telemetry, hardware=config.hardware)
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


def _state(config, epoch, step, model, opt, scaler, ctx, tel, epochs_rows, step_rows, wall, compile_time,
           diagnoses) -> dict:
    return {
        "version": 1, "config": dataclasses.asdict(config), "epoch": epoch, "step": step,
        "params": [p.data for p in model.parameters()], "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(), "streams": ctx.stream_state(), "telemetry": tel.state_dict(),
        "policy_state": _policy_state(model),
        "epochs": epochs_rows, "steps": step_rows, "wall_time": wall, "compile_time": compile_time,
        "diagnoses": diagnoses,
    }


def _say(bar, text: str) -> None:
    """Print a line to stderr without breaking the progress bar."""
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def train(config: TrainConfig, out: Optional[str] = None, *, resume: Optional[str] = None, quiet: bool = True,
          dataset: Optional[Dataset] = None, checkpoint_every: int = 1, warm_up: bool = True,
          skip_alert: int = 10, plots: bool = True) -> RunResult:
    """Train an MLP on ``config.data`` under ``config.precision``.

    Parameters
    ----------
    config : TrainConfig
    out : str, optional
        Directory for the run record, CSV, plots and checkpoint (None: nothing written).
    resume : str, optional
        A checkpoint file or a run directory: continue from it until
        ``config.epochs`` epochs in total, which must be more than it has
        done (all other settings come from the checkpoint; the result equals
        an uninterrupted run bit for bit).
    quiet : bool
        No progress bar and no messages during the run.
    dataset : Dataset, optional
        Use these arrays instead of loading ``config.data``.
    checkpoint_every : int
        Write ``out/checkpoint.ckpt`` every this many epochs (and at the end).
    warm_up : bool
        First compile the kernels (or load them from numba's cache) on a
        throwaway copy of the model, timed apart: the summary's
        ``compile_time_s``; ``wall_time_s`` is the training alone. The run's
        bits are the same either way.
    skip_alert : int
        After this many consecutive skipped steps (or steps with a
        non-finite loss), diagnose why (:mod:`lowprec.train.diagnose`): said
        during the run and kept in the summary's ``diagnosis``.
    plots : bool
        Draw the PNG plots into ``out`` (False: the record, CSV files and checkpoint only).

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        Bad configuration, unknown policy, NaN in the data, ``out`` is a
        file, ``config.epochs`` not above the epochs a checkpoint has done,
        a checkpoint that does not match.
    CheckpointError
        A truncated, corrupt or foreign checkpoint.
    """
    state = None
    if out is not None:
        check_out_dir(out)
    if resume is not None:
        state = read_resume_state(resume)
        config = dataclasses.replace(state["config"], epochs=config.epochs)
        done = int(state["epoch"])
        if isinstance(config.epochs, int) and not isinstance(config.epochs, bool) and config.epochs <= done:
            raise ValueError(f"epochs ({config.epochs}) must be above the {done} epochs the run in {resume} "
                             f"has already trained: pass --epochs above {done} to continue it")
    config.validate()
    ds = dataset if dataset is not None else load_dataset(config.data)
    _check_dataset(ds)
    ctx, tel, model, opt, scaler = _build(config, ds.n_features, ds.n_classes)
    params = model.parameters()
    epochs_rows: list = []
    step_rows: list = []
    diagnoses: list = []
    start_epoch, step, wall_before, compile_before = 0, 0, 0.0, 0.0
    if state is not None:
        if len(state["params"]) != len(params):
            raise ValueError(f"checkpoint {resume} holds {len(state['params'])} parameters, the model "
                             f"{len(params)}")
        for p, a in zip(params, state["params"]):
            if p.data.shape != a.shape:
                raise ValueError(f"checkpoint parameter shape {a.shape} does not match the model's {p.data.shape}")
            p.data = np.array(a, dtype=np.float32)
        try:
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            ctx.load_stream_state(state["streams"])
            tel.load_state_dict(state["telemetry"])
            _load_policy_state(model, state.get("policy_state"), resume)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {resume} does not hold the training state this version of lowprec "
                                  f"expects ({type(exc).__name__}: {exc}); resume it with the version that "
                                  "wrote it") from exc
        epochs_rows, step_rows = list(state["epochs"]), list(state["steps"])
        diagnoses = list(state.get("diagnoses") or [])
        start_epoch, step, wall_before = int(state["epoch"]), int(state["step"]), float(state["wall_time"])
        compile_before = float(state.get("compile_time") or 0.0)
    if out is not None:
        os.makedirs(out, exist_ok=True)
    n = len(ds.y_train)
    steps_per_epoch = -(-n // config.batch_size)
    compile_time = 0.0
    if warm_up:
        if not quiet:
            print(f"{config.precision}: compiling kernels (first run only; later runs load them from numba's "
                  "cache)...", end="", file=sys.stderr, flush=True)
        compile_time = _warm_up(config, ds)
        if not quiet:
            print(f" {compile_time:.1f} s", file=sys.stderr, flush=True)
    compile_time += compile_before
    t0 = time.perf_counter()
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=(config.epochs - start_epoch) * steps_per_epoch, desc=f"{config.precision} training",
                   unit="step", leave=False, file=sys.stderr)
    run_length = 0  # consecutive skipped steps (or steps with a non-finite loss)
    try:
        for epoch in range(start_epoch, config.epochs):
            perm = np.random.default_rng([config.seed, epoch]).permutation(n)
            ep_loss = ep_correct = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                xb, yb = ds.x_train[idx], ds.y_train[idx]
                tel.begin_step(step)
                scale = scaler.scale
                logits, loss, stepped = _train_step(config, model, opt, scaler, params, xb, yb, scale)
                scaler.update()
                tel.end_step(loss_scale=scale, skipped=not stepped)
                lval = float(loss.data)
                acc = float(np.mean(np.argmax(logits.data, axis=1) == yb))
                ep_loss += lval * len(yb)
                ep_correct += acc * len(yb)
                step_rows.append(step_row(step, epoch, lval, acc, scale, not stepped, tel))
                run_length = run_length + 1 if (not stepped or not np.isfinite(lval)) else 0
                if run_length == skip_alert:
                    text = diagnose_skips(model, tel, lval, scale, run_length, not stepped, ctx.policy,
                                          scaler.mode)
                    diagnoses.append({"step": step, "text": text})
                    if not quiet:
                        _say(bar, f"warning: {text}")
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
                                       step_rows, wall, compile_time, diagnoses))
    finally:
        if bar is not None:
            bar.close()
    wall = wall_before + time.perf_counter() - t0
    rec = run_record(config, model, opt, scaler, tel, epochs_rows, step_rows, wall, ds)
    rec["summary"]["compile_time_s"] = compile_time
    rec["summary"]["diagnosis"] = [d["text"] for d in diagnoses]
    result = RunResult(config, model, opt, scaler, rec, step_rows, tel)
    if out is not None:
        write_run(out, result, plots=plots)
    return result


def compare_runs(names, hardware=None) -> list:
    """The ``(label, policy, hardware)`` runs of ``--compare``: each entry ``POLICY`` or ``POLICY@HARDWARE``;
    an entry without ``@`` runs once per element of ``hardware`` (a list; None: once, on the configuration's
    hardware). ``label`` is ``POLICY`` for the ideal accumulation, else ``POLICY@HARDWARE``.

    Examples
    --------
    >>> compare_runs(["fp8-delayed", "bf16-mixed@nv-hopper"], ["nv-ada"])
    [('fp8-delayed@nv-ada', 'fp8-delayed', 'nv-ada'), ('bf16-mixed@nv-hopper', 'bf16-mixed', 'nv-hopper')]
    """
    from ..amp.hardware import split_compare_entry

    runs = []
    for entry in names:
        pol, hw = split_compare_entry(entry)
        for h in ([hw] if hw is not None or hardware is None else list(hardware)):
            h = None if h is None or h.strip().lower() in ("ideal", "none") else h.strip()
            label = pol if h is None else f"{pol}@{h}"
            if any(r[0] == label for r in runs):
                raise ValueError(f"--compare lists {label!r} twice")
            runs.append((label, pol, h))
    return runs


def compare(names, base: TrainConfig, out: Optional[str] = None, quiet: bool = True,
            dataset: Optional[Dataset] = None, warm_up: bool = True, hardware=None) -> list:
    """Train ``base`` under each policy in ``names``; return the summary rows (dicts).

    An entry ``POLICY@HARDWARE`` runs the policy's matmuls on that matrix unit; ``hardware`` (a list)
    runs each plain entry once per element (see :func:`compare_runs`); a plain entry without ``hardware``
    uses ``base.hardware``. With ``out``, each run's record goes to ``out/LABEL`` (``POLICY`` or
    ``POLICY@HARDWARE``), the rows to ``out/compare.json`` and a figure of all runs on shared axes to
    ``out/compare.png`` (test accuracy and train loss per epoch; loss scale and gradient underflow per
    step, side by side).
    """
    rows = []
    runs = compare_runs(names, hardware)
    if hardware is None:
        runs = [(lab if h is not None or base.hardware is None else f"{pol}@{base.hardware}", pol,
                 h if h is not None else base.hardware) for lab, pol, h in runs]
    for _, pol, h in runs:
        dataclasses.replace(base, precision=pol, hardware=h).validate()
    if out is not None:
        check_out_dir(out)
        for label, _, _ in runs:
            check_out_dir(os.path.join(out, label))
    results = []
    for label, pol, h in runs:
        cfg = dataclasses.replace(base, precision=pol, hardware=h)
        res = train(cfg, None if out is None else os.path.join(out, label), quiet=quiet, dataset=dataset,
                    warm_up=warm_up)
        res.label = label
        results.append(res)
        s = res.record["summary"]
        b = s["bytes_per_role"]
        rows.append({"policy": label, "loss_scale": cfg.loss_scale_spec, "test_accuracy": s["test_accuracy"],
                     "train_loss": s["train_loss"], "skipped_steps": s["skipped_steps"],
                     "final_loss_scale": s["final_loss_scale"], "grad_underflow": s["grad_underflow"],
                     "grad_subnormal": s["grad_subnormal"], "compile_time_s": s["compile_time_s"],
                     "wall_time_s": s["wall_time_s"],
                     "param_bytes": b["weight"] + b["master"] + b["optimizer_state"] + b["weight_grad"]})
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "compare.json"), "w") as f:
            json.dump(rows, f, indent=1)
        plot_compare(os.path.join(out, "compare.png"), results)
    return rows

"""The ``lowprec train`` command: argument parsing and the glue to :func:`lowprec.train.train`.

:func:`add_parser` registers the subcommand with ``lowprec``'s parser;
its ``func`` runs one training, a resumed training or a comparison and
prints the summary (or the comparison table).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..amp import policy_names
from ..amp.hardware import FAMILIES
from .loop import TrainConfig, compare, read_resume_state, train
from .report import check_out_dir, format_table, summary_text

__all__ = ["add_parser"]


def _number(text: str) -> float:
    """A float, also written as a power of two: ``2^-20`` or ``2**-20``.

    Examples
    --------
    >>> _number("2^-20") == _number("2**-20") == 2.0 ** -20, _number("0.05")
    (True, 0.05)
    """
    t = text.strip().replace("**", "^")
    try:
        if t.startswith("2^"):
            return 2.0 ** int(t[2:])
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 2^K, got {text!r}") from None


def _hidden(text: str) -> tuple:
    """Hidden layer widths from ``"256,256"``."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated ints, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden must be positive ints, got {text!r}")
    return sizes


_DEFAULT = TrainConfig()

#: The options that set a field of TrainConfig: option dest -> field name.
_CONFIG_FLAGS = {"precision": "precision", "epochs": "epochs", "seed": "seed", "batch_size": "batch_size",
                 "lr": "lr", "hidden": "hidden", "optimizer": "optimizer", "momentum": "momentum",
                 "weight_decay": "weight_decay", "clip_norm": "clip_norm", "activation": "activation",
                 "loss_weight": "loss_weight", "data": "data", "loss_scale": "loss_scale",
                 "no_telemetry": "telemetry", "hardware": "hardware"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand.

    The options that set the run's configuration parse to None when not
    given (their defaults are :class:`TrainConfig`'s, shown in the help), so
    that ``--resume`` can tell the flags a user passed from the defaults.
    """
    d = _DEFAULT
    p = subparsers.add_parser(
        "train", help="train an MLP under a precision policy, with telemetry",
        description="Train a small MLP classifier with emulated low-precision arithmetic. Policies: "
                    + ", ".join(policy_names()) + ".")
    p.add_argument("--precision", default=None, metavar="POLICY",
                   help=f"precision policy, one of the names above (default: {d.precision})")
    p.add_argument("--compare", default=None, metavar="P1,P2@HW,...",
                   help="train each policy with the same seed and schedule, print one table and write "
                        "compare.png; POLICY@HARDWARE runs that entry on a matrix unit, and a --hardware list "
                        "runs every plain entry once per unit, e.g. --compare fp8-delayed --hardware "
                        "ideal,nv-hopper (default: off)")
    p.add_argument("--hardware", default=None, metavar="H",
                   help="the matrix unit that runs the policy's matmuls: 'ideal' (the policy's own accumulation), "
                        "a family (" + ", ".join(FAMILIES) + ") resolved to the preset that matches the policy's "
                        "operand formats, or a preset name (lowprec matrix-units); with --compare, a comma list "
                        "(default: ideal)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs in total (default: {d.epochs}; with --resume, the saved run's)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the initial weights, the shuffling and stochastic rounding (default: {d.seed})")
    p.add_argument("--batch-size", type=int, default=None, help=f"examples per step (default: {d.batch_size})")
    p.add_argument("--lr", type=_number, default=None, help=f"learning rate, also as 2^K (default: {d.lr})")
    p.add_argument("--hidden", type=_hidden, default=None,
                   help="hidden layer widths, e.g. 256,256 (default: "
                        + ",".join(str(h) for h in d.hidden) + ")")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help=f"optimizer (default: {d.optimizer})")
    p.add_argument("--momentum", type=float, default=None, help=f"SGD momentum (default: {d.momentum})")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"L2 penalty added to the gradients (default: {d.weight_decay})")
    p.add_argument("--clip-norm", type=float, default=None,
                   help="clip gradients to this global norm (default: no clipping)")
    p.add_argument("--activation", choices=("relu", "tanh", "gelu"), default=None,
                   help=f"hidden activation (default: {d.activation})")
    p.add_argument("--loss-weight", type=_number, default=None,
                   help="train on loss_weight * cross-entropy, also as 2^K: a small weight makes every "
                        "gradient small, as a loss averaged over many more terms would (docs/training.md) "
                        f"(default: {d.loss_weight:g})")
    p.add_argument("--data", default=None, metavar="digits|DIR",
                   help=f"'digits' (bundled) or a directory with MNIST IDX files (default: {d.data})")
    p.add_argument("--loss-scale", default=None, metavar="none|static:VALUE|dynamic",
                   help="loss scaling (default: the policy's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="directory for run.json, steps.csv, plots, checkpoint (default: none written; "
                        "with --resume, the run's directory)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT|RUN_DIR",
                   help="continue a run bit-exactly: its settings come from the checkpoint and only --epochs "
                        "(the new total) may change; other differing flags are refused (default: off)")
    p.add_argument("--no-telemetry", action="store_true", default=None,
                   help="do not count rounding events, faster (default: counted)")
    p.add_argument("--threads", type=int, default=None,
                   help="numba threads for the kernels; 1 is fastest for small models on a busy machine "
                        "(default: numba's, one per core)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no messages during the run (default: shown)")
    p.set_defaults(func=_main)
    return p


def _given(args) -> dict:
    """The configuration fields the user set on the command line: {field: value}."""
    out = {}
    for dest, name in _CONFIG_FLAGS.items():
        v = getattr(args, dest)
        if v is None or (dest == "hardware" and v.strip().lower() in ("ideal", "none")):
            continue  # (--hardware ideal is the default: None)
        out[name] = (not v) if dest == "no_telemetry" else v
    return out


def _flag(name: str) -> str:
    dest = next(d for d, f in _CONFIG_FLAGS.items() if f == name)
    return "--" + dest.replace("_", "-")


def _show(name: str, value) -> str:
    if name == "telemetry":
        return "on" if value else "off"
    if name == "hidden":
        return ",".join(str(h) for h in value)
    return str(value)


def _resume_conflicts(given: dict, saved: TrainConfig) -> list:
    """``--flag VALUE (saved: VALUE)`` for each given flag, other than --epochs, that differs from the saved run."""
    out = []
    for name, value in given.items():
        if name == "epochs":
            continue
        old = getattr(saved, name)
        if name == "hidden":
            same = tuple(value) == tuple(old)
        elif name == "loss_scale":
            same = value.strip().lower() == saved.loss_scale_spec.strip().lower()
        else:
            same = value == old
        if not same:
            shown = saved.loss_scale_spec if name == "loss_scale" else ("none" if old is None else _show(name, old))
            out.append(f"{_flag(name)} {_show(name, value)} (saved: {shown})")
    return out


def _main(args) -> int:
    """Run ``lowprec train`` with the parsed ``args``; returns the exit code."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    given = _given(args)
    if args.out is not None:
        check_out_dir(args.out)
    if args.compare:
        if args.resume is not None:
            raise ValueError("--resume continues one run and cannot be combined with --compare: resume each "
                             "policy's run (OUT/POLICY) on its own")
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        hw_list = None
        if "hardware" in given:
            hw_list = [h.strip() for h in given.pop("hardware").split(",") if h.strip()]
        config = TrainConfig(**given)
        rows = compare(names, config.validate(), out=args.out, quiet=args.quiet, hardware=hw_list)
        print(format_table(rows))
        if args.out is not None:
            print(f"run records written to {args.out}/POLICY, the comparison figure to "
                  f"{os.path.join(args.out, 'compare.png')}")
        return 0
    if args.resume is not None:
        state = read_resume_state(args.resume)
        saved, done = state["config"], int(state["epoch"])
        conflicts = _resume_conflicts(given, saved)
        if conflicts:
            raise ValueError(f"--resume {args.resume} continues the saved run with its own settings, and these "
                             f"flags differ from them: {', '.join(conflicts)}; drop them (only --epochs may "
                             "change), or start a new run with another --out")
        epochs = given.get("epochs", saved.epochs)
        if epochs <= done:
            how = f"--epochs {epochs}" if "epochs" in given else f"the saved total of {saved.epochs} epochs"
            raise ValueError(f"--epochs: the run in {args.resume} has already trained {done} epochs, so "
                             f"{how} leaves nothing to train; pass --epochs above {done} to continue it")
        out = args.out if args.out is not None else (args.resume if os.path.isdir(args.resume)
                                                     else os.path.dirname(args.resume) or ".")
        note = f" (--epochs {epochs} replaces the saved total of {saved.epochs})" if epochs != saved.epochs else ""
        print(f"resuming {args.resume} after epoch {done}: training epochs {done + 1}-{epochs}{note}")
        res = train(dataclasses.replace(saved, epochs=epochs), out, resume=args.resume, quiet=args.quiet)
    else:
        out = args.out
        if "," in (given.get("hardware") or ""):
            raise ValueError(f"--hardware takes one unit for a single run, got {given['hardware']!r}; a list "
                             "goes with --compare")
        res = train(TrainConfig(**given), out, quiet=args.quiet)
    print(summary_text(res))
    if out is not None:
        print(f"run record written to {out}")
    return 0

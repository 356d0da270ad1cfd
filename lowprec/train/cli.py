"""The ``lowprec train`` command: argument parsing and the glue to :func:`lowprec.train.train`.

:func:`add_parser` registers the subcommand with ``lowprec``'s parser;
its ``func`` runs one training, a resumed training or a comparison and
prints the summary (or the comparison table).
"""

from __future__ import annotations

import argparse
import os

from ..amp import policy_names
from .checkpoint import load_checkpoint
from .loop import TrainConfig, compare, train
from .report import format_table, summary_text

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
    p.add_argument("--resume", default=None, metavar="CHECKPOINT|RUN_DIR",
                   help="continue a run bit-exactly (settings come from the checkpoint; --epochs sets the new total)")
    p.add_argument("--no-telemetry", action="store_true", help="do not count rounding events (faster)")
    p.add_argument("--threads", type=int, default=None,
                   help="numba threads for the kernels (1 is fastest for small models on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    """Run ``lowprec train`` with the parsed ``args``; returns the exit code."""
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
    print(summary_text(res))
    if args.out is not None or args.resume is not None:
        print(f"run record written to {args.out or out}")
    return 0

"""The ``lowprec`` command.

Subcommands live next to what they drive; each module in ``_COMMAND_MODULES``
exposes ``add_parser(subparsers)`` which registers its subparser and sets
``func`` (called with the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "lowprec.explain",  # lowprec formats / lowprec explain
    "lowprec.matrix_units.explain",  # lowprec matrix-units / lowprec explain-mma
    "lowprec.block",  # lowprec explain-block
    "lowprec.train.cli",  # lowprec train
    "lowprec.study",  # lowprec study
    "lowprec.warm",  # lowprec warm
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lowprec", description="Bit-exact simulation of low-precision arithmetic.")
    parser.add_argument("--version", action="version", version=f"lowprec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command is not part of this build yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"lowprec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

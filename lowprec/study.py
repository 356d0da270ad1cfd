"""The ``lowprec study`` command: run a study from ``studies/``.

``lowprec study --list`` names the studies and what each reproduces;
``lowprec study NAME [--quick] [--out DIR] [--scheduler ADDRESS] [--data PATH]`` runs one
and prints where its figures, CSV and table went, followed by the table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "run_study", "study_names", "describe"]


def _registry() -> dict:
    from studies import STUDIES

    return STUDIES


def study_names() -> list:
    """The names ``lowprec study`` accepts, in the order of the docs.

    Examples
    --------
    >>> "stagnation" in study_names()
    True
    """
    return list(_registry())


def _module(name: str):
    reg = _registry()
    key = name.strip().lower().replace("_", "-")
    if key not in reg:
        raise ValueError(f"unknown study {name!r}; expected one of {', '.join(reg)}")
    return importlib.import_module(reg[key])


def describe(name: str) -> str:
    """The first paragraph of a study's docstring (what it shows).

    Examples
    --------
    >>> describe("formats").startswith("formats:")
    True
    """
    doc = (_module(name).__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ")


def run_study(name: str, out_dir=None, quick: bool = False, scheduler=None, data=None) -> dict:
    """Run the study ``name``; write its files under ``out_dir`` (default ``study_out/NAME``).

    ``data`` (a directory with the MNIST IDX files) is passed to the studies
    that train on a dataset of the user's choice (precision-table).

    Returns the study's result dict (``figures``, ``csv``, ``table`` paths, ...).

    Raises
    ------
    ValueError
        Unknown study name, ``out_dir`` is a file, ``data`` given to a study
        that takes none or neither ``"digits"`` nor a directory of MNIST IDX files.
    FileNotFoundError
        ``data`` is a directory without the MNIST IDX files.
    """
    import inspect

    from .train.report import check_out_dir

    mod = _module(name)
    if out_dir is None:
        out_dir = Path("study_out") / name
    check_out_dir(out_dir)
    kwargs = {}
    if data is not None:
        if "data" not in inspect.signature(mod.run).parameters:
            raise ValueError(f"study {name!r} does not take --data (only precision-table does)")
        _check_data(data)
        kwargs["data"] = str(data)
    return mod.run(out_dir, quick=bool(quick), scheduler=scheduler, **kwargs)


def _check_data(data) -> None:
    """Load ``--data`` once here, so that a bad path fails in one line before any task runs (as in
    ``lowprec train``), not inside every task of the sweep."""
    from .train.loop import load_dataset

    load_dataset(str(data))


def _main(args) -> int:
    if args.list or not args.name:
        for n in study_names():
            try:
                print(f"{n:16s} {describe(n)}")
            except ImportError as exc:  # a study whose dependencies are not in this build
                print(f"{n:16s} (unavailable: {exc})")
        return 0 if args.list else 2
    from .sweep import SweepError

    t0 = time.perf_counter()
    try:
        res = run_study(args.name, args.out, quick=args.quick, scheduler=args.scheduler, data=args.data)
    except SweepError as exc:  # one line: which task failed and why; the finished ones are kept
        text = " ".join(str(exc).split())
        print(f"lowprec study: error: {text}; the finished tasks are kept and a rerun skips them", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"study {args.name} ({'quick' if args.quick else 'full'} run) finished in {dt:.1f} s")
    for fig in res.get("figures", []):
        print(f"  figure: {fig}")
    print(f"  csv:    {res['csv']}")
    print(f"  table:  {res['table']}")
    print()
    print(Path(res["table"]).read_text())
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``lowprec study`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "study", help="run a study that reproduces a published low-precision result",
        description="Run a study: writes PNG figures, a CSV of raw results and a Markdown table.")
    p.add_argument("name", nargs="?", help="study name (see --list)")
    p.add_argument("--quick", action="store_true", help="tiny grid, under a minute (what CI runs)")
    p.add_argument("--out", default=None, help="output folder (default study_out/NAME)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address for the sweep (default: a local process pool)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="directory with the MNIST IDX files (precision-table; default: bundled digits)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.set_defaults(func=_main)
    return p

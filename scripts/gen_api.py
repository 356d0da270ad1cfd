"""Generate docs/api.md, the API reference, from the docstrings of lowprec's public modules.

Usage: ``python scripts/gen_api.py [--check]`` from the repository root.
Writes docs/api.md (or, with --check, exits 1 when it is out of date).
Public names are a module's ``__all__``; a module missing from this build
is skipped. Docstrings are copied verbatim into ``text`` blocks (they are
reference text, not code the docs tests run).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

#: (module, one-line role) in reading order.
MODULES = [
    ("lowprec.formats", "number formats and presets"),
    ("lowprec.rounding", "rounding modes"),
    ("lowprec.core", "round, encode and decode arrays"),
    ("lowprec.block", "block-scaled formats: MX, NVFP4, tile-scaled fp8"),
    ("lowprec.rng", "counter-based random streams"),
    ("lowprec.ops", "arithmetic in a format"),
    ("lowprec.accumulation", "the description of a dot product / sum"),
    ("lowprec.linalg", "dot, matmul and sum following an accumulation"),
    ("lowprec.matrix_units", "hardware matrix units (tensor cores): descriptor and presets"),
    ("lowprec.matrix_units.explain", "the matrix-unit table and the term-by-term view of a dot product"),
    ("lowprec.analysis", "error measures and bounds"),
    ("lowprec.amp", "precision policies and loss scaling"),
    ("lowprec.autograd", "tensors with gradients, layers, optimizers"),
    ("lowprec.telemetry", "counting underflow/overflow during training"),
    ("lowprec.data", "datasets"),
    ("lowprec.train", "the training loop behind `lowprec train`"),
    ("lowprec.quant", "quantizers"),
    ("lowprec.quant.affine", "affine integer quantization"),
    ("lowprec.quant.calibration", "range calibration"),
    ("lowprec.quant.codebook", "codebook (Lloyd-Max) quantizers"),
    ("lowprec.quant.companding", "companding quantizers"),
    ("lowprec.quant.lsq", "learned step size quantization"),
    ("lowprec.quant.qat", "quantization-aware training"),
    ("lowprec.quant.intinfer", "integer-only inference"),
    ("lowprec.testing", "Hypothesis strategies and property checks"),
    ("lowprec.sweep", "restartable sweeps on a process pool or Dask"),
    ("lowprec.study", "the `lowprec study` command"),
    ("lowprec.warm", "the `lowprec warm` command: compile the common kernels ahead of time"),
]

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", text.lower()).replace(" ", "-")


def _signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return _ADDR.sub("", sig)


def _doc(obj) -> str:
    doc = inspect.getdoc(obj) or "(no docstring)"
    return doc.replace("```", "'''")


def public_names(module) -> list:
    """The documented names of a module: its ``__all__`` (objects defined or re-exported there)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                 and getattr(v, "__module__", "") == module.__name__]
    return [n for n in names if hasattr(module, n) and not n.startswith("__")]


def collect() -> list:
    """[(module name, role, module, [(name, object)])] for the modules of this build."""
    out = []
    for modname, role in MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        out.append((modname, role, mod, [(n, getattr(mod, n)) for n in public_names(mod)]))
    return out


def render() -> str:
    mods = collect()
    lines = ["# API reference", "",
             "Generated from the docstrings by `python scripts/gen_api.py`; do not edit by hand.",
             "The top-level package re-exports the core names: "
             + ", ".join(f"`lowprec.{n}`" for n in sorted(importlib.import_module("lowprec").__all__)
                         if n != "__version__") + ".", "",
             "| module | what it holds |", "|---|---|"]
    for modname, role, _, _ in mods:
        lines.append(f"| [`{modname}`](#{_anchor(modname)}) | {role} |")
    lines.append("")
    for modname, role, mod, items in mods:
        lines += [f"## {modname}", "", f"*{role}*", "", "```text", _doc(mod), "```", ""]
        for name, obj in items:
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj) or callable(obj):
                kind = "class" if inspect.isclass(obj) else "function"
                lines += [f"### {modname}.{name}", "", f"`{kind} {name}{_signature(obj)}`", "",
                          "```text", _doc(obj), "```", ""]
            else:
                value = _ADDR.sub("", repr(obj))
                if len(value) > 300:
                    value = value[:300] + " ..."
                lines += [f"### {modname}.{name}", "", "constant:", "", "```text", value, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python scripts/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a new user waits for: each case in a fresh process with an empty numba cache directory.

Cases (each process gets its own empty ``NUMBA_CACHE_DIR``, so nothing compiled by one case helps
another):
- ``readme``: the README's main command, ``lowprec train --compare fp32,fp16-mixed,bf16-mixed,pure-fp16
  --epochs 10``: the time to its first finished training step and the total;
- ``tutorial``: every ```python block of docs/index.md, in order, in one process;
- ``loss-scaler``: the ```python blocks of docs/training.md (the LossScaler loop);
- ``round-FMT``: ``import lowprec`` then one ``round_to`` of a float32 array to FMT (and the import alone);
- ``explain``: ``lowprec explain 0.1 --format bf16``;
- ``study-NAME``: ``lowprec study NAME --quick``.

    python benchmarks/bench_cold.py                 # all cases
    python benchmarks/bench_cold.py readme explain  # some
    python benchmarks/bench_cold.py --warm          # the same cases with a cache the first run filled

Prints one line per case: seconds (wall), and for ``readme`` the first step. Also a warm column with
``--warm`` (the same process command run again with the same cache directory).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

_README = r"""
import sys, time
t0 = time.perf_counter()
import lowprec.telemetry as tel
first = []
orig = tel.Telemetry.end_step
def end_step(self, *a, **k):
    if not first:
        first.append(time.perf_counter() - t0)
        print(f"FIRST_STEP {first[0]:.2f}", flush=True)
    return orig(self, *a, **k)
tel.Telemetry.end_step = end_step
from lowprec import cli
sys.argv = ["lowprec", "train", "--compare", "fp32,fp16-mixed,bf16-mixed,pure-fp16", "--epochs", "10",
            "--out", sys.argv[1]]
rc = cli.main()
"""


def _page_code(name: str) -> str:
    text = (ROOT / "docs" / name).read_text()
    blocks = _BLOCK.findall(text)
    return "import matplotlib\nmatplotlib.use('Agg')\n" + "\n".join(blocks)


def cases() -> dict:
    out = {
        "readme": ("python", _README),
        "tutorial": ("python", _page_code("index.md")),
        "loss-scaler": ("python", _page_code("training.md")),
        "import": ("python", "import lowprec"),
        "explain": ("cli", ["explain", "0.1", "--format", "bf16"]),
    }
    for fmt in ("fp16", "bf16", "fp8_e4m3fn", "int8"):
        out[f"round-{fmt}"] = ("python", "import numpy as np, lowprec\n"
                                         f"lowprec.round_to(np.float32([0.1, 1.5, 3e4]), {fmt!r})\n")
    out["round-f64-fp16"] = ("python", "import lowprec\nlowprec.round_to(0.1, 'fp16')\n")
    for study in ("formats", "rounding_error", "accumulation", "loss_scaling"):
        out[f"study-{study}"] = ("cli", ["study", study, "--quick"])
    return out


def run_case(kind, payload, cache_dir: str, work: str) -> tuple:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, MPLBACKEND="Agg")
    if kind == "python":
        cmd = [sys.executable, "-c", payload, os.path.join(work, "out")]
    else:
        cmd = [sys.executable, "-m", "lowprec.cli", *payload]
        if payload[0] == "study":
            cmd += ["--out", os.path.join(work, "out")]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed:\n{p.stderr[-2000:]}")
    m = re.search(r"FIRST_STEP ([0-9.]+)", p.stdout)
    return wall, (float(m.group(1)) if m else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="cases to run (default: all)")
    ap.add_argument("--warm", action="store_true", help="also run each case again on the cache it filled")
    args = ap.parse_args(argv)
    all_cases = cases()
    names = args.names or list(all_cases)
    unknown = [n for n in names if n not in all_cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; expected some of {list(all_cases)}")
    print(f"{'case':<20} {'cold s':>8} {'first step s':>13}" + (f" {'warm s':>8}" if args.warm else ""))
    for name in names:
        kind, payload = all_cases[name]
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
            wall, first = run_case(kind, payload, cache, work)
            line = f"{name:<20} {wall:8.1f} {first if first is not None else '':>13}"
            if args.warm:
                with tempfile.TemporaryDirectory() as work2:
                    w2, _ = run_case(kind, payload, cache, work2)
                line += f" {w2:8.1f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

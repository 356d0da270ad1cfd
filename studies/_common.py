"""Shared plumbing for the studies: output files, figures, recursive sums in a format.

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
# Recursive summation s <- fl(s + x_i) in a format, one exact rounding per add.
#
# For a format of precision p <= 24 and addends that are values of it, s + x_i
# is exact in float64 unless the exponents differ by more than 53 - p bits;
# then TwoSum gives the float64 error and the sum is rounded to odd in float64
# before the one rounding to the format, which is then still exact.
# --------------------------------------------------------------------------
_SUM_KERNEL = None


def _build_sum_kernel(digest):
    # Cached on disk; `digest` (lowprec.kernels.SOURCE_DIGEST) is referenced so that numba
    # keys the cache on the kernel sources, as lowprec/kernels/cpu.py does.
    from numba import njit

    from lowprec.kernels import scalar

    @njit(nogil=True, cache=True)
    def recursive_sum(x, p, mode, key0, key1, offset, rbits, checkpoints, trace):
        """s_k = fl(s_{k-1} + x_k). trace[j] = s after checkpoints[j] adds.

        Returns (s_n, the last k at which s_k != s_{k-1})."""
        digest  # noqa: B018
        s = 0.0
        j = 0
        last_change = 0
        for i in range(x.size):
            a = s + x[i]
            # TwoSum: a + e == s + x[i] exactly.
            bb = a - s
            e = (s - (a - bb)) + (x[i] - bb)
            if e != 0.0 and (scalar.f64_as_i64(a) & 1) == 0:
                # Round-to-odd in float64 (53 >= p + 2 bits): the odd one of the two
                # float64 neighbours of the exact sum; rounding that to p bits gives
                # the correctly rounded exact sum in every deterministic mode
                # (Boldo and Melquiond 2008).
                a = np.nextafter(a, np.inf) if e > 0.0 else np.nextafter(a, -np.inf)
            rnd = scalar.random_bits(key0, key1, offset + i, rbits) if mode == scalar.STOCHASTIC else np.uint64(0)
            t = scalar.round_f64(a, p, mode, rnd, rbits)
            if t != s:
                last_change = i + 1
            s = t
            while j < checkpoints.size and checkpoints[j] == i + 1:
                trace[j] = s
                j += 1
        return s, last_change

    return recursive_sum


def recursive_sum(x, fmt, rounding="nearest_even", seed=0, checkpoints=()) -> tuple:
    """Sum ``x`` left to right in ``fmt``: ``s = round(s + x_i)``, each add rounded once.

    ``x`` should hold values of ``fmt``. For the nearest and directed modes
    the result is the correctly rounded exact sum (TwoSum, then round-to-odd
    in float64). Stochastic rounding uses 32 random bits on that float64
    value, whose error (below 2**-52 relative) is far below the 2**-32
    resolution of the probabilities; random counter i is used by add i.

    Returns ``(s_n, last change index, partial sums at the sorted checkpoints)``.
    """
    global _SUM_KERNEL
    from lowprec.formats import get_format
    from lowprec.rng import derive_key
    from lowprec.rounding import get_rounding

    if _SUM_KERNEL is None:
        from lowprec.kernels import SOURCE_DIGEST

        _SUM_KERNEL = _build_sum_kernel(SOURCE_DIGEST)
    fmt = get_format(fmt)
    mode = int(get_rounding(rounding))
    k0, k1 = derive_key(int(seed), 0)
    cps = np.asarray(checkpoints, dtype=np.int64)
    trace = np.full(cps.size, np.nan)
    s, last = _SUM_KERNEL(np.ascontiguousarray(x, dtype=np.float64), fmt._kernel_params(), mode,
                          np.uint32(k0), np.uint32(k1), np.int64(0), 32, cps, trace)
    return float(s), int(last), trace

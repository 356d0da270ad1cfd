"""Draw docs/figures/matrix_units_fp8.png: fp8 GEMM error against K, with and without promotion.

Usage: ``python scripts/matrix_units_figure.py`` from the repository root (about 10 s). a and b are
uniform on [0, 1), rounded to e4m3; the error is the mean relative error over 32 x 8 outputs against
the exact product (float64 holds it exactly here).
"""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lowprec import round_to  # noqa: E402
from lowprec.linalg import matmul  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "matrix_units_fp8.png"
KS = [128, 256, 512, 1024, 2048, 4096, 8192]
NAMES = ["nv-hopper-fp8", "nv-ada-fp8", "nv-hopper-fp8-promote128", "nv-blackwell-fp8", "e4m3-fp32"]


def main() -> None:
    rng = np.random.default_rng(0)
    errs = {n: [] for n in NAMES}
    for K in KS:
        a = round_to(rng.uniform(0, 1, (32, K)), "fp8_e4m3fn")
        b = round_to(rng.uniform(0, 1, (K, 8)), "fp8_e4m3fn")
        exact = a @ b
        for n in NAMES:
            errs[n].append(float(np.mean(np.abs(matmul(a, b, n) - exact) / exact)))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for n in NAMES:
        ax.loglog(KS, errs[n], "o-", label=n)
    ax.set_xlabel("K (inner dimension)")
    ax.set_ylabel("mean relative error")
    ax.set_title("fp8 (e4m3) GEMM, a and b uniform on [0, 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    for n in NAMES:
        print(f"{n:26s} " + " ".join(f"{e:.2e}" for e in errs[n]))


if __name__ == "__main__":
    main()

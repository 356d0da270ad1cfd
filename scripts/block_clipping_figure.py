"""Make docs/figures/block_clipping.png: the fraction of 32-element blocks whose maximum clipped,
per MX element format and scale rule, on Gaussian and heavy-tailed (Student t, 3 dof) data.

Usage: ``python scripts/block_clipping_figure.py`` from the repository root (prints the table too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import lowprec.block as lb

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]
RULES = ["floor", "even", "ceil", "rceil"]


def table(blocks: int = 1 << 14, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {"Gaussian": rng.standard_normal((blocks, 32)),
            "Student t (3 dof)": rng.standard_t(3, (blocks, 32))}
    return {(d, f, r): lb.analyze(x.astype(np.float32), f, scale_rule=r).fraction_blocks_max_clipped
            for d, x in data.items() for f in FORMATS for r in RULES}


def main() -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.8 / len(RULES)
    for ax, d in zip(axes, ["Gaussian", "Student t (3 dof)"]):
        for j, r in enumerate(RULES):
            vals = [t[d, f, r] for f in FORMATS]
            ax.bar(np.arange(len(FORMATS)) + (j - 1.5) * width, vals, width, label=r)
        ax.set_xticks(np.arange(len(FORMATS)), [f.replace("mx", "") for f in FORMATS], rotation=20)
        ax.set_title(f"{d}, blocks of 32")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction of blocks whose max clipped")
    axes[0].legend(title="scale rule")
    fig.tight_layout()
    out = ROOT / "docs" / "figures" / "block_clipping.png"
    fig.savefig(out, dpi=110)
    print("| data | format | " + " | ".join(RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for d in ["Gaussian", "Student t (3 dof)"]:
        for f in FORMATS:
            print(f"| {d} | {f} | " + " | ".join(f"{t[d, f, r]:.3f}" for r in RULES) + " |")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

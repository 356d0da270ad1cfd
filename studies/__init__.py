"""Studies: ready experiments that reproduce published results about low precision.

Each module is one study with a docstring saying what it shows and which
published result it reproduces, and a ``run(out_dir, quick=False,
scheduler=None) -> dict`` that writes PNG figures, a CSV of raw results and
a Markdown table into ``out_dir``. Run them with ``lowprec study NAME``.

``STUDIES`` maps each study's command-line name to its module.
"""

STUDIES = {
    "formats": "studies.formats",
    "rounding-error": "studies.rounding_error",
    "stagnation": "studies.stagnation",
    "accumulation": "studies.accumulation",
    "loss-scaling": "studies.loss_scaling",
    "precision-table": "studies.precision_table",
    "fixed-point": "studies.fixed_point",
    "quantizers": "studies.quantizers",
    "mma-accumulation": "studies.mma_accumulation",
    "block-scale-rules": "studies.block_scale_rules",
    "fp8-scaling": "studies.fp8_scaling",
    "fp4-training": "studies.fp4_training",
}

__all__ = ["STUDIES"]

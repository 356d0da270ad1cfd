"""``lowprec train``: train an MLP classifier under a precision policy, with telemetry.

Programmatic use: :func:`train` takes a :class:`TrainConfig` and returns a
:class:`RunResult` (the model, optimizer, scaler and the run record). The
command line wraps it:

    lowprec train --precision bf16-mixed --epochs 30 --seed 0 --out runs/bf16
    lowprec train --compare fp32,fp16-mixed,bf16-mixed,pure-fp16 --epochs 10 --out runs/cmp
    lowprec train --resume runs/bf16 --epochs 40
    lowprec train --precision fp8-delayed --hardware nv-hopper --out runs/h100
    lowprec train --compare fp8-delayed,mxfp8,nvfp4 --hardware ideal,nv-blackwell --out runs/hw

What a run writes to ``--out``: ``run.json`` (configuration, policy table,
summary, per-epoch metrics, telemetry totals per tensor), ``steps.csv``
(one row per optimizer step: loss, batch accuracy, loss scale, skipped,
counts per role and event), ``telemetry.csv`` (one row per tensor and step
with a non-zero count), ``loss.png``, ``accuracy.png``,
``loss_scale.png``, ``underflow.png`` and ``checkpoint.ckpt`` (written
atomically at the end of every epoch); the scaled fp8 policies
(:mod:`lowprec.amp.scaling`) and the block-scaled ones (:mod:`lowprec.amp.blockscaled`) add
``scales.csv`` (scale, amax, clipped and underflowed fractions per cast tensor and step; for block
policies the median block scale and the fraction of blocks whose maximum clipped) and ``scales.png``.
``--compare`` also writes
``compare.json`` and ``compare.png`` (every policy on shared axes).

Before training, the kernels are compiled (or loaded from numba's cache) on a
throwaway copy of the model, timed apart (``compile_time_s``); a run of
skipped steps is diagnosed while it runs (:mod:`lowprec.train.diagnose`).

Determinism: the initial weights come from ``seed``; epoch ``e`` is shuffled
by ``numpy.random.default_rng([seed, e])``; stochastic rounding draws from
:class:`lowprec.RandomStream` streams whose offsets are checkpointed, so a
resumed run ends with the same bits as an uninterrupted one.

The package holds one concept per module, and re-exports their public names:

* :mod:`lowprec.train.loop`: the training loop (:class:`TrainConfig`,
  :func:`train`, :func:`evaluate`, :class:`RunResult`, :func:`compare`; :func:`~lowprec.train.loop.compare_runs`
  spells out ``--compare``'s runs);
* :mod:`lowprec.train.checkpoint`: checkpoint files (:func:`save_checkpoint`,
  :func:`load_checkpoint`, :class:`CheckpointError`);
* :mod:`lowprec.train.report`: the run record, CSV files, plots and text
  summaries (:func:`write_run`, :func:`format_table`);
* :mod:`lowprec.train.cli`: the ``lowprec train`` command (:func:`add_parser`).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .cli import add_parser
from .loop import RunResult, TrainConfig, compare, evaluate, train
from .report import format_table, write_run

__all__ = ["TrainConfig", "RunResult", "train", "evaluate", "compare", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "write_run", "format_table", "add_parser"]

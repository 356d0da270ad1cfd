"""Sweeps: a study's grid run as independent, restartable tasks.

A sweep is a function ``fn(**params) -> dict`` and a list of parameter
dicts (formats x rounding x seeds x sizes, say). Every task is independent
and deterministic in its parameters (seeds are parameters), so it does not
matter where it runs: in this process, in a local process pool (the
default) or on a Dask distributed cluster (``scheduler="tcp://host:8786"``
or a ``distributed.Client``). The results are the same bits either way.

Each finished task's result is written at once to
``<out_dir>/<name>/<key>.json``, where ``key`` hashes the function's name
and the parameters. A sweep that is interrupted and started again loads
those files and runs only the tasks that have none. JSON keeps floats
exactly (Python writes the shortest repr that reads back to the same
float64, and NaN/Infinity as literals).

Examples
--------
>>> import tempfile
>>> from lowprec.sweep import run_sweep, task_key
>>> tasks = [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
>>> with tempfile.TemporaryDirectory() as d:
...     run_sweep(_example_add, tasks, d, workers=1, progress=False)
[{'sum': 3}, {'sum': 7}]
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["run_sweep", "task_key", "grid", "load_results", "SweepError"]


class SweepError(RuntimeError):
    """A task of a sweep failed; the tasks that finished are kept on disk."""


def _example_add(a: int, b: int) -> dict:
    return {"sum": a + b}


def _fn_name(fn: Callable) -> str:
    return f"{fn.__module__}:{getattr(fn, '__qualname__', fn.__name__)}"


def _canonical(params: dict) -> str:
    try:
        return json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"sweep parameters must be JSON values (numbers, strings, lists, dicts), "
                        f"got {params!r}: {exc}") from None


def task_key(fn: Callable, params: dict) -> str:
    """The hash that names one task's result file: function name and parameters.

    Examples
    --------
    >>> task_key(_example_add, {"a": 1, "b": 2}) == task_key(_example_add, {"b": 2, "a": 1})
    True
    >>> len(task_key(_example_add, {"a": 1}))
    24
    """
    text = _fn_name(fn) + "\n" + _canonical(params)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def grid(**axes: Iterable) -> list:
    """The Cartesian product of named axes as a list of parameter dicts (last axis fastest).

    Examples
    --------
    >>> grid(fmt=["fp16", "bf16"], seed=[0, 1])
    [{'fmt': 'fp16', 'seed': 0}, {'fmt': 'fp16', 'seed': 1}, {'fmt': 'bf16', 'seed': 0}, {'fmt': 'bf16', 'seed': 1}]
    """
    out = [{}]
    for name, values in axes.items():
        values = list(values)
        out = [{**d, name: v} for d in out for v in values]
    return out


def _result_path(root: Path, fn: Callable, params: dict) -> Path:
    return root / f"{task_key(fn, params)}.json"


def _save(path: Path, fn: Callable, params: dict, result: Any) -> None:
    try:
        text = json.dumps({"fn": _fn_name(fn), "params": params, "result": result},
                          sort_keys=True, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"a sweep task must return JSON values; {_fn_name(fn)}({params}) "
                        f"returned {type(result).__name__}: {exc}") from None
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a killed sweep never leaves half a result


def load_results(out_dir, fn: Callable, tasks: Sequence[dict], name: str | None = None) -> list:
    """The stored results of ``tasks`` (None where a task has not finished)."""
    root = Path(out_dir) / (name or fn.__name__.strip("_"))
    out = []
    for params in tasks:
        path = _result_path(root, fn, params)
        out.append(json.loads(path.read_text())["result"] if path.exists() else None)
    return out


def _call(fn: Callable, params: dict) -> Any:
    return fn(**params)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False)


def run_sweep(fn: Callable, tasks: Sequence[dict], out_dir, *, name: str | None = None,
              scheduler=None, workers: int | None = None, progress: bool = True) -> list:
    """Run ``fn(**params)`` for every ``params`` in ``tasks``; return the results in task order.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled to the workers) returning a
        JSON-serialisable value. It must be deterministic in its parameters.
    tasks : sequence of dict
        One dict of keyword arguments per task; JSON values only.
    out_dir : path
        Results are persisted under ``out_dir/name/``; finished tasks are
        loaded from there instead of being run again.
    name : str, optional
        Sub-folder for this sweep's results (default: the function's name).
    scheduler : None, str or distributed.Client
        ``None``: a local process pool (or this process when ``workers=1``).
        A string is a Dask scheduler address (``"tcp://10.0.0.5:8786"``); a
        ``distributed.Client`` is used as is.
    workers : int, optional
        Size of the local pool (default: the CPU count). 1 runs the tasks
        one after the other in this process. Ignored with a scheduler.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list
        ``fn``'s results, in the order of ``tasks``.

    Raises
    ------
    TypeError
        ``fn`` is not callable, a task is not a dict of JSON values.
    ValueError
        ``workers`` is not a positive int.
    SweepError
        A task raised; the results of the tasks that finished are on disk and
        a rerun skips them.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    tasks = list(tasks)
    for params in tasks:
        if not isinstance(params, dict):
            raise TypeError(f"each task must be a dict of keyword arguments, got {type(params).__name__}")
        _canonical(params)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    root = Path(out_dir) / (name or fn.__name__.strip("_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = [_result_path(root, fn, p) for p in tasks]
    results: list = [None] * len(tasks)
    todo = []
    for i, path in enumerate(paths):
        if path.exists():
            results[i] = json.loads(path.read_text())["result"]
        else:
            todo.append(i)
    # Identical parameters are one task: run it once.
    first_of: dict = {}
    for i in todo:
        first_of.setdefault(paths[i], i)
    unique = sorted(set(first_of.values()))
    bar = _progress(len(tasks), len(tasks) - len(todo), root.name, progress)

    def finish(i, value):
        # A JSON round trip, so fresh and reloaded results are the same objects.
        _save(paths[i], fn, tasks[i], value)
        results[i] = json.loads(paths[i].read_text())["result"]
        bar.update(sum(1 for j in todo if paths[j] == paths[i]))

    try:
        if not unique:
            pass
        elif scheduler is not None:
            _run_dask(fn, tasks, unique, scheduler, finish)
        elif (workers or os.cpu_count() or 1) == 1 or len(unique) == 1:
            for i in unique:
                try:
                    value = fn(**tasks[i])
                except Exception as exc:
                    raise SweepError(f"task {tasks[i]} of {_fn_name(fn)} failed: {exc!r}") from exc
                finish(i, value)
        else:
            _run_pool(fn, tasks, unique, workers or os.cpu_count() or 1, finish)
    finally:
        bar.close()
    for i in todo:
        results[i] = results[first_of[paths[i]]]
    return results


def _run_pool(fn, tasks, unique, workers, finish) -> None:
    # spawn, not fork: forking a process whose numba thread pool is running can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(unique)),
                                                mp_context=ctx) as pool:
        futures = {pool.submit(_call, fn, tasks[i]): i for i in unique}
        try:
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                try:
                    value = fut.result()
                except Exception as exc:
                    raise SweepError(f"task {tasks[i]} of {_fn_name(fn)} failed: {exc!r}") from exc
                finish(i, value)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _run_dask(fn, tasks, unique, scheduler, finish) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - dask is a test dependency
        raise ImportError("--scheduler needs dask.distributed: install lowprec[dask]") from exc
    own = not isinstance(scheduler, Client)
    if own and not isinstance(scheduler, str):
        raise TypeError(f"scheduler must be an address string or a distributed.Client, "
                        f"got {type(scheduler).__name__}")
    client = Client(scheduler) if own else scheduler
    try:
        futures = {}
        for i in unique:
            fut = client.submit(_call, fn, tasks[i], key=f"lowprec-{task_key(fn, tasks[i])}", pure=False)
            futures[fut] = i
        for fut in as_completed(list(futures)):
            i = futures[fut]
            try:
                value = fut.result()
            except Exception as exc:
                raise SweepError(f"task {tasks[i]} of {_fn_name(fn)} failed: {exc!r}") from exc
            finish(i, value)
    finally:
        if own:
            client.close()

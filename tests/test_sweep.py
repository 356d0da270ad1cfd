"""Sweeps: the same bits from this process, a process pool and a Dask cluster; restarts skip work."""

import json

import numpy as np
import pytest

from lowprec.sweep import SweepError, grid, load_results, run_sweep, task_key
from studies.rounding_error import bias_task, error_task

CALLS = []


def counting_task(a: int, b: int, fail_on: int = -1) -> dict:
    CALLS.append((a, b))
    if a == fail_on:
        raise RuntimeError(f"task a={a} interrupted")
    return {"prod": a * b, "ratio": a / 3}


def _tasks():
    # Stochastic rounding with per-task seeds: results are full of float bits.
    return grid(fmt=["bf16", "fp8_e4m3fn"], rounding=["stochastic"], samples=[300], seed=[0, 1])


def test_grid_is_cartesian_product_in_order():
    g = grid(a=[1, 2], b=["x", "y", "z"])
    assert len(g) == 6
    assert g[0] == {"a": 1, "b": "x"} and g[-1] == {"a": 2, "b": "z"}


def test_task_key_depends_on_params_and_function():
    assert task_key(error_task, {"a": 1}) != task_key(error_task, {"a": 2})
    assert task_key(error_task, {"a": 1}) != task_key(bias_task, {"a": 1})
    assert task_key(error_task, {"a": 1, "b": 2}) == task_key(error_task, {"b": 2, "a": 1})


def test_results_match_direct_calls_bit_for_bit(tmp_path):
    tasks = _tasks()
    res = run_sweep(error_task, tasks, tmp_path, workers=1, progress=False)
    for t, r in zip(tasks, res):
        direct = error_task(**t)
        assert r == direct  # JSON keeps float64 exactly
        assert all(np.float64(r[k]).tobytes() == np.float64(direct[k]).tobytes()
                   for k in ("mean", "std", "max_abs"))


def test_dask_cluster_gives_the_same_results_as_the_local_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    tasks = _tasks()
    pooled = run_sweep(error_task, tasks, tmp_path / "pool", workers=2, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        dasked = run_sweep(error_task, tasks, tmp_path / "dask", scheduler=cluster.scheduler_address,
                           progress=False)
    serial = [error_task(**t) for t in tasks]
    assert pooled == dasked == serial
    # and the stored files hold the same JSON text
    for t in tasks:
        a = (tmp_path / "pool" / "error_task" / f"{task_key(error_task, t)}.json").read_text()
        b = (tmp_path / "dask" / "error_task" / f"{task_key(error_task, t)}.json").read_text()
        assert a == b


def test_restarted_sweep_skips_finished_tasks(tmp_path):
    tasks = grid(a=[1, 2, 3, 4, 5], b=[10])
    CALLS.clear()
    # First run is interrupted by the task a=4 (tasks run in order in-process).
    with pytest.raises(SweepError, match="a=4 interrupted"):
        run_sweep(counting_task, [{**t, "fail_on": 4} for t in tasks], tmp_path, name="c",
                  workers=1, progress=False)
    assert CALLS == [(1, 10), (2, 10), (3, 10), (4, 10)]
    done = load_results(tmp_path, counting_task, [{**t, "fail_on": 4} for t in tasks], name="c")
    assert [d is not None for d in done] == [True, True, True, False, False]
    # Restart (same parameters): only the unfinished tasks run again; 4 still fails.
    CALLS.clear()
    with pytest.raises(SweepError):
        run_sweep(counting_task, [{**t, "fail_on": 4} for t in tasks], tmp_path, name="c",
                  workers=1, progress=False)
    assert CALLS == [(4, 10)]


def test_restart_runs_only_new_tasks_and_returns_all_in_order(tmp_path):
    CALLS.clear()
    first = run_sweep(counting_task, grid(a=[1, 2, 3], b=[7]), tmp_path, workers=1, progress=False)
    assert len(CALLS) == 3
    CALLS.clear()
    res = run_sweep(counting_task, grid(a=[1, 2, 3, 4, 5], b=[7]), tmp_path, workers=1, progress=False)
    assert CALLS == [(4, 7), (5, 7)]
    assert res[:3] == first
    assert [r["prod"] for r in res] == [7, 14, 21, 28, 35]
    assert res[0]["ratio"] == 1 / 3  # exact float round trip through the stored JSON
    CALLS.clear()
    again = run_sweep(counting_task, grid(a=[1, 2, 3, 4, 5], b=[7]), tmp_path, workers=1, progress=False)
    assert CALLS == [] and again == res


def test_duplicate_tasks_run_once(tmp_path):
    CALLS.clear()
    res = run_sweep(counting_task, [{"a": 2, "b": 3}, {"a": 2, "b": 3}], tmp_path, workers=1, progress=False)
    assert CALLS == [(2, 3)] and res[0] == res[1] == {"prod": 6, "ratio": 2 / 3}


def test_stored_file_names_function_and_params(tmp_path):
    run_sweep(counting_task, [{"a": 1, "b": 2}], tmp_path, name="n", workers=1, progress=False)
    files = list((tmp_path / "n").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["params"] == {"a": 1, "b": 2}
    assert data["fn"].endswith("counting_task") and data["result"]["prod"] == 2


@pytest.mark.parametrize("bad, exc, match", [
    (dict(fn=3), TypeError, "fn must be callable"),
    (dict(tasks=[[1, 2]]), TypeError, "dict of keyword arguments"),
    (dict(tasks=[{"a": object()}]), TypeError, "JSON values"),
    (dict(workers=0), ValueError, "workers must be a positive int"),
    (dict(scheduler=3.5), TypeError, "scheduler must be an address string"),
])
def test_bad_arguments_are_named(tmp_path, bad, exc, match):
    kw = dict(fn=counting_task, tasks=[{"a": 1, "b": 2}], out_dir=tmp_path, progress=False)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        run_sweep(kw.pop("fn"), kw.pop("tasks"), kw.pop("out_dir"), **kw)


def test_non_json_result_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="must return JSON values"):
        run_sweep(_returns_array, [{"n": 2}], tmp_path, workers=1, progress=False)


def _returns_array(n):
    return np.zeros(n)

"""numba's on-disk cache hands every process the kernel it asked for, whatever order filled it.

A fresh cache directory is filled in one order (small calls first, then large; one format, then
another; a format's fast element step and its definition loop), then a new process loads every specialisation from it and checks that each loaded kernel
is the one asked for: the bits of its results (against numpy's float16 cast and int8 rounding) and the
parallel or serial code (the loaded code holds numba's parfor functions exactly when it is a parallel
kernel). Then the same in the reverse order.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import lowprec
    from lowprec.kernels import cpu, dispatch

    calls = json.loads(sys.argv[1])
    check = sys.argv[2] == "check"
    report = []
    for fmt, mode, n, step in calls:
        x = (np.random.default_rng(n).standard_normal(n) * 100).astype(np.float32)
        x[:4] = [0.1, -2.5, 1e-30, 7e4]
        p = lowprec.get_format(fmt)._kernel_params()
        m = int(lowprec.get_rounding(mode))
        parallel = n >= dispatch.PARALLEL_FROM
        step = cpu.DEFINITION if step == "definition" else dispatch.element_step("round", p, m, np.int32)
        loop = cpu.specialised("round", cpu.spec_of(p, m, 32, step), parallel)
        args = (32, 23, 127, p, m, np.uint32(5), np.uint32(6), np.int64(7), 32)
        out = np.empty_like(x)
        loop(cpu.ROUND, x.view(np.int32), out.view(np.int32), *args)
        entry = {"fmt": fmt, "mode": mode, "n": n, "step": step, "parallel": parallel,
                 "hits": sum(loop.stats.cache_hits.values()), "misses": sum(loop.stats.cache_misses.values())}
        lib = loop.overloads[loop.signatures[0]].library
        entry["parfor"] = "parfor" in str(lib._shared_module) + str(lib._final_module)
        if check:  # against numpy: float16's correctly rounded cast; int8 as rint (ties to even), saturated, +0
            with np.errstate(over="ignore"):
                ref = x.astype(np.float16).astype(np.float32) if fmt == "fp16" else np.clip(np.rint(x), -128, 127) + 0.0
            entry["same_bits"] = bool(np.array_equal(out.view(np.int32), ref.astype(np.float32).view(np.int32)))
        report.append(entry)
    print("REPORT" + json.dumps(report))
""")

#: (format, mode, size, element step): the dispatcher's step (fp16: the nearest-even-f32 step; int8: the
#: definition), and fp16's definition loop, which must not share a cache entry with its fast step's
_CALLS = [["fp16", "nearest_even", 100, "dispatch"], ["fp16", "nearest_even", 1 << 18, "dispatch"],
          ["int8", "nearest_even", 100, "dispatch"], ["int8", "nearest_even", 1 << 18, "dispatch"],
          ["fp16", "nearest_even", 100, "definition"]]


def _run(cache_dir, calls, what):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(calls), what], env=env, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


@pytest.mark.parametrize("order", ["small-first", "large-first"])
def test_cache_filled_in_any_order_hands_out_the_asked_specialisation(tmp_path, order):
    calls = _CALLS if order == "small-first" else _CALLS[::-1]
    filled = _run(tmp_path, calls, "fill")
    assert all(e["misses"] == 1 and e["hits"] == 0 for e in filled), filled  # every specialisation compiled once
    loaded = _run(tmp_path, _CALLS[::-1] if order == "small-first" else _CALLS, "check")
    for e in loaded:
        assert e["hits"] == 1 and e["misses"] == 0, e  # loaded from the cache, not compiled again
        assert e["parfor"] == e["parallel"], e  # the parallel kernel for large arrays, the serial one for small
        assert e["same_bits"], e


def test_parallel_kernels_from_several_threads_on_the_workqueue_layer():
    """numba's workqueue threading layer aborts the process when two Python threads launch parallel kernels
    at once; lowprec serialises its parallel launches on that layer (kernels/jit.ParallelKernel): four
    threads rounding 2**20 values each (parallel loops) and multiplying (parallel tiles) get the bits of one."""
    code = """
import threading, numpy as np, numba, lowprec, lowprec.linalg
x = np.linspace(-1000, 1000, 1 << 20, dtype=np.float32)
a = np.linspace(-3, 3, 256 * 256, dtype=np.float32).reshape(256, 256)
want = lowprec.round_to(x, "bf16"), lowprec.linalg.matmul(a, a, "bf16-fp32")
bad = []
def work():
    for _ in range(5):
        ok = (np.array_equal(lowprec.round_to(x, "bf16"), want[0])
              and np.array_equal(lowprec.linalg.matmul(a, a, "bf16-fp32"), want[1]))
        bad.append(not ok)
ts = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print(numba.threading_layer(), sum(bad), len(bad))
"""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["workqueue", "0", "20"]


_CLOSURE_MODULE = textwrap.dedent(r"""
    from numba import njit
    from lowprec.kernels.jit import kernel

    @njit(inline="always")
    def twice(v):
        return 2.0 * v

    @njit
    def plus_one(v):
        return v + 1.0

    def build(step):
        @kernel(spec=(step.py_func.__name__,))
        def loop(x, out):
            for i in range(x.size):
                out[i] = step(x[i])
        return loop
""")


def test_a_kernel_closing_over_compiled_functions_loads_from_the_cache(tmp_path):
    """A cached kernel whose closure holds compiled functions (the block loops pick their per-element step
    that way, inlined or called) is found again by a new process: numba's own key pickles the cells, and a
    pickled dispatcher carries a per-process uuid, so every process missed and appended another data file.
    The second process must hit, and add no file. (A small kernel built the way the block loops are: the
    mechanism is kernels/jit.py's, and compiling a block loop here cost ~35 s of CI.)"""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "closure_kernels.py").write_text(_CLOSURE_MODULE)
    code = textwrap.dedent(r"""
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        import closure_kernels as m
        x = np.arange(5.0)
        loops = [m.build(m.twice), m.build(m.plus_one)]
        outs = [np.empty_like(x), np.empty_like(x)]
        for loop, out in zip(loops, outs):
            loop(x, out)
        assert np.array_equal(outs[0], 2 * x) and np.array_equal(outs[1], x + 1), outs
        print("STATS", sum(sum(l.stats.cache_hits.values()) for l in loops),
              sum(sum(l.stats.cache_misses.values()) for l in loops))
    """)
    cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    stats, files = [], []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src")], env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        stats.append([int(v) for v in p.stdout.split("STATS")[-1].split()])
        files.append(sorted(str(f.relative_to(cache)) for f in cache.rglob("*.nbc")))
    assert stats == [[0, 2], [2, 0]], stats  # the first process compiles both, the second only loads them
    assert files[1] == files[0] and len(files[0]) == 2, files


def test_the_faster_inliner_makes_the_same_code():
    """kernels/jit.py shortens numba's inlining of lowprec's inline="always" functions (one copy of the
    callee's scope per copy, not per block; the callee's untyped IR built once): the machine code of a loop
    that inlines the float rounding definition is the same as with numba's own inliner, but for the
    process-specific addresses and version counters numba puts in symbol names."""
    import re

    import numba
    import numpy as np

    from lowprec.kernels import jit, scalar

    if not jit.FASTER_INLINING:
        pytest.skip("the faster inliner is off (LOWPREC_NUMBA_INLINING=plain, or another numba)")

    def body(x, out, m, emin, bias, tmax):
        for i in range(x.size):
            out[i] = scalar.round_float_carrier(x[i], 32, 23, 127, m, emin, bias, tmax, 0, 1, 0,
                                                scalar.NEAREST_EVEN, np.uint64(0), 32)

    def asm(fast):
        d = numba.njit(body)
        if fast:
            d.compile("(int32[::1], int32[::1], int64, int64, int64, int64)")
        else:
            with jit.plain_inlining():
                d.compile("(int32[::1], int32[::1], int64, int64, int64, int64)")
        text = d.inspect_asm(d.signatures[0])
        text = re.sub(r"0x[0-9a-f]{8,}", "ADDR", text)  # object addresses in parfor names
        text = re.sub(r"B\d+v\d+B", "BvB", text)  # numba's version counters in mangled names ...
        return re.sub(r'(\.size\t"[^"]*"), \d+', r"\1, N", text), d  # ... and the lengths of strings holding them

    fast, d_fast = asm(True)
    plain, d_plain = asm(False)
    assert fast == plain
    x = np.array([0x3F800001, 0x477FF000, 0x7F800000, 0x00000001], np.int32)  # 1 + ulp, 65520, inf, tiny
    out_f, out_p = np.empty_like(x), np.empty_like(x)
    d_fast(x, out_f, 10, -14, 15, 31743)  # fp16
    d_plain(x, out_p, 10, -14, 15, 31743)
    with np.errstate(over="ignore"):
        want = x.view(np.float32).astype(np.float16).astype(np.float32)  # numpy's correctly rounded cast
    assert np.array_equal(out_f, want.view(np.int32)) and np.array_equal(out_p, out_f)

"""Test configuration.

The CUDA kernels are tested through numba's CUDA simulator: the variable must
be set before numba is first imported, which is why it is done here, at the
top of the first module pytest imports. A real GPU run sets
LOWPREC_REAL_CUDA=1 to keep the real target.
"""

import os

if os.environ.get("LOWPREC_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def one_numba_thread():
    """Run a module's tests on one numba thread (same bits; small kernels skip the ~1 ms pool wake-up).

    Use with ``pytestmark = pytest.mark.usefixtures("one_numba_thread")``."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


# ---------------------------------------------------------------------------------------------------
# LOWPREC_COMPILE_LOG=DIR: every numba compile of the session (the outermost ones: a kernel with the
# functions it calls), with the test that triggered it and its CPU seconds, one JSON line per compile in
# DIR/compile-<pid>.jsonl. A map of what a fresh cache costs each test (numba's cache hits are not compiles).
# ---------------------------------------------------------------------------------------------------
if os.environ.get("LOWPREC_COMPILE_LOG"):
    import json
    import time

    _current_test = ["(collection)"]

    def pytest_runtest_logstart(nodeid, location):
        _current_test[0] = nodeid

    def pytest_configure(config):
        import numba.core.event as ev

        path = os.path.join(os.environ["LOWPREC_COMPILE_LOG"], f"compile-{os.getpid()}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stack = []

        class _Log(ev.Listener):
            def on_start(self, event):
                stack.append(time.process_time())

            def on_end(self, event):
                t0 = stack.pop()
                if stack:  # inside another compile: counted there
                    return
                d = event.data or {}
                disp = d.get("dispatcher")
                fn = getattr(disp, "py_func", None)
                name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(disp))}"
                cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
                spec = [v for v in cells if isinstance(v, (bool, int, str))]
                with open(path, "a") as f:
                    f.write(json.dumps({"test": _current_test[0], "kernel": name, "spec": repr(spec),
                                        "args": repr(d.get("args"))[:200],
                                        "cpu_s": round(time.process_time() - t0, 2)}) + "\n")

        ev.register("numba:compile", _Log())

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

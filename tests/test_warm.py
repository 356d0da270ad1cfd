"""``lowprec warm``: argument checks, and one group run for real through the command."""

import subprocess
import sys

import pytest

from lowprec import warm


def test_warm_rejects_unknown_groups_and_bad_job_counts():
    with pytest.raises(ValueError, match="unknown warm group"):
        warm.warm(1, ["nope"])
    for jobs in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="jobs must be a positive int"):
            warm.warm(jobs, ["elements"])


def test_warm_cli_runs_a_group_and_reports_its_time():
    """(Uses the project's numba cache, which the CI warm-up has filled: it loads rather than compiles.)"""
    p = subprocess.run([sys.executable, "-m", "lowprec.cli", "warm", "--jobs", "1", "--groups", "elements"],
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].split()[0] == "elements" and float(lines[0].split()[1]) > 0
    assert lines[-1].startswith("all") and lines[-1].endswith("(1 processes)")

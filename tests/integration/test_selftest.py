"""`kpms-job selftest`: a machine that can run the job passes; one that cannot fails with the reason."""

from __future__ import annotations

import time

import pytest
from jobs import run_job

pytestmark = pytest.mark.slow


def test_selftest_runs_a_real_fit_and_passes_here():
    res = run_job("selftest", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for line in ("keypoint-moseq 0.8.1", "JAX runs on the CPU", "the pipeline ran end to end", "selftest passed"):
        assert line in res.stdout, res.stdout


def test_a_missing_gpu_fails_at_once_with_what_to_do():
    t0 = time.monotonic()
    res = run_job("selftest", "--require-gpu", timeout=600)
    assert res.returncode == 78, res.stdout + res.stderr
    assert "--require-gpu, but this JAX has no CUDA plugin" in res.stderr
    assert "skipped: the checks above failed" in res.stdout  # no fit for a machine that already failed
    assert time.monotonic() - t0 < 120


def test_a_fit_that_fails_fails_the_selftest():
    # the test fit is killed as its first stage starts: a failed fit, without fitting anything
    res = run_job("selftest", env={"KPMS_JOB_FAULT": "kill@stage-start:ingest"}, timeout=900)
    assert res.returncode == 78, res.stdout + res.stderr
    assert "the test fit failed" in res.stdout and "selftest FAILED" in res.stderr

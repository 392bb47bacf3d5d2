"""A job that hangs mid-fit says where, keeps its snapshot, exits 76, and a rerun finishes.

The hang is real: ``KPMS_JOB_FAULT=hang@resample:kpms_job:4`` blocks the main thread for good
in a blocking wait before the full model's 4th iteration (as a deadlocked XLA:CPU LAPACK call
does, it never returns to Python). Runs the real pipeline on the bundled recording.
"""

import json
import re
import time

import pytest
from jobs import run_job, tiny_manifest

from kpms_job.errors import EXIT_STALLED

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_hang_mid_fit_exits_76_with_stacks_and_a_rerun_continues(tmp_path):
    manifest = tiny_manifest(tmp_path, fitting={"arhmm_iters": 2, "full_iters": 6, "save_every": 2})
    project = tmp_path / "project"
    t0 = time.monotonic()
    # floor 2 s: once iterations 2 and 3 are timed (well under 0.1 s each), 2 s without progress is a stall
    res = run_job("run", manifest, env={"KPMS_JOB_FAULT": "hang@resample:kpms_job:4", "KPMS_JOB_WATCHDOG_S": "2"},
                  timeout=240)  # without the watchdog: TimeoutExpired (the job hangs for good)
    took = time.monotonic() - t0
    err = res.stderr
    assert res.returncode == EXIT_STALLED, err[-3000:]
    # it names the last progress and shows the stuck stack: the hang point inside run_gibbs
    assert re.search(r"STUCK: no progress for \d+ s .*the last progress was (iteration 3|snapshot 2) of kpms_job",
                     err), err[-3000:]
    assert "_hang" in err and "run_gibbs" in err, err[-3000:]
    assert "native stacks (" in err
    stalls = list((project / ".kpms-job").glob("stall-*.txt"))
    assert stalls and "run_gibbs" in stalls[0].read_text()
    # the job state records it, the lock is released, the snapshot is kept
    state = json.loads((project / ".kpms-job" / "state.json").read_text())
    assert state["extra"]["stalls"][-1]["where"] in ("iteration 3 of kpms_job", "snapshot 2 of kpms_job saved")
    assert not (project / ".kpms-job" / "lock").exists()
    assert (project / "kpms_job" / "checkpoint.h5").exists()
    assert took < 200, took
    # kpms-job status tells it from the files the job left: stalled, in the full model
    s = json.loads(run_job("status", project, "--json").stdout)
    assert s["job"]["state"] == "stalled" and s["last_run"]["exit_code"] == EXIT_STALLED
    assert next(x for x in s["stages"] if x["key"] == "full_model")["status"] == "interrupted"
    rerun = run_job("run", manifest, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from the snapshot at iteration 2" in rerun.stderr, rerun.stderr[-3000:]
    assert (project / "kpms_job" / "results.h5").exists()

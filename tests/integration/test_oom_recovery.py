"""Out of memory during a fit: the job records it, restarts with the next setting, resumes, and ends
with the labels of an uninterrupted run; when every setting fails it exits 4 and says what to change.

The error is XLA's own kind: ``KPMS_JOB_FAULT=oom@resample:MODEL:ITER`` raises a
RESOURCE_EXHAUSTED RuntimeError inside the Gibbs step, where a real one comes from. The
job is the bundled recording used twice (2 recordings x 2330 frames x 4 keypoints: two
segments, so on a CPU the plan can go from mixed_map_iters=1 to 2).
"""

import json
import re
import shutil

import h5py
import numpy as np
import pytest
from jobs import EXAMPLE_CSV, run_job, tiny_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def two_recordings(tmp):
    paths = []
    for name in ("mouse_a", "mouse_b"):
        shutil.copy(EXAMPLE_CSV, tmp / f"{name}.csv")
        paths.append(str(tmp / f"{name}.csv"))
    return tiny_manifest(tmp, inputs={"format": "deeplabcut", "paths": paths},
                         outputs={"grid_movies": False, "figures": False, "trajectory_plots": False, "csv": False})


def labels(project):
    with h5py.File(project / "kpms_job" / "results.h5", "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


def state(project):
    return json.loads((project / ".kpms-job" / "state.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    res = run_job("run", two_recordings(tmp))
    assert res.returncode == 0, res.stderr[-3000:]
    plan = state(tmp / "project")["extra"]["resources"]
    assert plan["mixed_map_iters"] == 1 and plan["attempts"] == []
    return labels(tmp / "project")


def test_oom_mid_fit_escalates_restarts_and_ends_with_identical_labels(tmp_path, reference):
    res = run_job("run", two_recordings(tmp_path), env={"KPMS_JOB_FAULT": "oom@resample:kpms_job:3"})
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "Traceback" not in err
    # the escalation: logged, recorded in the state, and the next process used the next setting
    assert re.search(r"out of memory in the full_model with parallel_message_passing=False, mixed_map_iters=1 "
                     r"\(RESOURCE_EXHAUSTED.*\); restarting with parallel_message_passing=False, mixed_map_iters=2",
                     err), err[-3000:]
    plan = state(tmp_path / "project")["extra"]["resources"]
    assert plan["mixed_map_iters"] == 2
    [attempt] = plan["attempts"]
    assert attempt["outcome"] == "out of memory" and attempt["stage"] == "full_model"
    assert attempt["setting"] == {"parallel_message_passing": False, "mixed_map_iters": 1}
    assert "RESOURCE_EXHAUSTED" in attempt["error"]
    assert plan["peak_bytes"] > 100 << 20 and plan["peak_source"]
    # the fresh process resumed the full model from its last snapshot (iteration 2; save_every 2)
    assert "full model: resuming from the snapshot at iteration 2" in err
    assert err.count("run   arhmm") == 1  # finished stages were not redone
    summary = json.loads((tmp_path / "project" / "summary.json").read_text())
    assert summary["fitting_settings"]["mixed_map_iters"] == 2
    got = labels(tmp_path / "project")
    assert got.keys() == reference.keys()
    for k in reference:
        assert np.array_equal(got[k], reference[k]), k


def test_every_setting_out_of_memory_exits_4_saying_what_was_tried(tmp_path):
    # an AR-HMM error goes straight to the most frugal setting (the AR-HMM does not use the Kalman
    # sampler mixed_map_iters batches); the second error, in that setting, is the end
    fault = "oom@resample:kpms_job_arhmm:2,oom@resample:kpms_job_arhmm:3"
    res = run_job("run", two_recordings(tmp_path), env={"KPMS_JOB_FAULT": fault})
    assert res.returncode == 4, res.stderr[-3000:]
    err = res.stderr
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("kpms-job: error: out of memory after every fallback: tried ")
    for text in ("mixed_map_iters=1 (arhmm)", "mixed_map_iters=2 (arhmm)", "raise resources.vram_budget_gb",
                 "Completed iterations are kept"):
        assert text in last, text
    plan = state(tmp_path / "project")["extra"]["resources"]
    assert [a["setting"]["mixed_map_iters"] for a in plan["attempts"]] == [1, 2]
    assert all(a["outcome"] == "out of memory" for a in plan["attempts"])
    # the AR-HMM checkpoint keeps what was done: a rerun (memory freed, here: no fault) finishes
    assert (tmp_path / "project" / "kpms_job_arhmm" / "checkpoint.h5").exists()


def test_oom_at_the_nan_check_recovers_like_one_in_the_gibbs_step(tmp_path, reference):
    # with JAX's asynchronous dispatch, an allocation failure of the Gibbs step surfaces where its
    # result is first read: the NaN check
    res = run_job("run", two_recordings(tmp_path), env={"KPMS_JOB_FAULT": "oom@nan-check:kpms_job:3"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert re.search(r"out of memory in the full_model with parallel_message_passing=False, mixed_map_iters=1 "
                     r"\(RESOURCE_EXHAUSTED.*nan-check:kpms_job:3\)\); restarting with .*mixed_map_iters=2",
                     res.stderr), res.stderr[-3000:]
    [attempt] = state(tmp_path / "project")["extra"]["resources"]["attempts"]
    assert attempt["stage"] == "full_model" and attempt["outcome"] == "out of memory"
    got = labels(tmp_path / "project")
    assert got.keys() == reference.keys()
    for k in reference:
        assert np.array_equal(got[k], reference[k]), k


def test_oom_in_init_model_and_in_a_snapshot_write_go_through_the_same_recovery(tmp_path):
    # the first escalates from mixed_map_iters 1 to 2 (a restart), the second, in the most frugal
    # setting, ends the job with exit 4: each is recorded as an out-of-memory attempt, none exits 1
    fault = "oom@init_model,oom@snapshot:kpms_job:4"
    res = run_job("run", two_recordings(tmp_path), env={"KPMS_JOB_FAULT": fault})
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    plan = state(tmp_path / "project")["extra"]["resources"]
    assert [(a["stage"], a["setting"]["mixed_map_iters"]) for a in plan["attempts"]] == [("arhmm", 1),
                                                                                      ("full_model", 2)]
    assert all(a["outcome"] == "out of memory" for a in plan["attempts"])
    assert "injected at init_model" in plan["attempts"][0]["error"]
    assert "injected at snapshot:kpms_job:4" in plan["attempts"][1]["error"]
    assert res.stderr.strip().splitlines()[-1].startswith("kpms-job: error: out of memory after every fallback")

"""Kills, preemption and corrupt files: the job loses nothing and ends with the same labels.

Every fault here is real: ``KPMS_JOB_FAULT=kill@POINT`` makes the job SIGKILL itself at
that point (a real hard kill of a real process), and the SIGTERM test signals a running
job from outside. Runs the real pipeline on the bundled recording (tiny iterations).
"""

import json
import re
import shutil
import signal
import time

import h5py
import numpy as np
import pytest
import yaml
from jobs import run_job, start_job, tiny_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 22 points across every stage, inside both fits, and inside a state-file write
KILL_POINTS = [
    "state-write", "stage-start:ingest", "stage-end:ingest", "stage-end:outliers", "stage-start:pca",
    "stage-end:pca", "iter:kpms_job_arhmm:1", "iter:kpms_job_arhmm:3", "resample:kpms_job_arhmm:5",
    "stage-end:arhmm", "iter:kpms_job:1", "iter:kpms_job:2", "iter:kpms_job:5", "stage-end:full_model",
    "stage-start:reindex", "stage-end:reindex", "stage-start:results", "stage-end:results",
    "stage-start:figures", "stage-end:figures", "stage-start:summary", "stage-end:summary",
]


def labels(project):
    with h5py.File(project / "kpms_job" / "results.h5", "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    res = run_job("run", tiny_manifest(tmp))
    assert res.returncode == 0, res.stderr[-3000:]
    return labels(tmp / "project")


def test_killed_at_22_points_ends_identical_to_an_uninterrupted_run(tmp_path, reference):
    manifest = tiny_manifest(tmp_path)
    resumed_from = []
    for point in KILL_POINTS:
        res = run_job("run", manifest, env={"KPMS_JOB_FAULT": f"kill@{point}"})
        # a point already passed does not fire; the run then simply finishes
        assert res.returncode in (-signal.SIGKILL, 0), (point, res.stderr[-3000:])
        assert "Traceback" not in res.stderr
        resumed_from += re.findall(r"resuming from the snapshot at iteration (\d+)", res.stderr)
    final = run_job("run", manifest)
    assert final.returncode == 0, final.stderr[-3000:]
    got = labels(tmp_path / "project")
    assert got.keys() == reference.keys()
    for k in reference:
        assert np.array_equal(got[k], reference[k]), k
    # the fits resumed from snapshots instead of starting over (save_every 2: at most 2 iterations redone)
    assert resumed_from, "no fit resumed from a snapshot"


def test_sigterm_mid_fit_exits_75_quickly_and_rerun_resumes(tmp_path):
    manifest = tiny_manifest(tmp_path, fitting={"arhmm_iters": 4, "full_iters": 400, "save_every": 100})
    proc = start_job("run", manifest)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        # the second progress line (iteration 41): JAX traces the first few iterations afresh,
        # and an XLA compile cannot be interrupted; from here on an iteration takes well under 1 s
        if "full model: iteration" in line and "iteration 1/" not in line:
            break
    # a second job on the same project dir is refused at once, naming the holder
    other = run_job("run", manifest, timeout=60)
    assert other.returncode == 75
    assert "in use by another job" in other.stderr and "pid" in other.stderr
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    code = proc.wait(timeout=60)
    took = time.monotonic() - t0
    assert code == 75, "".join(seen[-5:]) + rest[-2000:]
    assert took < 10, took
    stopped = int(re.search(r"stopped at iteration (\d+)", rest).group(1))
    assert 0 < stopped < 400
    rerun = start_job("run", manifest)
    out = []
    for line in rerun.stdout:
        out.append(line)
        if "resuming from the snapshot" in line or "full model: iteration" in line:
            break
    rerun.send_signal(signal.SIGTERM)
    out.append(rerun.stdout.read())
    rerun.wait(timeout=60)
    text = "".join(out)
    assert f"resuming from the snapshot at iteration {stopped}" in text, text[-2000:]


def test_corrupt_state_file_falls_back_to_the_previous_copy(tmp_path, reference):
    manifest = tiny_manifest(tmp_path)
    assert run_job("run", manifest).returncode == 0
    state = tmp_path / "project" / ".kpms-job" / "state.json"
    state.write_text(state.read_text()[:100])  # truncated mid-write by a crash
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "recovered the job state" in res.stderr
    assert "Traceback" not in res.stderr
    got = labels(tmp_path / "project")
    assert all(np.array_equal(got[k], reference[k]) for k in reference)
    json.loads(state.read_text())  # and it is whole again


def test_corrupt_checkpoint_reruns_the_fit_with_a_clear_line(tmp_path, reference):
    manifest = tiny_manifest(tmp_path)
    res = run_job("run", manifest, env={"KPMS_JOB_FAULT": "kill@iter:kpms_job:5"})
    assert res.returncode == -signal.SIGKILL
    ckpt = tmp_path / "project" / "kpms_job" / "checkpoint.h5"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "unreadable" in res.stderr and "starts again" in res.stderr
    assert "Traceback" not in res.stderr
    got = labels(tmp_path / "project")
    assert all(np.array_equal(got[k], reference[k]) for k in reference)


def test_bad_input_after_a_finished_run_loses_nothing(tmp_path):
    manifest = tiny_manifest(tmp_path)
    assert run_job("run", manifest).returncode == 0
    project = tmp_path / "project"
    before = json.loads((project / ".kpms-job" / "state.json").read_text())["stages"]
    broken = tmp_path / "broken.csv"
    broken.write_text("scorer,x\nnot,a,deeplabcut,file\n")
    m = yaml.safe_load(manifest.read_text())
    m["inputs"]["paths"].append(str(broken))
    manifest.write_text(yaml.safe_dump(m))
    res = run_job("run", manifest)
    assert res.returncode == 3, res.stderr[-2000:]
    assert str(broken) in res.stderr
    after = json.loads((project / ".kpms-job" / "state.json").read_text())["stages"]
    assert after == before
    assert (project / "kpms_job" / "results.h5").exists()
    shutil.rmtree(project)


def test_five_sigkills_at_random_moments_from_outside(tmp_path_factory):
    """Five real SIGKILLs from outside at random moments (seeded), a rerun after each: the labels
    equal an uninterrupted run's, and each rerun resumed within one snapshot interval (5) of the
    last iteration the killed run had logged."""
    import random

    over = {"fitting": {"arhmm_iters": 20, "full_iters": 30, "save_every": 5}}
    ref_dir = tmp_path_factory.mktemp("ref5")
    res = run_job("run", tiny_manifest(ref_dir, **over))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = labels(ref_dir / "project")
    tmp = tmp_path_factory.mktemp("kill5")
    manifest = tiny_manifest(tmp, **over)
    rng = random.Random(7)
    progress = re.compile(r"(AR-HMM|full model): iteration (\d+)/")
    resumed = re.compile(r"(AR-HMM|full model): resuming from the snapshot at iteration (\d+)")
    last_seen: dict = {}
    kills = 0
    checked = 0
    while kills < 5:
        proc = start_job("run", manifest)
        time.sleep(rng.uniform(4.0, 30.0))
        finished = proc.poll() is not None
        if not finished:
            proc.kill()
        out = proc.stdout.read()
        proc.wait()
        for label, n in resumed.findall(out):
            if label in last_seen:
                assert int(n) >= last_seen[label] - 5, (label, n, last_seen)
                checked += 1
        last_seen = {}
        for label, n in progress.findall(out):
            last_seen[label] = int(n)
        if finished:
            break
        kills += 1
    final = run_job("run", manifest)
    assert final.returncode == 0, final.stderr[-3000:]
    got = labels(tmp / "project")
    assert all(np.array_equal(got[k], reference[k]) for k in reference)

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
        # each point lies after the one before, so each run reaches its point and dies there; a run
        # that finishes instead means the point was never passed (or was renamed): not a kill tested
        assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-3000:])
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
    assert other.returncode == 77  # busy
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
    """Five real SIGKILLs from outside, each at a random moment of a fit (seeded: a random Gibbs
    iteration of the AR-HMM or the full model, later each time, plus a random fraction of a
    second), a rerun after each: every kill lands on a running job, each rerun resumes within one
    snapshot interval (5) of the last iteration the killed run logged, and the labels equal an
    uninterrupted run's."""
    import random

    over = {"fitting": {"arhmm_iters": 20, "full_iters": 30, "save_every": 5}}
    ref_dir = tmp_path_factory.mktemp("ref5")
    res = run_job("run", tiny_manifest(ref_dir, **over))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = labels(ref_dir / "project")
    tmp = tmp_path_factory.mktemp("kill5")
    manifest = tiny_manifest(tmp, **over)
    rng = random.Random(7)
    # after the first snapshot (5) of each fit, so that every rerun has a snapshot to resume from
    moments = [("AR-HMM", n) for n in range(6, 20)] + [("full model", n) for n in range(6, 30)]
    targets = sorted(rng.sample(range(len(moments)), 5))
    progress = re.compile(r"(AR-HMM|full model): iteration (\d+)/")
    resumed = re.compile(r"(AR-HMM|full model): resuming from the snapshot at iteration (\d+)")
    last_seen: dict = {}
    checked = expected = 0

    def check_resume(out):
        nonlocal checked
        for label, n in resumed.findall(out):
            if label in last_seen:  # the killed run logged iterations of this fit: none is lost
                assert int(n) >= last_seen[label] - 5, (label, n, last_seen)
            checked += 1

    order = {"AR-HMM": 0, "full model": 1}
    for target in targets:
        phase, at = moments[target]
        proc = start_job("run", manifest)
        out = []
        for line in proc.stdout:
            out.append(line)
            m = progress.search(line)
            # at the moment or the first one after it: the previous kill may have landed later than
            # its own moment (the random delay), past this one (a finished AR-HMM logs no iteration)
            if m and (order[m.group(1)], int(m.group(2))) >= (order[phase], at):
                break
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, f"the job ended before the kill at {phase} {at}: " + "".join(out)[-3000:]
        proc.kill()
        out.append(proc.stdout.read())
        assert proc.wait() == -signal.SIGKILL
        text = "".join(out)
        check_resume(text)
        last_seen = {label: int(n) for label, n in progress.findall(text)}
        # the kill landed inside a fit (its stage started and did not end) after the fit's first
        # snapshot: the rerun must resume it. With the random delay it may land just after a fit
        # ended instead (a fast AR-HMM's last iterations), or in the next fit before its first
        # snapshot (while the model is built); then that fit starts from its beginning, as it should
        events = re.findall(r"(run|done)\s+(arhmm|full_model)\b", text)
        if events and events[-1][0] == "run":
            folder = {"arhmm": "kpms_job_arhmm", "full_model": "kpms_job"}[events[-1][1]]
            expected += (tmp / "project" / folder / "checkpoint.h5").exists()
    final = run_job("run", manifest)
    assert final.returncode == 0, final.stderr[-3000:]
    check_resume(final.stderr)
    assert checked == expected >= 3, (checked, expected)  # every rerun after a kill inside a fit resumed
    got = labels(tmp / "project")
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in reference)


# Tuning on, as by default: both fits correct kappa every 3 iterations and snapshot every 4
TUNED = {"tuning": {"check_every": 3}, "model": {"num_states": 20, "kappa": 1e6, "seed": 0},
         "fitting": {"arhmm_iters": 12, "full_iters": 12, "save_every": 4}}
# inside the AR-HMM chain after a kappa check and before the next snapshot, the same in the full
# model, later in the full model, and after the tuned fit but before its stage is recorded
TUNED_KILLS = ["iter:kpms_job_arhmm:7", "iter:kpms_job:5", "iter:kpms_job:10", "stage-end:full_model"]


def _tuning(project):
    s = json.loads((project / "summary.json").read_text())
    return {key: (s[key]["final_kappa"], s[key]["verdict"], s[key]["iterations"]) for key in ("arhmm_tuning", "tuning")}


def test_a_tuned_run_killed_inside_both_tuned_fits_ends_identical_to_an_uninterrupted_one(tmp_path_factory):
    ref_dir = tmp_path_factory.mktemp("tuned_ref")
    ref = run_job("run", tiny_manifest(ref_dir, **TUNED))
    assert ref.returncode in (0, 5), ref.stderr[-3000:]  # 5: the window not reached; still a tuned chain
    tmp = tmp_path_factory.mktemp("tuned_kill")
    manifest = tiny_manifest(tmp, **TUNED)
    resumed = []
    for point in TUNED_KILLS:
        res = run_job("run", manifest, env={"KPMS_JOB_FAULT": f"kill@{point}"})
        assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-3000:])
        assert "Traceback" not in res.stderr
        resumed += re.findall(r"(AR-HMM|full model): resuming from the snapshot at iteration (\d+)", res.stderr)
    final = run_job("run", manifest)
    assert final.returncode == ref.returncode, final.stderr[-3000:]
    resumed += re.findall(r"(AR-HMM|full model): resuming from the snapshot at iteration (\d+)", final.stderr)
    # both tuned chains went on from a snapshot, not from iteration 0
    assert {label for label, _ in resumed} == {"AR-HMM", "full model"}, resumed
    assert _tuning(tmp / "project") == _tuning(ref_dir / "project")
    got, want = labels(tmp / "project"), labels(ref_dir / "project")
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k

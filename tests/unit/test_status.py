"""``kpms-job status`` on projects laid out on disk as a job leaves them (state, lock, progress,
last_run.json), each run's log file and its rotation, and the failure record of a real run.
The real pipeline, running and killed, is in tests/integration/test_status_live.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, record_all, write_manifest

from kpms_job import liveprogress, manifest, runlog
from kpms_job.state import ORDER, JobState, now_iso, state_dir

NO_JAX = textwrap.dedent("""
    import sys
    from kpms_job.cli import main
    code = main(sys.argv[1:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "keypoint_moseq", "jax_moseq")
                   or m.startswith("kpms_job.kpms") or m == "kpms_job.pipeline")
    print("HEAVY", heavy, file=sys.stderr)
    sys.exit(code)
""")


def _project(tmp_path: Path, done=("ingest", "outliers", "pca"), restarts: int | None = None) -> Path:
    """A project dir whose state records ``done`` as finished (fits with a kappa and a median)."""
    project = tmp_path / "project"
    state = JobState(project)
    for name in done:
        info = {"kappa": 1e4, "median_duration_ms": 233.0, "iterations": 6} if name in ("arhmm", "full_model") else {}
        state.record_stage(name, "fp", 1.5, info)
    if restarts:
        progress = {"restarts": restarts}
        (state_dir(project) / liveprogress.FILE).write_text(json.dumps(progress))
    return project


def _lock(project: Path, host: str, age_s: float, pid: int = 4242) -> None:
    path = state_dir(project) / "lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "since": now_iso(), "created": time.time() - age_s,
                                "heartbeat": time.time() - age_s}))


def _mid_fit(project: Path, iteration=12, total=200) -> None:
    """What a job publishes during the AR-HMM: its stage started, then an iteration."""
    liveprogress.stage_started(state_dir(project), "arhmm", None, "AR-HMM fit")
    fit = liveprogress.FitProgress(state_dir(project), "AR-HMM")
    fit.update(iteration, total, 0.5, kappa=1e4, median_ms=180.0)


def _status(cli, target, *more):
    code, out, err = cli("status", target, *more)
    assert code == 0, err
    return out


def test_a_folder_that_is_not_a_project_exits_2_naming_it_and_the_fix(cli, tmp_path):
    code, out, err = cli("status", tmp_path)
    assert code == 2 and out == ""
    assert str(tmp_path) in err and "not a kpms-job project" in err and ".kpms-job/" in err
    assert "manifest" in err  # how to fix it: the project_dir a manifest names, or the manifest
    code, _, err = cli("status", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err and str(tmp_path / "nowhere") in err


def test_a_manifest_names_its_project_dir_resolved_against_its_folder(cli, tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "study", {"project_dir": "./out", "restarts": 2,
                                               "inputs": {"format": "deeplabcut", "paths": ["x.csv"]}})
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    s = json.loads(_status(cli, path, "--json"))  # a job that has not started: every stage waiting
    assert s["project_dir"] == str((tmp_path / "study" / "out").resolve()) and s["manifest"] == str(path.resolve())
    assert s["job"]["state"] == "not started"
    assert [x["key"] for x in s["stages"]][3:7] == ["arhmm@r00", "full_model@r00", "arhmm@r01", "full_model@r01"]
    assert {x["status"] for x in s["stages"]} == {"waiting"}


def test_a_live_fit_shows_its_iteration_kappa_median_and_time_left(cli, tmp_path):
    project = _project(tmp_path)
    _mid_fit(project)
    _lock(project, "another-host", age_s=5)  # another machine on a shared filesystem, heartbeat fresh
    out = _status(cli, project)
    assert out.startswith(f"{project}: RUNNING - host another-host, pid 4242")
    line = next(x for x in out.splitlines() if " arhmm " in x)
    assert line.split()[0] == "running"
    for part in ("AR-HMM: iteration 12 of 200", "kappa 1e+04", "median 180 ms", "0.50 s/iter", "about 2 min left"):
        assert part in line
    assert [x.split()[0] for x in out.splitlines()[1:10]] == ["done"] * 3 + ["running"] + ["waiting"] * 5
    s = json.loads(_status(cli, project, "--json"))
    assert s["job"]["state"] == "running" and s["job"]["lock"]["host"] == "another-host"
    row = s["stages"][3]
    assert row["key"] == "arhmm" and row["status"] == "running"
    assert row["fit"]["iteration"] == 12 and row["fit"]["total"] == 200 and row["fit"]["eta_s"] == 94.0


@pytest.mark.parametrize("age,state", [(90, "unresponsive"), (300, "interrupted")])
def test_running_or_not_is_judged_by_the_heartbeat_of_a_lock_from_another_host(cli, tmp_path, age, state):
    project = _project(tmp_path)
    _mid_fit(project)
    _lock(project, "another-host", age_s=age)
    s = json.loads(_status(cli, project, "--json"))
    assert s["job"]["state"] == state
    arhmm = s["stages"][3]
    assert arhmm["status"] == ("running" if state == "unresponsive" else "interrupted")
    out = _status(cli, project)
    if state == "interrupted":  # where it stopped, and not running
        assert "RUNNING" not in out and "no heartbeat for 300 s" in out
        assert "stopped at AR-HMM: iteration 12 of 200" in out


def test_a_lock_whose_process_ended_on_this_host_is_stopped_at_once(cli, tmp_path):
    project = _project(tmp_path)
    _mid_fit(project)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(project, socket.gethostname(), age_s=1, pid=gone.pid)  # a fresh heartbeat, its process gone
    s = json.loads(_status(cli, project, "--json"))
    assert s["job"]["state"] == "interrupted" and s["job"]["lock"]["process_gone"] is True
    assert s["stages"][3]["status"] == "interrupted" and s["stages"][3]["fit"]["iteration"] == 12


def test_a_finished_project_shows_every_stage_done_and_the_verdict(cli, tmp_path):
    project = _project(tmp_path, done=ORDER)
    (project / "summary.json").write_text(json.dumps({"median_duration_ms": 233.4, "in_target_window": False,
                                                      "target_median_duration_ms": [300, 500]}))
    out = _status(cli, project)
    assert f"{project}: FINISHED" in out
    assert [x.split()[0] for x in out.splitlines()[1:10]] == ["done"] * 9
    assert "verdict: median syllable duration 233 ms, target 300-500 ms: OUTSIDE the window" in out
    s = json.loads(_status(cli, project, "--json"))
    assert s["verdict"] == {"median_duration_ms": 233.4, "target_median_duration_ms": [300, 500],
                            "in_target_window": False}
    assert s["stages"][4]["result"] == {"kappa": 1e4, "median_duration_ms": 233.0, "iterations": 6}


def test_each_restart_shows_its_own_stages(cli, tmp_path):
    project = _project(tmp_path, restarts=2)
    JobState(project, restart=0).record_stage("arhmm", "fp", 2.0, {"kappa": 1e5})
    liveprogress.stage_started(state_dir(project, 1), "full_model", 1, "full model")
    s = json.loads(_status(cli, project, "--json"))
    by_key = {x["key"]: x["status"] for x in s["stages"]}
    assert by_key["arhmm@r00"] == "done" and by_key["full_model@r00"] == "waiting"
    assert by_key["full_model@r01"] == "interrupted"  # published as started, no lock: not running
    assert list(by_key)[-6:] == ["select", "reindex", "results", "figures", "analysis", "summary"]


def test_status_imports_no_jax_nor_keypoint_moseq(tmp_path):
    project = _project(tmp_path)
    _mid_fit(project)
    for args in ([str(project)], [str(project), "--json"]):
        res = subprocess.run([sys.executable, "-c", NO_JAX, "status", *args], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert "HEAVY []" in res.stderr
    json.loads(res.stdout)


# ------------------------------------------------------------------ log files and the run record
def test_rotation_keeps_the_20_newest_logs_and_any_still_being_written(tmp_path):
    folder = runlog.log_dir(tmp_path)
    folder.mkdir(parents=True)
    old = time.time() - 86400
    names = [f"202601{d:02d}T000000Z-run.log" for d in range(1, 26)]  # 25 finished runs
    for name in names:
        (folder / name).write_text("x")
        os.utime(folder / name, (old, old))
    live = folder / "20250101T000000Z-run-task3.log"  # the oldest name, but written a moment ago
    live.write_text("x")
    path = runlog.start(tmp_path, "run")
    try:
        kept = sorted(p.name for p in folder.glob("*.log"))
        assert path.name in kept and live.name in kept
        assert sorted(set(kept) - {path.name, live.name}) == names[-19:]  # with this run's own: 20
        assert runlog.latest(tmp_path) == path
    finally:
        runlog.stop()
    later = folder / "29990101T000000Z-apply.log"
    later.write_text("x")
    assert runlog.latest(tmp_path) == later  # no log of this process: the one that started last
    (folder / "29990101T000000Z-apply-2.log").write_text("x")  # a second one in that same second
    assert runlog.latest(tmp_path).name == "29990101T000000Z-apply-2.log"
    assert runlog.latest(tmp_path / "elsewhere") is None


def test_a_finished_run_logs_its_lines_and_a_validation_error_leaves_no_project(tmp_path, job):
    record_all(manifest.load(job))
    res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(job)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=dict(os.environ, NO_COLOR="1"))
    assert res.returncode == 0 and "nothing to do" in res.stdout
    project = tmp_path / "project"
    logs = list(runlog.log_dir(project).glob("*-run.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "INFO nothing to do: every stage is done and unchanged" in text
    assert "INFO exit 0: done" in text
    for line in text.splitlines():  # the console's plain lines: 2026-01-01T00:00:00 LEVEL message
        assert line[4] == "-" and line[10] == "T" and line.split()[1] in ("INFO", "WARNING", "ERROR")
    record = runlog.read_last_run(state_dir(project))
    assert record["exit_code"] == 0 and record["log"] == str(logs[0]) and record["command"] == "run"

    bad = write_manifest(tmp_path / "typo", {"project_dir": "./project",
                                             "inputs": {"format": "deeplabcut", "paths": ["none/*.csv"]}})
    res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(bad)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 3 and "matches no file" in res.stderr
    assert not (tmp_path / "typo" / "project").exists()


def test_a_run_that_fails_records_why_and_status_shows_it(cli, tmp_path, job):
    # a real run of the job that fails as its first stage starts (an injected error: exit 1)
    res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(job)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT,
                         env=dict(os.environ, NO_COLOR="1", KPMS_JOB_FAULT="oom@stage-start:ingest"))
    assert res.returncode == 1, res.stderr
    project = tmp_path / "project"
    record = runlog.read_last_run(state_dir(project))
    assert record["exit_code"] == 1 and record["stage"] == "ingest"
    assert "RESOURCE_EXHAUSTED" in record["message"] and record["finished_at"] >= record["started_at"]
    log_text = Path(record["log"]).read_text()
    assert "run   ingest" in log_text and "ERROR exit 1: failed (unexpected error): unexpected error" in log_text
    out = _status(cli, project)
    assert out.startswith(f"{project}: FAILED - ingest: unexpected error: RuntimeError: RESOURCE_EXHAUSTED")
    assert next(x for x in out.splitlines() if " ingest " in x).split()[0] == "failed"
    assert "last run: run exit 1" in out


def test_fit_progress_is_written_at_once_then_at_most_every_2_s(tmp_path):
    fit = liveprogress.FitProgress(tmp_path, "full model")
    fit.update(1, 10, 3.0)
    assert liveprogress.read(tmp_path)["fit"]["iteration"] == 1
    fit.update(2, 10, 0.1, kappa=5.0)
    assert liveprogress.read(tmp_path)["fit"]["iteration"] == 1  # within 2 s of the last write
    fit.flush()  # the fit ends or stops: the newest iteration is written
    written = liveprogress.read(tmp_path)
    assert written["fit"]["iteration"] == 2 and written["fit"]["kappa"] == 5.0
    assert written["host"] == socket.gethostname() and written["pid"] == os.getpid()
    fit.update(10, 10, 0.1)  # the last iteration is always written
    assert liveprogress.read(tmp_path)["fit"]["iteration"] == 10


HOLD = textwrap.dedent("""
    import sys, time
    from kpms_job.state import ProjectLock
    lock = ProjectLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(30)
""")


def test_a_run_that_finds_the_project_busy_leaves_no_log_and_no_record(tmp_path, job):
    record_all(manifest.load(job))
    project = tmp_path / "project"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(job)], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert res.returncode == 77, res.stderr
        # it did nothing there: its log would only push the running job's out of the newest 20
        assert list(runlog.log_dir(project).glob("*.log")) == []
        assert runlog.read_last_run(state_dir(project)) is None
        s = json.loads(subprocess.run([sys.executable, "-m", "kpms_job", "status", str(project), "--json"],
                                      capture_output=True, text=True, timeout=60, cwd=ROOT).stdout)
        assert s["job"]["state"] == "running" and s["job"]["lock"]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_the_lines_of_restart_workers_go_into_the_runs_log_as_to_its_console(tmp_path, capsys):
    import io

    from kpms_job import fanout

    path = runlog.start(tmp_path, "run")
    try:
        line = "2026-01-01T00:00:00 INFO run   arhmm r01  AR-HMM fit (not done yet)\n"
        fanout._pump(io.StringIO(line), "r01")
    finally:
        runlog.stop()
    assert capsys.readouterr().err == f"[r01] {line}"
    assert path.read_text() == f"[r01] {line}"

"""Restarts (manifest ``restarts``): fitted in one process, as array tasks started at once on one
project dir with one of them killed and rerun, or in two local worker processes, they end with the
same selected restart and the same labels; the summary shows the expected marginal likelihoods and
the label agreement."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from jobs import ROOT, default_signals, run_job, tiny_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESTARTS = {"restarts": 3, "fitting": {"arhmm_iters": 6, "full_iters": 8, "save_every": 2}}


def _selected(project):
    s = json.loads((project / "summary.json").read_text())
    name = s["model_name"]
    with h5py.File(project / name / "results.h5", "r") as f:
        labels = {k: f[k]["syllable"][()] for k in f}
    return name, labels, s


def test_three_restarts_in_one_process_and_as_three_tasks_at_once_select_the_same_model(tmp_path_factory):
    ref_dir = tmp_path_factory.mktemp("restarts_one_process")
    ref = run_job("run", tiny_manifest(ref_dir, **RESTARTS))
    assert ref.returncode == 0, ref.stderr[-3000:]
    name, labels, summary = _selected(ref_dir / "project")
    r = summary["restarts"]
    assert [m["name"] for m in r["models"]] == ["kpms_job-r00", "kpms_job-r01", "kpms_job-r02"]
    assert [m["seed"] for m in r["models"]] == [0, 1, 2]
    best = max(r["models"], key=lambda m: m["eml"])
    assert best["selected"] and best["name"] == name == r["selected"]
    assert len({tuple(np.concatenate(list(_labels(ref_dir / "project", m["name"]).values())))
                for m in r["models"]}) == 3, "the restarts are not different fits"
    for fig in ("eml_scores.png", "label_agreement.png", "confusion_selected_vs_runner_up.png"):
        assert (ref_dir / "project" / "kpms_job_restarts" / fig).stat().st_size > 0
    assert "## Restarts" in (ref_dir / "project" / "summary.md").read_text()
    report = (ref_dir / "project" / "report.html").read_text()  # the selection, with its figures
    assert 'id="restarts"' in report and f"Selected <code>{name}</code>" in report
    assert all(f'src="kpms_job_restarts/{fig}"' in report for fig in ("eml_scores.png", "label_agreement.png"))
    assert f'src="{name}/fitting_progress.png"' in report  # the selected restart's own fit

    tasks_dir = tmp_path_factory.mktemp("restarts_tasks")
    manifest = tiny_manifest(tasks_dir, **RESTARTS)
    env = dict(NO_COLOR="1")
    procs = []
    for i in range(3):
        e = {**env, "JOB_COMPLETION_INDEX": str(i)}
        if i == 1:  # killed inside its full model's fit
            e["KPMS_JOB_FAULT"] = "kill@iter:kpms_job-r01:5"
        procs.append(_start("run", manifest, "--task", "auto", env=e))
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes[1] == -signal.SIGKILL, outs[1][1][-3000:]
    assert codes[0] == codes[2] == 0, [o[1][-2000:] for o in outs]
    assert "Traceback" not in "".join(o[1] for o in outs)
    # the shared stages ran once: one task ran them, the others waited and skipped them
    assert sum("run   pca" in o[1] for o in outs) == 1
    # with restart 1 unfinished nobody selected
    assert not (tasks_dir / "project" / "summary.json").exists()
    rerun = run_job("run", manifest, "--task", "auto", env={"JOB_COMPLETION_INDEX": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "full model: resuming from the snapshot at iteration 4" in rerun.stderr
    assert "run   select" in rerun.stderr  # the task that finished the last restart selected
    got_name, got_labels, _ = _selected(tasks_dir / "project")
    assert got_name == name
    assert got_labels.keys() == labels.keys()
    for k in labels:
        assert np.array_equal(got_labels[k], labels[k]), k
    again = run_job("run", manifest, "--task", "select")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]

    # and fanned out to two worker processes by plain `run`
    workers_dir = tmp_path_factory.mktemp("restarts_workers")
    fan = run_job("run", tiny_manifest(workers_dir, **RESTARTS), "--workers", "2")
    assert fan.returncode == 0, fan.stderr[-3000:]
    assert "fitting 3 restart(s) in 2 worker processes (--workers 2)" in fan.stderr
    assert "[r00]" in fan.stderr and "[r02]" in fan.stderr  # the workers' lines, each named
    got_name, got_labels, _ = _selected(workers_dir / "project")
    assert got_name == name
    for k in labels:
        assert np.array_equal(got_labels[k], labels[k]), k


def _labels(project, name):
    with h5py.File(project / name / "results.h5", "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


def _start(*args, env):
    import os

    return subprocess.Popen([sys.executable, "-m", "kpms_job", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=ROOT,
                            preexec_fn=default_signals)


def test_select_before_the_restarts_are_fitted_says_which_and_how(tmp_path):
    manifest = tiny_manifest(tmp_path, **RESTARTS)
    res = run_job("run", manifest, "--task", "select")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "r00, r01, r02 are not fitted yet and no job holds them" in res.stderr
    assert "--task 0" in res.stderr


def test_a_term_to_run_reaches_every_worker_once_and_a_rerun_continues_their_fits(tmp_path):
    import re
    import time

    from jobs import start_job

    manifest = tiny_manifest(tmp_path, restarts=2, fitting={"arhmm_iters": 4, "full_iters": 300, "save_every": 10})
    proc = start_job("run", manifest, "--workers", "2")
    seen, fitting = [], set()
    for line in proc.stdout:
        seen.append(line)
        found = re.match(r"\[(r0[01])\] .*full model: iteration (\d+)/300", line)
        if found and int(found.group(2)) > 1:
            fitting.add(found.group(1))
        if fitting == {"r00", "r01"}:
            break
    assert fitting == {"r00", "r01"}, "".join(seen[-20:])
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    code = proc.wait(timeout=120)
    assert code == 75, "".join(seen[-10:]) + rest[-3000:]
    assert time.monotonic() - t0 < 60
    for r in ("r00", "r01"):
        assert re.search(rf"\[{r}\] .*SIGTERM received", rest), rest[-3000:]
        assert re.search(rf"\[{r}\] .*full model stopped at iteration \d+ of 300", rest), rest[-3000:]
    assert "second SIGTERM" not in rest  # forwarded once: the workers saved their snapshots
    # the rerun resumes both fits from their snapshots (stopped there: the 300 iterations would take minutes)
    again = start_job("run", manifest, "--workers", "2")
    out, resumed = [], set()
    for line in again.stdout:
        out.append(line)
        found = re.match(r"\[(r0[01])\] .*full model: resuming from the snapshot at iteration [1-9]\d*", line)
        if found:
            resumed.add(found.group(1))
        if resumed == {"r00", "r01"} or "full model: iteration 1/" in line:
            break
    again.send_signal(signal.SIGTERM)
    out.append(again.stdout.read())
    assert again.wait(timeout=120) == 75, "".join(out)[-3000:]
    assert resumed == {"r00", "r01"}, "".join(out)[-3000:]

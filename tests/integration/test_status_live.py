"""``kpms-job status`` on a real job: while its AR-HMM fits, after a SIGKILL, and once a rerun has
finished it; and the log file each of the two runs left. One journey, shared by the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from jobs import ROOT, run_job, start_job, tiny_manifest

from kpms_job import runlog
from kpms_job.state import ORDER, state_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(manifest, *more) -> str:
    res = run_job("status", manifest, *more, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    # an AR-HMM far longer than the test waits: it is still fitting when status looks, then killed
    manifest = tiny_manifest(tmp, fitting={"arhmm_iters": 400, "full_iters": 6, "save_every": 2})
    seen = {"manifest": manifest, "project": tmp / "project"}
    proc = start_job("run", manifest)
    try:
        out = []
        for line in proc.stdout:  # the first progress line comes after the fit's first iteration
            out.append(line)
            if "AR-HMM: iteration" in line:
                break
        else:
            pytest.fail("the job ended before its AR-HMM fit began:\n" + "".join(out))
        seen["pid"] = proc.pid
        seen["live"], seen["live_json"] = _status(manifest), json.loads(_status(manifest, "--json"))
        proc.kill()  # SIGKILL: no handler runs, the lock and progress.json stay as they were
        proc.wait()
        seen["killed"], seen["killed_json"] = _status(manifest), json.loads(_status(manifest, "--json"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = yaml.safe_load(manifest.read_text())
    m["fitting"]["arhmm_iters"] = 6  # finish quickly now
    manifest.write_text(yaml.safe_dump(m))
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr
    seen["done"], seen["done_json"] = _status(seen["project"]), json.loads(_status(seen["project"], "--json"))
    return seen


def _line(text: str, stage: str) -> str:
    return next(x for x in text.splitlines()[1:] if x.split()[1:2] == [stage])


def test_a_fit_in_progress_shows_its_live_iteration(journey):
    text, s = journey["live"], journey["live_json"]
    assert text.startswith(f"{journey['project']}: RUNNING - host ")
    line = _line(text, "arhmm")
    assert line.split()[0] == "running" and "AR-HMM: iteration " in line and " of 400, kappa 1e+04" in line
    assert "s/iter" in line and "left" in line
    assert s["job"]["state"] == "running" and s["job"]["lock"]["pid"] == journey["pid"]
    arhmm = next(x for x in s["stages"] if x["key"] == "arhmm")
    assert arhmm["status"] == "running" and 1 <= arhmm["fit"]["iteration"] < 400 and arhmm["fit"]["total"] == 400
    assert [x["status"] for x in s["stages"]] == ["done"] * 3 + ["running"] + ["waiting"] * (len(ORDER) - 4)


def test_a_killed_job_shows_stopped_where_it_stopped_not_running(journey):
    text, s = journey["killed"], journey["killed_json"]
    assert "RUNNING" not in text and text.startswith(f"{journey['project']}: INTERRUPTED")
    assert "rerun the same command to continue" in text
    line = _line(text, "arhmm")
    assert line.split()[0] == "interrupted" and "stopped at AR-HMM: iteration " in line
    assert s["job"]["state"] == "interrupted" and s["job"]["lock"]["process_gone"] is True
    assert [x["status"] for x in s["stages"]][3] == "interrupted"


def test_a_finished_job_shows_every_stage_done_and_the_verdict(journey):
    text, s = journey["done"], journey["done_json"]
    summary = json.loads((journey["project"] / "summary.json").read_text())
    assert text.startswith(f"{journey['project']}: FINISHED")
    assert [x.split()[0] for x in text.splitlines()[1:1 + len(ORDER)]] == ["done"] * len(ORDER)
    lo, hi = summary["target_median_duration_ms"]
    where = "in the window" if summary["in_target_window"] else "OUTSIDE the window"
    assert (f"verdict: median syllable duration {summary['median_duration_ms']:.0f} ms, target {lo:g}-{hi:g} ms: "
            f"{where}") in text
    assert s["verdict"] == {k: summary[k] for k in ("median_duration_ms", "target_median_duration_ms",
                                                    "in_target_window")}
    assert [x["status"] for x in s["stages"]] == ["done"] * len(ORDER)
    assert all(x["seconds"] is not None for x in s["stages"])
    assert s["last_run"]["exit_code"] == 0 and s["log"] == s["last_run"]["log"]


def test_each_run_left_its_log_with_the_console_lines(journey):
    logs = sorted(runlog.log_dir(journey["project"]).glob("*-run.log"))
    assert len(logs) == 2
    killed, finished = (p.read_text() for p in logs)
    assert "INFO run   arhmm      AR-HMM fit" in killed and "INFO AR-HMM: iteration 1/400" in killed
    assert re.search(r"INFO exit \d", killed) is None  # a SIGKILL leaves no last line
    assert "INFO done  summary" in finished and finished.rstrip().endswith("INFO exit 0: done")
    assert "DEBUG" not in killed + finished
    assert runlog.read_last_run(state_dir(journey["project"]))["log"] == str(logs[1])


def test_status_of_a_real_project_imports_no_jax(journey):
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "kpms_job", "status", str(journey["manifest"])],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "kpms_job.status" in imported
    assert not {m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "keypoint_moseq", "jax_moseq")}

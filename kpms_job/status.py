"""``kpms-job status PROJECT_DIR_OR_MANIFEST [--json]``: what a job did and is doing, read from its files.

It reads only the project dir: the job state (``.kpms-job/state.json``, each restart's
``.kpms-job/restarts/rNN/state.json``), the locks with their heartbeats, the live progress the
running job publishes (``progress.json``, :mod:`kpms_job.liveprogress`), how the last run ended
(``last_run.json``, :mod:`kpms_job.runlog`) and ``summary.json``. So it works while a job runs and
from another machine on a shared filesystem, and it imports neither JAX nor keypoint-moseq (an
import contract in pyproject.toml holds it to that).

Whether a job runs is judged from its lock's heartbeat (refreshed every 20 s): fresh (at most
:data:`LIVE_S` old) is running, older is unresponsive, and older than the lock's own limit for
taking it over (120 s), or a holder on this host whose process has ended, is stopped: a lock left
behind means the job was killed. "done" is what the state records; whether a manifest edit makes
a stage run again is ``kpms-job plan``'s to say.

``--json`` prints one object:

- ``project_dir``; ``manifest``: the manifest given, else None;
- ``job``: ``state`` (``running``, ``unresponsive``, ``interrupted``, ``stalled``, ``failed``,
  ``finished``, ``stopped`` (some stages left, nothing running, no error recorded) or
  ``not started``), ``detail`` (one line), ``lock`` (the lock of the running or left job: ``host``,
  ``pid``, ``since``, ``heartbeat_age_s``, ``process_gone``; None without one);
- ``stages``: the plan in order, each ``key`` (``full_model@r01`` for a restart's), ``name``,
  ``restart`` (None or its index), ``status`` (``done``, ``running``, ``interrupted``, ``failed``,
  ``waiting``), ``seconds`` and ``finished_at`` (done), ``started_at`` (running, interrupted,
  failed), ``result`` (a done fit's ``kappa``,
  ``median_duration_ms``, ``iterations``), ``fit`` (running or interrupted fit: ``label``,
  ``iteration``, ``total``, ``kappa``, ``median_ms``, ``s_per_iter``, ``eta_s``, ``updated_at``,
  ``age_s``), ``error`` (failed or interrupted: the message);
- ``verdict``: once the summary is done, ``median_duration_ms``, ``target_median_duration_ms``
  ([min, max]) and ``in_target_window``; else None;
- ``last_run``: ``last_run.json`` of the project (command, task, exit_code, outcome, message,
  stage, started_at, finished_at, host, pid, log), or None;
- ``log``: the log of the running job (the newest), else of the last run; None without one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from . import liveprogress, runlog
from .errors import UsageError
from .state import STATE_DIR, JobState, ProjectLock, plan_keys, state_dir

#: A lock whose heartbeat (every ProjectLock.HEARTBEAT_S = 20 s) is at most this old: the job runs.
LIVE_S = 3 * ProjectLock.HEARTBEAT_S
_FAILED_OK = (0, 5)  # exit codes whose run finished its work


def resolve(target: str | Path) -> tuple[Path, str | None, int | None]:
    """(project dir, the manifest or None, its restarts or None) for a project dir or a manifest.

    A manifest is parsed, not validated (validation is ``kpms-job validate``'s): its
    ``project_dir`` resolves against its own folder, as ``kpms-job run`` resolves it."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path.resolve(), None, None
    if not path.exists():
        raise UsageError(f"status: {path} does not exist; expected a project dir (the manifest's project_dir) "
                         "or a manifest file")
    from .manifest_file import read_manifest_file

    data = read_manifest_file(path)
    if "apply" in data:
        raise UsageError(f"status: {path} is an apply manifest; status reads fitting projects. An apply's results "
                         "and summary are in <project_dir>/applied/<name>/ (summary.md)")
    project = Path(str(data.get("project_dir", "./project"))).expanduser()
    if not project.is_absolute():
        project = path.resolve().parent / project
    try:
        n = int(data.get("restarts", 1))
    except (TypeError, ValueError):
        n = None
    return project.resolve(), str(path.resolve()), n


def _not_a_project(project: Path) -> UsageError:
    if (project / STATE_DIR / "apply.json").exists():
        return UsageError(f"status: {project} holds the results of `kpms-job apply`, not a fitting project; "
                          "its summary.md says what was applied")
    return UsageError(
        f"status: {project} is not a kpms-job project: expected a folder with {STATE_DIR}/ (the job state that "
        "`kpms-job run` writes). Give the project_dir a manifest names, or the manifest itself; a job that has "
        "not started has no state yet")


def _lock(project: Path, restart: int | None) -> dict | None:
    """The lock of the project (or of one restart), judged by its heartbeat, or None."""
    lock = ProjectLock(project, restart=restart)
    holder = lock.describe()
    if holder is None:
        return None
    age = holder["heartbeat_age_s"]
    if holder["process_gone"] or age > lock.stale_after:
        holder["state"] = "stopped"
    elif age > LIVE_S:
        holder["state"] = "unresponsive"
    else:
        holder["state"] = "running"
    return holder


def _age(iso: str | None) -> float | None:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(iso).timestamp())
    except (TypeError, ValueError):
        return None


def _restart_count(project: Path, given: int | None, progress: dict | None, last_run: dict | None) -> int:
    """The job's restarts: the manifest's when given, else what the job published or left."""
    if given is not None:
        return given
    found = [1]
    for rec in (progress, last_run):
        if rec and isinstance(rec.get("restarts"), int):
            found.append(rec["restarts"])
    folders = (project / STATE_DIR / "restarts").glob("r[0-9][0-9]")
    found += [int(f.name[1:]) + 1 for f in folders if f.is_dir()]
    try:
        found.append(int(json.loads((project / "summary.json").read_text())["manifest"]["restarts"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return max(found)


def _result(info: dict) -> dict | None:
    keys = ("kappa", "median_duration_ms", "iterations")
    out = {k: info.get(k) for k in keys if info.get(k) is not None}
    return out or None


def _verdict(project: Path, state: JobState, restart_states: list[JobState]) -> dict | None:
    rec = state.stage("summary")
    if rec is None:
        return None
    try:
        s = json.loads((project / "summary.json").read_text())
        return {"median_duration_ms": s.get("median_duration_ms"),
                "target_median_duration_ms": s.get("target_median_duration_ms"),
                "in_target_window": s.get("in_target_window")}
    except (OSError, ValueError, AttributeError):
        pass
    full = state.stage("full_model")  # no summary.json to read: the state's own record
    sel = (state.stage("select") or {}).get("info", {}).get("selected")
    if sel is not None and sel < len(restart_states):
        full = restart_states[sel].stage("full_model")
    return {"median_duration_ms": (full or {}).get("info", {}).get("median_duration_ms"),
            "target_median_duration_ms": None, "in_target_window": rec.get("info", {}).get("in_target_window")}


def _run_record(records: list[dict | None], key: str, started_at: str | None) -> dict | None:
    """The run record (of the project or the restart) that ended while stage ``key`` ran."""
    for rec in records:
        if rec and rec.get("stage") == key and (started_at is None or (rec.get("finished_at") or "") >= started_at):
            return rec
    return None


def collect(target: str | Path) -> dict:
    """The status of the project ``target`` names (a project dir or a manifest); see the module doc."""
    project, manifest, given = resolve(target)
    base = project / STATE_DIR
    if not base.is_dir():
        if manifest is None:
            raise _not_a_project(project)
    elif not any((base / f).exists() for f in ("state.json", "state.json.bak", "lock", liveprogress.FILE,
                                               runlog.LAST_RUN, runlog.LOG_DIR)):
        raise _not_a_project(project)
    state = JobState(project)
    progress = {None: liveprogress.read(state_dir(project))}
    last_run = runlog.read_last_run(state_dir(project))
    n = _restart_count(project, given, progress[None], last_run)
    restart_states = [JobState(project, restart=i, parent=state) for i in range(n)] if n > 1 else []
    locks = {None: _lock(project, None)}
    runs = {None: last_run}
    for i in range(n if n > 1 else 0):
        progress[i] = liveprogress.read(state_dir(project, i))
        locks[i] = _lock(project, i)
        runs[i] = runlog.read_last_run(state_dir(project, i))

    stages = [_stage_row(name, r, state if r is None else restart_states[r], progress.get(r), locks.get(r),
                         [runs.get(r), runs[None]]) for name, r in plan_keys(n)]
    job = _job(stages, locks, runs)
    # the log of the run status speaks of: the running one's is the newest; else the last run's (with
    # restarts in workers, each worker writes one too, and the run's own has their lines as well)
    log = (last_run or {}).get("log")
    if job["state"] in ("running", "unresponsive") or not log or not Path(log).exists():
        log = runlog.latest(project)
    return {"project_dir": str(project), "manifest": manifest, "job": job, "stages": stages,
            "verdict": _verdict(project, state, restart_states), "last_run": last_run,
            "log": str(log) if log else None}


def _stage_row(name: str, r: int | None, st: JobState, prog: dict | None, lock: dict | None,
               runs: list[dict | None]) -> dict:
    """One stage of the plan: done as its state records it, or running / interrupted / failed
    where the progress its state dir holds names it (and it has not finished since it started)."""
    key = name if r is None else f"{name}@r{r:02d}"
    rec = st.data["stages"].get(name)
    row = {"key": key, "name": name, "restart": r, "status": "waiting", "seconds": None,
           "finished_at": None, "started_at": None, "result": None, "fit": None, "error": None}
    started = prog.get("started_at") if prog and prog.get("stage") == key else None
    if started is not None and (rec is None or (rec.get("finished_at") or "") < started):
        row["started_at"] = started
        if prog.get("fit"):
            row["fit"] = {**prog["fit"], "updated_at": prog.get("updated_at"), "age_s": _age(prog.get("updated_at"))}
        if lock is not None and lock["state"] != "stopped":
            row["status"] = "running"
            return row
        ended = _run_record(runs, key, started)
        code = ended.get("exit_code") if ended else None
        row["status"] = "failed" if code is not None and code not in (75, 76, *_FAILED_OK) else "interrupted"
        row["error"] = (ended or {}).get("message") or (
            "the job stopped without a word (killed, or its machine lost): rerun to continue"
            if lock is not None else "stopped here: rerun to continue")
    elif rec is not None:
        row.update(status="done", seconds=rec.get("seconds"), finished_at=rec.get("finished_at"),
                   result=_result(rec.get("info", {})) if name in ("arhmm", "full_model") else None)
    return row


def _job(stages: list[dict], locks: dict, runs: dict) -> dict:
    held = [x for x in locks.values() if x is not None]
    for kind in ("running", "unresponsive"):
        lock = next((x for x in held if x["state"] == kind), None)
        if lock is not None:
            detail = (f"host {lock['host']}, pid {lock['pid']}, since {lock['since']}, heartbeat "
                      f"{lock['heartbeat_age_s']:.0f} s ago")
            if kind == "unresponsive":
                detail += " (it may have stopped: it is judged stopped after 120 s)"
            return {"state": kind, "detail": detail, "lock": lock}
    done = sum(s["status"] == "done" for s in stages)
    failed = [s for s in stages if s["status"] == "failed"]
    left = [s for s in stages if s["status"] == "interrupted"]
    if failed:
        return {"state": "failed", "detail": f"{failed[0]['key']}: {failed[0]['error']}", "lock": None}
    if held:
        lock = held[0]
        why = "its process has ended" if lock["process_gone"] else f"no heartbeat for {lock['heartbeat_age_s']:.0f} s"
        where = f" in {left[0]['key']}" if left else ""
        return {"state": "interrupted", "lock": lock,
                "detail": f"the job (host {lock['host']}, pid {lock['pid']}) stopped{where} without finishing: {why}; "
                          "rerun the same command to continue"}
    if done == len(stages) and stages:
        return {"state": "finished", "detail": f"every stage done ({done})", "lock": None}
    recent = max((r for r in runs.values() if r), key=lambda r: r.get("finished_at") or "", default=None)
    code = recent.get("exit_code") if recent else None
    if code is not None and code not in _FAILED_OK:
        kind = {75: "interrupted", 76: "stalled"}.get(code, "failed")
        return {"state": kind, "lock": None, "detail": f"exit {code} ({recent.get('outcome')}) at "
                                                       f"{recent.get('finished_at')}: {recent.get('message')}"}
    if left:
        return {"state": "interrupted", "lock": None,
                "detail": f"stopped in {left[0]['key']}: rerun the same command to continue"}
    if done == 0:
        return {"state": "not started", "detail": "no stage done yet", "lock": None}
    return {"state": "stopped", "lock": None,
            "detail": f"{done} of {len(stages)} stages done, none running: rerun the same command to continue"}


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _fit_line(fit: dict, running: bool) -> str:
    parts = [f"{fit.get('label')}: iteration {fit.get('iteration')} of {fit.get('total')}"]
    if fit.get("kappa") is not None:
        parts.append(f"kappa {fit['kappa']:.3g}")
    if fit.get("median_ms") is not None:
        parts.append(f"median {fit['median_ms']:.0f} ms")
    if fit.get("s_per_iter") is not None:
        parts.append(f"{fit['s_per_iter']:.2f} s/iter")
    if running and fit.get("eta_s") is not None:
        parts.append(f"about {_seconds(fit['eta_s'])} left")
    if fit.get("age_s") is not None:
        parts.append(f"updated {_seconds(fit['age_s'])} ago")
    return ", ".join(parts)


def render(s: dict) -> str:
    """The status as lines for a person."""
    job = s["job"]
    lines = [f"{s['project_dir']}: {job['state'].upper()} - {job['detail']}"]
    for st in s["stages"]:
        label = st["name"] if st["restart"] is None else f"{st['name']} r{st['restart']:02d}"
        if st["status"] == "done":
            what = f"{st['seconds']:.1f} s" if st["seconds"] is not None else ""
            res = st["result"] or {}
            if res.get("kappa") is not None:
                what += f", kappa {res['kappa']:.3g}"
            if res.get("median_duration_ms") is not None:
                what += f", median {res['median_duration_ms']:.0f} ms"
        elif st["status"] == "running":
            what = _fit_line(st["fit"], True) if st["fit"] else f"started {_seconds(_age(st['started_at']))} ago"
        elif st["status"] in ("interrupted", "failed"):
            what = (f"stopped at {_fit_line(st['fit'], False)}; " if st["fit"] else "") + (st["error"] or "")
        else:
            what = ""
        lines.append(f"  {st['status']:<11} {label:<15} {what}".rstrip())
    v = s["verdict"]
    if v and v.get("median_duration_ms") is not None:
        window = v.get("target_median_duration_ms")
        target = f", target {window[0]:g}-{window[1]:g} ms" if window else ""
        where = {True: "in the window", False: "OUTSIDE the window"}.get(v.get("in_target_window"), "")
        lines.append(f"verdict: median syllable duration {v['median_duration_ms']:.0f} ms{target}: {where}")
    lr = s["last_run"]
    if lr:
        lines.append(f"last run: {lr.get('command')} exit {lr.get('exit_code')} ({lr.get('outcome')}), "
                     f"{lr.get('started_at')} to {lr.get('finished_at')} on {lr.get('host')}")
    if s["log"]:
        lines.append(f"log: {s['log']}")
    return "\n".join(lines)


def main(target: str, as_json: bool = False) -> int:
    s = collect(target)
    try:
        print(json.dumps(s, indent=1, default=str) if as_json else render(s), flush=True)
    except BrokenPipeError:  # `kpms-job status ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

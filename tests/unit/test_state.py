"""Job state (atomic writes, recovery, content fingerprints) and the project-dir lock."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kpms_job import state as S
from kpms_job.errors import EXIT_BUSY, EXIT_INTERRUPTED, LockHeld, OutputError
from kpms_job.state import JobState, ProjectLock, atomic_write_text, fingerprint, hash_file


@pytest.fixture
def warnings_seen(caplog):
    """Warnings of the kpms_job logger (it does not propagate once the CLI has set it up)."""
    logger = logging.getLogger("kpms_job")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="kpms_job")
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    logger.removeHandler(caplog.handler)


# ---------------------------------------------------------------- state file
def _state_with(project, **stages):
    st = JobState(project)
    for name, fp in stages.items():
        st.record_stage(name, fp, 1.0, {"outputs": []})
    return st


def test_state_round_trips_and_keeps_the_previous_copy(tmp_path):
    _state_with(tmp_path, ingest="a")
    _state_with(tmp_path, pca="b")  # a second save: the first file becomes the .bak
    again = JobState(tmp_path)
    assert again.stage("ingest")["fingerprint"] == "a" and again.stage("pca")["fingerprint"] == "b"
    bak = json.loads((tmp_path / ".kpms-job" / "state.json.bak").read_text())
    assert set(bak["stages"]) == {"ingest"}
    assert not list((tmp_path / ".kpms-job").glob("*.tmp"))


@pytest.mark.parametrize("damage", [lambda t: t[: len(t) // 2], lambda t: "", lambda t: "\x00" * 40,
                                    lambda t: "[1, 2]", lambda t: '{"version": 99}'],
                         ids=["truncated", "empty", "zeros", "not-a-mapping", "other-version"])
def test_a_damaged_state_file_falls_back_to_the_previous_copy(tmp_path, warnings_seen, damage):
    _state_with(tmp_path, ingest="a")
    _state_with(tmp_path, ingest="a", pca="b")
    path = tmp_path / ".kpms-job" / "state.json"
    path.write_text(damage(path.read_text()))
    st = JobState(tmp_path)  # no exception
    assert st.stage("ingest")["fingerprint"] == "a"
    assert any("previous copy" in w or "not a kpms-job state" in w for w in warnings_seen())
    assert any("recovered the job state" in w for w in warnings_seen())
    assert st.recovered  # the job's run saves it whole again at once, even with nothing to do


def test_both_copies_damaged_gives_an_empty_state_and_a_warning(tmp_path, warnings_seen):
    _state_with(tmp_path, ingest="a")
    _state_with(tmp_path, pca="b")
    for name in ("state.json", "state.json.bak"):
        (tmp_path / ".kpms-job" / name).write_text('{"stages": {"ingest": ')
    st = JobState(tmp_path)
    assert st.stage("ingest") is None and st.stage("pca") is None
    assert any("every stage is checked again" in w for w in warnings_seen())
    st.record_stage("ingest", "c", 0.0)  # and it can be written again
    assert JobState(tmp_path).stage("ingest")["fingerprint"] == "c"


def test_a_write_that_fails_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("old")

    def crash(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S.os, "replace", crash)
    with pytest.raises(OutputError, match="disk is full"):
        atomic_write_text(path, "new content")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


# ---------------------------------------------------------------- fingerprints
def test_file_hash_follows_content_not_mtime(tmp_path):
    f = tmp_path / "rec.csv"
    f.write_text("a,b\n1,2\n")
    before = hash_file(f)
    os.utime(f, (time.time() + 3600, time.time() + 3600))
    assert hash_file(f) == before
    f.write_text("a,b\n1,3\n")
    assert hash_file(f) != before


def test_fingerprints_are_stable_and_equal_numbers_hash_equally():
    a = fingerprint({"model": {"kappa": 1e6, "seed": 0}, "list": [1, 2]})
    assert a == fingerprint({"list": [1, 2], "model": {"seed": 0, "kappa": 1000000}})  # order, 1e6 == 1000000
    assert a != fingerprint({"model": {"kappa": 1e5, "seed": 0}, "list": [1, 2]})
    assert a != fingerprint({"model": {"kappa": 1e6, "seed": 0}, "list": [2, 1]})
    # stable across processes (hash randomisation must not leak in)
    code = ("from kpms_job.state import fingerprint; "
            "print(fingerprint({'model': {'kappa': 1e6, 'seed': 0}, 'list': [1, 2]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONHASHSEED="123")).stdout.strip()
    assert out == a


# ---------------------------------------------------------------- lock
HOLDER = textwrap.dedent("""
    import sys, time
    from kpms_job.state import ProjectLock
    lock = ProjectLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    hold = float(sys.argv[2])
    if hold < 0:
        sys.stdin.read()      # hold until the test closes stdin
    else:
        time.sleep(hold)
    lock.release()
    print("released", flush=True)
""")


def _holder(project, hold=-1.0):
    """A separate process that takes the lock on ``project`` and holds it."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(project), str(hold)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _write_lock(project, **fields):
    path = project / ".kpms-job" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    return path


def test_second_job_on_the_same_dir_gets_lockheld_naming_host_pid_since(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(LockHeld) as exc:
            ProjectLock(tmp_path).acquire()
        assert exc.value.exit_code == EXIT_BUSY == 77
        text = str(exc.value)
        assert socket.gethostname() in text and f"pid {p.pid}" in text and "since 20" in text
        assert "--wait" in text
    finally:
        p.stdin.close()
        p.wait(10)
    # once the holder released, the dir is free again and its lock file is gone
    assert not (tmp_path / ".kpms-job" / "lock").exists()
    lock = ProjectLock(tmp_path)
    lock.acquire()
    lock.release()


def test_wait_queues_behind_the_holder_until_it_releases(tmp_path):
    p = _holder(tmp_path, hold=1.5)
    t0 = time.monotonic()
    lock = ProjectLock(tmp_path)
    lock.acquire(wait=True, poll=0.05)
    waited = time.monotonic() - t0
    try:
        assert p.stdout.readline().strip() == "released"  # it got the lock only after the release
        assert 0.5 < waited < 30
        assert json.loads((tmp_path / ".kpms-job" / "lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        p.wait(10)


def test_stale_lock_of_a_dead_process_is_recovered(tmp_path, warnings_seen):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, since="2020-01-01T00:00:00+00:00",
                created=time.time() - 5, heartbeat=time.time())
    lock = ProjectLock(tmp_path)
    lock.acquire()
    try:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert any("recovered a stale lock" in w and str(dead.pid) in w for w in warnings_seen())
    finally:
        lock.release()


def test_lock_of_another_host_is_kept_while_it_beats_and_recovered_when_it_stops(tmp_path):
    path = _write_lock(tmp_path, host="node-that-is-not-here", pid=4242, since="2020-01-01T00:00:00+00:00",
                       heartbeat=time.time() - 5)
    with pytest.raises(LockHeld, match="node-that-is-not-here, pid 4242"):
        ProjectLock(tmp_path, stale_after=120).acquire()
    assert path.exists()
    _write_lock(tmp_path, host="node-that-is-not-here", pid=4242, since="2020-01-01T00:00:00+00:00",
                heartbeat=time.time() - 600)
    lock = ProjectLock(tmp_path, stale_after=120)
    lock.acquire()
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    lock.release()


def test_a_lock_file_being_written_is_not_taken_over(tmp_path):
    """O_EXCL creates the file before its content is written: a reader can see it empty.

    Taking such a lock over let two jobs start on one project dir (seen with 8 jobs
    racing for a stale lock). Its age decides instead: fresh is held, old is stale.
    """
    path = _write_lock(tmp_path)
    path.write_text("")
    with pytest.raises(LockHeld, match="being written or is unreadable"):
        ProjectLock(tmp_path).acquire()
    old = time.time() - 1000
    os.utime(path, (old, old))
    lock = ProjectLock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_lock_left_by_an_earlier_process_with_our_pid_is_stale(tmp_path):
    """A restarted container runs the job under the same pid (and host name) as before."""
    # created well before this process started (a test session may run for more than an hour)
    _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), since="2020-01-01T00:00:00+00:00",
                created=time.time() - 30 * 86400, heartbeat=time.time())
    lock = ProjectLock(tmp_path)
    lock.acquire()
    try:  # while this process holds it, a second acquire (same pid) is refused
        with pytest.raises(LockHeld):
            ProjectLock(tmp_path).acquire()
    finally:
        lock.release()


def test_a_stale_lock_replaced_meanwhile_is_put_back(tmp_path):
    """Recoverer A judged lock X stale; before A removes it, B replaced X by its own fresh lock.

    A must not remove B's lock (the rename-away-then-check that ``_take_over`` does).
    """
    stale = json.dumps({"host": "gone", "pid": 1, "since": "x", "heartbeat": 0})
    path = _write_lock(tmp_path, host="b-host", pid=77, since="now", heartbeat=time.time())
    ProjectLock(tmp_path)._take_over(stale, json.loads(stale))
    assert json.loads(path.read_text())["host"] == "b-host"
    assert [p.name for p in path.parent.iterdir()] == ["lock"]


RACER = textwrap.dedent("""
    import sys, time
    from kpms_job.errors import LockHeld
    from kpms_job.state import ProjectLock
    lock = ProjectLock(sys.argv[1])
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        lock.acquire()
    except LockHeld:
        print("refused", flush=True)
    else:
        print("won", flush=True)
        sys.stdin.read()  # hold until every racer has answered
        lock.release()
""")


@pytest.mark.parametrize("round_", range(3))  # a lost race shows up in some rounds only
def test_many_jobs_racing_for_a_stale_lock_exactly_one_wins(tmp_path, round_):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, since="x", heartbeat=time.time())
    start = time.time() + 1.0
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(6)]
    try:
        results = [r.stdout.readline().strip() for r in racers]
    finally:
        for r in racers:
            r.stdin.close()
            r.wait(30)
    assert sorted(results) == ["refused"] * 5 + ["won"], results
    assert not (tmp_path / ".kpms-job" / "lock.takeover").exists()


def test_a_takeover_claim_left_by_a_dead_recoverer_does_not_block_recovery(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, since="x", heartbeat=time.time())
    claim = tmp_path / ".kpms-job" / "lock.takeover"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "created": time.time()}))
    lock = ProjectLock(tmp_path)
    lock.acquire()
    try:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert not claim.exists()
    finally:
        lock.release()


def test_heartbeat_refreshes_the_lock_and_stops_when_another_job_took_over(tmp_path, monkeypatch):
    monkeypatch.setattr(ProjectLock, "HEARTBEAT_S", 0.05)
    lock = ProjectLock(tmp_path)
    lock.acquire()
    try:
        first = json.loads(lock.path.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(lock.path.read_text())["heartbeat"] > first
        # the other job beats too: a beat of ours that read the lock just before the takeover
        # may replace it once (write-over-rename), and the next beat of the other job restores it
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            lock.path.write_text(json.dumps({"host": "other", "pid": 1, "since": "x", "heartbeat": time.time()}))
            time.sleep(0.1)
        assert lock.lost
        assert json.loads(lock.path.read_text())["host"] == "other"  # not overwritten by our beat
    finally:
        lock.release()
    assert lock.path.exists()  # release leaves another job's lock alone


# ---------------------------------------------------------------- a lock taken over
def test_state_writes_stop_once_another_job_took_the_lock_over(tmp_path, monkeypatch):
    from kpms_job.errors import LockLost

    monkeypatch.setattr(ProjectLock, "HEARTBEAT_S", 0.05)
    lock = ProjectLock(tmp_path)
    lock.acquire()
    try:
        state = JobState(tmp_path, lock=lock)
        state.put("before", 1)
        lock.path.write_text(json.dumps({"host": "other", "pid": 4242, "since": "x", "heartbeat": time.time()}))
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LockLost, match=r"another job took over .* \(host other, pid 4242\)") as err:
            state.put("after", 2)
        assert err.value.exit_code == EXIT_INTERRUPTED
        assert json.loads(state.path.read_text())["extra"] == {"before": 1}
    finally:
        lock.release()


def test_a_fit_stops_before_the_snapshot_of_the_iteration_in_which_the_lock_was_lost(job, monkeypatch):
    """The Gibbs loop polls ``should_stop`` after each iteration, before that iteration's snapshot:
    a lost lock raises there, so the other job's checkpoint gets no snapshot from this one."""
    import types

    import kpms_job
    from kpms_job import manifest, pipeline
    from kpms_job.errors import LockLost
    from kpms_job.fitting import chain as fitting

    snapshots = []
    lock = ProjectLock(job.parent / "project")

    def run_gibbs(model, data, metadata, pd, name, *, start_iter, num_iters, should_stop, on_iteration, **kw):
        for it in range(start_iter + 1, num_iters + 1):
            on_iteration(it, model)
            if it == 3:  # what the heartbeat thread does when it finds another job's lock
                lock.taken_by, lock.lost = {"host": "other", "pid": 4242}, True
            stopping = bool(should_stop())
            snapshots.append(it)  # the adapter saves on a stop, at save_every and at the end
            if stopping:
                return model, it, False
        return model, num_iters, True

    import contextlib

    import kpms_job.kpms

    fake = types.SimpleNamespace(run_gibbs=run_gibbs, median_duration_ms=lambda *a: 300.0,
                                 model_kappa=lambda model: 1e4,  # published as the fit's progress
                                 out_of_memory_is_fit_error=contextlib.nullcontext)
    monkeypatch.setitem(sys.modules, "kpms_job.kpms.gibbs", fake)
    monkeypatch.setattr(kpms_job.kpms, "gibbs", fake, raising=False)
    def settings(ctx):
        ctx.cache["kalman_scan"] = False  # a CPU's, as fitting.settings records it
        return {"parallel_message_passing": False}

    monkeypatch.setattr(fitting, "settings", settings)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(job.parent / "jax-cache"))
    for st in pipeline.STAGES:
        monkeypatch.setattr(st.module, "run", lambda ctx: {"fps": 30.0})
    monkeypatch.setattr(pipeline.BY_NAME["arhmm"].module, "run", lambda ctx: fitting.fit_chain(
        ctx, "kpms_job_arhmm", "key", lambda: ({}, {}, {}), 6, ar_only=True, label="AR-HMM") and {})
    m = manifest.load(job)
    lock.acquire()
    try:
        state = JobState(m["project_dir"], lock=lock)
        with pytest.raises(LockLost):
            pipeline.run(m, state)
    finally:
        lock.release()
    assert snapshots == [1, 2]
    assert "arhmm" not in JobState(m["project_dir"]).data["stages"]


TAKEN_OVER = textwrap.dedent("""
    import json, sys, time
    from kpms_job import pipeline
    from kpms_job.cli import main
    from kpms_job.state import ProjectLock
    ProjectLock.HEARTBEAT_S = 0.05
    ran = []

    def stage(name):
        def run(ctx):
            ran.append(name)
            if name == "pca":  # another host judges this job stale, takes the project over and beats
                # (as a real job does, until this one has seen it: on a loaded machine one second
                # of beats may pass before this job's heartbeat thread runs)
                deadline = time.time() + 60
                while not ctx.state.lock.lost and time.time() < deadline:
                    (ctx.project_dir / ".kpms-job" / "lock").write_text(json.dumps(
                        {"host": "other-host", "pid": 4242, "since": "x", "created": 1.0, "heartbeat": time.time()}))
                    time.sleep(0.05)
                (ctx.project_dir / ".kpms-job" / "lock").write_text(json.dumps(
                    {"host": "other-host", "pid": 4242, "since": "x", "created": 1.0, "heartbeat": time.time()}))
            return {}
        return run

    for st in pipeline.STAGES:
        st.module.run = stage(st.name)
    code = main(["run", sys.argv[1]])
    print("RAN", *ran)
    sys.exit(code)
""")


def test_a_job_whose_lock_was_taken_over_exits_75_and_leaves_the_project_to_the_other(job):
    res = subprocess.run([sys.executable, "-c", TAKEN_OVER, str(job)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, NO_COLOR="1", KPMS_JOB_WATCHDOG_S="0"))
    assert res.returncode == EXIT_INTERRUPTED, res.stdout + res.stderr
    assert "RAN ingest outliers pca\n" in res.stdout
    assert "another job took over" in res.stderr and "other-host" in res.stderr
    project = job.parent / "project" / ".kpms-job"
    assert set(json.loads((project / "state.json").read_text())["stages"]) == {"ingest", "outliers"}
    assert json.loads((project / "lock").read_text())["host"] == "other-host"  # left to its holder

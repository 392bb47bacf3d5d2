"""Stall watchdog: a job that stops making progress says where, keeps its work and exits 76.

Why: jaxlib's CPU LAPACK kernels can deadlock XLA:CPU's thread pool (see
:func:`kpms_job.resources.model.kalman_scan_allowed`); a deadlocked process sits at 0% CPU forever and,
on a cluster, burns its whole allocation printing nothing. The job avoids the known cause, and
this thread makes any other hang visible and bounded.

Progress is what the code reports with :func:`progress`: a stage starting or ending, a Gibbs
iteration completing, a snapshot saved. The limit without progress:

- in a fit whose iteration time is known (any iteration after the first one this process ran
  of that fit, which includes XLA's compile): ``max(KPMS_JOB_WATCHDOG_S, 20 x`` the slowest
  such iteration``)``;
- otherwise (the first iteration of a fit, a stage without inner progress such as PCA or the
  figures): ``max(4 x KPMS_JOB_WATCHDOG_S, 600)`` seconds.

``KPMS_JOB_WATCHDOG_S`` defaults to 600 (10 minutes); ``0`` turns the watchdog off. When the limit passes,
the watchdog thread (the main thread is stuck, typically in native code) logs where the job is
stuck: the last progress, the Python stack of every thread (``faulthandler``) and the native
stacks (``gdb -batch -p PID``, else each thread's kernel wait channel from
``/proc/PID/task/*/wchan``), also written to ``.kpms-job/stall-<time>.txt``. It then records the
stall in the job state (after any state or checkpoint write in progress: :func:`signals.critical`),
releases the project lock and ends the process with :data:`~kpms_job.errors.EXIT_STALLED` (76).
The newest snapshot stays on disk, so a rerun continues from it, like after an interruption.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import runlog, signals
from .errors import EXIT_STALLED

log = logging.getLogger("kpms_job")

#: A fit is stuck after this many times its slowest timed iteration (and at least the floor).
ITERATION_FACTOR = 20.0
#: Before an iteration time is known: this many times the floor, and at least UNKNOWN_MIN_S.
UNKNOWN_FACTOR = 4.0
UNKNOWN_MIN_S = 600.0
DEFAULT_S = 600.0

_mutex = threading.Lock()
_state = {"last": time.monotonic(), "where": "start", "fit": None, "fit_iters": 0, "slowest": None}
_job = {"state": None, "lock": None}
_thread: threading.Thread | None = None
_stop = threading.Event()


def floor_seconds() -> float:
    """``KPMS_JOB_WATCHDOG_S`` (default 600); 0 or less: off."""
    try:
        return float(os.environ.get("KPMS_JOB_WATCHDOG_S", DEFAULT_S))
    except ValueError:
        return DEFAULT_S


def progress(where: str, iteration: bool = False) -> None:
    """A unit of progress happened (``where`` names it, e.g. ``iter:kpms_job:5``)."""
    now = time.monotonic()
    with _mutex:
        if iteration and _state["fit"] is not None:
            _state["fit_iters"] += 1
            if _state["fit_iters"] > 1:  # the first one this process ran includes XLA's compile
                took = now - _state["last"]
                _state["slowest"] = max(_state["slowest"] or 0.0, took)
        _state["last"], _state["where"] = now, where


@contextlib.contextmanager
def fit(name: str):
    """A Gibbs chain runs (or resumes) in this process: its iteration times are not known yet,
    and its iterations (reported with ``progress(..., iteration=True)``) time it."""
    with _mutex:
        _state.update(fit=name, fit_iters=0, slowest=None, last=time.monotonic(), where=f"fit-start:{name}")
    try:
        yield
    finally:
        with _mutex:
            _state.update(fit=None, fit_iters=0, slowest=None, last=time.monotonic())


def allowance() -> tuple[float, str]:
    """Seconds without progress before the job counts as stuck, and how that was decided."""
    floor = floor_seconds()
    with _mutex:
        slowest = _state["slowest"] if _state["fit"] is not None else None
    if slowest is not None:
        return (max(floor, ITERATION_FACTOR * slowest),
                f"max({floor:.0f} s, {ITERATION_FACTOR:.0f} x the slowest iteration, {slowest:.1f} s)")
    return (max(UNKNOWN_FACTOR * floor, UNKNOWN_MIN_S),
            f"no iteration time known yet: max({UNKNOWN_FACTOR:.0f} x {floor:.0f} s, {UNKNOWN_MIN_S:.0f} s)")


def start(state=None, lock=None, poll: float | None = None) -> None:
    """Watch this process (call once the project lock is held); idempotent. Off when the floor is 0."""
    global _thread
    _job.update(state=state, lock=lock)
    if floor_seconds() <= 0 or (_thread is not None and _thread.is_alive()):
        return
    with _mutex:
        _state.update(last=time.monotonic(), where="job start")
    _stop.clear()
    period = poll if poll is not None else max(0.2, min(5.0, floor_seconds() / 10))
    _thread = threading.Thread(target=_watch, args=(period,), name="kpms-job-watchdog", daemon=True)
    _thread.start()


def stop() -> None:
    _stop.set()


def _watch(period: float) -> None:
    while not _stop.wait(period):
        limit, why = allowance()
        with _mutex:
            idle, where = time.monotonic() - _state["last"], _state["where"]
        if idle > limit:
            _stalled(idle, limit, why, where)


# --------------------------------------------------------------------------- when stuck
def _native_stacks(pid: int) -> tuple[str, str]:
    """(how, text): gdb's backtrace of every thread, else each thread's kernel wait channel."""
    gdb = shutil.which("gdb")
    if gdb:
        try:
            _allow_ptrace()
            # gdb stops every thread of this process, this one included: its output goes to a file,
            # never to a pipe that this (stopped) thread would have to drain
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errs:
                subprocess.run([gdb, "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt 40"],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=errs, timeout=120)
                out.seek(0)
                errs.seek(0)
                text, problem = out.read(), errs.read()
            if "Thread " in text:
                return "gdb", text
            log.warning("gdb gave no stacks (%s); falling back to /proc wait channels",
                        (problem.strip().splitlines() or ["no message"])[-1])
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("gdb failed (%s); falling back to /proc wait channels", exc)
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda p: int(p.name)):
        try:
            comm = (task / "comm").read_text().strip()
            wchan = (task / "wchan").read_text().strip() or "-"
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        lines.append(f"  thread {task.name:>8} {comm:<16} state {state} waiting in {wchan}")
    return "/proc wait channels (no gdb)", "\n".join(lines)


def _allow_ptrace() -> None:
    """Let our gdb child attach to us under Yama's ptrace_scope 1 (PR_SET_PTRACER_ANY)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _stalled(idle: float, limit: float, why: str, where: str) -> None:
    pid = os.getpid()
    try:
        log.error("STUCK: no progress for %.0f s (limit %.0f s: %s); the last progress was %s. "
                  "Stacks of every thread follow; then the job exits %d with its last snapshot kept "
                  "(a rerun continues from it).", idle, limit, why, where, EXIT_STALLED)
        for h in log.handlers:
            h.flush()
        sys.stderr.write("---- Python stacks (faulthandler) ----\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        how, native = _native_stacks(pid)
        sys.stderr.write(f"---- native stacks ({how}) ----\n{native}\n---- end of stacks ----\n")
        sys.stderr.flush()
        state = _job["state"]
        if state is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            try:
                path = Path(state.dir) / f"stall-{stamp}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w") as fh:
                    fh.write(f"no progress for {idle:.0f} s (limit {limit:.0f} s: {why}); last progress: {where}\n"
                             "---- Python stacks ----\n")
                    fh.flush()
                    faulthandler.dump_traceback(file=fh, all_threads=True)
                    fh.write(f"---- native stacks ({how}) ----\n{native}\n")
                log.error("stacks written to %s", path)
            except OSError as exc:
                log.warning("could not write the stacks file: %s", exc)
        # never cut a checkpoint or state write short: wait for it (a write that hangs itself
        # is given up on after 60 s; the fallback to the previous snapshot covers that)
        signals.enter_critical(timeout=60)  # held until the exit: nothing may start a write now
        try:
            if state is not None:
                stalls = list(state.get("stalls", []))[-9:]
                stalls.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "where": where,
                               "seconds_without_progress": round(idle, 1), "limit_s": round(limit, 1)})
                state.put("stalls", stalls)
        except Exception as exc:  # noqa: BLE001 - exiting matters more than this record
            log.warning("could not record the stall in the job state: %s", exc)
        lock = _job["lock"]
        if lock is not None:
            try:
                lock.release()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not release the project lock: %s", exc)
        log.error("exiting %d: stuck after %s; rerun the same command to continue from the last snapshot",
                  EXIT_STALLED, where)
        for h in log.handlers:
            h.flush()
        runlog.finish(EXIT_STALLED, f"no progress for {idle:.0f} s after {where}")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(EXIT_STALLED)

"""Each run's log file in the project dir, and the record of how the run ended.

``kpms-job run`` (and ``apply``, in its ``applied/<name>/``) writes the lines the console shows off
a terminal (timestamped, INFO and above, also under ``--debug``) to
``<dir>/.kpms-job/logs/<UTC start YYYYmmddTHHMMSSZ>-<command>[-task<T>].log``, from the moment the
manifest is checked and the project dir may be created, so that the log of a job in a container or
on a cluster stays with its results. At start the folder keeps the :data:`KEEP` newest logs and
deletes older ones, except logs still being written: a running job touches its log every
:data:`TOUCH_S` seconds, and a log touched within :data:`LIVE_S` is never deleted (tasks of one
project dir, array tasks or workers, start logs of their own side by side).

When the run ends, :func:`finish` adds a last line with the exit code to the log and writes
``last_run.json`` beside the job state (a restart's task: in its restart's state dir): command,
task, manifest, started_at, finished_at, exit_code, outcome, message, stage (the stage that was
running), host, pid, log. ``kpms-job status`` shows a failed run from it. A run that found the
project dir busy (exit 77) did nothing there: it leaves no record and removes its log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from . import liveprogress
from .state import now_iso, state_dir

log = logging.getLogger("kpms_job")

LOG_DIR = "logs"
LAST_RUN = "last_run.json"
#: Logs kept in a project dir (the newest by start time).
KEEP = 20
#: A running job refreshes its log's mtime this often, so rotation can tell it is live.
TOUCH_S = 60.0
#: A log modified this recently belongs to a running job: never deleted (covers clock skew too).
LIVE_S = 600.0

OUTCOMES = {0: "done", 1: "failed (unexpected error)", 2: "failed (manifest or usage error)",
            3: "failed (input data error)", 4: "failed (out of memory)",
            5: "done, kappa tuning missed the target window", 73: "failed (project dir not writable or full)",
            75: "interrupted", 76: "stalled", 77: "busy"}

# this process's run: its log file and handler, and what finish() records
_run: dict = {}


def log_dir(project_dir: str | Path) -> Path:
    return state_dir(project_dir) / LOG_DIR


def _order(path: Path) -> tuple[str, int]:
    """Logs by start: the UTC stamp, then the number a second log of the same second got."""
    found = re.search(r"-(\d+)\.log$", path.name)
    return path.name[:16], int(found.group(1)) if found else 1


def rotate(folder: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` newest logs in ``folder`` (by the start time in their names),
    except those written within LIVE_S seconds; return the deleted ones."""
    import time

    logs = sorted(folder.glob("*.log"), key=_order, reverse=True)
    gone = []
    for p in logs[keep:]:
        try:
            if time.time() - p.stat().st_mtime < LIVE_S:
                continue
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone


def start(project_dir: str | Path, command: str, task=None, manifest: str | None = None,
          state_folder: str | Path | None = None, **record) -> Path | None:
    """Start this run's log in ``project_dir`` (created if missing); None when it cannot be written
    (the job itself then reports the unwritable project dir). ``state_folder``: where
    ``last_run.json`` goes (default: the project's state dir); ``record``: more for it."""
    stop()
    folder = log_dir(project_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{command}" + ("" if task is None else f"-task{task}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rotate(folder, KEEP - 1)  # with this run's own: KEEP
        path = folder / f"{name}.log"
        n = 1
        while True:  # two runs started in one second get a log each
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                n += 1
                path = folder / f"{name}-{n}.log"
        os.close(fd)
        handler = _LogFile(path, encoding="utf-8")
    except OSError as exc:
        log.debug("no log file in %s: %s", folder, exc)
        return None
    from .console import plain_formatter

    handler.setFormatter(plain_formatter())
    handler.setLevel(logging.INFO)  # as the console without --debug: the log is for people
    logging.getLogger("kpms_job").addHandler(handler)
    halt = threading.Event()
    threading.Thread(target=_touch, args=(path, halt), name="kpms-job-log-touch", daemon=True).start()
    _run.update(path=path, handler=handler, halt=halt,
                folder=Path(state_folder) if state_folder is not None else state_dir(project_dir),
                record={"command": command, "task": task, "manifest": manifest, "started_at": now_iso(),
                        "host": socket.gethostname(), "pid": os.getpid(), "log": str(path), **record})
    return path


class _LogFile(logging.FileHandler):
    """The log file; it remembers the last error logged, the message a failed run records when it
    ends with a code and no exception (a worker that failed, kappa tuning that missed)."""

    last_error: str | None = None
    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last_error = record.getMessage()
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # a full disk or a folder gone read-only: the job says so itself (exit 73); the console
        # keeps every line, so the file stops here instead of printing a traceback for each line
        self.broken = True
        import sys

        sys.stderr.write(f"kpms-job: cannot write the log file {self.baseFilename} any more; "
                         "the console has every line\n")


def _touch(path: Path, halt: threading.Event) -> None:
    while not halt.wait(TOUCH_S):
        try:
            os.utime(path)
        except OSError:
            return


def current() -> Path | None:
    """This process's log file, or None."""
    return _run.get("path")


def latest(project_dir: str | Path) -> Path | None:
    """The newest log of ``project_dir``: this process's own when it writes one there (a report
    written by the run links to that run's log), else the one that started last; None if none."""
    folder = log_dir(project_dir)
    mine = current()
    if mine is not None and mine.parent.resolve() == folder.resolve():
        return mine
    logs = sorted(folder.glob("*.log"), key=_order)
    return logs[-1] if logs else None


def echo(text: str) -> None:
    """Lines the console got from elsewhere (a worker's, passed on with its prefix), as they are:
    they carry their own timestamps. Nothing without a log."""
    handler = _run.get("handler")
    if handler is None or handler.broken:
        return
    handler.acquire()
    try:
        handler.stream.write(text if text.endswith("\n") else text + "\n")
        handler.stream.flush()
    except (OSError, ValueError):
        handler.broken = True
    finally:
        handler.release()


def finish(code: int, message: str | None = None) -> None:
    """The run ends with exit ``code``: a last log line, ``last_run.json``, the log closed.
    ``message``: why it failed (default: the last error it logged). Nothing happens when no log
    was started (a manifest error before the project dir)."""
    if not _run:
        return
    path, handler, record = _run["path"], _run["handler"], dict(_run["record"])
    if message is None and code != 0:
        message = handler.last_error
    outcome = OUTCOMES.get(code, "failed")
    if code == 77:  # busy: it did nothing in the project dir, and its log would push a real one out
        stop()
        try:
            path.unlink()
        except OSError:
            pass
        return
    line = f"exit {code}: {outcome}" + (f": {message}" if message and code != 5 else "")
    if not handler.broken:  # to the file only: the console has said it its own way
        level = logging.INFO if code in (0, 5) else logging.ERROR
        logging.FileHandler.emit(handler, logging.LogRecord("kpms_job", level, __file__, 0, line, None, None))
    stage = liveprogress.current()
    record.update(finished_at=now_iso(), exit_code=code, outcome=outcome, message=message,
                  stage=stage["stage"] if stage else None)
    folder = _run["folder"]
    stop()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{LAST_RUN}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, folder / LAST_RUN)
    except OSError as exc:  # the exit code and the console said it already
        log.debug("could not record the run in %s: %s", folder, exc)


def stop() -> None:
    """Close this process's log (without a record)."""
    if not _run:
        return
    _run["halt"].set()
    handler = _run["handler"]
    logging.getLogger("kpms_job").removeHandler(handler)
    handler.close()
    _run.clear()


def read_last_run(folder: str | Path) -> dict | None:
    """``last_run.json`` of state dir ``folder``, or None."""
    try:
        data = json.loads((Path(folder) / LAST_RUN).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

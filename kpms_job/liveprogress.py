"""The running job's live progress, published for ``kpms-job status`` as a small JSON file.

Why a file: status has to work while a job runs, also from another machine on a shared
filesystem, where neither the job's memory nor its process can be seen. Each state dir (the
project's ``.kpms-job/``, a restart's ``.kpms-job/restarts/rNN/``) gets ``progress.json``, written
whole when a stage starts and, during a fit, from the iteration hook at most every
:data:`EVERY_S` seconds. It is replaced atomically (temp file, rename), so a reader sees the old or
the new file, never half of one; it is not fsynced, since a lost update costs nothing (the lock's
heartbeat and the job state tell that a job stopped). Publishing never stops a job: a write that
fails is skipped.

Fields: ``stage`` (the stage key, ``full_model@r01`` for a restart's), ``name``, ``restart``,
``title``, ``started_at`` (when the stage started, ISO UTC), ``updated_at`` (ISO UTC) and
``updated`` (epoch seconds), ``host``, ``pid``, ``restarts`` (the job's number of restarts), and
during a fit ``fit``: ``label``, ``iteration``, ``total``, ``kappa``, ``median_ms`` (when the fit
measures it: kappa tuning does, each iteration), ``s_per_iter``, ``eta_s`` (seconds to ``total``;
a tuned fit may end earlier).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .state import now_iso

log = logging.getLogger("kpms_job")

FILE = "progress.json"
#: At most one write per this many seconds during a fit (the first iteration is written at once).
EVERY_S = 2.0

# the stage this process runs now, and the state dir it is published in
_current: dict = {}


def _write(folder: Path, data: dict) -> None:
    path = Path(folder) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not publish progress to %s: %s", path, exc)


def stage_started(folder: str | Path, name: str, restart: int | None, title: str, restarts: int = 1) -> None:
    """A stage starts; ``folder``: the state dir it records into."""
    stage = name if restart is None else f"{name}@r{restart:02d}"
    _current.clear()
    _current.update(folder=str(folder), record={
        "stage": stage, "name": name, "restart": restart, "title": title, "restarts": restarts,
        "started_at": now_iso(), "host": socket.gethostname(), "pid": os.getpid()})
    _write(Path(folder), {**_current["record"], "updated_at": now_iso(), "updated": time.time(), "fit": None})


def stage_ended() -> None:
    """The stage is done: a failure from here on is not its (the file keeps it for status, which
    reads in the job state that it is done)."""
    _current.clear()


def current() -> dict | None:
    """The stage this process runs, as published, or None."""
    return dict(_current["record"]) if _current else None


class FitProgress:
    """A fit's iterations, published into the state dir ``folder`` (see the module doc)."""

    def __init__(self, folder: str | Path, label: str):
        self.folder, self.label = Path(folder), label
        self.last_write: float | None = None
        self.pending: dict | None = None

    def update(self, it: int, total: int, s_per_iter: float, **extra) -> None:
        fit = {"label": self.label, "iteration": it, "total": total, "s_per_iter": round(s_per_iter, 4),
               "eta_s": round(max(0, total - it) * s_per_iter, 1), "kappa": None, "median_ms": None}
        fit.update(extra)
        self.pending = fit
        now = time.monotonic()
        if self.last_write is None or now - self.last_write >= EVERY_S or it >= total:
            self.flush()

    def flush(self) -> None:
        """Write the newest iteration now (the fit ends, or stops)."""
        if self.pending is None:
            return
        base = current() if _current.get("folder") == str(self.folder) else None
        base = base or {"stage": None, "host": socket.gethostname(), "pid": os.getpid()}
        _write(self.folder, {**base, "updated_at": now_iso(), "updated": time.time(), "fit": self.pending})
        self.last_write, self.pending = time.monotonic(), None


def read(folder: str | Path) -> dict | None:
    """The progress published in state dir ``folder``, or None (none yet, or unreadable)."""
    try:
        data = json.loads((Path(folder) / FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

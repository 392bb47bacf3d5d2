"""Job state: atomic JSON writes, stage fingerprints and the project-dir lock.

The state lives in ``<project_dir>/.kpms-job/``. It is written with
write-to-temp-then-rename, so a hard kill leaves either the old or the new file,
never half of one; a copy of the previous good state is kept as ``state.json.bak``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from .errors import LockHeld, OutputError

log = logging.getLogger("kpms_job")

STATE_DIR = ".kpms-job"
STATE_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def output_error(exc: OSError, path) -> OutputError:
    """Turn an OSError while writing into a message the user can act on."""
    if exc.errno == errno.ENOSPC:
        why = "the disk is full; free space or point project_dir at a larger disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable; fix its permissions or point project_dir at a writable folder"
    else:
        why = f"{exc.strerror or exc}"
    return OutputError(f"cannot write {path}: {why}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise output_error(exc, path) from exc


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (never mtime: shared filesystems lie about it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JobState:
    """The persistent record of what a job has done in one project dir."""

    def __init__(self, project_dir: str | Path):
        self.project_dir = Path(project_dir)
        self.dir = self.project_dir / STATE_DIR
        self.path = self.dir / "state.json"
        self.data = self._load()

    # -- reading ---------------------------------------------------------------
    def _read(self, path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("job state %s is unreadable (%s); trying the previous copy", path, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or "stages" not in data:
            log.warning("job state %s is not a kpms-job state file; ignoring it", path)
            return None
        return data

    def _load(self) -> dict:
        data = self._read(self.path)
        if data is None and self.path.exists():
            data = self._read(self.path.with_name("state.json.bak"))
            if data is not None:
                log.warning("recovered the job state from %s.bak", self.path.name)
            else:
                log.warning("no usable job state: every stage is checked again "
                            "(fits resume from their saved snapshots)")
        return data or {"version": STATE_VERSION, "stages": {}, "extra": {}}

    # -- stages ----------------------------------------------------------------
    def stage(self, name: str) -> dict | None:
        return self.data["stages"].get(name)

    def record_stage(self, name: str, fp: str, seconds: float, info: dict | None = None) -> None:
        self.data["stages"][name] = {
            "fingerprint": fp, "finished_at": now_iso(), "seconds": round(seconds, 2),
            "info": info or {},
        }
        self.save()

    def forget_stage(self, name: str) -> None:
        if self.data["stages"].pop(name, None) is not None:
            self.save()

    # -- free-form sections (tuning search, resources, ...) ---------------------
    def get(self, key: str, default=None):
        return self.data["extra"].get(key, default)

    def put(self, key: str, value) -> None:
        self.data["extra"][key] = value
        self.save()

    def save(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, self.dir) from exc
        if self.path.exists():
            try:
                current = self.path.read_text()
                json.loads(current)
                atomic_write_text(self.path.with_name("state.json.bak"), current)
            except ValueError:
                pass
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True, default=str))


class ProjectLock:
    """One writer per project dir, also across hosts of a shared filesystem.

    The lock is a file created with O_EXCL holding host, pid and a heartbeat that
    a background thread refreshes. A lock whose process is gone (same host) or
    whose heartbeat is older than ``stale_after`` seconds (any host) is stale and
    is taken over by renaming it away first, so two recoverers cannot both win.
    """

    HEARTBEAT_S = 20.0

    def __init__(self, project_dir: str | Path, stale_after: float = 120.0):
        self.path = Path(project_dir) / STATE_DIR / "lock"
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread = None
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now_iso()}

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": -1, "since": "?", "heartbeat": 0}

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") == self.me["host"]:
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OverflowError):
                pass
            else:
                return False
        beat = holder.get("heartbeat")
        if beat is None:
            try:
                beat = self.path.stat().st_mtime
            except FileNotFoundError:
                return True
        return time.time() - float(beat) > self.stale_after

    def _try_create(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise output_error(exc, self.path) from exc
        with os.fdopen(fd, "w") as fh:
            json.dump({**self.me, "heartbeat": time.time()}, fh)
        return True

    def acquire(self, wait: bool = False, poll: float = 2.0) -> None:
        while True:
            if self._try_create():
                break
            holder = self._holder()
            if holder is None:
                continue
            if self._is_stale(holder):
                aside = self.path.with_name(f"lock.stale.{os.getpid()}")
                try:
                    os.rename(self.path, aside)
                    os.unlink(aside)
                    log.warning("recovered a stale lock left by %s pid %s (since %s)",
                                holder.get("host"), holder.get("pid"), holder.get("since"))
                except FileNotFoundError:
                    pass
                continue
            if not wait:
                raise LockHeld(
                    f"project dir {self.path.parent.parent} is in use by another job: host "
                    f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}. "
                    "Wait for it to finish, or run with --wait to queue behind it.")
            time.sleep(poll)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                atomic_write_text(self.path, json.dumps({**self.me, "heartbeat": time.time()}))
            except OutputError:
                pass

    def release(self) -> None:
        self._stop.set()
        holder = self._holder()
        if holder and holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

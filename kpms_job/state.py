"""Job state: atomic JSON writes, stage fingerprints and the project-dir lock.

The state lives in ``<project_dir>/.kpms-job/``. It is written with
write-to-temp-then-rename, so a hard kill leaves either the old or the new file,
never half of one; a copy of the previous good state is kept as ``state.json.bak``.
"""

from __future__ import annotations

import contextlib
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

from . import faults
from .errors import LockHeld, LockLost, OutputError

log = logging.getLogger("kpms_job")

STATE_DIR = ".kpms-job"
STATE_VERSION = 1
#: The stages every restart shares: recorded in the project's own state, read by the restarts'.
SHARED_STAGES = ("ingest", "outliers", "pca")
#: The stages in the order they run (``kpms_job.pipeline`` declares each one); kept here, with their
#: names only, so that ``kpms-job status`` lists a plan without importing the stages.
ORDER = ("ingest", "outliers", "pca", "arhmm", "full_model", "reindex", "results", "figures", "analysis",
         "summary")
#: With restarts (manifest ``restarts`` > 1) these run once per restart, in the restart's own state
#: and under its own lock; ``select`` then picks one, and the stages after it work on that one.
PER_RESTART = ("arhmm", "full_model")


def plan_keys(restarts: int) -> list[tuple[str, int | None]]:
    """The stages of a job with ``restarts`` restarts in order, each with its restart (None: the
    project's own): the shared stages, each restart's fits, select, then the rest."""
    if restarts <= 1:
        return [(name, None) for name in ORDER]
    after = [name for name in ORDER if name not in SHARED_STAGES + PER_RESTART]
    return ([(name, None) for name in SHARED_STAGES]
            + [(name, i) for i in range(restarts) for name in PER_RESTART]
            + [("select", None)] + [(name, None) for name in after])


def state_dir(project_dir: str | Path, restart: int | None = None) -> Path:
    """Where the job state (and the lock) of the project, or of one of its restarts, lives."""
    base = Path(project_dir) / STATE_DIR
    return base if restart is None else base / "restarts" / f"r{restart:02d}"


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
        faults.point("state-write")
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


def _canonical(value):
    """Equal numbers hash equally: ``kappa: 1e6`` and ``kappa: 1000000`` are one setting."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def fingerprint(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(_canonical(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JobState:
    """The persistent record of what a job has done in one project dir, or in one restart of it
    (``restart`` i: its own fits, tuning and memory plan, in ``.kpms-job/restarts/rNN/``; the
    shared stages are read from the project's state, ``parent``)."""

    def __init__(self, project_dir: str | Path, lock: ProjectLock | None = None, restart: int | None = None,
                 parent: JobState | None = None):
        self.project_dir = Path(project_dir)
        self.lock = lock  # the lock this job writes under: every write checks it is still ours
        self.restart = restart
        self.parent = parent
        self.dir = state_dir(project_dir, restart)
        self.path = self.dir / "state.json"
        self.recovered = False  # loaded from state.json.bak: the writer should save it whole again
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
                self.recovered = True
            else:
                log.warning("no usable job state: every stage is checked again "
                            "(fits resume from their saved snapshots)")
        return data or {"version": STATE_VERSION, "stages": {}, "extra": {}}

    # -- stages ----------------------------------------------------------------
    def stage(self, name: str) -> dict | None:
        rec = self.data["stages"].get(name)
        if rec is None and self.parent is not None and name in SHARED_STAGES:
            return self.parent.stage(name)
        return rec

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

    def check(self) -> None:
        """Raise LockLost once another job took the project dir over: it writes there now."""
        if self.lock is not None:
            self.lock.check()

    def save(self) -> None:
        self.check()
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


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, about 1 s precision), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has ended and waits for its parent to reap it (Linux; else False)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class ProjectLock:
    """One writer per project dir, also across hosts of a shared filesystem.

    The lock is a file created with O_EXCL holding host, pid, the creation time and
    a heartbeat that a background thread refreshes. A lock is stale when its process
    is gone (same host: the pid is dead, or now belongs to a process that started
    after the lock was made, such as this one in a restarted container), or when its
    heartbeat is older than ``stale_after`` seconds (any host). A lock that cannot be
    read (being written this instant) is judged by its file's age. A stale lock is
    taken over by renaming it away first and checking that what was renamed is the
    lock judged stale, so two recoverers cannot both win.
    """

    HEARTBEAT_S = 20.0

    def __init__(self, project_dir: str | Path, stale_after: float = 120.0, restart: int | None = None):
        self.path = state_dir(project_dir, restart) / "lock"
        # what the messages call what is locked
        self.what = f"project dir {project_dir}" if restart is None else f"restart r{restart:02d} of {project_dir}"
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread = None
        self.lost = False  # set when another job took the lock over (we were judged stale)
        self.taken_by: dict = {}
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now_iso(), "created": time.time()}

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return ""

    @staticmethod
    def _parse(text: str) -> dict:
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        if not isinstance(holder, dict):  # being written this instant, or damaged: its age decides
            return {"host": "?", "pid": "?", "since": "?"}
        return holder

    def _holder(self) -> dict | None:
        text = self._read(self.path)
        return None if text is None else self._parse(text)

    def _pid_alive_and_holder(self, holder: dict) -> bool | None:
        """Same host: whether the holder's process still runs (None: cannot tell)."""
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return None
        created = holder.get("created")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            created = None
        if pid == os.getpid():
            if created is None:
                return False  # our pid, but not made by this process's lock code: a previous run
            started = _process_start(pid)
            # this process started after the lock was made: a previous run left it (same pid
            # in a restarted container); else this process holds it through another object
            return started is not None and started <= float(created) + 1.0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError, ValueError):
            return True
        if _zombie(pid):  # ended, not yet reaped by its parent: it writes nothing more
            return False
        if created is not None:
            started = _process_start(pid)
            if started is not None and started > float(created) + 1.0:
                return False  # the pid was reused by a process that started after the lock was made
        return True

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") == self.me["host"]:
            alive = self._pid_alive_and_holder(holder)
            if alive is not None:
                return not alive
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)) or isinstance(beat, bool):
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
        self.me["since"], self.me["created"] = now_iso(), time.time()
        with os.fdopen(fd, "w") as fh:
            json.dump({**self.me, "heartbeat": time.time()}, fh)
        return True

    # a takeover takes milliseconds: a takeover claim older than this was left by a recoverer that died
    TAKEOVER_STALE_S = 30.0

    def _claim_takeover(self, claim: Path) -> bool:
        """Claim the right to remove a stale lock (O_EXCL on ``lock.takeover``); False: another
        recoverer holds it (or held it and died: then its claim is removed and we look again)."""
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = self._read(claim)
            if text is None:
                return False
            holder = self._parse(text)
            dead = holder.get("host") == self.me["host"] and self._pid_alive_and_holder(holder) is False
            try:
                old = time.time() - claim.stat().st_mtime > self.TAKEOVER_STALE_S
            except FileNotFoundError:
                return False
            if dead or old:
                self._remove_if_unchanged(claim, text)
            return False
        except OSError as exc:
            raise output_error(exc, claim) from exc
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": self.me["host"], "pid": os.getpid(), "created": time.time()}, fh)
        return True

    def _remove_if_unchanged(self, path: Path, text: str) -> bool:
        """Remove ``path`` if its content is still ``text``; True when removed."""
        aside = path.with_name(f"{path.name}.stale.{self.me['host']}.{os.getpid()}.{threading.get_ident()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if self._read(aside) != text:
            # it changed between our look and the rename (the holder beat): put it back, unless a
            # new one exists already (then the holder, judged stale, has lost it and learns so)
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links on this filesystem
                if not path.exists():
                    os.rename(aside, path)
                    return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return True

    def _take_over(self, text: str, holder: dict) -> None:
        """Remove the stale lock whose content was ``text``, unless it changed meanwhile.

        Only the recoverer holding ``lock.takeover`` may remove it: without that claim two
        recoverers could each judge the same stale lock, the first remove it and make its own,
        and the second then remove the first's fresh lock (both would believe they hold it).
        """
        claim = self.path.with_name("lock.takeover")
        if not self._claim_takeover(claim):
            return  # another recoverer is at it: look again
        try:
            # looked at again under the claim: another recoverer may have replaced it meanwhile
            if self._read(self.path) == text and self._remove_if_unchanged(self.path, text):
                log.warning("recovered a stale lock left by %s pid %s (since %s)",
                            holder.get("host"), holder.get("pid"), holder.get("since"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(claim)

    def acquire(self, wait: bool = False, poll: float = 2.0) -> None:
        waiting = False
        while True:
            if self._try_create():
                break
            text = self._read(self.path)
            if text is None:
                continue
            holder = self._parse(text)
            if self._is_stale(holder):
                self._take_over(text, holder)
                continue
            if not wait:
                if holder.get("host") == "?":
                    raise LockHeld(
                        f"{self.what} is locked: {self.path} is being written "
                        f"or is unreadable. If no job runs there, it is taken over {self.stale_after:.0f} s "
                        "after its last change; run with --wait to queue behind it.")
                raise LockHeld(
                    f"{self.what} is in use by another job: host "
                    f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}. "
                    "Wait for it to finish, or run with --wait to queue behind it.")
            if not waiting:
                log.info("waiting for the job on host %s, pid %s (since %s) to release %s",
                         holder.get("host"), holder.get("pid"), holder.get("since"), self.what)
                waiting = True
            time.sleep(poll)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def describe(self) -> dict | None:
        """The holder as any reader sees it (``kpms-job status``), or None without a lock: host, pid,
        since, ``heartbeat_age_s`` (its file's age where it has no heartbeat) and ``process_gone``
        (True when, on this same host, its process has ended; None where that cannot be told,
        such as from another host)."""
        text = self._read(self.path)
        if text is None:
            return None
        holder = self._parse(text)
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)) or isinstance(beat, bool):
            try:
                beat = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
        gone = None
        if holder.get("host") == self.me["host"]:
            alive = self._pid_alive_and_holder(holder)
            gone = None if alive is None else not alive
        return {"host": holder.get("host"), "pid": holder.get("pid"), "since": holder.get("since"),
                "heartbeat_age_s": round(max(0.0, time.time() - float(beat)), 1), "process_gone": gone}

    def held(self) -> bool:
        """Whether a live job (not this object) holds this lock now."""
        holder = self._holder()
        return holder is not None and not self._mine(holder) and not self._is_stale(holder)

    def _mine(self, holder: dict | None) -> bool:
        return bool(holder) and all(holder.get(k) == self.me[k] for k in ("host", "pid", "created"))

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            holder = self._holder()
            if not self._mine(holder):
                self.taken_by = holder or {}
                self.lost = True
                log.error("another job took over the lock on %s (host %s, pid %s): this job was judged "
                          "stale and stops at its next safe point without writing more",
                          self.what, self.taken_by.get("host"), self.taken_by.get("pid"))
                return
            try:
                atomic_write_text(self.path, json.dumps({**self.me, "heartbeat": time.time()}))
            except OutputError:
                pass

    def check(self) -> None:
        """Raise LockLost once another job took this lock over. Called before every write of
        the job state, after every Gibbs iteration (before its snapshot) and before each stage."""
        if self.lost:
            raise LockLost(
                f"another job took over the {self.what} (host "
                f"{self.taken_by.get('host')}, pid {self.taken_by.get('pid')}): this job's heartbeat was "
                f"judged stale (none for {self.stale_after:.0f} s). Stopped without writing more; the other "
                "job goes on from the last snapshot. Rerun to queue behind it, or check that the two jobs "
                "were meant to share this project dir.")

    def release(self) -> None:
        self._stop.set()
        if self._mine(self._holder()):
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

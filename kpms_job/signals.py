"""Graceful stop on SIGTERM/SIGINT.

Signals are blocked in every thread and received by one watcher thread with
``sigwait``, so a stop request is seen even while the main thread sits in a long
C call (an XLA compile). The request sets a flag that the fit loop checks after
every Gibbs iteration (it then saves a snapshot and exits 75). If the main thread
has not reached a safe point within the grace period, the watcher ends the process
with exit 75 itself, but never inside a critical section (a checkpoint write):
everything on disk is then as after a kill between two snapshots, which a rerun
continues from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

from .errors import EXIT_INTERRUPTED

log = logging.getLogger("kpms_job")

_stop = threading.Event()
_critical = threading.RLock()
SIGNALS = {signal.SIGTERM, signal.SIGINT}


def grace_seconds() -> float:
    return float(os.environ.get("KPMS_JOB_STOP_GRACE_S", "15"))


def requested() -> bool:
    return _stop.is_set()


@contextlib.contextmanager
def critical():
    """A section the watcher must not cut short (writing a checkpoint)."""
    with _critical:
        yield


def enter_critical(timeout: float) -> bool:
    """Wait up to ``timeout`` s for any critical section to end and hold it (the stall watchdog,
    before it exits); False when it did not end in time."""
    return _critical.acquire(timeout=timeout)


def _received(sig: int) -> None:
    """Stop at the next safe point; after the grace period (or at a second signal) exit 75."""
    if _stop.is_set():
        log.warning("second %s: stopping now", signal.Signals(sig).name)
    else:
        log.warning("%s received: stopping at the next safe point (snapshot, state), "
                    "then exit %d", signal.Signals(sig).name, EXIT_INTERRUPTED)
        _stop.set()
        deadline = time.monotonic() + grace_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.1)
        log.warning("no safe point reached within %.0f s: exiting with the last saved "
                    "snapshot; a rerun continues from it", grace_seconds())
    with _critical:
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


def _watch() -> None:
    while True:
        sig = signal.sigwait(SIGNALS)
        threading.Thread(target=_received, args=(sig,), name="kpms-job-stop", daemon=True).start()


def _handler(sig: int, frame) -> None:
    threading.Thread(target=_received, args=(sig,), name="kpms-job-stop", daemon=True).start()


def install() -> None:
    """Route SIGTERM/SIGINT to the watcher; call before anything starts a thread.

    A thread inherits the signal mask of the thread that starts it, so every thread started after
    this blocks the signals and the watcher's ``sigwait`` receives them. A thread started before
    (numpy's BLAS pool, started by ``import numpy``) does not block them, and the kernel may hand a
    process-directed TERM to it: the Python-level handler then makes sure that it still means "stop
    at the next safe point", not the default action (the process killed, exit 143, as it was when
    this ran after the pipeline's imports).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_watch, name="kpms-job-signals", daemon=True).start()

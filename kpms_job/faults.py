"""Fault injection for the resilience tests: ``KPMS_JOB_FAULT=action@point[,action@point]``.

``point`` is a name the code passes to :func:`point`, for example ``stage-start:pca``,
``stage-end:arhmm``, ``iter:kpms_job:5`` (after Gibbs iteration 5 of model kpms_job,
before its snapshot), ``state-write`` (between writing the temp file and the rename).
The device-touching steps of a fit have one each: ``init_model``, ``resample:MODEL:ITER``,
``nan-check:MODEL:ITER`` and ``snapshot:MODEL:ITER`` (snapshot 0 is the initial model).
``action`` is ``kill`` (a real SIGKILL of this process), ``term`` (SIGTERM to itself)
``oom`` (an XLA RESOURCE_EXHAUSTED error) or ``hang`` (blocks this thread for good in a
blocking wait that, like a deadlocked native call, never returns to Python on its own: only
the stall watchdog or a signal ends the process). Unset in production: one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_spec = None


def _parse():
    global _spec
    if _spec is None:
        _spec = {}
        for item in filter(None, os.environ.get("KPMS_JOB_FAULT", "").split(",")):
            action, _, where = item.partition("@")
            _spec[where.strip()] = action.strip()
    return _spec


def point(name: str) -> None:
    if "KPMS_JOB_FAULT" not in os.environ:
        return
    action = _parse().pop(name, None)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "oom":
        raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory (injected at {name})")
    elif action == "hang":
        _hang(name)


def _hang(name: str) -> None:
    """Block forever (injected at ``name``), the way a deadlocked ``BlockingCounter::Wait`` does."""
    never = threading.Event()
    while True:
        never.wait(3600)

"""Restarts (manifest ``restarts`` > 1): each one an AR-HMM and full model fitted with its own seed,
under its own name, state and lock, so that workers on one project dir never block each other.

Restart *i* is the manifest with ``model.seed + i`` and the name ``<model.name>-rNN``; its fits,
tuning and memory plan are recorded in ``.kpms-job/restarts/rNN/state.json`` (the shared stages,
ingest, outliers and PCA, stay in the project's own state). Which task a process runs:
``--task I`` (restart I), ``--task select``, or ``--task auto`` (the array index that Kubernetes,
``JOB_COMPLETION_INDEX``, or Slurm, ``SLURM_ARRAY_TASK_ID``, gives it).
"""

from __future__ import annotations

import copy
import os

from .errors import UsageError

#: Where ``--task auto`` reads its index, in this order.
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")


def count(m: dict) -> int:
    return int(m.get("restarts", 1))


def restart_name(m: dict, i: int) -> str:
    return f"{m['model']['name']}-r{i:02d}"


def manifest_for(m: dict, i: int) -> dict:
    """The manifest restart ``i`` fits with: its own seed and model name."""
    out = copy.deepcopy(m)
    out["model"]["seed"] = int(m["model"]["seed"]) + i
    out["model"]["name"] = restart_name(m, i)
    return out


def parse_task(task: str | None, m: dict, env=None) -> int | str | None:
    """``--task`` as given: None (all of it), a restart index, or "select"."""
    if task is None:
        return None
    env = os.environ if env is None else env
    n = count(m)
    if task == "auto":
        found = next(((v, env[v]) for v in INDEX_VARIABLES if env.get(v, "").strip()), None)
        if found is None:
            raise UsageError(f"command line: --task auto reads the task index from {' or '.join(INDEX_VARIABLES)}, "
                             "and neither is set; give the index (--task 0) or run without --task")
        var, task = found[0], found[1].strip()
        where = f"{var}={task}"
    else:
        where = f"--task {task}"
    if task == "select":
        if n == 1:
            raise UsageError(f"command line: {where}: the manifest has restarts: 1, so there is nothing to select; "
                             "run without --task")
        return "select"
    try:
        i = int(task)
    except ValueError:
        raise UsageError(f"command line: {where}: expected a restart index (0 to {n - 1}), select or auto, "
                         f"got {task!r}") from None
    if not 0 <= i < n:
        raise UsageError(f"command line: {where}: expected a restart index from 0 to {n - 1} (restarts: {n} in "
                         f"the manifest), got {i}; size the array to the manifest's restarts")
    return i

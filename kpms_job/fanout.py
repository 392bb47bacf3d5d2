"""Local fan-out of restarts: ``kpms-job run`` fits them in parallel worker processes, each a
``kpms-job run MANIFEST --task I`` (the same task an array job runs), one per visible GPU
(``CUDA_VISIBLE_DEVICES`` set per worker) or ``--workers K``.

On a CPU the default is as many workers as both the memory plan and the cores allow: one fit's
estimated memory (the most frugal setting's, :mod:`kpms_job.resources`) into the budget, and one
worker per two cores (XLA:CPU already spreads one fit over the cores, so more workers than that
only take turns). Each worker plans its own memory, as any task does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from . import restarts, runlog, signals

log = logging.getLogger("kpms_job")


def worker_count(m: dict, state, requested: str) -> tuple[int, list[str], str]:
    """(workers, the GPU index each worker slot gets or [], why) for the restarts left to fit."""
    from .resources import ladder, machine, planner

    n = restarts.count(m)
    found = machine.detect()
    gpus = [g.index for g in found.gpus] if found.backend == "gpu" else []
    if requested != "auto":
        k, why = int(requested), f"--workers {requested}"
    elif gpus:
        k, why = len(gpus), f"one per visible GPU ({len(gpus)})"
    else:
        shape = planner.shape_from_state(m, state)
        budget, _ = machine.budget(found, (m.get("resources") or {}).get("vram_budget_gb", "auto"))
        frugal = ladder.choose(shape, 0.0, "cpu") if shape else None  # a zero budget: the most frugal setting
        per_fit = ladder.need(frugal.arhmm, frugal.full).total if frugal else budget
        by_memory = int(ladder.FILL * budget // max(per_fit, 1.0))
        cores = os.cpu_count() or 1
        k = min(by_memory, max(1, cores // 2))
        why = f"on the CPU: memory for {by_memory} fit(s) at once, {cores} core(s)"
    return max(1, min(k, n)), gpus, why


def _pump(stream, prefix: str) -> None:
    for line in stream:
        sys.stderr.write(f"[{prefix}] {line}")
        runlog.echo(f"[{prefix}] {line}")  # this run's log holds what its console showed
    stream.close()


def run_workers(manifest: str, indices: list[int], k: int, gpus: list[str], debug: bool = False) -> dict[int, int]:
    """Fit restarts ``indices``, ``k`` worker processes at a time: {restart: exit code}.

    Workers run in their own session, so a Ctrl-C at the terminal reaches this process alone; it
    forwards one TERM to each running worker (which saves a snapshot and exits 75) and starts no
    more. Their log lines are passed on prefixed with the restart (``[r03]``).
    """
    pending, running, codes = list(indices), {}, {}
    free_slots = list(range(k))
    stopping = False
    while pending or running:
        while pending and free_slots and not stopping:
            i, slot = pending.pop(0), free_slots.pop(0)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            cmd = [sys.executable, "-m", "kpms_job", "run", manifest, "--task", str(i)] + ["--debug"] * debug
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            threading.Thread(target=_pump, args=(proc.stdout, f"r{i:02d}"), daemon=True).start()
            running[i] = (proc, slot)
            log.info("restart r%02d: worker pid %d%s", i, proc.pid,
                     f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "")
        if signals.requested() and not stopping:
            stopping = True
            for proc, _ in running.values():
                proc.terminate()
        for i, (proc, slot) in list(running.items()):
            if proc.poll() is not None:
                codes[i] = proc.returncode
                free_slots.append(slot)
                del running[i]
        time.sleep(0.2)
    return codes

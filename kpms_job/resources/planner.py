"""The one memory planner: the setting a fit runs with, from the memory model and the past attempts.

The job state's ``resources`` entry keeps the settings in use, the budget, the estimates,
every out-of-memory attempt and the peak memory seen. This module is the only reader of
those attempts (:func:`failed_settings`): ``run`` (:func:`plan_for_context`,
:func:`after_out_of_memory`) and ``plan`` (:mod:`.report`) take them from here, so they skip
the same settings.
"""

from __future__ import annotations

import logging
import time

from ..errors import OutOfMemory
from . import ladder, model
from .machine import Machine, budget, detect, peak_bytes, reset_peak

log = logging.getLogger("kpms_job")


def shape_from_state(m: dict, state) -> model.Shape | None:
    """The fit's sizes from the ingest and PCA records (None before ingest has run)."""
    ing = (state.stage("ingest") or {}).get("info") or {}
    if not ing.get("used"):
        return None
    lengths = [int(ing["recordings"][n]["frames"]) for n in ing["used"]]
    pca = (state.stage("pca") or {}).get("info") or {}
    k = len(ing.get("use_bodyparts") or ing.get("bodyparts") or [])
    return shape_from_counts(m, lengths, k, pca.get("latent_dim"))


def shape_from_counts(m: dict, lengths: list[int], keypoints: int, latent_dim: int | None = None) -> model.Shape:
    """The fit's sizes from frames per recording and keypoints; latent_dim, unless PCA chose it,
    from the manifest or assumed (10, or fewer with few keypoints)."""
    latent = latent_dim or (m.get("pca") or {}).get("latent_dim") or min(10, 2 * (keypoints - 1))
    return model.Shape(frames=sum(lengths), keypoints=keypoints, latent_dim=int(latent),
                       num_states=int(m["model"]["num_states"]), recordings=tuple(lengths))


def signature(shape: model.Shape, backend: str, device: str, res: dict) -> str:
    """What out-of-memory attempts are valid for: the sizes, the device and the budget setting.

    The measured budget is left out on purpose: free memory differs from one process to
    the next, and a restart must see the attempts of the process before it.
    """
    from ..state import fingerprint

    return fingerprint(shape.recordings, shape.keypoints, shape.latent_dim, shape.num_states, backend, device,
                       res.get("vram_budget_gb", "auto"), res.get("parallel_message_passing", "auto"),
                       res.get("mixed_map_iters", "auto"))


def device_name(found: Machine) -> str:
    """The device as :func:`signature` names it, found without JAX: ``cpu``, or the first visible
    GPU's name, which is what JAX reports as its ``device_kind`` (the CUDA device name)."""
    return found.gpus[0].kind if found.backend == "gpu" and found.gpus else "cpu"


def attempts_for(record: dict | None, sig: str | None) -> list[dict]:
    """The attempts in a ``resources`` record made under signature ``sig``.

    An attempt at other sizes, on another device or under other ``resources`` settings says
    nothing about this fit: after the user raised the budget, a setting that failed is tried again.
    """
    return [a for a in (record or {}).get("attempts", []) if a.get("signature") == sig]


def failed_settings(record: dict | None, sig: str | None) -> list[model.Setting]:
    """The settings that already ran out of memory under ``sig``: what ``run`` and ``plan`` skip."""
    return [model.Setting(bool(a["setting"]["parallel_message_passing"]), int(a["setting"]["mixed_map_iters"]))
            for a in attempts_for(record, sig) if a.get("outcome") == "out of memory"]


def _jax_budget(backend: str, prepared: dict, res: dict) -> tuple[float, str, str]:
    """(budget bytes, its source, device name) seen from inside JAX."""
    import jax

    dev = jax.devices()[0]
    if backend == "gpu":
        stats = dev.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            used = stats.get("bytes_in_use", 0)
            return float(limit - used), f"JAX's memory pool on {dev.device_kind}", str(dev.device_kind)
        return float(prepared.get("budget_bytes", 0)), prepared.get("budget_source", "?"), str(dev.device_kind)
    b, source = budget(detect(), res.get("vram_budget_gb", "auto"))
    return b, source, "cpu"


def plan_for_context(ctx, patched=None) -> dict:
    """Choose parallel_message_passing and mixed_map_iters for this process (imports JAX).

    ``patched``: the steps whose jax-moseq patch is installed in this process
    (``kpms.patches.active()``); a step without its patch is planned as jax-moseq's own,
    unbatched (:func:`model.estimate`). None: all of them.
    """
    import jax

    res = ctx.m["resources"]
    backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    prepared = ctx.prepared or {}
    budget_bytes, source, device = _jax_budget(backend, prepared, res)
    shape = shape_from_state(ctx.m, ctx.state)
    old = ctx.state.get("resources") or {}
    if shape is None:  # no ingest record (a fit run outside the pipeline): keep it simple
        shape = model.Shape(frames=1, keypoints=4, latent_dim=4, num_states=int(ctx.m["model"]["num_states"]))
    sig = signature(shape, backend, device, res)
    attempts = attempts_for(old, sig)
    failed = failed_settings(old, sig)
    choice = ladder.choose(shape, budget_bytes, backend, res["parallel_message_passing"], res["mixed_map_iters"],
                           failed=failed, patched=patched)
    plan = {"backend": jax.default_backend(), **choice.as_dict(), "budget_source": source, "device": device,
            "frames": shape.frames, "padded_frames": shape.padded_frames, "segments": shape.segments,
            "signature": sig, "attempts": attempts, "jax_env": prepared.get("set", {}),
            "patched": sorted(model.PATCHED_STEPS if patched is None else patched),
            "peak_bytes": old.get("peak_bytes") if old.get("signature") == sig else None,
            "peak_source": old.get("peak_source") if old.get("signature") == sig else None,
            "planned_at": time.time()}
    if failed and choice.skipped and not choice.tried:
        # every rung failed already (a restart that should not have happened): say so and stop
        raise OutOfMemory(_oom_message(plan, shape, budget_bytes))
    if res["parallel_message_passing"] is True and not model.kalman_scan_allowed(backend):
        log.warning("resources.parallel_message_passing: true is not used on a CPU: the associative scan's "
                    "batched LU calls can deadlock XLA:CPU; the Kalman steps run sequentially")
    log.info("fitting on %s: parallel_message_passing=%s, mixed_map_iters=%d (%s)", plan["backend"],
             choice.setting.parallel_message_passing, choice.setting.mixed_map_iters, choice.reason)
    if not choice.fits:
        log.warning("the memory model estimates that no setting fits the budget of %s (%s); trying the most "
                    "frugal one: %s", model.gib(budget_bytes), source, choice.reason)
    ctx.state.put("resources", plan)
    reset_peak()
    return plan




def record_peak(state) -> int | None:
    """Keep the largest peak seen in the state's ``resources`` entry (cheap; no write if unchanged)."""
    plan = state.get("resources")
    if not plan:
        return None
    now, source = peak_bytes("gpu" if plan.get("backend") == "gpu" else "cpu")
    if now is None:
        return None
    if now > (plan.get("peak_bytes") or 0) * 1.01:
        plan = {**plan, "peak_bytes": now, "peak_source": source,
                "peak_vs_estimate": round(now / max(1, plan["estimate_bytes"]["full_model"]), 3)}
        state.put("resources", plan)
    return now


def watch_peak(ctx) -> None:
    """Record the peak memory after every Gibbs iteration, through the runner's stop poll.

    ``run_gibbs`` calls ``should_stop`` (``ctx.stop``) after each iteration: wrapping it
    updates the state's peak there, in the main thread, without a hook in the fit itself.
    """
    if getattr(ctx.stop, "_kpms_peak", False):
        return
    inner = ctx.stop

    def stop():
        record_peak(ctx.state)
        return bool(inner and inner())

    stop._kpms_peak = True
    ctx.stop = stop


# --------------------------------------------------------------------------- out of memory
def _oom_message(plan: dict, shape: model.Shape, budget_bytes: float) -> str:
    tried = "; ".join(f"{model.Setting(**a['setting']).label()} ({a.get('stage', '?')})"
                      for a in plan.get("attempts", []) if a.get("outcome") == "out of memory")
    fit_frames = ladder.max_frames(shape, budget_bytes, plan.get("backend", "cpu"), patched=plan.get("patched"))
    states = ladder.max_states(shape, budget_bytes, plan.get("backend", "cpu"), patched=plan.get("patched"))
    hints = [f"raise resources.vram_budget_gb or run on a machine with more memory (budget was "
             f"{model.gib(budget_bytes)}, {plan.get('budget_source', '')})"]
    if fit_frames and fit_frames < shape.frames:
        hints.append(f"fit fewer frames per job (the memory model says about {fit_frames:,} fit, "
                     f"this job has {shape.frames:,})")
    if 0 < states < shape.num_states:
        hints.append(f"lower model.num_states (at most about {states} fit)")
    return (f"out of memory after every fallback: tried {tried or 'nothing'}. "
            f"The most frugal setting needs about {model.gib(plan['estimate_bytes']['full_model'])} by the "
            f"memory model. To fix: " + "; or ".join(hints) + ". Completed iterations are kept in the "
            "checkpoint: rerun the same command after the change to continue.")


def after_out_of_memory(m: dict, state, error: str, stage: str | None) -> dict:
    """Record an out-of-memory error of a fit and choose the setting for the next process.

    Returns the next setting (a dict); raises :class:`OutOfMemory` when the most frugal
    setting ran out of memory too. Settings the memory model says save nothing over the
    failed one, in the fit that failed (the AR-HMM's discrete step is batched by
    ``mixed_map_iters`` but not changed by ``parallel_message_passing``), are skipped;
    the most frugal one is always tried (a fresh process may find memory another process
    has freed meanwhile).
    """
    plan = dict(state.get("resources") or {})
    if not plan:
        raise OutOfMemory(f"out of memory during the {stage or 'fit'} before any memory plan was made: {error}")
    setting = {"parallel_message_passing": bool(plan["parallel_message_passing"]),
               "mixed_map_iters": int(plan["mixed_map_iters"])}
    attempts = list(plan.get("attempts", []))
    attempts.append({"setting": setting, "outcome": "out of memory", "stage": stage, "error": error[:300],
                     "signature": plan.get("signature"), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    plan["attempts"] = attempts
    res = m.get("resources") or {}
    shape = shape_from_state(m, state) or model.Shape(frames=1)
    backend = "gpu" if plan.get("backend") == "gpu" else "cpu"
    rungs = ladder.ladder(backend, shape.segments, res.get("parallel_message_passing", "auto"),
                          res.get("mixed_map_iters", "auto"))
    failed = failed_settings(plan, plan.get("signature"))
    done = [rungs.index(f) for f in failed if f in rungs]
    left = rungs[max(done) + 1:] if done else rungs
    if len(left) > 1:  # skip rungs the model says save nothing over the failed one; keep the last
        fit = "arhmm" if stage == "arhmm" else "full_model"
        patched = plan.get("patched")  # the patches the failed process had installed
        failed_est = model.estimate(shape, model.Setting(**setting), fit, backend, patched=patched).total
        saving = [r for r in left[:-1]
                  if model.estimate(shape, r, fit, backend, patched=patched).total < 0.99 * failed_est]
        left = saving + left[-1:]
    state.put("resources", plan)
    if not left:
        raise OutOfMemory(_oom_message(plan, shape, float(plan.get("budget_bytes", 0))))
    nxt = left[0]
    plan["next"] = nxt.as_dict()
    state.put("resources", plan)
    log.warning("out of memory in the %s with %s (%s); restarting with %s", stage or "fit",
                model.Setting(**setting).label(), error.splitlines()[0][:200], nxt.label())
    return nxt.as_dict()



"""Resumable Gibbs fits shared by the AR-HMM and full-model stages.

A fit is identified by a key (hash of everything that determines its chain). If
the checkpoint on disk was written under the same key, the fit resumes from its
newest good snapshot instead of starting again; otherwise it starts afresh.
"""

from __future__ import annotations

import logging
import shutil

from .. import liveprogress
from ..console import IterationProgress
from ..errors import Interrupted

log = logging.getLogger("kpms_job")


def settings(ctx) -> dict:
    """Fitting settings from the memory plan (chosen once per process, before any trace)."""
    if "settings" not in ctx.cache:
        from ..kpms import gibbs, patches
        from ..resources import planner
        from ..resources.model import kalman_scan_allowed

        # the patches first: a step jax-moseq keeps unpatched is planned as unbatched
        ctx.cache["kalman_scan"] = kalman_scan_allowed(gibbs.backend())
        patches.install(location_scan=ctx.cache["kalman_scan"])
        plan = planner.plan_for_context(ctx, patched=patches.active())
        gibbs.configure(plan["mixed_map_iters"])
        planner.watch_peak(ctx)  # the peak memory seen goes into the state after each iteration
        ctx.cache["settings"] = plan
    return ctx.cache["settings"]


def fit_chain(ctx, model_name: str, key: str, make_model, num_iters: int, ar_only: bool,
              label: str, on_iteration=None, on_start=None, finished=None, on_nan=None, save_now=None,
              live_fields=None):
    """Run (or resume) a fit to ``num_iters`` iterations; return (model, data, metadata).

    Parameters
    ----------
    make_model : callable () -> (model, data, metadata)
        Builds the initial model when there is nothing to resume.
    on_iteration : callable (iteration, model, data) -> model or None, optional
        Called after every iteration (kappa tuning corrects the chain here).
    on_start : callable (start_iteration, model) -> None, optional
        Called once before sampling, with 0 for a fresh fit or the snapshot resumed from.
    finished : callable (iteration) -> bool, optional
        Ends the chain before ``num_iters`` (the tuner decides its own length).
    on_nan : callable (iteration, last_good_model) -> model or None, optional
    live_fields : callable () -> dict, optional
        What else ``kpms-job status`` shows of the iteration just done (kappa tuning: its median).
    """
    from ..kpms import gibbs as A

    pd = str(ctx.project_dir)
    plan = settings(ctx)
    # every step that touches the device: the initial model and a reloaded snapshot allocate too
    with A.out_of_memory_is_fit_error():
        fits = ctx.state.get("fits", {})
        resumed = None
        if fits.get(model_name) == key:
            resumed = A.load_latest_snapshot(pd, model_name)
            if resumed is not None and resumed[3] > num_iters:
                log.info("%s: the saved fit ran past %d iterations; starting again", label, num_iters)
                resumed = None
        if resumed is not None:
            model, data, metadata, start = resumed
            log.info("%s: resuming from the snapshot at iteration %d", label, start)
        else:
            shutil.rmtree(ctx.project_dir / model_name, ignore_errors=True)
            fits[model_name] = key
            ctx.state.put("fits", fits)
            model, data, metadata = make_model()
            start = 0
        if on_start is not None:
            on_start(start, model)
        if start >= num_iters or (finished is not None and start > 0 and finished(start)):
            return model, data, metadata
        bar = IterationProgress(label, start, num_iters, live=liveprogress.FitProgress(ctx.state.dir, label))

        def hook(it, mdl):
            out = on_iteration(it, mdl, data) if on_iteration else None
            # the kappa the next iteration runs at: tuning may just have corrected it
            kappa = A.model_kappa(out if out is not None else mdl)
            bar.update(it, kappa=kappa, **(live_fields() if live_fields else {}))
            return out

        try:
            model, last, done = A.run_gibbs(
                model, data, metadata, pd, model_name, start_iter=start, num_iters=num_iters,
                ar_only=ar_only, save_every=ctx.m["fitting"]["save_every"], fps=ctx.fps,
                parallel_message_passing=plan["parallel_message_passing"], kalman_scan=ctx.cache["kalman_scan"],
                on_iteration=hook,
                should_stop=ctx.stop, finished=finished, save_now=save_now,
                on_nan=(lambda it, mdl: on_nan(it, mdl, data)) if on_nan else None)
        finally:
            bar.close()
    if not done:
        raise Interrupted(f"{label} stopped at iteration {last} of {num_iters} (snapshot saved); "
                          "rerun the same command to continue from there")
    return model, data, metadata

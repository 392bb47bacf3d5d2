"""Full keypoint-SLDS fit, warm-started from the AR-HMM."""

from __future__ import annotations

import logging

from ..state import fingerprint
from .fitting import fit_chain

log = logging.getLogger("kpms_job")


def from_arhmm(ctx, kappa: float):
    from ..kpms import gibbs

    model, data, metadata, _ = gibbs.load_latest_snapshot(str(ctx.project_dir), ctx.arhmm_name)
    return gibbs.set_kappa(model, kappa), data, metadata


def full_kappa(m) -> float:
    k = m["model"]["full_kappa"]
    return float(k) if k is not None else float(m["model"]["kappa"]) / 10.0


def run(ctx):
    from ..kpms import gibbs, project
    from ..manifest import tuning_settings

    if tuning_settings(ctx.m) is not None:
        from .. import tuning_stage

        return tuning_stage.run_full(ctx)
    kappa = full_kappa(ctx.m)
    iters = ctx.m["fitting"]["full_iters"]
    key = fingerprint(ctx.fingerprints["arhmm"], kappa, "full-fixed")
    model, data, _ = fit_chain(ctx, ctx.model_name, key, lambda: from_arhmm(ctx, kappa),
                               iters, ar_only=False, label="full model")
    median = gibbs.median_duration_ms(model, data, ctx.fps)
    log.info("full model: kappa %.3g, median syllable duration %.0f ms", kappa, median)
    project.update_config(str(ctx.project_dir), kappa=kappa)
    return {"kappa": kappa, "iterations": iters, "median_duration_ms": median,
            "model_name": ctx.model_name, "outputs": [f"{ctx.model_name}/checkpoint.h5"]}

"""AR-HMM fit on the PCA latents (kappa from the manifest, or tuned to the target window)."""

from __future__ import annotations

import logging

from ..state import fingerprint
from . import arrays
from .fitting import fit_chain

log = logging.getLogger("kpms_job")


def initial_model(ctx, kappa: float):
    from ..kpms import gibbs, project

    pd = str(ctx.project_dir)
    coords, confs, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
    config = project.load_config(pd)
    data, metadata = project.format_data(coords, confs, config)
    model = gibbs.init_model(data, project.load_pca(pd), config, ctx.m["model"]["seed"])
    return gibbs.set_kappa(model, kappa), data, metadata


def run(ctx):
    from ..kpms import gibbs
    from ..manifest import tuning_settings

    if tuning_settings(ctx.m) is not None:
        from .. import tuning_stage

        return tuning_stage.run_arhmm(ctx)
    kappa = float(ctx.m["model"]["kappa"])
    iters = ctx.m["fitting"]["arhmm_iters"]
    key = fingerprint(ctx.fingerprints["pca"], ctx.m["model"], "arhmm-fixed")
    model, data, _ = fit_chain(ctx, ctx.arhmm_name, key, lambda: initial_model(ctx, kappa),
                               iters, ar_only=True, label="AR-HMM")
    median = gibbs.median_duration_ms(model, data, ctx.fps)
    log.info("AR-HMM: kappa %.3g, median syllable duration %.0f ms", kappa, median)
    return {"kappa": kappa, "iterations": iters, "median_duration_ms": median,
            "model_name": ctx.arhmm_name, "outputs": [f"{ctx.arhmm_name}/checkpoint.h5"]}

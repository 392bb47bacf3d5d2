"""AR-HMM fit on the PCA latents (kappa from the manifest, or tuned to the target window)."""

from __future__ import annotations

import logging

from ..fitting.chain import fit_chain
from ..state import fingerprint
from . import arrays

log = logging.getLogger("kpms_job")

TITLE = "AR-HMM fit"
DEPS = ("ingest", "outliers", "pca")
READS = ("model.name", "model.seed", "model.kappa", "fitting.arhmm_iters", "fitting.save_every")
# tuned, kappa is where the search starts, and the window and the AR-HMM's search settings join in
READS_TUNED = READS + ("targets.median_duration_ms", "tuning.check_every", "tuning.fixed_fraction",
                       "tuning.arhmm_aim", "tuning.arhmm_budget")
OUTPUTS = ("{model}_arhmm/checkpoint.h5", "{model}_arhmm/kappa_trace.png")


def initial_model(ctx, kappa: float):
    from ..kpms import gibbs, project

    pd = str(ctx.project_dir)
    coords, confs, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
    # keypoint-moseq draws the initial state with config.yml's kappa, which each full-model fit
    # rewrites: drawn with the manifest's, as in a fresh project, the first model does not depend on
    # what ran before it in the project (another restart, an earlier fit)
    config = project.load_config(pd)
    config["trans_hypparams"] = {**config["trans_hypparams"], "kappa": float(ctx.m["model"]["kappa"])}
    data, metadata = project.format_data(coords, confs, config)
    model = gibbs.init_model(data, project.load_pca(pd), config, ctx.m["model"]["seed"])
    return gibbs.set_kappa(model, kappa), data, metadata


def run(ctx):
    from ..kpms import gibbs
    from ..manifest import tuning_settings

    if tuning_settings(ctx.m) is not None:
        from ..fitting import tuned

        return tuned.run_arhmm(ctx, initial_model)
    kappa = float(ctx.m["model"]["kappa"])
    iters = ctx.m["fitting"]["arhmm_iters"]
    # not the iterations: more of them continue the chain, fewer start it again (fit_chain)
    key = fingerprint(ctx.fingerprints["pca"], ctx.m["model"]["seed"], kappa, "arhmm-fixed-2")
    model, data, _ = fit_chain(ctx, ctx.arhmm_name, key, lambda: initial_model(ctx, kappa),
                               iters, ar_only=True, label="AR-HMM")
    median = gibbs.median_duration_ms(model, data, ctx.fps)
    log.info("AR-HMM: kappa %.3g, median syllable duration %.0f ms", kappa, median)
    return {"kappa": kappa, "iterations": iters, "median_duration_ms": median,
            "model_name": ctx.arhmm_name, "outputs": [f"{ctx.arhmm_name}/checkpoint.h5"]}

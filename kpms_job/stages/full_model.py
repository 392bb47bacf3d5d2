"""Full keypoint-SLDS fit, warm-started from the AR-HMM."""

from __future__ import annotations

import logging

from ..fitting.chain import fit_chain
from ..state import fingerprint

log = logging.getLogger("kpms_job")

TITLE = "full keypoint-SLDS fit"
DEPS = ("ingest", "arhmm")
# model.kappa: model.full_kappa null means a tenth of it
READS = ("model.name", "model.kappa", "model.full_kappa", "fitting.full_iters", "fitting.save_every")
# tuned, the search starts from model.full_kappa or from the AR-HMM's kappa times full_kappa_ratio
READS_TUNED = ("model.name", "model.full_kappa", "fitting.full_iters", "fitting.save_every",
               "targets.median_duration_ms", "tuning.check_every", "tuning.fixed_fraction",
               "tuning.full_budget", "tuning.full_kappa_ratio", "tuning.stability_iters")
OUTPUTS = ("{model}/checkpoint.h5", "{model}/kappa_trace.png")


def from_arhmm(ctx, kappa: float):
    from ..kpms import gibbs

    delivered = ctx.info("arhmm").get("delivered_iteration")  # a tuned AR-HMM that missed its window
    if delivered is not None:
        _, data, metadata, _ = gibbs.load_latest_snapshot(str(ctx.project_dir), ctx.arhmm_name)
        model = gibbs.load_snapshot(str(ctx.project_dir), ctx.arhmm_name, delivered)
    else:
        model, data, metadata, _ = gibbs.load_latest_snapshot(str(ctx.project_dir), ctx.arhmm_name)
    return gibbs.set_kappa(model, kappa), data, metadata


def arhmm_state(ctx) -> str:
    """What identifies the AR-HMM state this chain starts from: the AR-HMM chain's key and the
    iterations it ran. Its stage fingerprint would do too, but would also restart this chain for
    what leaves that state alone (fitting.save_every, the model name)."""
    chain = ctx.state.get("fits", {}).get(ctx.arhmm_name) or ctx.fingerprints["arhmm"]
    info = ctx.info("arhmm")
    return fingerprint(chain, info.get("iterations"), info.get("delivered_iteration"))


def full_kappa(m) -> float:
    k = m["model"]["full_kappa"]
    return float(k) if k is not None else float(m["model"]["kappa"]) / 10.0


def run(ctx):
    from ..kpms import gibbs, project
    from ..manifest import tuning_settings

    if tuning_settings(ctx.m) is not None:
        from ..fitting import tuned

        return tuned.run_full(ctx, from_arhmm, arhmm_state(ctx))
    kappa = full_kappa(ctx.m)
    iters = ctx.m["fitting"]["full_iters"]
    key = fingerprint(arhmm_state(ctx), kappa, "full-fixed-2")
    model, data, _ = fit_chain(ctx, ctx.model_name, key, lambda: from_arhmm(ctx, kappa),
                               iters, ar_only=False, label="full model")
    median = gibbs.median_duration_ms(model, data, ctx.fps)
    log.info("full model: kappa %.3g, median syllable duration %.0f ms", kappa, median)
    project.update_config(str(ctx.project_dir), kappa=kappa)
    return {"kappa": kappa, "iterations": iters, "median_duration_ms": median,
            "model_name": ctx.model_name, "outputs": [f"{ctx.model_name}/checkpoint.h5"]}

"""PCA of the aligned poses; latent_dim from the manifest or from the variance to explain."""

from __future__ import annotations

import logging

from ..errors import InputDataError
from . import arrays

log = logging.getLogger("kpms_job")

MIN_LATENT_DIM = 2

TITLE = "PCA, scree and PC figures"
DEPS = ("ingest", "outliers")
READS = ("pca.latent_dim", "pca.variance_explained")
OUTPUTS = ("pca.p", "pca_scree.pdf", "pca_scree.png")


def run(ctx):
    from ..kpms import project

    pd = str(ctx.project_dir)
    coords, confs, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
    config = project.load_config(pd)
    data, _ = project.format_data(coords, confs, config)
    pca = project.fit_pca(data, config, pd)
    n_max = len(pca.explained_variance_ratio_)
    wanted = ctx.m["pca"]["latent_dim"]
    if wanted is not None:
        latent_dim = min(int(wanted), n_max)
        if latent_dim < wanted:
            log.warning("pca.latent_dim %d is more than the %d PCs the data have; using %d",
                        wanted, n_max, latent_dim)
        how = "pca.latent_dim"
    else:
        latent_dim = project.pca_dims_for(pca, ctx.m["pca"]["variance_explained"])
        how = f"fewest PCs explaining {ctx.m['pca']['variance_explained']:.0%} of variance"
    if latent_dim < MIN_LATENT_DIM:
        # jax-moseq's AR and Kalman steps need a latent matrix: latent_dim 1 fails inside the
        # AR-HMM with a TypeError (real data: two IBL paw keypoints, 1 PC after alignment)
        if n_max < MIN_LATENT_DIM:
            bp = ctx.info("ingest").get("use_bodyparts") or "all"
            raise InputDataError(
                f"the aligned poses have only {n_max} principal component(s); keypoint-moseq needs at "
                f"least {MIN_LATENT_DIM} (bodyparts.use: {bp}). Track or use more bodyparts: with "
                f"2 keypoints in 2D only 1 pose dimension is left after alignment")
        log.info("latent_dim %d raised to %d, the least keypoint-moseq can fit", latent_dim, MIN_LATENT_DIM)
        latent_dim = MIN_LATENT_DIM
    explained = project.pca_variance(pca, latent_dim)
    project.update_config(pd, latent_dim=int(latent_dim))
    project.plot_pca(pca, project.load_config(pd), pd)
    log.info("latent_dim %d (%s) explains %.1f%% of pose variance", latent_dim, how, 100 * explained)
    return {"latent_dim": int(latent_dim), "variance_explained": round(explained, 4), "chosen_by": how,
            "variance_ratio": [round(float(v), 5) for v in pca.explained_variance_ratio_]}

"""PCA of the aligned poses; latent_dim from the manifest or from the variance to explain."""

from __future__ import annotations

import logging

from . import arrays

log = logging.getLogger("kpms_job")


def run(ctx):
    from .. import kpms_adapter as A

    pd = str(ctx.project_dir)
    coords, confs, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
    config = A.load_config(pd)
    data, _ = A.format_data(coords, confs, config)
    pca = A.fit_pca(data, config, pd)
    n_max = len(pca.explained_variance_ratio_)
    wanted = ctx.m["pca"]["latent_dim"]
    if wanted is not None:
        latent_dim = min(int(wanted), n_max)
        if latent_dim < wanted:
            log.warning("pca.latent_dim %d is more than the %d PCs the data have; using %d",
                        wanted, n_max, latent_dim)
        how = "pca.latent_dim"
    else:
        latent_dim = A.pca_dims_for(pca, ctx.m["pca"]["variance_explained"])
        how = f"fewest PCs explaining {ctx.m['pca']['variance_explained']:.0%} of variance"
    explained = A.pca_variance(pca, latent_dim)
    A.update_config(pd, latent_dim=int(latent_dim))
    A.plot_pca(pca, A.load_config(pd), pd)
    log.info("latent_dim %d (%s) explains %.1f%% of pose variance", latent_dim, how, 100 * explained)
    return {"latent_dim": int(latent_dim), "variance_explained": round(explained, 4), "chosen_by": how,
            "outputs": ["pca.p", "pca_scree.pdf"]}

"""The keypoint-moseq project: its config, outlier removal, data formatting and PCA."""

from __future__ import annotations

import os

import numpy as np

from .common import kpms, quiet


# --------------------------------------------------------------------------- config
def setup_project(project_dir: str, *, bodyparts, use, anterior, posterior, skeleton, fps,
                  video_dir, conf_threshold, outlier_scale_factor, noise_calibration,
                  num_states, kappa, seed) -> None:
    extra = {}
    if noise_calibration:
        extra["error_estimator"] = {"slope": float(noise_calibration["slope"]),
                                    "intercept": float(noise_calibration["intercept"])}
    with quiet():
        kpms.setup_project(
            project_dir, overwrite=True,
            bodyparts=list(bodyparts), use_bodyparts=list(use),
            anterior_bodyparts=list(anterior), posterior_bodyparts=list(posterior),
            skeleton=[list(p) for p in skeleton], fps=float(fps), video_dir=video_dir or "",
            conf_threshold=float(conf_threshold), outlier_scale_factor=float(outlier_scale_factor),
            **extra)
        kpms.update_config(project_dir, num_states=int(num_states), kappa=float(kappa),
                           seed=int(seed))


def load_config(project_dir: str) -> dict:
    with quiet():
        return kpms.load_config(project_dir)


def update_config(project_dir: str, **kwargs) -> None:
    """update_config, with numpy scalars cast (they corrupt the YAML otherwise)."""
    clean = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kwargs.items()}
    with quiet():
        kpms.update_config(project_dir, **clean)


# --------------------------------------------------------------------------- data
def remove_outliers(coords, confs, project_dir, scale, bodyparts):
    with quiet():
        return kpms.outlier_removal(dict(coords), dict(confs), project_dir, overwrite=True,
                                    outlier_scale_factor=float(scale), bodyparts=list(bodyparts))


def format_data(coords, confs, config):
    """kpms.format_data with 64-bit inputs.

    keypoint-moseq casts the coordinates to float64 but not the confidences, and SLEAP
    files hold float32 scores: ``init_model`` then refuses the data ("JAX is configured
    to use 64-bit precision, but following arguments contain 32-bit arrays").
    """
    coords = {k: np.asarray(v, dtype=np.float64) for k, v in coords.items()}
    confs = {k: np.asarray(v, dtype=np.float64) for k, v in confs.items()}
    with quiet():
        return kpms.format_data(coords, confs, **config)


# --------------------------------------------------------------------------- PCA
def fit_pca(data, config, project_dir):
    with quiet():
        pca = kpms.fit_pca(**data, **config)
        kpms.save_pca(pca, project_dir)
    return pca


def load_pca(project_dir):
    with quiet():
        return kpms.load_pca(project_dir)


def pca_dims_for(pca, fraction: float) -> int:
    cs = np.cumsum(pca.explained_variance_ratio_)
    above = np.nonzero(cs >= fraction - 1e-12)[0]
    return int(above[0] + 1) if len(above) else len(cs)


def pca_variance(pca, dims: int) -> float:
    return float(np.sum(pca.explained_variance_ratio_[:dims]))


def plot_pca(pca, config, project_dir):
    with quiet():
        fig = kpms.plot_scree(pca, project_dir=project_dir)
        fig.savefig(os.path.join(project_dir, "pca_scree.png"), dpi=150)  # the report shows PNGs
        kpms.plot_pcs(pca, project_dir=project_dir, interactive=False, **config)

"""Outlier removal with keypoint-moseq's medoid-distance detector, and its QA plots."""

from __future__ import annotations

import numpy as np

from . import arrays

TITLE = "outlier removal and QA plots"
DEPS = ("ingest",)
READS = ("preprocessing.outlier_scale_factor",)
OUTPUTS = (".kpms-job/preprocessed.npz", "QA/plots")


def run(ctx):
    from ..kpms import project

    coords, confs, bodyparts = arrays.load(ctx.work_dir / "keypoints.npz")
    before = {n: np.isnan(c).any(-1) for n, c in coords.items()}
    scale = ctx.m["preprocessing"]["outlier_scale_factor"]
    coords, confs = project.remove_outliers(coords, confs, str(ctx.project_dir), scale, bodyparts)
    project.update_config(str(ctx.project_dir), outlier_scale_factor=float(scale))  # the factor used, not ingest's
    arrays.save(ctx.work_dir / "preprocessed.npz", coords, confs, bodyparts)
    # keypoints whose confidence was set to 0 were interpolated: outliers plus missing ones
    interpolated = {n: int((np.asarray(confs[n]) == 0).sum()) for n in coords}
    missing = {n: int(before[n].sum()) for n in coords}
    return {"interpolated_keypoints": interpolated, "missing_keypoints": missing}

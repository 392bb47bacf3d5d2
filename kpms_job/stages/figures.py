"""Syllable figures and grid movies. A figure that cannot be drawn is reported, not fatal."""

from __future__ import annotations

import logging

from . import arrays

log = logging.getLogger("kpms_job")


def run(ctx):
    from .. import kpms_adapter as A

    pd, name, out = str(ctx.project_dir), ctx.model_name, ctx.m["outputs"]
    results = A.load_results(pd, name)
    config = A.load_config(pd)
    coords, _, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
    made, failed = [], {}

    def attempt(label, fn, *args, **kw):
        try:
            n = fn(*args, **kw)
            made.append(label if n is None else f"{label}: {n} movies")
        except Exception as exc:  # noqa: BLE001 - one figure must not sink the job
            failed[label] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("could not make %s: %s", label, failed[label])

    if out["figures"]:
        attempt("syllable_frequencies", A.plot_frequencies, results, pd, name)
        attempt("duration_distribution", A.plot_durations, results, pd, name, ctx.fps)
        attempt("similarity_dendrogram", A.plot_dendrogram, coords, results, pd, name, config)
    if out["grid_movies"]:
        videos = ctx.m["inputs"].get("videos")
        label = "grid_movies (video)" if videos else "grid_movies (keypoints only)"
        attempt(label, A.grid_movies, results, pd, name, coords, config, videos)
    return {"made": made, "failed": failed, "outputs": []}

"""results.h5 and the per-recording CSVs, with keypoint-moseq's own writers."""

from __future__ import annotations

TITLE = "results.h5 and per-recording CSVs"
DEPS = ("ingest", "reindex")
READS = ("model.name", "outputs.csv")
OUTPUTS = ("{model}/results.h5", "{model}/results")


def run(ctx):
    from ..kpms import results as R

    pd, name = str(ctx.project_dir), ctx.model_name
    results = R.extract_results(pd, name)
    outputs = [f"{name}/results.h5"]
    if ctx.m["outputs"]["csv"]:
        R.save_csvs(results, pd, name)
        outputs.append(f"{name}/results")
    stats = R.syllable_stats(results, ctx.fps)
    return {**stats, "recordings": sorted(results), "outputs": outputs}

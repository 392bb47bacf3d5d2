"""results.h5 and the per-recording CSVs, with keypoint-moseq's own writers; NWB files when asked."""

from __future__ import annotations

TITLE = "results.h5, CSVs and NWB files"
DEPS = ("ingest", "reindex")
READS = ("model.name", "outputs.csv", "outputs.nwb", "nwb")
OUTPUTS = ("{model}/results.h5", "{model}/results", "{model}/nwb")


def run(ctx):
    from ..kpms import results as R

    pd, name = str(ctx.project_dir), ctx.model_name
    results = R.extract_results(pd, name)
    outputs = [f"{name}/results.h5"]
    if ctx.m["outputs"]["csv"]:
        R.save_csvs(results, pd, name)
        outputs.append(f"{name}/results")
    if ctx.m["outputs"]["nwb"]:
        from .. import nwb_export

        ingest, full = ctx.info("ingest"), ctx.info("full_model")
        provenance = {"model": name, "project_dir": pd, "kappa": full.get("kappa"),
                      "seed": ctx.m["model"]["seed"], "num_states": ctx.m["model"]["num_states"],
                      "fps": ctx.fps, "versions": ctx.versions, "manifest": ctx.m}
        nwb_export.write_all(ctx.project_dir / name / "nwb", results,
                             {n: r["file"] for n, r in ingest["recordings"].items()}, ctx.fps,
                             int(ctx.m["model"]["num_states"]), provenance, ctx.m.get("nwb"))
        outputs.append(f"{name}/nwb")
    stats = R.syllable_stats(results, ctx.fps)
    return {**stats, "recordings": sorted(results), "outputs": outputs}

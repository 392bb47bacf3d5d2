"""Group statistics with keypoint-moseq's analysis functions, and the syllable names.

With ``groups`` in the manifest: keypoint-moseq's ``index.csv`` in the project dir (its functions
read the groups there), and in ``<model>/analysis/``: ``moseq_df.csv`` and ``stats_df.csv``
(``compute_moseq_df``, ``compute_stats_df``); the syllable statistics figures for frequency and
duration (``plot_syll_stats_with_sem``; with two groups or more its Kruskal-Wallis and Dunn tests
mark the syllables that differ, and their p-values go to ``kruskal_<stat>.csv`` and
``dunn_<stat>.csv``; with one group there is nothing to compare and no test runs); the transition
matrices per group (``transition_matrices.npz`` and one CSV per group, as
``generate_transition_matrices`` computes them: see :func:`kpms_job.kpms.analysis.transition_matrices`
for why not with that function itself), their heatmaps (``visualize_transition_bigram``) and the
transition graphs (``plot_transition_graph_group``).

Recordings that no group names go to the group ``ungrouped``, and only when groups are given at
all: without groups this stage writes no statistics (keypoint-moseq would put every recording in
one group, "default", with nothing to compare). Recordings excluded by ingest are left out, and
so is a group left with none.

With ``syllable_names``: ``<model>/syll_info.csv``, keypoint-moseq's own file, where its analysis
figures find the labels. Without them an existing syll_info.csv (from keypoint-moseq's labelling
widget) is left as it is.

The keypoint-moseq calls run in a child process (``python -m kpms_job.stages.analysis``) under
the figures stage's memory cap (:func:`kpms_job.stages.figures.run_isolated`): moseq_df holds a
row per frame. What cannot be made is reported (``failed``), never fatal.

The stage info, for the report (paths relative to the project dir)::

    {"groups": {group: [recordings]}, "compared": bool, "syllable_names": {"3": "groom"},
     "files": {"index": "index.csv", "syll_info": "<model>/syll_info.csv",
               "moseq_df": "<model>/analysis/moseq_df.csv", "stats_df": "...",
               "syllable_stats": [png per stat], "significance": [kruskal/dunn CSVs],
               "transition_matrices": [npz, CSV per group], "transition_heatmaps": [png],
               "transition_graphs": [png]},
     "made": [labels], "failed": {label: why}}
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from .figures import memory_cap, run_isolated

TITLE = "group statistics and transitions"
DEPS = ("ingest", "results")
READS = ("model.name", "model.num_states", "groups", "syllable_names")
OUTPUTS = ("index.csv", "{model}/syll_info.csv", "{model}/analysis")

STATS = ("frequency", "duration")
#: What the child makes, in order: each label needs the ones before it in the child that draws it.
LABELS = ("moseq_df", "stats_df", *(f"syllable_stats ({s})" for s in STATS), "transition_matrices",
          "transition_graphs")


def _child(project_dir: str, model_name: str, fps: float, compare: bool, groups: dict, labels: list[str]) -> int:
    """In the child: make ``labels`` with keypoint-moseq, one JSON line each (figures.run_isolated)."""
    import pandas as pd

    from ..kpms import analysis as A

    out = Path(project_dir) / model_name / "analysis"
    cache: dict = {}

    def moseq():
        if "moseq" not in cache:
            cache["moseq"] = A.moseq_df(project_dir, model_name, fps)
        return cache["moseq"]

    def stats():
        if "stats" not in cache:
            path = out / "stats_df.csv"  # a fresh child after a failure reads what an earlier one wrote
            cache["stats"] = pd.read_csv(path) if path.exists() else A.stats_df(moseq())
        return cache["stats"]

    def transitions():
        if "trans" not in cache:
            cache["trans"] = A.transition_matrices(project_dir, model_name, groups)
        return cache["trans"]

    def syllable_stats(stat):
        A.plot_syllable_stats(stats(), project_dir, model_name, str(out), stat, compare)
        if compare:
            kruskal, dunn = A.significance(stats(), stat)
            kruskal.to_csv(out / f"kruskal_{stat}.csv", index=False)
            dunn.to_csv(out / f"dunn_{stat}.csv")

    def transition_matrices():
        mats, usages, groups, syllables = transitions()
        A.save_transition_matrices(out, mats, usages, groups, syllables)
        A.plot_transition_heatmaps(project_dir, model_name, str(out), mats, groups, syllables)

    def transition_graphs():
        mats, usages, groups, syllables = transitions()
        A.plot_transition_graphs(project_dir, model_name, str(out), mats, usages, groups, syllables)

    make = {"moseq_df": lambda: moseq().to_csv(out / "moseq_df.csv", index=False),
            "stats_df": lambda: stats().to_csv(out / "stats_df.csv", index=False),
            "transition_matrices": transition_matrices, "transition_graphs": transition_graphs}
    make.update({f"syllable_stats ({s})": (lambda s=s: syllable_stats(s)) for s in STATS})
    for label in labels:
        try:
            make[label]()
            error = None
        except Exception as exc:  # noqa: BLE001 - one output must not sink the others
            text = str(exc).strip()
            error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        print(json.dumps({"label": label, "error": error}), flush=True)
    return 0


def _files(ctx, made: list[str]) -> dict:
    """The files made, relative to the project dir, by the report's keys: moseq_df and stats_df
    when made, every list (empty when its output failed)."""
    pd, name = ctx.project_dir, ctx.model_name
    out = pd / name / "analysis"

    def rel(paths):
        return [str(p.relative_to(pd)) for p in sorted(paths) if p.exists()]

    files = {}
    if "moseq_df" in made:
        files["moseq_df"] = f"{name}/analysis/moseq_df.csv"
    if "stats_df" in made:
        files["stats_df"] = f"{name}/analysis/stats_df.csv"
    files["syllable_stats"] = rel(out / f"{s}_stat_stats.png" for s in STATS if f"syllable_stats ({s})" in made)
    files["significance"] = rel([*out.glob("kruskal_*.csv"), *out.glob("dunn_*.csv")])
    matrices = "transition_matrices" in made
    files["transition_matrices"] = rel([out / "transition_matrices.npz", *out.glob("transition_matrix_*.csv")]
                                       if matrices else [])
    files["transition_heatmaps"] = rel([out / "transition_matrices.png"] if matrices else [])
    files["transition_graphs"] = rel([out / "transition_graphs.png"] if "transition_graphs" in made else [])
    return files


def run(ctx):
    from .. import groups as G
    from ..kpms import analysis as A

    pd, name, m = str(ctx.project_dir), ctx.model_name, ctx.m
    ing = ctx.info("ingest")
    names = m.get("syllable_names") or {}
    info = {"groups": {}, "compared": False, "syllable_names": names, "files": {}, "made": [], "failed": {},
            "outputs": []}
    if names:
        A.write_syll_info(pd, name, names, int(m["model"]["num_states"]))
        info["files"]["syll_info"] = f"{name}/syll_info.csv"
        info["outputs"].append(f"{name}/syll_info.csv")
    out = ctx.project_dir / name / "analysis"
    shutil.rmtree(out, ignore_errors=True)  # nothing stale from other groups survives
    if not m.get("groups"):
        return info
    used = set(ing["used"])
    assigned = G.assign(m["groups"], list(ing["recordings"]))
    groups = {g: [r for r in recs if r in used] for g, recs in assigned.items()}
    groups = {g: recs for g, recs in groups.items() if recs}
    A.write_index(pd, groups)
    out.mkdir(parents=True)
    compare = len(groups) > 1
    info.update(groups=groups, compared=compare)
    info["files"]["index"] = "index.csv"
    info["outputs"] += ["index.csv", f"{name}/analysis"]
    made, failed = run_isolated(
        lambda todo: [sys.executable, "-m", "kpms_job.stages.analysis", pd, name, str(float(ctx.fps)),
                      "1" if compare else "0", json.dumps(groups), *todo],
        LABELS, memory_cap(), float(os.environ.get("KPMS_JOB_FIGURE_TIMEOUT_S", 1800)))
    info.update(made=made, failed=failed)
    info["files"].update(_files(ctx, made))
    return info


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1", json.loads(sys.argv[5]),
                    sys.argv[6:]))

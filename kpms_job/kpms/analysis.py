"""Group statistics with keypoint-moseq's analysis functions: moseq_df, stats_df, the syllable
statistics figures with their significance tests, transition matrices and graphs.

keypoint-moseq reads groups from ``<project>/index.csv`` and syllable names from
``<project>/<model>/syll_info.csv``; :func:`write_index` and :func:`write_syll_info` write those
files, so its own functions (and its notebooks, later) see the manifest's groups and names.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .common import kpms, quiet


def _atomic_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def safe_name(group: str) -> str:
    """A group's name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", group) or "_"


def write_index(project_dir: str, groups: dict[str, list[str]]) -> Path:
    """keypoint-moseq's index.csv (name,group) with one row per recording."""
    path = Path(project_dir) / "index.csv"
    _atomic_csv(path, ["name", "group"], [[r, g] for g, recs in groups.items() for r in recs])
    return path


def write_syll_info(project_dir: str, model_name: str, names: dict[str, str], num_states: int) -> Path:
    """keypoint-moseq's syll_info.csv: a row for every syllable (its label lookup fails on a syllable
    without one), the manifest's names as labels, and the grid movie where there is one."""
    movies = Path(project_dir) / model_name / "grid_movies"
    rows = []
    for ix in range(num_states):
        movie = movies / f"syllable{ix}.mp4"
        rows.append([ix, names.get(str(ix), ""), "", str(movie) if movie.exists() else ""])
    path = Path(project_dir) / model_name / "syll_info.csv"
    _atomic_csv(path, ["syllable", "label", "short_description", "movie_path"], rows)
    return path


def syllable_labels(project_dir: str, model_name: str, syllables) -> list[str]:
    """The labels keypoint-moseq's figures show for ``syllables`` ("3 (groom)" where named)."""
    return kpms.get_syllable_names(project_dir, model_name, list(syllables))


def moseq_df(project_dir: str, model_name: str, fps: float):
    with quiet():
        return kpms.compute_moseq_df(project_dir, model_name, fps=fps)


def stats_df(moseq):
    with quiet():
        return kpms.compute_stats_df(moseq)


def plot_syllable_stats(stats, project_dir: str, model_name: str, save_dir: str, stat: str,
                        compare: bool) -> Path:
    """keypoint-moseq's syllable statistics figure for ``stat``, one colour per group; with
    ``compare`` its Kruskal-Wallis and Dunn tests mark the syllables that differ between groups."""
    # keypoint-moseq sorts syllables by a stat other than frequency after dropping the "object"
    # columns; pandas 3 reads text as its "str" dtype, which it would keep and fail to average
    text = {c: object for c in ("group", "name") if c in stats.columns}
    path = Path(save_dir) / f"{stat}_stat_stats.png"
    with quiet():
        fig, _ = kpms.plot_syll_stats_with_sem(stats.astype(text), project_dir, model_name, save_dir=save_dir,
                                               stat=stat, plot_sig=compare)
        # saved again to fit the figure: keypoint-moseq's cuts the named tick labels and the legend
        fig.savefig(path, dpi=150, bbox_inches="tight")
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path


def significance(stats, stat: str):
    """keypoint-moseq's Kruskal-Wallis test per syllable and Dunn's test per pair of groups, as the
    statistics figure runs them: (kruskal DataFrame, dunn DataFrame)."""
    with quiet():
        kruskal, dunn, _ = kpms.run_kruskal(stats, statistic=stat)
    return kruskal, dunn


def transition_matrices(project_dir: str, model_name: str, groups: dict[str, list[str]], min_frequency=0.005):
    """Bigram transition matrices per group over the syllables above ``min_frequency``:
    (matrices, usages, groups, syllables), as keypoint-moseq's ``generate_transition_matrices``
    returns them and from its own ``get_transition_matrix`` and ``get_frequencies``.

    Not that function itself: it takes each group's syllable usages over the syllables the group
    uses up to its own highest, then indexes them with syllables of the whole data set, and fails
    with an IndexError when a group never uses one of the highest (seen on the bundled example
    split in four). Here every usage vector spans all syllables.
    """
    with quiet():
        results = kpms.load_results(project_dir, model_name)
    labels = {r: np.asarray(v["syllable"]) for r, v in results.items()}
    num = 1 + max(int(z.max()) for z in labels.values())
    syllables = np.where(kpms.get_frequencies(list(labels.values()), num_states=num) > min_frequency)[0]
    names = sorted(groups)
    mats, usages = [], []
    for g in names:
        seqs = [labels[r] for r in groups[g]]
        mat = kpms.get_transition_matrix(seqs, max_syllable=num, normalize="bigram", combine=True)
        mats.append(mat[syllables, :][:, syllables])
        usages.append(kpms.get_frequencies(seqs, num_states=num)[syllables])
    return mats, usages, names, syllables


def save_transition_matrices(out_dir: Path, mats, usages, groups, syllables) -> list[Path]:
    """One npz with every group's matrix, and one CSV per group (rows: from, columns: to)."""
    npz = out_dir / "transition_matrices.npz"
    np.savez(npz, syllables=np.asarray(syllables), groups=np.asarray(groups, dtype=str),
             **{f"matrix_{safe_name(g)}": m for g, m in zip(groups, mats, strict=True)},
             **{f"usage_{safe_name(g)}": u for g, u in zip(groups, usages, strict=True)})
    paths = [npz]
    for g, mat in zip(groups, mats, strict=True):
        path = out_dir / f"transition_matrix_{safe_name(g)}.csv"
        _atomic_csv(path, ["from \\ to"] + [str(s) for s in syllables],
                    [[str(s)] + [f"{v:.6g}" for v in row] for s, row in zip(syllables, mat, strict=True)])
        paths.append(path)
    return paths


def _smaller_png(path: Path) -> None:
    """The figure keypoint-moseq just saved (and left open), saved again at 100 dpi: at its 300 dpi
    a transition graph of two groups is a 6000 x 3000 pixel PNG of about 1 MB, for a report."""
    plt.gcf().savefig(path, dpi=100, bbox_inches="tight")


def plot_transition_graphs(project_dir: str, model_name: str, save_dir: str, mats, usages, groups,
                           syllables) -> Path:
    """keypoint-moseq's transition graph of each group, nodes labelled with the syllable names."""
    path = Path(save_dir) / "transition_graphs.png"
    with quiet():
        kpms.plot_transition_graph_group(project_dir, model_name, list(groups), mats, usages, syllables,
                                         save_dir=save_dir, show_syllable_names=True)
        _smaller_png(path)
    return path


def plot_transition_heatmaps(project_dir: str, model_name: str, save_dir: str, mats, groups, syllables) -> Path:
    """keypoint-moseq's heatmaps of the groups' transition matrices, side by side."""
    path = Path(save_dir) / "transition_matrices.png"
    with quiet():
        kpms.visualize_transition_bigram(project_dir, model_name, list(groups), mats, syllables,
                                         save_dir=save_dir, normalize="bigram", show_syllable_names=True)
        _smaller_png(path)
    return path

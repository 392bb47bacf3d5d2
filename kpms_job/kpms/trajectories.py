"""keypoint-moseq's trajectory plots (``generate_trajectory_plots``) from a bounded number of frames.

Its typical trajectory of a syllable comes from density sampling: ``sample_instances`` computes
the trajectory of EVERY instance of every syllable (before + after onset frames x keypoints x 2,
float64), fits a PCA and nearest neighbours on them, and keeps 50 neighbours of an exemplar. Its
options cap only the PCA's sample (``pca_samples``), so its memory grows with the number of
instances, that is with the frames. The job hands it at most :data:`MAX_FRAMES` frames: the first
frames of every recording, each in proportion to its length. 200,000 frames give each syllable
above 0.5% at least about 1,000 frames, far more than the 50 instances the sampler keeps.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .common import kpms, log, quiet

MAX_FRAMES = 200_000
#: Instances the density sampler keeps per syllable (keypoint-moseq's default 50 first); a syllable
#: needs that many to be drawn, so short data fall back to fewer, as the grid movies do.
NEIGHBOURS = (50, 20, 10)


def first_frames(coords: dict, results: dict, max_frames: int = MAX_FRAMES) -> tuple[dict, dict]:
    """``coords`` and ``results`` cut to at most ``max_frames`` frames in all: the same share of each
    recording, from its start (every per-frame array of the results is cut alike)."""
    total = sum(len(v["syllable"]) for v in results.values())
    if total <= max_frames:
        return coords, results
    share = max_frames / total
    cut_coords, cut_results = {}, {}
    for name, res in results.items():
        n = len(res["syllable"])
        keep = max(1, int(n * share))
        cut_results[name] = {k: (np.asarray(v)[:keep] if np.ndim(v) and len(v) == n else v) for k, v in res.items()}
        cut_coords[name] = np.asarray(coords[name])[:keep]
    return cut_coords, cut_results


@contextlib.contextmanager
def _png_beside_pdf():
    """keypoint-moseq saves its trajectory plots as PDF only; save a PNG beside each one too."""
    original = plt.savefig

    def savefig(fname, *args, **kwargs):
        original(fname, *args, **kwargs)
        if str(fname).endswith(".pdf"):
            original(str(fname)[:-4] + ".png", *args, **{**kwargs, "dpi": 100})

    plt.savefig = savefig
    try:
        yield
    finally:
        plt.savefig = original


def plot(coords: dict, results: dict, project_dir: str, model_name: str, config: dict, fps: float,
         max_frames: int = MAX_FRAMES) -> list[Path]:
    """One plot per syllable and one of all (``Syllable<N>.png``, ``all_trajectories.png``, with PDFs)
    in ``<project>/<model>/trajectory_plots``, no GIFs; returns the PNGs."""
    out = Path(project_dir) / model_name / "trajectory_plots"
    shutil.rmtree(out, ignore_errors=True)  # another fit's syllables must not linger
    coords, results = first_frames(dict(coords), dict(results), max_frames)
    settings = {**config, "fps": fps, "save_gifs": False, "save_mp4s": False, "save_individually": True}
    for n in NEIGHBOURS:
        try:
            with quiet(), _png_beside_pdf():
                kpms.generate_trajectory_plots(coords, results, project_dir, model_name,
                                               sampling_options={"n_neighbors": n}, **settings)
            break
        except ValueError as exc:  # raised before any work: no syllable has n instances
            if "sufficient instances" not in str(exc) or n == NEIGHBOURS[-1]:
                raise
            log.info("trajectory plots: no syllable has %d instances; trying fewer", n)
    return sorted(out.glob("*.png"))

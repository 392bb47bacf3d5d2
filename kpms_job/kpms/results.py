"""Results of a finished fit: reindexing, results.h5, CSV files, statistics and figures."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from jax_moseq.utils import get_durations

from ..errors import InputDataError
from .common import kpms, log, quiet

REINDEX_MARK = "kpms_job_reindexed"


def reindex_at(path: str):
    """Reindex the checkpoint at ``path`` by frequency and mark it as done."""
    with quiet():
        kpms.reindex_syllables_in_checkpoint(path=path)
    with h5py.File(path, "a") as f:
        f.attrs[REINDEX_MARK] = True


def is_reindexed(path: str) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get(REINDEX_MARK, False))


def extract_results(project_dir, model_name):
    path = Path(project_dir) / model_name / "results.h5"
    if path.exists():
        path.unlink()
    with quiet():
        model, _, metadata, _ = kpms.load_checkpoint(project_dir, model_name)
        return kpms.extract_results(model, metadata, project_dir, model_name)


def save_csvs(results, project_dir, model_name):
    with quiet():
        kpms.save_results_as_csv(results, project_dir, model_name)


def load_results(project_dir, model_name):
    with quiet():
        return kpms.load_results(project_dir, model_name)


def syllable_stats(results, fps: float) -> dict:
    z = {k: np.asarray(v["syllable"]) for k, v in results.items()}
    durs = get_durations(z)
    allz = np.concatenate(list(z.values()))
    freqs = np.bincount(allz) / len(allz)
    return {"median_duration_ms": float(np.median(durs)) * 1000.0 / fps,
            "syllables_over_0_5pct": int(np.sum(freqs > 0.005)),
            "syllables_used": int(np.sum(freqs > 0)),
            # fraction of frames per syllable (reindexed: most frequent first), for the report
            "frame_fractions": [round(float(f), 6) for f in freqs]}


# --------------------------------------------------------------------------- figures
def _savefig(fig, project_dir, model_name, stem):
    base = Path(project_dir) / model_name / stem
    fig.savefig(f"{base}.pdf")
    fig.savefig(f"{base}.png", dpi=150)


def plot_frequencies(results, project_dir, model_name):
    with quiet():
        fig, _ = kpms.plot_syllable_frequencies(results=results)
        _savefig(fig, project_dir, model_name, "syllable_frequencies")


def plot_durations(results, project_dir, model_name, fps):
    with quiet():
        fig, _ = kpms.plot_duration_distribution(results=results, fps=fps)
        _savefig(fig, project_dir, model_name, "duration_distribution")


def plot_dendrogram(coords, results, project_dir, model_name, config):
    with quiet():
        kpms.plot_similarity_dendrogram(dict(coords), results, project_dir, model_name, **config)


def grid_movies(results, project_dir, model_name, coords, config, video_dir=None) -> int:
    """Grid movies per syllable, in ``<project>/<model>/grid_movies/syllable<N>.webm``.

    Written by :mod:`kpms_job.kpms.movies` one syllable at a time, one frame at a time, in this
    process (keypoint-moseq's ``generate_grid_movies`` holds whole movies as float64 and forks
    for ffmpeg). The grid shrinks for short data (4x6, 3x4, 2x3, 1x2); a rerun skips movies
    already written for the same results. Returns the movies there.
    """
    from . import movies

    with quiet():
        done = movies.write_grid_movies(results, project_dir, model_name, dict(coords), config,
                                        video_dir, seed=int(config.get("seed", 0) or 0))
    if done["grid"] is None:
        raise InputDataError("no syllable has enough instances for a grid movie (the data are short)")
    log.info("grid movies (%dx%d): %d written, %d already there", *done["grid"], len(done["written"]),
             len(done["skipped"]))
    return len(done["written"]) + len(done["skipped"])

"""A fitted model applied to new recordings: keypoint-moseq's ``apply_model``, one batch at a time,
and the applied results file, updated one batch at a time without ever being half written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..state import output_error
from . import patches
from .common import kpms, quiet
from .project import format_data


def load_model(project_dir: str, model_name: str) -> dict:
    """The model of the checkpoint's latest snapshot (the fit reindexed it: its labels are the fit's)."""
    with quiet():
        model, _, _, _ = kpms.load_checkpoint(project_dir, model_name)
    return model


def latent_dim(model: dict) -> int:
    return int(np.asarray(model["params"]["Cd"]).shape[-1] - 1)


def apply_batch(model: dict, coords: dict, confs: dict, config: dict, num_iters: int,
                kalman_scan: bool) -> dict:
    """Labels for the recordings of one batch: ``{name: {syllable, latent_state, centroid, heading}}``.

    ``apply_model`` resamples only the states (the fitted parameters stay), with the model's own
    random key, so one batch applied twice gets the same labels. ``kalman_scan``: whether the
    associative-scan Kalman sampler may run here (never on a CPU, where its batched LU can
    deadlock XLA: :func:`kpms_job.resources.model.kalman_scan_allowed`); the fit's patches are
    installed first, so the centroid step obeys it too.
    """
    patches.install(location_scan=kalman_scan)
    data, metadata = format_data(coords, confs, config)
    # the project config goes along, as keypoint-moseq's docs apply a model (init_model needs its
    # error_estimator for the noise prior; the fitted hypparams and params take precedence)
    with quiet():
        return kpms.apply_model(model, data, metadata, num_iters=int(num_iters), save_results=False,
                                parallel_message_passing=bool(kalman_scan), **config)


def read_results(path: Path) -> dict:
    if not Path(path).exists():
        return {}
    with quiet():
        return kpms.load_hdf5(str(path))


def write_results(path: Path, results: dict) -> None:
    """Replace ``path`` with ``results`` atomically: a kill leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        with quiet():
            kpms.save_hdf5(str(tmp), results)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from exc


def save_csvs(results: dict, save_dir: Path) -> None:
    with quiet():
        kpms.save_results_as_csv(results, save_dir=str(save_dir))


def fitted_labels(project_dir: str, model_name: str) -> dict:
    """``{recording: syllable labels}`` of the fit's own results.h5."""
    with quiet():
        res = kpms.load_results(project_dir, model_name)
    return {k: np.asarray(v["syllable"]) for k, v in res.items()}

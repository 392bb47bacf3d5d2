"""Reading tracking files: one loader per format, keypoint-moseq's own where it reads the file.

Files keypoint-moseq's loader cannot read as they are are recognised by looking into the file
before loading it: a SLEAP analysis file without ``point_scores``, an NWB PoseEstimation without
a Skeleton, and multi-animal DeepLabCut files (keypoint-moseq returns their bodyparts as an
unordered set; the order is read from the file's columns).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import InputDataError
from .common import kpms, log, quiet


def _kpms_loader(path: str, fmt: str, exclude_individuals):
    with quiet():
        return kpms.load_keypoints(path, fmt, exclude_individuals=list(exclude_individuals))


# --------------------------------------------------------------------------- DeepLabCut
def _dlc_bodypart_order(path: str) -> list[str] | None:
    """Bodypart order of the keypoint axis of a multi-animal DeepLabCut file.

    keypoint-moseq 0.8.1 returns multi-animal bodyparts as a ``set`` whose order is
    arbitrary; the coordinates follow the column order of the file, read here.
    """
    import pandas as pd

    if path.endswith(".csv"):
        df = pd.read_csv(path, header=[0, 1, 2, 3], index_col=0, nrows=1)
    else:
        df = pd.read_hdf(path)
    if "individuals" not in (df.columns.names or []):
        return None
    first = df.columns.get_level_values("individuals").unique()[0]
    bps = df.xs(first, axis=1, level="individuals").columns.get_level_values("bodyparts")
    return list(dict.fromkeys(bps))


def load_deeplabcut(path: str, exclude_individuals):
    coords, confs, bodyparts = _kpms_loader(path, "deeplabcut", exclude_individuals)
    if isinstance(bodyparts, set):
        order = _dlc_bodypart_order(path)
        if order is None or set(order) != bodyparts:
            raise InputDataError(
                f"{path}: keypoint-moseq returned the bodyparts as an unordered set and their "
                "order could not be read from the file")
        bodyparts = order
    return coords, confs, list(bodyparts)


# --------------------------------------------------------------------------- SLEAP
def _sleap_analysis_without_scores(path: str) -> bool:
    """An analysis .h5 without ``point_scores`` (keypoint-moseq's loader needs them)."""
    if not path.endswith((".h5", ".hdf5")):
        return False
    with h5py.File(path, "r") as f:
        return "tracks" in f and "point_scores" not in f


def _read_sleap_analysis_without_scores(path: str, name: str):
    """The tracks of a SLEAP analysis .h5 without scores: confidence 1 where a point is tracked."""
    with h5py.File(path, "r") as f:
        coords = f["tracks"][()].transpose((0, 3, 2, 1))
        bodyparts = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["node_names"]]
    confs = np.where(np.isnan(coords).any(-1), 0.0, 1.0)
    if coords.shape[0] == 1:
        return {name: coords[0]}, {name: confs[0]}, bodyparts
    return ({f"{name}_track{i}": coords[i] for i in range(coords.shape[0])},
            {f"{name}_track{i}": confs[i] for i in range(coords.shape[0])}, bodyparts)


def load_sleap(path: str, exclude_individuals):
    if _sleap_analysis_without_scores(path):
        log.info("%s has no point_scores; confidences set to 1", path)
        return _read_sleap_analysis_without_scores(path, Path(path).stem)
    coords, confs, bodyparts = _kpms_loader(path, "sleap", exclude_individuals)
    return coords, confs, list(bodyparts)


# --------------------------------------------------------------------------- NWB
def _pose_estimations(path: str):
    """(io, the PoseEstimation objects) of an NWB file; close ``io`` after use."""
    from ndx_pose import PoseEstimation
    from pynwb import NWBHDF5IO

    nwbio = NWBHDF5IO(path, mode="r", load_namespaces=True)
    return nwbio, [o for o in nwbio.read().all_children() if isinstance(o, PoseEstimation)]


def _nwb_has_skeleton(path: str) -> bool:
    """Whether the file's one PoseEstimation names its nodes in a Skeleton (keypoint-moseq needs one)."""
    nwbio, objs = _pose_estimations(path)
    with nwbio:
        if len(objs) != 1:
            raise InputDataError(f"{path}: expected one PoseEstimation, found {len(objs)}")
        return getattr(objs[0], "skeleton", None) is not None


def _read_nwb_without_skeleton(path: str, name: str):
    """The pose series of a PoseEstimation without a Skeleton, in the file's series order."""
    nwbio, objs = _pose_estimations(path)
    with nwbio:
        series = objs[0].pose_estimation_series
        bodyparts = list(series.keys())
        coords = np.stack([series[bp].data[()] for bp in bodyparts], axis=1)
        confs = []
        for bp in bodyparts:
            c = series[bp].confidence
            confs.append(np.ones(coords.shape[0]) if c is None else np.asarray(c[()]))
        return {name: coords}, {name: np.stack(confs, axis=1)}, bodyparts


def load_nwb(path: str, exclude_individuals):
    if not _nwb_has_skeleton(path):
        log.info("%s has no Skeleton; reading its pose series directly", path)
        return _read_nwb_without_skeleton(path, Path(path).stem)
    coords, confs, bodyparts = _kpms_loader(path, "nwb", exclude_individuals)
    return coords, confs, list(bodyparts)


def nwb_fps(path: str) -> float | None:
    """Frame rate from an NWB pose series (rate, or median timestamp step)."""
    nwbio, objs = _pose_estimations(path)
    with nwbio:
        if not objs:
            return None
        s = next(iter(objs[0].pose_estimation_series.values()))
        if getattr(s, "rate", None):
            return float(s.rate)
        ts = s.timestamps
        if ts is None or len(ts) < 2:
            return None
        step = float(np.median(np.diff(np.asarray(ts[: min(len(ts), 10000)]))))
        return 1.0 / step if step > 0 else None


# --------------------------------------------------------------------------- any format
LOADERS = {"deeplabcut": load_deeplabcut, "sleap": load_sleap, "nwb": load_nwb}


def load_file(path: str, fmt: str, exclude_individuals: list[str]):
    """Load one tracking file (the loader of ``fmt``; keypoint-moseq's own for the other formats).

    Returns
    -------
    coordinates, confidences : dict of name -> ndarray
    bodyparts : list of str, in the order of the keypoint axis
    """
    loader = LOADERS.get(fmt)
    if loader is not None:
        return loader(path, exclude_individuals)
    coords, confs, bodyparts = _kpms_loader(path, fmt, exclude_individuals)
    if isinstance(bodyparts, set):
        raise InputDataError(f"{path}: keypoint-moseq returned the bodyparts as an unordered set and their "
                             "order could not be read from the file")
    return coords, confs, list(bodyparts)


def find_videos(video_dir: str, names: list[str]) -> dict:
    with quiet():
        return kpms.find_matching_videos(names, video_dir, as_dict=True)

"""Tracking files read without keypoint-moseq: one light reader per format (pandas, h5py, pynwb,
scipy, sleap-io), each following keypoint-moseq's own loader (``keypoint_moseq.io._*_loader``) for
the bodyparts, their order and the recordings a file holds.

Importing keypoint-moseq imports JAX (seconds); ``kpms-job init`` and ``kpms-job plan`` read
files before any fit and must answer in about a second. The fit itself reads with keypoint-moseq
(kpms_job/kpms/io.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputDataError


@dataclass
class Tracking:
    """One tracking file as read: its recordings (name -> frames x keypoints x dims)."""

    path: Path
    fmt: str
    bodyparts: list[str] | None
    recordings: dict[str, np.ndarray]
    skeleton: list[list[str]] = field(default_factory=list)
    fps: float | None = None
    fps_source: str | None = None
    video_hint: str | None = None  # a video file name the tracking file itself names (SLEAP)
    fps_note: str | None = None  # why the file's own timing gives no rate
    notes: list[str] = field(default_factory=list)


class NotTracking(Exception):
    """A file that opens but holds no tracking keypoint-moseq reads (labels, JABS, 3D DeepLabCut...)."""


# --------------------------------------------------------------------------- recognising files
def _decode(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def classify(path: Path) -> str:
    """The keypoint-moseq format of ``path``, from its extension and content.

    Raises NotTracking for a file that opens but holds no tracking keypoint-moseq reads, and
    OSError / ValueError for one that cannot be opened.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(4)]
        first = [c.strip() for c in head[0].split(",")]
        if first and first[0] == "scorer":  # DeepLabCut, also Lightning Pose: scorer/bodyparts/coords rows
            coords = next((r for r in head[1:] if r.startswith("coords,")), "")
            if "likelihood" not in coords:
                raise NotTracking("a DeepLabCut table without likelihood columns (labels, not predictions)")
            return "deeplabcut"
        if re.search(r"(?P<s>\w+)_x,(?P=s)_y,(?P=s)_z", head[0]) and "_score" in head[0]:
            return "anipose"
        raise NotTracking("a CSV that is neither a DeepLabCut table (scorer/bodyparts/coords rows) "
                          "nor an Anipose table (<bodypart>_x,_y,_z,_score columns)")
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "tracks" in keys and "node_names" in keys:
                return "sleap"
            tracks = f.get("tracks")
            if keys == {"tracks"} and isinstance(tracks, h5py.Dataset) and tracks.ndim == 4 and tracks.shape[-1] == 3:
                return "sleap-anipose"
            if "Facemap" in keys:
                return "facemap"
            if "poseest" in keys:
                raise NotTracking("a JABS pose file (keypoint-moseq has no loader for it)")
            pandas = "PYTABLES_FORMAT_VERSION" in f.attrs or any(
                "pandas_type" in f[k].attrs for k in keys if hasattr(f[k], "attrs"))
        if pandas:
            return "deeplabcut"  # checked further when read: x, y, likelihood columns
        raise NotTracking(f"an HDF5 file with {sorted(keys)[:6]}: not DeepLabCut, SLEAP, sleap-anipose or Facemap")
    if suffix == ".slp":
        return "sleap"
    if suffix == ".nwb":
        return "nwb"
    if suffix == ".mat":
        from scipy.io import whosmat

        names = {n for n, _, _ in whosmat(str(path))}
        if "pred" in names:
            return "dannce"
        raise NotTracking("a .mat file without DANNCE predictions ('pred')")
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list) and data and isinstance(data[0], dict) and "kp_xyz" in data[0]:
            return "freipose"
        raise NotTracking("a JSON file without FreiPose predictions (kp_xyz)")
    raise NotTracking(f"extension {suffix or '(none)'} is no tracking format's")


# --------------------------------------------------------------------------- reading files
def _read_deeplabcut(path: Path, exclude=("single",)) -> Tracking:
    import pandas as pd

    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", errors="replace") as f:
            multi = "individuals" in (f.readline() + f.readline())
        df = pd.read_csv(path, header=[0, 1, 2, 3] if multi else [0, 1, 2], index_col=0)
    else:
        df = pd.read_hdf(path)
    names = list(df.columns.names or [])
    if "coords" not in names or "bodyparts" not in names:
        raise NotTracking(f"a table without bodyparts/coords column levels (levels {names})")
    coords = list(dict.fromkeys(df.columns.get_level_values("coords")))
    if coords != ["x", "y", "likelihood"]:
        raise NotTracking(f"a DeepLabCut table with coords {coords}, expected x, y, likelihood "
                          "(labels or 3D output, not 2D predictions)")
    stem = path.stem
    recs = {}
    if "individuals" in names:
        bodyparts = None
        for ind in df.columns.get_level_values("individuals").unique():
            if ind in exclude:  # keypoint-moseq's default exclude_individuals: the unique-bodyparts "single"
                continue
            sub = df.xs(ind, axis=1, level="individuals")
            bps = list(dict.fromkeys(sub.columns.get_level_values("bodyparts")))
            bodyparts = bodyparts or bps
            recs[f"{stem}_{ind}"] = sub.to_numpy(dtype=float).reshape(len(sub), -1, 3)[:, :, :2]
    else:
        bodyparts = list(dict.fromkeys(df.columns.get_level_values("bodyparts")))
        recs[stem] = df.to_numpy(dtype=float).reshape(len(df), -1, 3)[:, :, :2]
    return Tracking(path, "deeplabcut", bodyparts, recs,
                    notes=[f"{len(recs)} individuals"] if "individuals" in names else [])


def _recordings(stem: str, arr: np.ndarray) -> dict[str, np.ndarray]:
    """keypoint-moseq's naming of tracks: one track keeps the file's name, more get _track<i>."""
    if arr.shape[0] == 1:
        return {stem: arr[0]}
    return {f"{stem}_track{i}": arr[i] for i in range(arr.shape[0])}


def _read_sleap(path: Path) -> Tracking:
    import h5py

    if path.suffix.lower() == ".slp":
        import sleap_io

        labels = sleap_io.load_slp(str(path))
        if len(labels.skeletons) != 1:
            raise NotTracking(f"{len(labels.skeletons)} skeletons (keypoint-moseq reads files with one)")
        sk = labels.skeletons[0]
        arr = labels.numpy(return_confidence=False)  # frames x tracks x nodes x 2
        t = Tracking(path, "sleap", list(sk.node_names), _recordings(path.stem, arr.transpose(1, 0, 2, 3)),
                     skeleton=[[e.source.name, e.destination.name] for e in sk.edges])
        if labels.videos:
            video = labels.videos[0]
            t.video_hint = Path(str(video.filename)).name
            fps = getattr(video, "fps", None) or (getattr(video, "backend_metadata", {}) or {}).get("fps")
            if fps:
                t.fps, t.fps_source = float(fps), f"SLEAP metadata of {path.name}"
        return t
    with h5py.File(path, "r") as f:
        tracks = f["tracks"][()].transpose((0, 3, 2, 1))  # tracks x frames x nodes x 2
        bodyparts = [_decode(n) for n in f["node_names"]]
        skeleton = [[_decode(a), _decode(b)] for a, b in f["edge_names"][()]] if "edge_names" in f else []
        hint = Path(_decode(f["video_path"][()])).name if "video_path" in f else None
    t = Tracking(path, "sleap", bodyparts, _recordings(path.stem, tracks),
                 skeleton=skeleton, video_hint=hint)
    return t


def _read_sleap_anipose(path: Path) -> Tracking:
    import h5py

    with h5py.File(path, "r") as f:
        tracks = f["tracks"][()]  # frames x tracks x nodes x 3
    bodyparts = [f"bodypart{i}" for i in range(tracks.shape[2])]  # keypoint-moseq's names: the file has none
    t = Tracking(path, "sleap-anipose", bodyparts, _recordings(path.stem, tracks.transpose(1, 0, 2, 3)))
    t.notes.append("sleap-anipose files carry no bodypart names: keypoint-moseq calls them bodypart0, 1, ...")
    return t


def _read_anipose(path: Path) -> Tracking:
    import pandas as pd

    with open(path, encoding="utf-8") as f:
        header = f.readline()
    bodyparts = list(re.findall(r"(?P<string>\w+)_x,(?P=string)_y,(?P=string)_z", header))
    df = pd.read_csv(path)
    arr = np.stack([df[[f"{bp}_x", f"{bp}_y", f"{bp}_z"]].to_numpy(dtype=float) for bp in bodyparts], axis=1)
    return Tracking(path, "anipose", bodyparts, {path.stem: arr})


def _read_facemap(path: Path) -> Tracking:
    import h5py

    with h5py.File(path, "r") as f:
        d = f["Facemap"]
        bodyparts = sorted(d.keys())  # keypoint-moseq's facemap loader sorts them
        arr = np.stack([np.stack([d[bp]["x"][()], d[bp]["y"][()]], axis=1) for bp in bodyparts], axis=1)
    return Tracking(path, "facemap", bodyparts, {path.stem: arr.astype(float)})


def _read_dannce(path: Path) -> Tracking:
    from scipy.io import loadmat

    arr = loadmat(str(path), variable_names=["pred"])["pred"].transpose((0, 2, 1)).astype(float)
    t = Tracking(path, "dannce", None, {path.stem: arr})
    names = _dannce_names(path.parent, arr.shape[1])
    if names:
        t.notes.append(f"bodypart names (from {names[0]}): {', '.join(names[1])}")
        t.skeleton = names[2]
    return t


def _dannce_names(folder: Path, k: int):
    """(file, names, skeleton) from a DANNCE skeleton .mat beside the predictions, if one fits."""
    from scipy.io import loadmat, whosmat

    for f in sorted(folder.glob("*.mat")):
        try:
            if "joint_names" not in {n for n, _, _ in whosmat(str(f))}:
                continue
            mat = loadmat(str(f))
            # a 1 x K cell array of 1-element string arrays (keypoint-moseq's setup_project iterates its
            # rows, and so reads one name from this layout)
            names = [str(np.ravel(n)[0]) for n in np.ravel(mat["joint_names"])]
            if len(names) != k:
                continue
            skel = [[names[int(i)], names[int(j)]] for i, j in (mat["joints_idx"] - 1)] if "joints_idx" in mat else []
            return f.name, names, skel
        except Exception:  # noqa: BLE001 - another .mat: not a skeleton file, look further
            continue
    return None


def _read_freipose(path: Path) -> Tracking:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    arr = np.concatenate([np.asarray(d["kp_xyz"], dtype=float) for d in data], axis=0)
    return Tracking(path, "freipose", None, {path.stem: arr})


def _read_nwb(path: Path) -> Tracking:
    from ndx_pose import PoseEstimation
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), mode="r", load_namespaces=True) as nwbio:
        objs = [o for o in nwbio.read().all_children() if isinstance(o, PoseEstimation)]
        if len(objs) != 1:
            raise NotTracking(f"{len(objs)} PoseEstimation objects (keypoint-moseq reads files with exactly one)")
        pose = objs[0]
        series = pose.pose_estimation_series
        if not series:
            raise NotTracking("a PoseEstimation without pose series")
        sk = getattr(pose, "skeleton", None)
        # the job's NWB reader (kpms_job.kpms.io.load_nwb): the Skeleton's node order when there is
        # one (keypoint-moseq's loader), else the order of the pose series
        bodyparts = list(sk.nodes[:]) if sk is not None else list(series.keys())
        skeleton = []
        if sk is not None and sk.edges is not None:
            skeleton = [[bodyparts[int(i)], bodyparts[int(j)]] for i, j in np.asarray(sk.edges[:])]
        arr = np.stack([np.asarray(series[bp].data[()], dtype=float) for bp in bodyparts], axis=1)
        t = Tracking(path, "nwb", bodyparts, {path.stem: arr}, skeleton=skeleton)
        s = series[bodyparts[0]]
        rate = None
        if getattr(s, "rate", None):
            rate = float(s.rate)
        elif s.timestamps is not None and len(s.timestamps) > 1:
            step = float(np.median(np.diff(np.asarray(s.timestamps[: min(len(s.timestamps), 10000)]))))
            rate = 1.0 / step if step > 0 else None
        # timestamps in frame numbers give 1 fps, not a rate (the job's ingest rejects it too)
        if rate and 1.0 < rate < 2000.0:
            t.fps, t.fps_source = rate, f"the NWB timing of {path.name}"
        elif rate:
            t.fps_note = f"{path.name}'s timing gives {rate:.3g} frames/s, outside 1-2000: frame numbers, not seconds?"
    return t


READERS = {"deeplabcut": _read_deeplabcut, "sleap": _read_sleap, "sleap-anipose": _read_sleap_anipose,
           "anipose": _read_anipose, "facemap": _read_facemap, "dannce": _read_dannce,
           "freipose": _read_freipose, "nwb": _read_nwb}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read(path: Path, fmt: str) -> Tracking:
    """Read ``path`` as ``fmt``; a file that cannot be read is an InputDataError naming it."""
    import warnings

    try:
        with warnings.catch_warnings():
            # pynwb/hdmf warn about every cached extension version; pandas about PyTables details
            warnings.simplefilter("ignore")
            return READERS[fmt](path)
    except NotTracking:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a data problem here
        text = first_line(exc)
        raise InputDataError(
            f"{path}: could not be read as a {fmt} tracking file ({type(exc).__name__}: {text}). "
            "Expected a complete file as the tracker wrote it; remove it or re-export it.") from exc


def count(m: dict) -> tuple[list[int], int]:
    """(frames of each recording, keypoints the model will use) of a validated manifest's inputs,
    read from the files: what the memory plan needs before ingest has run. Recordings that ingest
    would exclude (too short, too many missing values) are still counted."""
    from .inputs import expand

    lengths, names = [], None
    for f in expand(m):
        t = read(Path(f), m["inputs"]["format"])
        lengths += [int(a.shape[0]) for a in t.recordings.values()]
        if names is None and t.recordings:
            names = t.bodyparts or list(range(next(iter(t.recordings.values())).shape[1]))
    use = (m.get("bodyparts") or {}).get("use")
    return lengths, len(use) if use else len(names or [])


def video_fps(path) -> float | None:
    """A video's frame rate from its header (OpenCV), or None."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0
    finally:
        cap.release()
    return float(fps) if fps and fps > 0 else None

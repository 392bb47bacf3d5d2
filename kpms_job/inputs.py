"""Find the tracking files a manifest names (no keypoint-moseq import: used by ``plan``)."""

from __future__ import annotations

import glob
from pathlib import Path

from .errors import InputDataError

EXTENSIONS = {
    "deeplabcut": (".csv", ".h5", ".hdf5"),
    "sleap": (".h5", ".hdf5", ".slp"),
    "anipose": (".csv",),
    "sleap-anipose": (".h5", ".hdf5"),
    "nwb": (".nwb",),
    "facemap": (".h5", ".hdf5"),
    "freipose": (".json",),
    "dannce": (".mat",),
}


def expand(m: dict) -> list[str]:
    """The input files, in a stable order.

    Raises
    ------
    InputDataError
        When a pattern matches no file, or a file has an extension its format cannot have.
    """
    fmt = m["inputs"]["format"]
    exts = EXTENSIONS[fmt]
    files: list[str] = []
    for pattern in m["inputs"]["paths"]:
        p = Path(pattern)
        if p.is_dir():
            matches = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in exts)
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        matches = [f for f in matches if Path(f).is_file()]
        if not matches:
            raise InputDataError(
                f"inputs.paths: the pattern {pattern} matches no file. Check the path (relative "
                "paths resolve against the manifest's folder) and that the data volume is mounted.")
        for f in matches:
            if Path(f).suffix.lower() not in exts:
                raise InputDataError(
                    f"{f}: expected a file with suffix {' or '.join(exts)} for inputs.format "
                    f"'{fmt}', but got {Path(f).suffix or 'no suffix'}. Fix inputs.format or inputs.paths.")
            if f not in files:
                files.append(f)
    return files


def video_files(video_dir: str | None) -> list[str]:
    if not video_dir:
        return []
    d = Path(video_dir)
    if not d.is_dir():
        raise InputDataError(
            f"inputs.videos: {video_dir} is not a folder. Point it at the folder of the videos, or remove it.")
    exts = {".mp4", ".avi", ".mov", ".mkv"}
    return sorted(str(f) for f in d.rglob("*") if f.suffix.lower() in exts)

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
    project = Path(m["project_dir"]).resolve() if m.get("project_dir") else None
    files: list[str] = []
    for pattern in m["inputs"]["paths"]:
        p = Path(pattern)
        if p.is_dir():
            matches = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in exts)
        elif p.is_file():  # a file named literally, even if its name has glob characters ([, ?, *)
            matches = [pattern]
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        matches = [f for f in matches if Path(f).is_file()]
        if project is not None:  # the job's own outputs (results CSVs) are never inputs
            matches = [f for f in matches if not _is_output(Path(f), pattern, project, m)]
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


def _literal_prefix(pattern: str) -> Path:
    """The folder a glob pattern starts from: its parts before the first one with a wildcard."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _is_output(f: Path, pattern: str, project: Path, m: dict) -> bool:
    """Whether ``f`` is something the job wrote (``paths: ["**/*.csv"]`` must not pick up results).

    A pattern that starts outside the project dir never takes a file inside it; one
    that starts inside it (``project_dir: .``) skips the job's own folders only.
    """
    f = f.resolve()
    if not f.is_relative_to(project):
        return False
    if not _literal_prefix(pattern).resolve().is_relative_to(project):
        return True
    top = f.relative_to(project).parts[0]
    name = (m.get("model") or {}).get("name") or "kpms_job"
    return top in (".kpms-job", "QA") or top.startswith(name)


def video_files(video_dir: str | None) -> list[str]:
    if not video_dir:
        return []
    d = Path(video_dir)
    if not d.is_dir():
        raise InputDataError(
            f"inputs.videos: {video_dir} is not a folder. Point it at the folder of the videos, "
            "or remove it.")
    exts = {".mp4", ".avi", ".mov", ".mkv"}
    return sorted(str(f) for f in d.rglob("*") if f.suffix.lower() in exts)

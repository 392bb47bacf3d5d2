"""Syllables as NWB: one file per recording, for archiving and DANDI (``outputs.nwb: true``).

Each file holds, in its ``behavior`` processing module:

- ``syllable_bouts``: an ``ndx-ethogram`` EthogramBouts table, one row per bout (a run of frames
  with one syllable), start and stop in seconds from the first frame (frame / fps), the label the
  syllable's number as text (keypoint-moseq's reindexed numbering: 0 is the most frequent in the
  fit), ``labeling_method`` automated, ``source_software`` keypoint-moseq and kpms-job with their
  versions, ``parameters`` the provenance as JSON (model, kappa, seed, versions, the manifest);
- ``syllables``: the Ethogram catalogue, one row per syllable the model has (used or not);
- ``centroid`` (Position) and ``heading`` (CompassDirection): keypoint-moseq's estimates, per frame.

Nothing here imports keypoint-moseq: the results dict (``results.h5``) is all it needs. When the
recording came from an NWB file, the new file takes that file's session metadata (start time,
subject, lab, ...): the user's file is never modified.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .state import output_error

log = logging.getLogger("kpms_job")

SESSION_FIELDS = ("session_start_time", "experimenter", "lab", "institution", "experiment_description",
                  "session_id", "keywords", "related_publications")


def bouts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first frame, frame after the last, syllable) of each run of equal labels in ``z``."""
    z = np.asarray(z)
    if len(z) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(z)) + 1])
    stops = np.concatenate([starts[1:], [len(z)]])
    return starts, stops, z[starts]


def labels_from_bouts(start_s, stop_s, label, fps: float, frames: int) -> np.ndarray:
    """Per-frame syllables rebuilt from a bouts table (the round trip the tests check)."""
    z = np.full(frames, -1, dtype=int)
    for a, b, lab in zip(start_s, stop_s, label, strict=True):
        z[int(round(a * fps)):int(round(b * fps))] = int(lab)
    return z


def _session(source_nwb: str | None, fallback_time: datetime) -> dict:
    """Session metadata for the new file: copied from the source NWB file when there is one."""
    if not source_nwb:
        return {"session_start_time": fallback_time}
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(source_nwb, mode="r", load_namespaces=True) as io:
        src = io.read()
        out = {k: getattr(src, k) for k in SESSION_FIELDS if getattr(src, k, None) is not None}
        if src.subject is not None:
            from pynwb.file import Subject

            fields = {k: getattr(src.subject, k) for k in ("subject_id", "species", "sex", "age", "description",
                                                             "genotype", "strain", "date_of_birth")
                      if getattr(src.subject, k, None) is not None}
            out["subject"] = Subject(**fields)
        out["session_description_source"] = src.session_description
    return out


def write_recording(path: Path, name: str, result: dict, fps: float, num_states: int, provenance: dict,
                    source_file: str | None, meta: dict | None = None) -> None:
    """One recording's syllables, centroid and heading as a new NWB file at ``path`` (atomically)."""
    import ndx_ethogram
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import CompassDirection, Position, SpatialSeries

    source_nwb = source_file if source_file and str(source_file).lower().endswith(".nwb") else None
    fallback = datetime.fromtimestamp(Path(source_file).stat().st_mtime, UTC) if source_file and \
        Path(source_file).exists() else datetime.fromtimestamp(0, UTC)
    session = _session(source_nwb, fallback)
    described = session.pop("session_description_source", None)
    meta = meta or {}
    for k in ("experimenter", "institution", "lab", "experiment_description", "keywords"):
        if meta.get(k) and k not in session:  # the manifest's nwb section fills what the source lacks
            session[k] = meta[k]
    if "subject" not in session:
        from pynwb.file import Subject

        given = {k: v for k, v in (meta.get("subject") or {}).items() if v}
        session["subject"] = Subject(subject_id=name, description=given.pop(
            "description", f"the animal of recording {name}"), **given)
    software = (f"keypoint-moseq {provenance['versions'].get('keypoint-moseq')} "
                f"(jax-moseq {provenance['versions'].get('jax-moseq')}) via kpms-job "
                f"{provenance['versions'].get('kpms-job')}")
    nwb = NWBFile(
        session_description=f"keypoint-MoSeq syllables of recording {name}" + (f" ({described})" if described else ""),
        identifier=str(uuid.uuid4()),
        source_script=software, source_script_file_name="kpms-job", **session)
    if not source_nwb:
        nwb.notes = ("session_start_time is the tracking file's modification time (the file states no "
                     f"session time): {source_file}")
    module = nwb.create_processing_module("behavior", "keypoint-MoSeq syllables, centroid and heading")
    catalogue = ndx_ethogram.Ethogram(name="syllables", description="keypoint-MoSeq syllables of the model "
                                      "(reindexed by frequency in the fit: 0 is the most frequent)", exclusive=True)
    for i in range(num_states):
        catalogue.add_row(behavior=str(i), definition=f"keypoint-MoSeq syllable {i} (unsupervised; no a-priori "
                          "meaning)", native_code=i)
    module.add(catalogue)
    table = ndx_ethogram.EthogramBouts(
        name="syllable_bouts", description=f"keypoint-MoSeq syllables of {name}, one row per bout",
        labeling_method="automated", source_software=software,
        parameters=json.dumps(provenance, default=str, sort_keys=True), ethogram=catalogue)
    z = np.asarray(result["syllable"])
    for a, b, lab in zip(*bouts(z), strict=True):
        table.add_row(start_time=float(a) / fps, stop_time=float(b) / fps, label=str(int(lab)))
    module.add(table)
    centroid = np.asarray(result["centroid"], dtype=float)
    module.add(Position(spatial_series=SpatialSeries(
        name="centroid", data=centroid, rate=float(fps), starting_time=0.0,
        reference_frame="the tracking's coordinates (keypoint-moseq's centroid estimate)",
        unit="n.a.", description="keypoint-moseq centroid, in the units of the tracked keypoints")))
    module.add(CompassDirection(spatial_series=SpatialSeries(
        name="heading", data=np.asarray(result["heading"], dtype=float), rate=float(fps), starting_time=0.0,
        reference_frame="angle of the body axis in the tracking's coordinates", unit="radians",
        description="keypoint-moseq heading")))
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.nwb")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with NWBHDF5IO(str(tmp), mode="w") as io:
            io.write(nwb)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from exc


def write_all(folder: Path, results: dict, files: dict, fps: float, num_states: int, provenance: dict,
              meta: dict | None = None) -> list:
    """One NWB file per recording in ``folder``; ``files``: recording -> the tracking file it came from;
    ``meta``: the manifest's nwb section."""
    out = []
    for name in sorted(results):
        path = Path(folder) / f"{name}.nwb"
        write_recording(path, name, results[name], fps, num_states, {**provenance, "recording": name},
                        files.get(name), meta)
        out.append(str(path))
    log.info("wrote %d NWB file(s) to %s", len(out), folder)
    return out

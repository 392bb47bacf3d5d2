"""Keypoints handed from one stage to the next, stored as one .npz written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..state import output_error


def save(path: Path, coords: dict, confs: dict, bodyparts: list) -> None:
    names = sorted(coords)
    arrays = {}
    for i, n in enumerate(names):
        arrays[f"coords_{i}"] = np.asarray(coords[n])
        arrays[f"confs_{i}"] = np.asarray(confs[n])
    meta = json.dumps({"names": names, "bodyparts": list(bodyparts)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, _meta=np.array(meta), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from exc


def load(path: Path):
    """Return (coords, confs, bodyparts)."""
    with np.load(path) as z:
        meta = json.loads(str(z["_meta"]))
        coords = {n: z[f"coords_{i}"] for i, n in enumerate(meta["names"])}
        confs = {n: z[f"confs_{i}"] for i, n in enumerate(meta["names"])}
    return coords, confs, meta["bodyparts"]

"""Run one grid-movie writer in this (fresh) process and print its memory as JSON.

    python tests/figures_probe.py OUT_DIR --repeat R [--impl ours|kpms] [--grid 2x3] [--scale 1]

The data: the bundled real recording (examples/data, DeepLabCut, 2330 frames x 4 keypoints,
30 fps) at ``R`` times the frame rate (every frame repeated ``R`` times, fps x R): the same
behaviour in seconds, ``R`` times the frames per recording and per movie. Its syllables are
synthetic (no fit, to stay fast): 4 labels in runs of 0.2-0.8 s, seeded. Centroids and
headings come from keypoint-moseq's ``get_centroids_headings`` (snout anterior, tailbase
posterior).

``--impl ours`` runs kpms_job.kpms.movies.write_grid_movies; ``--impl kpms`` runs
keypoint-moseq's own ``generate_grid_movies`` (the implementation the job used before) with
the same grid. Prints ``{"baseline_mib", "peak_mib", "growth_mib", "movies", "seconds"}``:
the resident memory just before the call, the process's peak resident memory
(``ru_maxrss``) after it, and their difference.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def data(repeat: int, scale: float = 1.0):
    """(results, coordinates, config) for the bundled recording at ``repeat`` x 30 fps.

    ``scale`` multiplies the coordinates (a smaller animal in pixels: smaller tiles).
    """
    import numpy as np
    from keypoint_moseq import util as kutil

    from kpms_job.kpms.io import load_file

    coords, _, bodyparts = load_file(str(CSV), "deeplabcut", [])
    name, xy = next(iter(coords.items()))
    xy = np.repeat(np.asarray(xy, float), repeat, axis=0) * scale
    fps = 30.0 * repeat
    rng = np.random.default_rng(0)
    z = np.zeros(len(xy), int)
    t = 0
    while t < len(z):
        n = int(rng.uniform(0.2, 0.8) * fps)
        z[t:t + n] = rng.integers(4)
        t += n
    cen, head = kutil.get_centroids_headings({name: xy}, anterior_idxs=[0], posterior_idxs=[len(bodyparts) - 1])
    results = {name: {"syllable": z, "centroid": cen[name], "heading": head[name]}}
    edges = [[bodyparts[0], bodyparts[1]], [bodyparts[0], bodyparts[2]], [bodyparts[1], bodyparts[3]],
             [bodyparts[2], bodyparts[3]]]
    config = {"fps": fps, "bodyparts": list(bodyparts), "use_bodyparts": list(bodyparts), "skeleton": edges}
    return results, {name: xy}, config


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--impl", choices=("ours", "kpms"), default="ours")
    ap.add_argument("--grid", default="2x3")
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args(argv)
    rows, cols = map(int, a.grid.split("x"))
    results, coords, config = data(a.repeat, a.scale)
    out = Path(a.out)
    import keypoint_moseq as kpms
    import numpy as np

    from kpms_job.kpms import movies as kpms_movies

    base = rss_mib()
    t0 = time.perf_counter()
    if a.impl == "ours":
        kpms_movies.write_grid_movies(results, None, None, coords, config, grids=((rows, cols),), output_dir=out)
    else:
        np.random.seed(0)
        kpms.generate_grid_movies(results, output_dir=str(out), coordinates=dict(coords), keypoints_only=True,
                                  rows=rows, cols=cols, **config)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_mib": round(base, 1), "peak_mib": round(peak, 1), "growth_mib": round(peak - base, 1),
                      "movies": len(list(out.glob("syllable*.webm"))), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    sys.exit(main())

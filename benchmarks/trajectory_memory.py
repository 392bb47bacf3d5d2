"""Peak memory of keypoint-moseq's trajectory plots, per recording length, with and without the
job's frame cap (kpms_job.kpms.trajectories.MAX_FRAMES).

The data are TILED: the bundled real recording (examples/data, DeepLabCut, 2330 frames x 4
keypoints, 30 fps) repeated end to end ``--tiles`` times into one recording, with keypoint-moseq's
centroids and headings and synthetic syllables (tests/figures_probe.py: 4 labels in runs of
0.2-0.8 s; no fit, so a row takes seconds). Each row runs in a fresh process:
``trajectories.plot`` (the figures stage's call: generate_trajectory_plots, PNG beside each PDF,
no GIFs), capped at MAX_FRAMES or not (``max_frames`` = all). Growth is the process's peak
resident memory (``ru_maxrss``) above its resident memory just before the call.

    .venv/bin/python benchmarks/trajectory_memory.py               # tiles 1 4 32 128 256
    .venv/bin/python benchmarks/trajectory_memory.py --tiles 1 4

Measured (2-core CPU; see kpms_job/stages/figures.py for the figures stage as a whole): in the
table printed at the end of a run, and in the figures stage's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(tiles: int, capped: bool, out: str) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    import figures_probe

    from kpms_job.kpms import trajectories

    results, coords, config = figures_probe.data(1)
    name = next(iter(results))
    results = {name: {k: np.concatenate([v] * tiles) for k, v in results[name].items()}}
    coords = {name: np.concatenate([coords[name]] * tiles)}
    base = figures_probe.rss_mib()
    t0 = time.perf_counter()
    pngs = trajectories.plot(coords, results, out, "bench", config, config["fps"],
                             max_frames=trajectories.MAX_FRAMES if capped else 10**12)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": len(results[name]["syllable"]), "capped": capped, "pngs": len(pngs),
                      "baseline_mib": round(base), "peak_mib": round(peak), "growth_mib": round(peak - base),
                      "seconds": round(time.perf_counter() - t0, 1)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, nargs="+", default=[1, 4, 32, 128, 256])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(int(a.child[0]), a.child[1] == "1", a.child[2])
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tiles in a.tiles:
            for capped in (False, True):
                r = subprocess.run([sys.executable, __file__, "--child", str(tiles), str(int(capped)), tmp],
                                   capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
                if r.returncode:
                    print(r.stderr[-3000:])
                    return 1
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print("\nTILED data (the bundled 2330-frame recording repeated), synthetic syllables; MiB, fresh processes")
    print(f"{'frames':>8} {'growth uncapped':>16} {'growth capped':>14} {'peak capped':>12}")
    for un, cap in zip(rows[::2], rows[1::2], strict=True):
        print(f"{un['frames']:>8} {un['growth_mib']:>16} {cap['growth_mib']:>14} {cap['peak_mib']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Restarts fitted one after another (``--workers 1``) against the same restarts in K worker
processes (``--workers K``), on the same data with the same settings, and the cost of select.

Each side is one ``kpms-job run`` in a fresh process on its own project dir: the bundled real
recording (examples/data, DeepLabCut, 2330 frames x 4 keypoints, 30 fps), ``restarts: N``, tuning
off, ``--iters`` AR-HMM and full-model iterations, figures and grid movies off. Wall time is the
whole process, timed by this parent; the fits' time is the sum of the restarts' own stage times
from their states; select is its stage time. Both sides must select the same restart with the same
labels (checked), so the comparison is of the same work.

    .venv/bin/python benchmarks/restarts.py --restarts 4 --workers 2 --iters 20

What a 2-core CPU can show, said plainly: XLA:CPU already spreads one fit over both cores, so two
workers there only take turns, and each worker also pays its own start, JAX import and compile.
The gain the fan-out is for comes from one worker per GPU, which this machine does not have. On a
GPU node, run it with ``--workers`` = the GPUs.

Measured (2-core CPU, 4 restarts x 25 + 25 iterations, 504171a):

    workers   wall s  fits s (summed)  select s  selected
          1     41.7             33.0      0.94  kpms_job-r02
          2     82.9            136.9      1.51  kpms_job-r02
    speed-up 0.50x; same selection and labels: True

So on this CPU two workers take twice as long, which is why ``--workers auto`` gives one worker per
two cores (here: one, in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"


def manifest(folder: Path, restarts: int, iters: int) -> Path:
    m = {"project_dir": "./project",
         "inputs": {"format": "deeplabcut", "paths": [str(CSV)]},
         "bodyparts": {"use": ["snout", "leftear", "rightear", "tailbase"], "anterior": ["snout"],
                       "posterior": ["tailbase"]},
         "fps": 30, "model": {"num_states": 20, "kappa": 1.0e4, "seed": 0}, "restarts": restarts,
         "tuning": "off", "fitting": {"arhmm_iters": iters, "full_iters": iters, "save_every": max(1, iters // 2)},
         "outputs": {"csv": False, "figures": False, "grid_movies": False}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def run_side(folder: Path, restarts: int, iters: int, workers: int) -> dict:
    path = manifest(folder, restarts, iters)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(path), "--workers", str(workers)],
                         capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"--workers {workers} exited {res.returncode}:\n{res.stderr[-3000:]}")
    project = folder / "project"
    state = json.loads((project / ".kpms-job" / "state.json").read_text())["stages"]
    fits = 0.0
    for i in range(restarts):
        rs = json.loads((project / ".kpms-job" / "restarts" / f"r{i:02d}" / "state.json").read_text())["stages"]
        fits += rs["arhmm"]["seconds"] + rs["full_model"]["seconds"]
    summary = json.loads((project / "summary.json").read_text())
    import h5py

    with h5py.File(project / summary["model_name"] / "results.h5", "r") as f:
        labels = {k: f[k]["syllable"][()].tolist() for k in f}
    return {"workers": workers, "wall_s": round(wall, 1), "fit_s_summed": round(fits, 1),
            "select_s": state["select"]["seconds"], "selected": summary["model_name"], "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="K for the fanned-out side")
    ap.add_argument("--iters", type=int, default=20, help="AR-HMM and full-model iterations per restart")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kpms-bench-restarts"))
    args = ap.parse_args()
    sides = [run_side(args.out / f"workers{k}", args.restarts, args.iters, k) for k in (1, args.workers)]
    same = sides[0]["selected"] == sides[1]["selected"] and sides[0]["labels"] == sides[1]["labels"]
    print(f"{args.restarts} restarts x ({args.iters} AR-HMM + {args.iters} full-model iterations), "
          f"{os.cpu_count()} CPU core(s)")
    print(f"{'workers':>8} {'wall s':>8} {'fits s (summed)':>16} {'select s':>9}  selected")
    for s in sides:
        print(f"{s['workers']:>8} {s['wall_s']:>8} {s['fit_s_summed']:>16} {s['select_s']:>9}  {s['selected']}")
    print(f"speed-up {sides[0]['wall_s'] / sides[1]['wall_s']:.2f}x; same selection and labels: {same}")
    out = args.out / "restarts.json"
    out.write_text(json.dumps([{k: v for k, v in s.items() if k != "labels"} for s in sides] + [{"same": same}],
                              indent=2))
    if not same:
        raise SystemExit("the two sides selected different models or labels")


if __name__ == "__main__":
    main()

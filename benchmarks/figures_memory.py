"""Peak memory of the figures stage against keypoint-moseq's own grid movies, per recording length.

The data are TILED: the bundled real recording (examples/data, DeepLabCut, 2330 frames x 4
keypoints, 30 fps) repeated end to end ``--tiles`` times into one recording (repeats of real
tracking, not new data). For each length, in fresh processes:

1. ``kpms-job run`` fits a short model (``--iters`` AR-HMM and full-model iterations, 20
   states, tuning off) with figures and grid movies off;
2. ``kpms-job run`` again with figures, grid movies and trajectory plots on: only the figures
   stage (and the summary) runs; its peak resident memory is the job's figures-stage peak (the process also
   imports JAX and loads the results);
3. the figures stage's child (``python -m kpms_job.stages.figures``) drawing the trajectory
   plots alone, its peak;
4. the baseline, what the stage did before: a fresh process loads the same results and
   keypoints, draws the three keypoint-moseq figures (their growth is printed one by one) and
   runs keypoint-moseq's ``generate_grid_movies`` (keypoints only) with the grid the job
   chose, after ``np.random.seed(seed)``, as the job does. It is killed above ``--cap-gib``
   (it can take 20+ GiB) and then reported as ``>cap``.

Peaks are ``ru_maxrss`` of each child (``os.wait4``), with /proc polling for the cap.

    .venv/bin/python benchmarks/figures_memory.py                 # tiles 1 and 4 (2330, 9320 frames)
    .venv/bin/python benchmarks/figures_memory.py --tiles 1 4 8 --cap-gib 8

Measured (2-core CPU, 3+3 iterations; about 4 minutes with the fits):

    frames  grid  movies  job figures stage  keypoint-moseq (old stage)
      2330   3x4       1            593 MiB              >6144 (killed)
      9320   4x6       2            612 MiB              >6144 (killed)

With the trajectory plots (``outputs.trajectory_plots``, since added to the stage; the figures
stage's child drawing them alone, a fresh process: JAX imported, results and keypoints loaded;
``--cap-gib 2`` for the baseline):

    frames  grid  movies  job figures stage  trajectory child  keypoint-moseq (old stage)
      2330   3x4       1            604 MiB           591 MiB              >2048 (killed)
      9320   4x6       2            626 MiB           596 MiB              >2048 (killed)

The three figures, in the baseline's process: +16 (frequencies), +4 (durations) and +22 / +40 MiB
(dendrogram at 2330 / 9320 frames) above the loaded results (548 MiB). Window 368 px here:
keypoint-moseq holds a 3x4 movie of 90 frames as 3.5 GiB of float64, several times over.
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
MODEL = "bench"


def tiled_csv(path: Path, tiles: int) -> None:
    lines = CSV.read_text().splitlines()
    head, rows = lines[:3], [ln.split(",", 1)[1] for ln in lines[3:] if ln.strip()]
    out = head + [f"{i},{r}" for i, r in enumerate(rows * tiles)]
    path.write_text("\n".join(out) + "\n")


def manifest(folder: Path, iters: int, figures: bool) -> Path:
    m = {"project_dir": "./project",
         "inputs": {"format": "deeplabcut", "paths": ["rec.csv"]},
         "bodyparts": {"anterior": ["snout"], "posterior": ["tailbase"],
                       "skeleton": [["snout", "leftear"], ["snout", "rightear"], ["leftear", "tailbase"],
                                    ["rightear", "tailbase"]]},
         "fps": 30,
         "model": {"name": MODEL, "num_states": 20, "kappa": 1e4, "seed": 0},
         "tuning": "off",
         "fitting": {"arhmm_iters": iters, "full_iters": iters, "save_every": iters},
         "outputs": {"csv": False, "figures": figures, "grid_movies": figures, "trajectory_plots": figures}}
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def run_child(cmd, cap_gib=None, timeout=1800) -> dict:
    """Run ``cmd``; return its peak RSS (MiB), seconds, exit code, stdout; kill it above ``cap_gib``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, NO_COLOR="1", TQDM_DISABLE="1"))
    killed = False
    out_chunks = []
    import threading

    reader = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()), daemon=True)
    reader.start()
    status = usage = None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)  # p.poll() would reap it and lose its rusage
        if pid:
            break
        try:
            with open(f"/proc/{p.pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            rss = 0
        if (cap_gib and rss > cap_gib * 2**30) or time.perf_counter() - t0 > timeout:
            killed = bool(cap_gib and rss > cap_gib * 2**30)
            p.kill()
            _, status, usage = os.wait4(p.pid, 0)
            break
        time.sleep(0.1)
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    return {"peak_mib": round(usage.ru_maxrss / 1024), "seconds": round(time.perf_counter() - t0, 1),
            "rc": p.returncode, "killed_at_cap": killed, "out": "".join(out_chunks)}


def baseline(project: str, grid: str, seed: int) -> None:
    """Child: the old figures stage (three figures + generate_grid_movies), growth per step."""
    import resource

    import numpy as np

    from kpms_job.kpms import common
    from kpms_job.kpms import project as kproject
    from kpms_job.kpms import results as R
    from kpms_job.stages import arrays

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    results, config = R.load_results(project, MODEL), kproject.load_config(project)
    coords, _, _ = arrays.load(Path(project) / ".kpms-job" / "preprocessed.npz")
    steps = {"loaded": peak()}
    R.plot_frequencies(results, project, MODEL)
    steps["syllable_frequencies"] = peak()
    R.plot_durations(results, project, MODEL, config["fps"])
    steps["duration_distribution"] = peak()
    R.plot_dendrogram(coords, results, project, MODEL, config)
    steps["similarity_dendrogram"] = peak()
    print(json.dumps({"steps_mib": {k: round(v) for k, v in steps.items()}}), flush=True)
    rows, cols = map(int, grid.split("x"))
    cfg = {k: v for k, v in config.items() if k != "video_dir"}
    np.random.seed(seed)
    with common.quiet():
        common.kpms.generate_grid_movies(results, project, MODEL, output_dir=str(Path(project) / "baseline_movies"),
                                    coordinates=dict(coords), rows=rows, cols=cols, keypoints_only=True, **cfg)
    steps["generate_grid_movies"] = peak()
    print(json.dumps({"steps_mib": {k: round(v) for k, v in steps.items()}}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--cap-gib", type=float, default=6.0, help="kill the baseline above this RSS")
    ap.add_argument("--workdir", default="/tmp/kpms-job-figures-bench")
    ap.add_argument("--baseline", nargs=3, metavar=("PROJECT", "GRID", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.baseline:
        baseline(a.baseline[0], a.baseline[1], int(a.baseline[2]))
        return 0
    job = [sys.executable, "-m", "kpms_job", "run"]
    rows = []
    for tiles in a.tiles:
        folder = Path(a.workdir) / f"tiles{tiles}"
        folder.mkdir(parents=True, exist_ok=True)
        tiled_csv(folder / "rec.csv", tiles)
        fit = run_child(job + [manifest(folder, a.iters, figures=False)])
        if fit["rc"] not in (0, 5):
            print(fit["out"][-3000:])
            return 3
        stage = run_child(job + [manifest(folder, a.iters, figures=True)])
        project = folder / "project"
        movies = project / MODEL / "grid_movies"
        marker = json.loads((movies / ".kpms-job-grid.json").read_text()) if movies.exists() else {}
        grid = "x".join(map(str, marker.get("grid", [4, 6])))
        # the figures stage's child drawing the trajectory plots alone, as the stage starts it
        traj = run_child([sys.executable, "-m", "kpms_job.stages.figures", str(project), MODEL, "30",
                          str(project / ".kpms-job" / "preprocessed.npz"), "trajectory_plots"])
        base = run_child([sys.executable, __file__, "--baseline", str(project), grid, "0"], cap_gib=a.cap_gib)
        steps = [json.loads(ln)["steps_mib"] for ln in base["out"].splitlines() if ln.startswith('{"steps_mib"')]
        row = {"frames": 2330 * tiles, "tiles": tiles, "grid": grid,
               "movies": len(list(movies.glob("syllable*.webm"))),
               "job_figures_stage_peak_mib": stage["peak_mib"], "job_figures_stage_s": stage["seconds"],
               "job_rc": stage["rc"], "trajectory_child_peak_mib": traj["peak_mib"],
               "trajectory_child_out": traj["out"].strip().splitlines()[-1:],
               "baseline_peak_mib": (f">{a.cap_gib * 1024:.0f} (killed)" if base["killed_at_cap"]
                                     else base["peak_mib"]),
               "baseline_s": base["seconds"], "baseline_steps_mib": steps[-1] if steps else None,
               "fit_peak_mib": fit["peak_mib"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nTILED data (the bundled 2330-frame recording repeated); peak RSS in MiB, fresh processes")
    print(f"{'frames':>8} {'grid':>5} {'movies':>6} {'job figures stage':>18} {'trajectory child':>17} "
          f"{'keypoint-moseq (old stage)':>27}")
    for r in rows:
        print(f"{r['frames']:>8} {r['grid']:>5} {r['movies']:>6} {r['job_figures_stage_peak_mib']:>18} "
              f"{r['trajectory_child_peak_mib']:>17} {str(r['baseline_peak_mib']):>27}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

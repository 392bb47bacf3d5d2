"""Applying a fitted model: ``kpms-job apply`` vs keypoint-moseq's ``apply_model`` driven by hand.

Both sides label the same recordings with the same fitted model (a project ``kpms-job run`` left;
default ``examples/openfield_project``, from ``kpms-job run examples/openfield.yml``), the same
number of Gibbs iterations, each in a
fresh process timed by this parent from process start to exit, with the peak resident memory of its
whole process tree sampled from /proc every 0.2 s (``benchmarks/real_data.py``'s ``tree_rss``).

- baseline: the documented recipe (keypoint-moseq's "Apply to new data"): ``load_keypoints``,
  ``outlier_removal`` with the project's factor (the fit's own preprocessing, which kpms-job applies
  too), ``format_data(**config)``, ``apply_model(model, data, metadata, project_dir, model_name,
  results_path=..., **config)``: every recording in one call, results.h5 written.
- kpms-job: ``python -m kpms_job apply manifest`` with ``outputs: {csv: false, figures: false}``
  (the baseline makes neither), batches from the memory plan unless ``--batch-frames`` is given.

The recordings: ``--copies`` circular shifts of the bundled recording (2,330 frames each, copy k
starting k * 2330 / copies frames in: new recordings to the model, as real new sessions would be).
Printed per side: frames, wall s, frames per second, peak RSS; and how far the two sides' labels
agree (fraction of frames, NMI). They are two samples, not one: same model and random key, but on a
CPU kpms-job's centroid step takes the sequential Kalman filter (the jax-moseq patches the fit
uses; jax-moseq's own step takes the associative scan, whose batched LU can deadlock XLA:CPU).

    .venv/bin/python benchmarks/apply.py                        # 8 copies, 100 iterations
    .venv/bin/python benchmarks/apply.py --copies 16 --num-iters 500 --batch-frames 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.real_data import OPENFIELD, GiB, tile_dlc_csv, tree_rss  # noqa: E402

BASELINE = textwrap.dedent("""
    import sys, keypoint_moseq as kpms
    project, model_name, out, num_iters = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    paths = sys.argv[5:]
    config = kpms.load_config(project)
    coords, confs, bodyparts = {}, {}, None
    for p in paths:
        c, f, bodyparts = kpms.load_keypoints(p, "deeplabcut")
        coords.update(c); confs.update(f)
    coords, confs = kpms.outlier_removal(coords, confs, out, overwrite=True,
                                         outlier_scale_factor=config["outlier_scale_factor"],
                                         bodyparts=bodyparts)
    data, metadata = kpms.format_data(coords, confs, **config)
    model = kpms.load_checkpoint(project, model_name)[0]
    kpms.apply_model(model, data, metadata, project, model_name, num_iters=num_iters,
                     results_path=out + "/results.h5", **config)
""")


def run_measured(cmd: list[str], log: Path) -> dict:
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, NO_COLOR="1", MPLBACKEND="Agg", TQDM_DISABLE="1"))
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)
    return {"exit": proc.returncode, "wall_s": round(time.monotonic() - t0, 1), "peak_rss_gib": round(peak / GiB, 3)}


def labels(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=ROOT / "examples" / "openfield_project",
                    help="a project fitted on the bundled open-field recording (default examples/openfield_project: "
                         "run `kpms-job run examples/openfield.yml` first)")
    ap.add_argument("--model", default=None, help="the model folder (default: summary.json's model_name)")
    ap.add_argument("--copies", type=int, default=8, help="shifted copies of the bundled recording (default 8)")
    ap.add_argument("--num-iters", type=int, default=100, help="Gibbs iterations, both sides (default 100)")
    ap.add_argument("--batch-frames", type=int, default=None, help="kpms-job's batch size (default: planned)")
    ap.add_argument("--out", type=Path, help="keep the inputs, logs and results here (default: a temp folder)")
    args = ap.parse_args(argv)
    summary = json.loads((args.project / "summary.json").read_text())
    model = args.model or summary["model_name"]
    work = args.out or Path(tempfile.mkdtemp(prefix="kpms-apply-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = tile_dlc_csv(OPENFIELD, work / "inputs", args.copies)
    frames = 2330 * args.copies
    rows = {}

    base_out = work / "baseline"
    base_out.mkdir(exist_ok=True)
    (base_out / "results.h5").unlink(missing_ok=True)
    rows["keypoint-moseq apply_model (by hand)"] = run_measured(
        [sys.executable, "-c", BASELINE, str(args.project), model, str(base_out), str(args.num_iters),
         *map(str, files)], work / "baseline.log")

    name = f"bench-{os.getpid()}"
    manifest = {"apply": {"project_dir": str(args.project), "model": model, "name": name,
                          "inputs": {"format": "deeplabcut", "paths": [str(f) for f in files]},
                          "num_iters": args.num_iters, "batch_frames": args.batch_frames},
                "outputs": {"csv": False, "figures": False}}
    mf = work / "apply.yml"
    mf.write_text(yaml.safe_dump(manifest))
    rows["kpms-job apply"] = run_measured([sys.executable, "-m", "kpms_job", "apply", str(mf)], work / "job.log")
    applied = args.project / "applied" / name

    print(f"{args.copies} recordings, {frames} frames, {args.num_iters} iterations, model {model} of {args.project}")
    print(f"{'side':40s} {'exit':>4s} {'wall s':>8s} {'frames/s':>9s} {'peak RSS GiB':>13s}")
    for side, r in rows.items():
        print(f"{side:40s} {r['exit']:>4d} {r['wall_s']:>8.1f} {frames / r['wall_s']:>9.0f} {r['peak_rss_gib']:>13.2f}")
    if all(r["exit"] == 0 for r in rows.values()):
        from kpms_job.apply.report import consistency

        agree = consistency(labels(applied / "results.h5"), labels(base_out / "results.h5"))["(all)"]
        batches = json.loads((applied / "summary.json").read_text())["batches_this_run"]
        print(f"labels: {agree['same_label_fraction']:.1%} of the frames the same on both sides, NMI "
              f"{agree['nmi']:.3f} (kpms-job ran {batches} batch(es))")
    if args.out is None:
        import shutil

        shutil.rmtree(applied, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

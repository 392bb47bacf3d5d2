"""Stability check shared by the benchmarks: is the delivered model still in the window after more Gibbs?

Given a finished keypoint-moseq project (written by kpms-job or by a baseline) and a model name,
``check`` copies ``<project>/<model>/checkpoint.h5`` into a scratch folder (the project is only
read), loads its latest snapshot with ``kpms.load_checkpoint`` (the state the project delivers),
measures its median syllable duration, continues it ``iters`` more Gibbs iterations at its own
kappa with jax-moseq's ``resample_model`` through the job's Gibbs loop
(``kpms_job.kpms.gibbs.run_gibbs``, the same loop for both sides), and measures the median
again. Not ``kpms.fit_model``: on a CPU its centroid step always takes jax-moseq's
associative-scan Kalman sampler, whose batched LU deadlocks XLA:CPU (the 42k-frame row hung),
and it recompiles every step at its second and third iteration (1-2 min here); the job's loop
samples the centroid sequentially on a CPU and compiles once. The median is jax-moseq's
``get_durations`` over the checkpoint's mask, converted at the manifest's fps: the same
computation as ``kpms_job.kpms.gibbs.median_duration_ms``.

Every benchmark calls ``run_in_child`` for both sides: a fresh process, timed on its own (so the
check's time never counts in a side's wall time and no side's JAX caches help it).

    .venv/bin/python benchmarks/stability.py PROJECT_DIR MODEL_NAME --fps 30 --target 300 400 [--iters 100]

prints one ``RESULT {json}`` line: median_before_ms, median_after_ms, in_window_before,
in_window_after (= "stable"), kappa, start_iteration, iters, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# run as a script its own folder leads sys.path: the checkout's kpms_job, not whichever one the
# environment has installed, is the one being measured
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def median_ms(model, data, fps: float) -> float:
    """Median syllable duration in ms, as kpms_job.kpms.gibbs.median_duration_ms computes it."""
    import numpy as np
    from jax_moseq.utils import get_durations

    durs = get_durations(np.asarray(model["states"]["z"]), np.asarray(data["mask"]))
    return float(np.median(durs)) * 1000.0 / float(fps) if len(durs) else float("nan")


def check(project_dir, model_name: str, fps: float, lo: float, hi: float, iters: int = 100) -> dict:
    """Continue the project's final model ``iters`` Gibbs iterations in a scratch copy; report the medians."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import keypoint_moseq as kpms

    src = Path(project_dir) / model_name / "checkpoint.h5"
    if not src.exists():
        raise FileNotFoundError(f"no checkpoint at {src}")
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="kpms-stability-"))
    try:
        (scratch / model_name).mkdir()
        shutil.copyfile(src, scratch / model_name / "checkpoint.h5")
        model, data, metadata, start = kpms.load_checkpoint(str(scratch), model_name)  # latest snapshot
        kappa = float(model["hypparams"]["trans_hypparams"]["kappa"])
        before = median_ms(model, data, fps)
        import jax

        from kpms_job.kpms import gibbs
        from kpms_job.resources import model as memory

        scan = memory.kalman_scan_allowed(jax.default_backend())
        model, _, _ = gibbs.run_gibbs(model, data, metadata, str(scratch), model_name, start_iter=int(start),
                                      num_iters=int(start) + iters, ar_only=False, save_every=10**9, fps=fps,
                                      parallel_message_passing=scan, kalman_scan=scan,
                                      progress_plots=False)
        after = median_ms(model, data, fps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"start_iteration": int(start), "iters": iters, "kappa": kappa,
            "median_before_ms": before, "in_window_before": bool(lo <= before <= hi),
            "median_after_ms": after, "in_window_after": bool(lo <= after <= hi),
            "seconds": round(time.monotonic() - t0, 1)}


def run_in_child(project_dir, model_name: str, fps: float, lo: float, hi: float, iters: int = 100,
                 log_file: Path | None = None) -> dict:
    """``check`` in a fresh Python process; adds wall_s (process start to exit) or error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(project_dir), model_name,
           "--fps", repr(float(fps)), "--target", repr(float(lo)), repr(float(hi)), "--iters", str(iters)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"))
    wall = time.monotonic() - t0
    if log_file is not None:
        log_file.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        return {"error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-1500:]}", "wall_s": wall}
    return {**json.loads(line[-1][7:]), "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project_dir")
    ap.add_argument("model_name")
    ap.add_argument("--fps", type=float, required=True)
    ap.add_argument("--target", nargs=2, type=float, default=[300, 400])
    ap.add_argument("--iters", type=int, default=100)
    args = ap.parse_args(argv)
    out = check(args.project_dir, args.model_name, args.fps, *args.target, iters=args.iters)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

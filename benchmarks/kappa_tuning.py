"""Kappa tuning: keypoint-moseq's documented manual recipe vs kpms-job's tuner, side by side.

For each dataset, in one run:

- baseline: bisection on log10(kappa) in [3, 18] with 25 iterations per attempt, each attempt a
  fresh fit with ``kpms.fit_model``; AR-HMM first, then the full model warm-started from the
  accepted AR-HMM; then the accepted models continued to ``--arhmm-iters`` and ``--full-iters``.
- kpms-job: ``kpms-job run`` on a manifest with the same data, target and iterations.

Both measure the final full model's median syllable duration with jax-moseq's ``get_durations``
at the manifest's fps. Prints fits, Gibbs iterations, wall time, final median, in window, ratios.

    .venv/bin/python benchmarks/kappa_tuning.py            # openfield golden_mouse two_mice flies

``square_arena`` (451 frames, 18 s of one mouse) can be named with ``--datasets``; it is not in
the default set: keypoint-moseq's FAQ asks for a few hundred thousand frames, and with about 35
syllables in all the median duration of one state is dominated by the chain's own wandering.

The baseline's only departure from the recipe: SLEAP files give float32 confidences, which
keypoint-moseq 0.8.1's ``init_model`` refuses (x64 precision check), so it casts them to
float64 first, as a user would after reading that error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "openfield": ("deeplabcut", DATA / "ethome/openfield_dlc_inference_example.csv", 30.0),
    "golden_mouse": ("deeplabcut",
                     DATA / "DeepLabCut/golden_mouseDLC_dlcrnetms5_golden_mouseOct19shuffle1_2000.h5", 30.0),
    "square_arena": ("deeplabcut", DATA / "deepof/testDLC_square_arena.h5", 25.0),
    # two mice in one multi-animal DLC file: two recordings of 5700 frames (fps not stated; 30 assumed)
    "two_mice": ("deeplabcut",
                 DATA / "ethome" / ("e3v813a-20210610T122332-122642DLC_dlcrnetms5_pilot_studySep24shuffle1"
                                    "_100000_el_filtered.csv"),
                 30.0),
    "flies": ("sleap", DATA / "sleap/predictions.slp", 25.0),
}


def baseline(name, fmt, path, fps, lo, hi, ar_iters, full_iters, work: Path) -> dict:
    """keypoint-moseq's manual recipe, as a user following its docs would run it."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import keypoint_moseq as kpms
    import numpy as np
    from jax_moseq.utils import get_durations

    t0 = time.monotonic()
    pd = str(work / "baseline")
    coords, confs, bodyparts = kpms.load_keypoints(str(path), fmt)
    confs = {k: v.astype("float64") for k, v in confs.items()}  # float32 SLEAP scores fail init_model
    bodyparts = list(bodyparts)
    kpms.setup_project(pd, overwrite=True, bodyparts=bodyparts, use_bodyparts=bodyparts,
                       anterior_bodyparts=[bodyparts[0]], posterior_bodyparts=[bodyparts[-1]], fps=fps)
    config = lambda: kpms.load_config(pd)  # noqa: E731 - the docs' idiom
    coords, confs = kpms.outlier_removal(coords, confs, pd, overwrite=True, **config())
    data, metadata = kpms.format_data(coords, confs, **config())
    pca = kpms.fit_pca(**data, **config())
    kpms.save_pca(pca, pd)
    cs = pca.explained_variance_ratio_.cumsum()
    kpms.update_config(pd, latent_dim=int((cs < 0.9).sum() + 1))
    fits = iters = 0

    def median_ms(model):
        return float(np.median(get_durations(np.asarray(model["states"]["z"]), np.asarray(data["mask"])))) * 1000 / fps

    def bisect(make, ar_only, tag):
        nonlocal fits, iters
        lo_k, hi_k = 3.0, 18.0
        best = None
        for attempt in range(8):
            logk = 0.5 * (lo_k + hi_k)
            model = kpms.update_hypparams(make(), kappa=float(10 ** logk))
            model, _ = kpms.fit_model(model, data, metadata, pd, f"{tag}_{attempt}", ar_only=ar_only,
                                      num_iters=25, generate_progress_plots=False, save_every_n_iters=25)
            fits += 1
            iters += 25
            med = median_ms(model)
            best = (logk, model, med)
            if lo <= med <= hi:
                break
            if med < lo:
                lo_k = logk
            else:
                hi_k = logk
        return best

    ar_logk, ar_model, _ = bisect(lambda: kpms.init_model(data, pca=pca, **config()), True, "ar")
    full_logk, full_model, _ = bisect(lambda: ar_model, False, "full")
    ar_model, _ = kpms.fit_model(ar_model, data, metadata, pd, "ar_final", ar_only=True, start_iter=25,
                                 num_iters=ar_iters, generate_progress_plots=False)
    iters += ar_iters - 25
    model = kpms.update_hypparams(ar_model, kappa=float(10 ** full_logk))
    model, _ = kpms.fit_model(model, data, metadata, pd, "full_final", ar_only=False, start_iter=ar_iters,
                              num_iters=ar_iters + full_iters, generate_progress_plots=False)
    fits += 2
    iters += full_iters
    med = median_ms(model)
    return {"fits": fits, "iters": iters, "wall_s": time.monotonic() - t0, "median_ms": med,
            "in_window": lo <= med <= hi, "kappa": 10 ** full_logk}


def kpms_job(name, fmt, path, fps, lo, hi, ar_iters, full_iters, work: Path) -> dict:
    m = {"project_dir": str(work / "kpms_job"), "inputs": {"format": fmt, "paths": [str(path)]},
         "fps": fps, "targets": {"median_duration_ms": [lo, hi]},
         "fitting": {"arhmm_iters": ar_iters, "full_iters": full_iters, "save_every": 50},
         "outputs": {"grid_movies": False, "figures": False}}
    mf = work / "manifest.yml"
    mf.write_text(yaml.safe_dump(m))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(mf)], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, NO_COLOR="1"))
    wall = time.monotonic() - t0
    if res.returncode not in (0, 5):
        raise SystemExit(f"kpms-job failed on {name}: {res.stderr[-3000:]}")
    s = json.loads((work / "kpms_job" / "summary.json").read_text())
    ar = s.get("arhmm_tuning") or {}
    full = s.get("tuning") or {}
    n_checks = len(ar.get("attempts", [])) + len(full.get("attempts", []))
    return {"fits": 2, "checks": n_checks, "iters": s["iterations"]["arhmm"] + s["iterations"]["full_model"],
            "ar_iters": s["iterations"]["arhmm"], "full_iters": s["iterations"]["full_model"],
            "wall_s": wall, "median_ms": s["median_duration_ms"], "in_window": s["in_target_window"],
            "kappa": s["kappa"]["full_model"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["openfield", "golden_mouse", "two_mice", "flies"],
                    choices=sorted(DATASETS))
    ap.add_argument("--target", nargs=2, type=float, default=[300, 400])
    ap.add_argument("--arhmm-iters", type=int, default=50)
    ap.add_argument("--full-iters", type=int, default=200)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    lo, hi = args.target
    rows = []
    for name in args.datasets:
        fmt, path, fps = DATASETS[name]
        if not path.exists():
            print(f"skip {name}: {path} absent")
            continue
        work = Path(tempfile.mkdtemp(prefix=f"kappa-{name}-"))
        ours = kpms_job(name, fmt, path, fps, lo, hi, args.arhmm_iters, args.full_iters, work)
        print(name, "kpms-job", json.dumps(ours), flush=True)
        base = None
        if not args.skip_baseline:
            # in a child process, so JAX compile caches do not favour either side
            code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
                    f"from benchmarks.kappa_tuning import baseline; "
                    f"print('RESULT', json.dumps(baseline({name!r}, {fmt!r}, Path({str(path)!r}), {fps}, {lo}, {hi}, "
                    f"{args.arhmm_iters}, {args.full_iters}, Path({str(work)!r}))))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(res.stderr[-3000:])
                raise SystemExit(f"baseline failed on {name}")
            base = json.loads(line[0][7:])
            print(name, "baseline", json.dumps(base), flush=True)
        rows.append((name, base, ours))
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"target {lo:g}-{hi:g} ms; manifest iterations AR-HMM {args.arhmm_iters}, full {args.full_iters}")
    print("| data | method | fits | Gibbs iterations | wall s | final median ms | in window |")
    print("|---|---|---|---|---|---|---|")
    for name, base, ours in rows:
        if base:
            print(f"| {name} | baseline | {base['fits']} | {base['iters']} | {base['wall_s']:.0f} | "
                  f"{base['median_ms']:.0f} | {'yes' if base['in_window'] else 'no'} |")
        print(f"| {name} | kpms-job | 2 chains, {ours['checks']} checks | {ours['iters']} "
              f"(AR {ours['ar_iters']}, full {ours['full_iters']}) | {ours['wall_s']:.0f} | "
              f"{ours['median_ms']:.0f} | {'yes' if ours['in_window'] else 'no'} |")
        if base:
            print(f"| {name} | ratio kpms-job/baseline | | {ours['iters'] / base['iters']:.2f} | "
                  f"{ours['wall_s'] / base['wall_s']:.2f} | | |")
    if any(math.isnan(r[2]["median_ms"] or float("nan")) for r in rows):
        print("note: NaN medians mean a fit produced no durations")


if __name__ == "__main__":
    main()

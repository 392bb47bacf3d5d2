"""Kappa tuning: keypoint-moseq's documented manual recipe vs kpms-job's tuner, side by side, fairly.

For each dataset and each seed (``--seeds``, default 0 1 2):

- baseline: bisection on log10(kappa) in [3, 18], each attempt a fresh 25-iteration fit with
  ``kpms.fit_model``; AR-HMM first, then the full model warm-started from the accepted AR-HMM;
  then the accepted AR-HMM continued to ``--arhmm-iters`` at its own kappa and the full model
  fitted ``--full-iters`` more at the accepted full-model kappa. The seed goes to
  ``kpms.init_model``.
- kpms-job: ``python -m kpms_job run manifest`` with the same data, target, iterations, and the
  seed as ``model.seed`` (figures and grid movies off: the baseline makes none).

Same rules for both sides:

- wall time: each side runs in its own fresh process, timed by this parent from process start to
  exit (imports, JAX compiles, loading and PCA included on both sides).
- result: the one state each side delivers (the latest snapshot of its final full model's
  checkpoint), its median syllable duration with jax-moseq's ``get_durations`` at the manifest's
  fps, in the window or not.
- "stable": ``benchmarks/stability.py`` continues that state ``--stability-iters`` (100) more
  Gibbs iterations at its own kappa (the same Gibbs loop for both sides), in a scratch copy and
  its own process, timed separately (never in a side's wall time), and says whether the median is
  still in the window.
- Gibbs iterations: resamples actually run. ``kpms.fit_model(num_iters=n, start_iter=s)`` runs
  n - s + 1 of them, so a 25-iteration attempt is 26 resamples.

Prints one row per side and seed, then per dataset and side the spread over seeds (min..max of the
final median and wall time; how many seeds in window and stable); ``--out DIR`` also writes
``kappa_tuning.json`` and ``kappa_tuning.md`` there.

    .venv/bin/python benchmarks/kappa_tuning.py                       # the full benchmark
    .venv/bin/python benchmarks/kappa_tuning.py --datasets openfield --seeds 0 \\
        --arhmm-iters 10 --full-iters 10 --stability-iters 5         # a smoke test

``square_arena`` (451 frames, 18 s of one mouse) can be named with ``--datasets``; it is not in
the default set: keypoint-moseq's FAQ asks for a few hundred thousand frames, and with about 35
syllables in all the median duration of one state is dominated by the chain's own wandering.

The baseline's departures from the recipe: SLEAP files give float32 confidences, which
keypoint-moseq 0.8.1's ``init_model`` refuses (x64 precision check), so it casts them to float64
first, as a user would after reading that error; and it changes kappa on a copy of the model
(``with_kappa``): ``kpms.update_hypparams`` edits the model's hyperparameter dicts in place and
returns the same object, and ``kpms.fit_model`` passes those dicts on to the model it returns,
so without a copy every full-model bisection attempt would set the accepted AR-HMM's kappa too
and the AR-HMM continuation would run at the last full-model attempt's kappa.
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
sys.path.insert(0, str(ROOT))
from benchmarks import stability  # noqa: E402

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
JOB_MODEL = "kpms_job"       # the job's default model.name
BASELINE_MODEL = "full_final"


def with_kappa(model, kappa: float):
    """A copy of ``model`` at ``kappa``; ``model`` itself is left as it was.

    ``kpms.update_hypparams`` assigns into ``model["hypparams"][group]``, so the copy must be new
    down to those group dicts; the arrays are never written in place (every resample returns new
    ones), so they are shared.
    """
    import keypoint_moseq as kpms

    copy = dict(model)
    copy["hypparams"] = {g: dict(v) for g, v in model["hypparams"].items()}
    return kpms.update_hypparams(copy, kappa=float(kappa))


def model_kappa(model) -> float:
    return float(model["hypparams"]["trans_hypparams"]["kappa"])


def baseline(name, fmt, path, fps, lo, hi, ar_iters, full_iters, work: Path, seed: int = 0,
             attempt_iters: int = 25) -> dict:
    """keypoint-moseq's manual recipe, as a user following its docs would run it."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import keypoint_moseq as kpms

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

    def fit(model, tag, ar_only, start, num):
        nonlocal fits, iters
        model, _ = kpms.fit_model(model, data, metadata, pd, tag, ar_only=ar_only, start_iter=start,
                                  num_iters=num, generate_progress_plots=False, save_every_n_iters=25)
        fits += 1
        iters += max(0, num - start + 1)  # fit_model runs range(start_iter, num_iters + 1)
        return model

    def bisect(make, ar_only, tag):
        lo_k, hi_k = 3.0, 18.0
        best = None
        for attempt in range(8):
            logk = 0.5 * (lo_k + hi_k)
            model = fit(with_kappa(make(), 10 ** logk), f"{tag}_{attempt}", ar_only, 0, attempt_iters)
            med = stability.median_ms(model, data, fps)
            best = (logk, model, med)
            if lo <= med <= hi:
                break
            if med < lo:
                lo_k = logk
            else:
                hi_k = logk
        return best

    def init():
        cfg = dict(config())
        cfg["seed"] = int(seed)
        return kpms.init_model(data, pca=pca, **cfg)

    ar_logk, ar_model, _ = bisect(init, True, "ar")
    full_logk, _, _ = bisect(lambda: ar_model, False, "full")
    assert math.isclose(model_kappa(ar_model), 10 ** ar_logk), "the AR-HMM's kappa was changed"
    ar_model = fit(ar_model, "ar_final", True, attempt_iters, ar_iters)
    model = fit(with_kappa(ar_model, 10 ** full_logk), BASELINE_MODEL, False, ar_iters, ar_iters + full_iters)
    med = stability.median_ms(model, data, fps)
    return {"fits": fits, "iters": iters, "median_ms_in_process": med,
            "kappa_arhmm": 10 ** ar_logk, "kappa": model_kappa(model)}


def timed(cmd, log_file: Path, env=None) -> tuple[int, float, str]:
    """Run ``cmd`` in a fresh process; (exit code, seconds from start to exit, stdout)."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.monotonic() - t0
    log_file.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    return res.returncode, wall, res.stdout


def run_job(fmt, path, fps, lo, hi, ar_iters, full_iters, seed, work: Path) -> dict:
    m = {"project_dir": str(work / "kpms_job"), "inputs": {"format": fmt, "paths": [str(path)]},
         "fps": fps, "targets": {"median_duration_ms": [lo, hi]}, "model": {"seed": seed},
         "fitting": {"arhmm_iters": ar_iters, "full_iters": full_iters, "save_every": 50},
         "outputs": {"grid_movies": False, "figures": False}}
    mf = work / "manifest.yml"
    mf.write_text(yaml.safe_dump(m))
    rc, wall, _ = timed([sys.executable, "-m", "kpms_job", "run", str(mf)], work / "kpms_job.log",
                        env=dict(os.environ, NO_COLOR="1"))
    out = {"exit": rc, "wall_s": round(wall, 1)}
    sj = work / "kpms_job" / "summary.json"
    if rc in (0, 5) and sj.exists():
        s = json.loads(sj.read_text())
        ar, full = s.get("arhmm_tuning") or {}, s.get("tuning") or {}
        out.update({"checks": len(ar.get("attempts", [])) + len(full.get("attempts", [])),
                    "ar_iters": s["iterations"]["arhmm"], "full_iters": s["iterations"]["full_model"],
                    "iters": s["iterations"]["arhmm"] + s["iterations"]["full_model"],
                    "summary_median_ms": s["median_duration_ms"], "kappa": s["kappa"]["full_model"]})
    return out


def run_baseline(name, fmt, path, fps, lo, hi, ar_iters, full_iters, seed, work: Path, attempt_iters=25) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
            f"from benchmarks.kappa_tuning import baseline; "
            f"print('RESULT', json.dumps(baseline({name!r}, {fmt!r}, Path({str(path)!r}), {fps}, {lo}, {hi}, "
            f"{ar_iters}, {full_iters}, Path({str(work)!r}), seed={seed}, attempt_iters={attempt_iters})))")
    rc, wall, stdout = timed([sys.executable, "-c", code], work / "baseline.log",
                             env=dict(os.environ, MPLBACKEND="Agg"))
    out = {"exit": rc, "wall_s": round(wall, 1)}
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if line:
        out.update(json.loads(line[-1][7:]))
    return out


def judge(side: dict, project: Path, model_name: str, fps, lo, hi, stab_iters, log_file: Path) -> dict:
    """The same rule for both sides: the delivered state's median, in window, stable after more Gibbs."""
    if side.get("exit") not in (0, 5) or not (project / model_name / "checkpoint.h5").exists():
        side.update({"median_ms": float("nan"), "in_window": False, "stable": False,
                     "stability": {"error": f"no finished model (exit {side.get('exit')})"}})
        return side
    st = stability.run_in_child(project, model_name, fps, lo, hi, stab_iters, log_file=log_file)
    side["stability"] = st
    side["median_ms"] = st.get("median_before_ms", float("nan"))
    side["in_window"] = bool(st.get("in_window_before", False))
    side["stable"] = bool(st.get("in_window_after", False))
    return side


def fmt_ms(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def tables(rows, lo, hi, args) -> str:
    out = [f"target {lo:g}-{hi:g} ms; manifest iterations AR-HMM {args.arhmm_iters}, full {args.full_iters}; "
           f"stability: {args.stability_iters} more iterations; seeds {' '.join(map(str, args.seeds))}", "",
           "| data | seed | method | exit | fits / checks | Gibbs iterations | wall s | final median ms | in window "
           f"| median after +{args.stability_iters} | stable | stability check s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for side in ("baseline", "kpms-job"):
            s = r.get(side)
            if not s:
                continue
            st = s.get("stability", {})
            fits = (f"{s.get('fits', '?')} fits" if side == "baseline" else f"2 chains, {s.get('checks', '?')} checks")
            its = (str(s.get("iters", "?")) if side == "baseline"
                   else f"{s.get('iters', '?')} (AR {s.get('ar_iters', '?')}, full {s.get('full_iters', '?')})")
            out.append(f"| {r['data']} | {r['seed']} | {side} | {s['exit']} | {fits} | {its} | {s['wall_s']:.0f} | "
                       f"{fmt_ms(s.get('median_ms'))} | {'yes' if s.get('in_window') else 'no'} | "
                       f"{fmt_ms(st.get('median_after_ms'))} | {'yes' if s.get('stable') else 'no'} | "
                       f"{st.get('wall_s', float('nan')):.0f} |")
    out += ["", "Spread over seeds (min..max):", "",
            "| data | method | seeds | final median ms | wall s | in window | stable "
            "| mean wall ratio kpms-job/baseline |",
            "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["data"] for r in rows):
        walls = {}
        for side in ("baseline", "kpms-job"):
            ss = [r[side] for r in rows if r["data"] == name and r.get(side)]
            if not ss:
                continue
            meds = [s.get("median_ms", float("nan")) for s in ss]
            meds_ok = [m for m in meds if not math.isnan(m)]
            w = [s["wall_s"] for s in ss]
            walls[side] = sum(w) / len(w)
            ratio = (f"{walls['kpms-job'] / walls['baseline']:.2f}"
                     if side == "kpms-job" and "baseline" in walls else "")
            med = f"{min(meds_ok):.0f}..{max(meds_ok):.0f}" if meds_ok else "nan"
            out.append(f"| {name} | {side} | {len(ss)} | {med} | {min(w):.0f}..{max(w):.0f} | "
                       f"{sum(bool(s.get('in_window')) for s in ss)}/{len(ss)} | "
                       f"{sum(bool(s.get('stable')) for s in ss)}/{len(ss)} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["openfield", "golden_mouse", "two_mice", "flies"],
                    choices=sorted(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--target", nargs=2, type=float, default=[300, 400])
    ap.add_argument("--arhmm-iters", type=int, default=50)
    ap.add_argument("--full-iters", type=int, default=200)
    ap.add_argument("--stability-iters", type=int, default=100)
    ap.add_argument("--attempt-iters", type=int, default=25,
                    help="baseline: iterations per bisection attempt (the recipe's 25; smaller for smoke tests)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--out", type=Path, help="folder for kappa_tuning.json / .md and each run's logs")
    ap.add_argument("--keep", action="store_true", help="keep the projects (in --out, else a temp folder)")
    args = ap.parse_args(argv)
    lo, hi = args.target
    rows = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        fmt, path, fps = DATASETS[name]
        if not path.exists():
            print(f"skip {name}: {path} absent")
            continue
        for seed in args.seeds:
            base_dir = args.out if (args.out and args.keep) else None
            work = Path(tempfile.mkdtemp(prefix=f"kappa-{name}-s{seed}-", dir=base_dir))
            row = {"data": name, "seed": seed, "fps": fps}
            ours = run_job(fmt, path, fps, lo, hi, args.arhmm_iters, args.full_iters, seed, work)
            row["kpms-job"] = judge(ours, work / "kpms_job", JOB_MODEL, fps, lo, hi, args.stability_iters,
                                    work / "stability_kpms_job.log")
            print(name, seed, "kpms-job", json.dumps(row["kpms-job"]), flush=True)
            if not args.skip_baseline:
                base = run_baseline(name, fmt, path, fps, lo, hi, args.arhmm_iters, args.full_iters, seed, work,
                                    args.attempt_iters)
                row["baseline"] = judge(base, work / "baseline", BASELINE_MODEL, fps, lo, hi,
                                        args.stability_iters, work / "stability_baseline.log")
                print(name, seed, "baseline", json.dumps(row["baseline"]), flush=True)
            for side in ("kpms-job", "baseline"):
                if row.get(side, {}).get("exit") not in (None, 0, 5):
                    log = work / ("kpms_job.log" if side == "kpms-job" else "baseline.log")
                    print(f"{name} seed {seed}: {side} failed (exit {row[side]['exit']}):\n"
                          f"{log.read_text()[-3000:]}", flush=True)
            rows.append(row)
            if args.out:
                logs = args.out / "logs" / f"{name}-s{seed}"
                logs.mkdir(parents=True, exist_ok=True)
                for f in work.glob("*.log"):
                    shutil.copyfile(f, logs / f.name)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    text = tables(rows, lo, hi, args)
    print()
    print(text)
    if args.out:
        (args.out / "kappa_tuning.json").write_text(json.dumps(
            {"target_ms": [lo, hi], "arhmm_iters": args.arhmm_iters, "full_iters": args.full_iters,
             "stability_iters": args.stability_iters, "seeds": args.seeds, "rows": rows}, indent=1))
        (args.out / "kappa_tuning.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

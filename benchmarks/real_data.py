"""kpms-job with its defaults on every real recording set of 2,000 frames or more, one row each.

Each row is one ``python -m kpms_job run manifest`` in a fresh process, on a manifest that gives
only ``inputs`` (format, paths), ``fps`` and ``project_dir``: kappa tuning on, figures and grid
movies on, 50 AR-HMM + 200 full-model iterations, target 300-400 ms (the job's defaults).
``--arhmm-iters`` / ``--full-iters`` add a ``fitting`` section, for smoke tests only.

Per row: dataset, recordings, frames, fps, exit code, the final median syllable duration (the
delivered state: the latest snapshot of the final model's checkpoint, measured by
``benchmarks/stability.py``, with summary.json's value beside it), in window, stable after
``--stability-iters`` (100) more Gibbs iterations (``benchmarks/stability.py``: at the model's
kappa, in a scratch copy, in its own process, not in the wall time), the full-model chain's wander
at one kappa (summary.json's ``tuning.wander_decades``: how far one state's median strayed from where
its chain sat, and the share of a chain's states that would fall outside the window even were it
centred in it), the AR-HMM / full-model Gibbs
iterations (summary.json), wall time (process start to exit, timed by this parent), and the peak
resident memory of the job's whole process tree (RSS of the job and all its descendants summed from
/proc every 0.2 s): overall, before the figures stage (the fit's own peak) and during it. The issue
allows the figures stage to add at most 1 GiB to the fit's peak; the stage boundaries come from the
job's own log lines (``run figures`` / ``done figures``), and the peak of every stage is kept in
the JSON.

The sets (``--datasets`` picks rows; all run one after another):

  openfield          ethome DLC csv, 1 mouse, 2330 frames, 4 keypoints, 30 fps
  openfield_nwb      the same recording as NWB (fps given: its timestamps are frame numbers)
  openfield_dlc_old  older DLC predictions (h5) of the same video, 2330 frames
  golden_mouse       DeepLabCut SuperAnimal h5, 4860 frames, 27 keypoints, 30 fps
  two_mice           ethome multi-animal DLC csv, 2 x 5700 frames, 7 keypoints, 30 fps assumed
  flies              SLEAP predictions.slp, 2 flies x 3000 frames, 13 keypoints, 25 fps
  zebrafish_cv       DLC csv, larval zebrafish, 5351 frames, 20 keypoints, 648 fps
  deepdanio          73 zebrafish escape recordings x 149 frames (10,877), 7 keypoints, 1000 fps
                     (at 1000 fps a 149-frame recording cannot hold a 300 ms syllable: the window
                     is out of reach by construction; the row shows what the job does then)
  lp_mirror_mouse    Lightning Pose, head-fixed mouse top+mirror, 2000 frames, 8 keypoints, 250 fps
  lp_ibl_pupil       Lightning Pose, IBL pupil, 2000 frames, 4 keypoints, 60 fps
  lp_ibl_paw_right   Lightning Pose, IBL paws right camera, 2500 frames, 2 keypoints, fps from its
                     timestamps .npy (150.8)
  TILED_openfield_x18  NOT a new recording: 18 circularly shifted copies of the ethome open-field
                     recording (each starts 2330/18 frames later), 41,940 frames, as 18 recordings

Excluded (under 2,000 frames or no keypoint-moseq loader): JABS (no loader), dannce (1000
frames; load_keypoints(format="dannce") also raised a TypeError on it here), DLC2Kinematics reaching
(800), sleap-anipose (120), VAME (750), deepof (100-451), ndx-pose fixtures (10-100),
lightning-pose fly (3 cameras x 500 frames of one 500-frame video), mirror-mouse-separate (501),
ibl-paw left camera (1000 frames, and a different rate from the right camera's).

    .venv/bin/python benchmarks/real_data.py OUT_DIR                          # every row
    .venv/bin/python benchmarks/real_data.py OUT_DIR --datasets openfield \\
        --arhmm-iters 10 --full-iters 10 --stability-iters 5                  # smoke test
    .venv/bin/python benchmarks/real_data.py OUT_DIR --seed 1                 # another model.seed

Writes OUT_DIR/real_data.json and OUT_DIR/real_data.md (rewritten after each row), and each
job's log under OUT_DIR/logs/. Projects go to OUT_DIR/projects/ with ``--keep``, else a temp
folder removed after each row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import stability  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
GiB = 1024 ** 3
OPENFIELD = DATA / "ethome/openfield_dlc_inference_example.csv"
LP = DATA / "lightning-pose-eks/data"


def _paw_right_fps() -> float:
    import numpy as np

    ts = np.load(next(LP.glob("ibl-paw/*.timestamps.right.npy")))
    return float(1.0 / np.median(np.diff(ts)))


# name: (format, [paths or globs], fps or a function giving it, note)
DATASETS = {
    "openfield": ("deeplabcut", [OPENFIELD], 30.0, ""),
    "openfield_nwb": ("nwb", [DATA / "ethome/sample_nwb_.nwb"], 30.0, "same recording as openfield"),
    "openfield_dlc_old": ("deeplabcut", [DATA / "DeepLabCut/m3v1mp4*.h5"], 30.0,
                          "older predictions of the openfield video"),
    "golden_mouse": ("deeplabcut", [DATA / "DeepLabCut/golden_mouse*.h5"], 30.0, ""),
    "two_mice": ("deeplabcut", [DATA / "ethome/e3v813a-*filtered.csv"], 30.0, "fps not stated: 30 assumed"),
    "flies": ("sleap", [DATA / "sleap/predictions.slp"], 25.0, ""),
    "zebrafish_cv": ("deeplabcut", [DATA / "zebrafish-cv/correct_format.csv"], 648.0, ""),
    "deepdanio": ("deeplabcut", [DATA / "deepdanio/test/DLC_test_data/**/*.csv"], 1000.0,
                  "149-frame recordings at 1000 fps: a 300 ms syllable cannot fit"),
    "lp_mirror_mouse": ("deeplabcut", [LP / "mirror-mouse/*.rng=0.csv"], 250.0, "fps from the LP paper"),
    "lp_ibl_pupil": ("deeplabcut", [LP / "ibl-pupil/*.rng=0.csv"], 60.0, "fps ~60 (IBL left camera)"),
    "lp_ibl_paw_right": ("deeplabcut", [LP / "ibl-paw/*.right.rng=0.csv"], _paw_right_fps,
                         "fps from timestamps.right.npy"),
    "TILED_openfield_x18": ("deeplabcut", "tiled", 30.0,
                            "TILED, not a new recording: 18 circularly shifted copies of openfield"),
}


def tile_dlc_csv(src: Path, dest: Path, copies: int) -> list[Path]:
    """``copies`` circular shifts of a 3-header-row DLC csv, copy k starting k * n / copies frames in."""
    lines = src.read_text().splitlines()
    head, body = lines[:3], lines[3:]
    n = len(body)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(copies):
        shift = k * n // copies
        rows = body[shift:] + body[:shift]
        text = head + [f"{i},{r.split(',', 1)[1]}" for i, r in enumerate(rows)]
        f = dest / f"tile{k:02d}_openfield.csv"
        f.write_text("\n".join(text) + "\n")
        out.append(f)
    return out


# ---------------------------------------------------------------- process-tree memory
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> int:
    kids, total, todo = _children_map(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss(pid)
        todo.extend(kids.get(pid, []))
    return total


STAGES = ("ingest", "outliers", "pca", "arhmm", "full_model", "reindex", "results", "figures", "summary")
STAGE_LINE = re.compile(r"\b(run|done)\s+(" + "|".join(STAGES) + r")\s")  # the job's "run   figures ..." lines


def run_job_measured(manifest: Path, log_file: Path) -> dict:
    """The job in a fresh process: exit code, wall time, peak tree RSS overall and per stage."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "kpms_job", "run", str(manifest)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, NO_COLOR="1", MPLBACKEND="Agg"))
    current = ["(start)"]

    def reader():  # the log goes to log_file as it comes, so a long row can be watched
        with open(log_file, "w") as fh:
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                m = STAGE_LINE.search(line)
                if m:
                    current[0] = m.group(2) if m.group(1) == "run" else f"(after {m.group(2)})"

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    peaks: dict[str, int] = {}
    peak = 0
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        peak = max(peak, rss)
        peaks[current[0]] = max(peaks.get(current[0], 0), rss)
        time.sleep(0.2)
    wall = time.monotonic() - t0
    th.join(timeout=10)
    fit_stages = [s for s in peaks if s not in ("figures", "summary") and not s.startswith("(after figures")
                  and not s.startswith("(after summary")]
    before = max((peaks[s] for s in fit_stages), default=0)
    during = peaks.get("figures", 0)
    return {"exit": proc.returncode, "wall_s": round(wall, 1), "peak_rss_gib": round(peak / GiB, 3),
            "peak_before_figures_gib": round(before / GiB, 3), "peak_figures_gib": round(during / GiB, 3),
            "figures_adds_gib": round((during - before) / GiB, 3) if during else None,
            "peak_per_stage_gib": {s: round(v / GiB, 3) for s, v in peaks.items()}}


def run_row(name: str, args, work: Path, logs: Path) -> dict:
    fmt, paths, fps, note = DATASETS[name]
    fps = float(fps() if callable(fps) else fps)
    if paths == "tiled":
        files = tile_dlc_csv(OPENFIELD, work / "tiled_inputs", args.tile_copies)
        paths = [str(f) for f in files]
        if args.tile_copies != 18:
            note = note.replace("18", str(args.tile_copies))
    else:
        paths = [str(p) for p in paths]
    m = {"project_dir": str(work / "project"), "inputs": {"format": fmt, "paths": paths}, "fps": fps}
    fitting = {k: v for k, v in (("arhmm_iters", args.arhmm_iters), ("full_iters", args.full_iters)) if v}
    if fitting:
        m["fitting"] = fitting
    if args.seed is not None:
        m["model"] = {"seed": args.seed}
    mf = work / "manifest.yml"
    mf.write_text(yaml.safe_dump(m))
    shutil.copyfile(mf, logs / f"{name}.manifest.yml")
    print(f"== {name}: running the job ({note or 'real data'})", flush=True)
    row = {"dataset": name, "note": note, "format": fmt, "fps": fps}
    row.update(run_job_measured(mf, logs / f"{name}.job.log"))
    sj = work / "project" / "summary.json"
    s = json.loads(sj.read_text()) if sj.exists() else {}
    lo, hi = s.get("target_median_duration_ms", [300.0, 400.0])
    tuning = s.get("tuning") or {}
    row.update({"recordings": len((s.get("recordings") or {}).get("used", {})) or None,
                "recordings_excluded": len((s.get("recordings") or {}).get("excluded", {})) or 0,
                "frames": s.get("frames"), "target_ms": [lo, hi],
                "summary_median_ms": s.get("median_duration_ms"),
                # where the full model's chain sat at the end, and whether the job warned it sat high
                "level_ms": tuning.get("level_ms"), "near_upper_edge": bool(tuning.get("near_upper_edge")),
                # how far one state's median strays at one kappa, and what that costs a centred chain
                "wander_decades": tuning.get("wander_decades"), "out_share_centred": tuning.get("out_share_centred"),
                "arhmm_iters": (s.get("iterations") or {}).get("arhmm"),
                "full_iters": (s.get("iterations") or {}).get("full_model"),
                "seconds_per_stage": s.get("seconds_per_stage"),
                "figures_made": (s.get("figures") or {}).get("made"),
                "figures_failed": (s.get("figures") or {}).get("failed")})
    model_name = s.get("model_name", "kpms_job")
    if (work / "project" / model_name / "checkpoint.h5").exists() and row["exit"] in (0, 5):
        print(f"== {name}: stability check ({args.stability_iters} more iterations)", flush=True)
        st = stability.run_in_child(work / "project", model_name, fps, lo, hi, args.stability_iters,
                                    log_file=logs / f"{name}.stability.log")
    else:
        st = {"error": "no finished model"}
    row["stability"] = st
    from benchmarks import tuner_replay  # it imports this module (through kappa_sweep)

    row["full_tuning"] = tuner_replay.records(work / "project").get(model_name)
    row["median_ms"] = st.get("median_before_ms", row["summary_median_ms"])
    row["in_window"] = bool(st.get("in_window_before", False))
    row["stable"] = bool(st.get("in_window_after", False))
    return row


def _f(x, spec=".0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows, args) -> str:
    fitting = ("the job's defaults" if not (args.arhmm_iters or args.full_iters)
               else f"SMOKE: AR-HMM {args.arhmm_iters or 50}, full {args.full_iters or 200} iterations")
    seed = "" if args.seed is None else f"; model.seed {args.seed}"
    out = [f"kpms-job defaults (fitting: {fitting}{seed}); "
           f"stable = still in the window after {args.stability_iters} more Gibbs iterations "
           "(benchmarks/stability.py, own process, not in the wall time). Memory: peak RSS of the job's "
           "process tree (/proc, 0.2 s).", "",
           "| dataset | recordings | frames | fps | seconds | exit | final median ms | in window "
           "| stable (median after) | wander sd, decades (out if centred) | Gibbs AR-HMM / full | peak RSS GiB "
           "| before figures / figures stage (adds) GiB | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r.get("stability", {})
        add = r.get("figures_adds_gib")
        out.append(
            f"| {r['dataset']}{' (' + r['note'] + ')' if r.get('note') else ''} | {_f(r.get('recordings'), 'd')} "
            f"| {_f(r.get('frames'), 'd')} | {r['fps']:.4g} "
            f"| {_f(r['frames'] / r['fps'] if r.get('frames') else None)} "
            f"| {r['exit']} | {_f(r.get('median_ms'))}{' (upper-edge warning)' if r.get('near_upper_edge') else ''} "
            f"| {'yes' if r.get('in_window') else 'no'} | {'yes' if r.get('stable') else 'no'} "
            f"({_f(st.get('median_after_ms'))}) | {_f(r.get('wander_decades'), '.3f')} "
            f"({_f(r.get('out_share_centred'), '.0%')}) "
            f"| {_f(r.get('arhmm_iters'), 'd')} / {_f(r.get('full_iters'), 'd')} "
            f"| {r['peak_rss_gib']:.2f} | {r['peak_before_figures_gib']:.2f} / {r['peak_figures_gib']:.2f} "
            f"({_f(add, '+.2f')}{', OVER 1 GiB' if add is not None and add > 1 else ''}) | {r['wall_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for real_data.json, real_data.md and logs/")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--stability-iters", type=int, default=100)
    ap.add_argument("--arhmm-iters", type=int, help="smoke tests only: overrides the job's default (50)")
    ap.add_argument("--full-iters", type=int, help="smoke tests only: overrides the job's default (200)")
    ap.add_argument("--tile-copies", type=int, default=18, help="copies in the TILED row (18: 41,940 frames)")
    ap.add_argument("--keep", action="store_true", help="keep each project under OUT/projects/")
    ap.add_argument("--seed", type=int, help="model.seed for every row (default: the job's, 0); a tuner "
                    "lands on a draw of the chain, so compare tuners over several seeds")
    args = ap.parse_args(argv)
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        if args.keep:
            work = args.out / "projects" / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        else:
            work = Path(tempfile.mkdtemp(prefix=f"real-{name}-"))
        try:
            row = run_row(name, args, work, logs)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "real_data.json").write_text(json.dumps(
            {"stability_iters": args.stability_iters, "arhmm_iters": args.arhmm_iters,
             "full_iters": args.full_iters, "rows": rows}, indent=1))
        (args.out / "real_data.md").write_text(table(rows, args) + "\n")
    print()
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

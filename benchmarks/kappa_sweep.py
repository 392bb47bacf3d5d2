"""Kappa sweep: does ANY kappa put a dataset's median syllable duration in the target window?

The job may exit 5 (tuning missed the window) only where it is measured that no kappa reaches
the window for that data. This benchmark measures it. For one dataset of
``benchmarks/real_data.py``'s ``DATASETS`` it builds one project dir and a manifest with
``tuning: off``, ``outputs: {figures: false, grid_movies: false}`` and
``fitting: {arhmm_iters: A, full_iters: F, save_every: S}``, then for each kappa of a log grid
(default 10^2 .. 10^20, one point per decade) sets ``model.kappa = k`` and
``model.full_kappa = k / 10`` (the job's default ratio, keypoint-moseq's recipe) and runs
``python -m kpms_job run manifest`` in a fresh process in that SAME project dir: a new kappa
reruns the AR-HMM (from scratch: its chain key holds kappa) and what follows; ingest, outliers
and PCA are reused. Before each run the project's config.yml kappa is set back to the run's
kappa, as a fresh project would have it (``reset_config_kappa``: the job's full-model stage
writes its kappa there, and keypoint-moseq draws the next AR-HMM's initial state with it, so
without the reset each run's chain depends on the run before; ``--no-config-reset`` keeps that).
The job's log is parsed for its ``run``/``skip`` lines and every run records which stages ran,
so the reuse is checked, not assumed (``reused_preprocessing`` in the JSON).
Any non-zero exit is recorded (none is expected with tuning off).

After each run it reads the project's summary.json (the full model's median and kappas; it has
no AR-HMM median) and both checkpoints: the median syllable duration at every saved snapshot of
the AR-HMM (``<model>_arhmm/checkpoint.h5``) and of the full model (``<model>/checkpoint.h5``,
one snapshot every ``save_every`` iterations), read with h5py (``model_snapshots/<i>/states/z``
and ``data/mask``) and measured with ``benchmarks/stability.py``'s ``median_ms`` (jax-moseq's
``get_durations`` at the dataset's fps, as the job computes it). The verdict uses the full
model's final snapshot (the state the job delivers).

Refinement: wherever two neighbouring kappas bracket the window (the full model's final median
below ``lo`` at one and above ``hi`` at the other, either order), log10(kappa) is bisected up to
``--refine`` times (default 4), stopping once the bracket is ``--min-step`` decades wide
(default 1/16) or a midpoint lands in the window. Each midpoint is a run like the others.

Prints a table (kappa, AR-HMM median, full-model median at each snapshot, in window or not, exit,
wall time) and a verdict: the kappas whose full model (final snapshot) is in the window, or "no
kappa in the grid (resolution R decades near the crossing) puts the full model's median in
[lo, hi]: it jumps from X ms at kappa a to Y ms at kappa b". ``--out DIR`` (default
/tmp/sweep/<dataset>) gets kappa_sweep.json and kappa_sweep.md (rewritten after every run),
the manifest, and each job's log under logs/; the project goes to DIR/project unless
``--project`` names another folder. ``--resume`` reuses the runs already in DIR/kappa_sweep.json
made with the same settings (an interrupted sweep continues where it stopped).

    .venv/bin/python benchmarks/kappa_sweep.py zebrafish_cv                     # 1e2..1e20, refine 4
    .venv/bin/python benchmarks/kappa_sweep.py zebrafish_cv --grid 4 20 2 --refine 5   # coarser first
    .venv/bin/python benchmarks/kappa_sweep.py lp_mirror_mouse --out /tmp/sweep/lp_mirror_mouse
    .venv/bin/python benchmarks/kappa_sweep.py openfield --grid 4 8 4 --refine 1 \\
        --arhmm-iters 3 --full-iters 4 --save-every 2 --out /tmp/sweep_smoke          # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import real_data, stability  # noqa: E402

MODEL = "kpms_job"  # the manifest's model.name
PREPROCESSING = ("ingest", "outliers", "pca")
STAGE_LINE = re.compile(r"\b(run|skip)\s+(" + "|".join(real_data.STAGES) + r")\b")
FULL_RATIO = 10.0  # model.full_kappa = model.kappa / FULL_RATIO (the job's default)


# ---------------------------------------------------------------- one dataset's manifest
def dataset_manifest(name: str, project: Path, args) -> tuple[dict, float]:
    fmt, paths, fps, _note = real_data.DATASETS[name]
    if paths == "tiled":
        raise SystemExit(f"{name}: tiled copies are not a recording; sweep a real dataset")
    fps = float(fps() if callable(fps) else fps)
    m = {"project_dir": str(project),
         "inputs": {"format": fmt, "paths": [str(p) for p in paths]},
         "fps": fps,
         "model": {"name": MODEL, "seed": args.seed},
         "targets": {"median_duration_ms": [args.target[0], args.target[1]]},
         "tuning": "off",
         "fitting": {"arhmm_iters": args.arhmm_iters, "full_iters": args.full_iters,
                     "save_every": args.save_every},
         "outputs": {"figures": False, "grid_movies": False}}
    return m, fps


# ---------------------------------------------------------------- measuring a checkpoint
def snapshot_medians(path: Path, fps: float) -> dict[int, float]:
    """{iteration: median syllable duration in ms} for every snapshot in a checkpoint."""
    import h5py
    import numpy as np

    out: dict[int, float] = {}
    if not path.exists():
        return out
    with h5py.File(path, "r") as f:
        mask = np.asarray(f["data/mask"])
        for key in sorted(f["model_snapshots"].keys(), key=int):
            z = np.asarray(f[f"model_snapshots/{key}/states/z"])
            out[int(key)] = stability.median_ms({"states": {"z": z}}, {"mask": mask}, fps)
    return out


def final_segments(path: Path) -> dict:
    """At the checkpoint's last snapshot: syllable instances, distinct syllables, longest instance (frames)."""
    import h5py
    import numpy as np
    from jax_moseq.utils import get_durations

    if not path.exists():
        return {}
    with h5py.File(path, "r") as f:
        last = max(f["model_snapshots"].keys(), key=int)
        z = np.asarray(f[f"model_snapshots/{last}/states/z"])
        mask = np.asarray(f["data/mask"])
    durs = get_durations(z, mask)
    return {"instances": int(len(durs)), "states": int(len(np.unique(z))),
            "longest_frames": int(durs.max()) if len(durs) else None}


def checkpoint_kappa(path: Path, iteration: int | None = None) -> float | None:
    """The kappa of a checkpoint's snapshot at ``iteration`` (None: its latest)."""
    import h5py

    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        at = max(f["model_snapshots"].keys(), key=int) if iteration is None else iteration
        return float(f[f"model_snapshots/{at}/hypparams/trans_hypparams/kappa"][()])


# ---------------------------------------------------------------- the project's config.yml
CONFIG_KAPPA = re.compile(r"^(trans_hypparams:\n(?:[ \t]+.*\n|\n)*?[ \t]+kappa:[ \t]*)(\S+)[ \t]*$", re.M)


def reset_config_kappa(project: Path, kappa: float) -> float | None:
    """Set config.yml's trans_hypparams.kappa to ``kappa``; return the value it had (None: no config yet).

    keypoint-moseq's ``init_model`` draws the AR-HMM's initial transition matrix and syllables
    with config.yml's kappa; the job then changes only the hyperparameter. A fresh project's
    config holds the manifest's kappa (ingest writes it), but the full-model stage writes its own
    kappa there after every fit, so in a reused project the next AR-HMM starts from a state drawn
    with the PREVIOUS run's full-model kappa: the same manifest then gives another chain, and a
    sweep's results would depend on its order. Setting it back makes every run the run a fresh
    project would make at that kappa. Text edit: the file's comments stay.
    """
    cfg = project / "config.yml"
    if not cfg.exists():
        return None
    text = cfg.read_text()
    m = CONFIG_KAPPA.search(text)
    if m is None:
        raise RuntimeError(f"no trans_hypparams.kappa in {cfg}")
    value = yaml.safe_dump(float(kappa)).splitlines()[0]  # 1.0e+16: PyYAML reads repr's "1e+16" as a string
    cfg.write_text(text[:m.start(2)] + value + text[m.end(2):])
    return float(m.group(2))


# ---------------------------------------------------------------- one run of the job
def run_one(x: float, manifest: dict, fps: float, out: Path, args) -> dict:
    """The job at kappa 10**x (full model at 10**x / 10) in a fresh process, then its measures."""
    kappa = 10.0 ** x
    project = Path(manifest["project_dir"])
    m = json.loads(json.dumps(manifest))
    m["model"]["kappa"] = kappa
    m["model"]["full_kappa"] = kappa / FULL_RATIO
    mf = out / "manifest.yml"
    mf.write_text(yaml.safe_dump(m, sort_keys=False))
    log_file = out / "logs" / f"log10k={x:+.4f}.log"
    summary = project / "summary.json"
    before = summary.stat().st_mtime if summary.exists() else None
    config_kappa = reset_config_kappa(project, kappa) if args.config_reset else None
    print(f"== kappa 1e{x:g} (full model {kappa / FULL_RATIO:.3g}) ...", flush=True)
    t0 = time.monotonic()
    with open(log_file, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(mf)], cwd=ROOT,
                              stdout=fh, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, NO_COLOR="1", MPLBACKEND="Agg"))
    wall = time.monotonic() - t0
    stages: dict[str, str] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        hit = STAGE_LINE.search(line)
        if hit:
            stages[hit.group(2)] = "ran" if hit.group(1) == "run" else "skipped"
    row = {"log10_kappa": x, "kappa": kappa, "full_kappa": kappa / FULL_RATIO, "exit": proc.returncode,
           "wall_s": round(wall, 1), "stages": stages,
           "reused_preprocessing": all(stages.get(s) == "skipped" for s in PREPROCESSING),
           "log": str(log_file), "config_kappa_before": config_kappa, "config_reset": args.config_reset,
           "notes": []}
    s = json.loads(summary.read_text()) if summary.exists() else {}
    fresh = summary.exists() and summary.stat().st_mtime != before
    if not fresh:
        row["notes"].append("summary.json not rewritten by this run")
        s = {}
    row["summary"] = {"median_duration_ms": s.get("median_duration_ms"), "kappa": s.get("kappa"),
                      "iterations": s.get("iterations"), "in_target_window": s.get("in_target_window"),
                      "frames": s.get("frames"), "latent_dim": s.get("latent_dim"),
                      "seconds_per_stage": s.get("seconds_per_stage")}
    if s and s.get("kappa"):
        for side, want in (("arhmm", kappa), ("full_model", kappa / FULL_RATIO)):
            got = s["kappa"].get(side)
            if got is None or not math.isclose(got, want, rel_tol=1e-9):
                row["notes"].append(f"summary.json's {side} kappa {got} is not {want:.6g}")
    arhmm_ck = project / f"{MODEL}_arhmm" / "checkpoint.h5"
    full_ck = project / MODEL / "checkpoint.h5"
    row["arhmm_snapshots_ms"] = {str(k): v for k, v in snapshot_medians(arhmm_ck, fps).items()}
    row["full_snapshots_ms"] = {str(k): v for k, v in snapshot_medians(full_ck, fps).items()}
    kappas_match = True
    for ck, want, label in ((arhmm_ck, kappa, "AR-HMM"), (full_ck, kappa / FULL_RATIO, "full-model")):
        got = checkpoint_kappa(ck)
        if got is None or not math.isclose(got, want, rel_tol=1e-9):
            kappas_match = False
            row["notes"].append(f"{label} checkpoint's kappa {got} is not {want:.6g}")
    row["full_final_segments"] = final_segments(full_ck)
    a, f = row["arhmm_snapshots_ms"], row["full_snapshots_ms"]
    # a run that failed or wrote no summary leaves the previous run's checkpoints: not its measures
    # (a run that skipped every stage, the project being at this kappa already, is measured)
    row["valid"] = proc.returncode == 0 and kappas_match and (fresh or "ran" not in stages.values())
    if not row["valid"]:
        row["notes"].append("not measured: the checkpoints are not this run's")
        a = f = row["arhmm_snapshots_ms"] = row["full_snapshots_ms"] = {}
        row["full_final_segments"] = {}
    row["arhmm_ms"] = a[max(a, key=int)] if a else None
    row["full_final_iter"] = int(max(f, key=int)) if f else None
    row["full_ms"] = f[str(row["full_final_iter"])] if f else None
    if row["full_final_iter"] is not None and row["full_final_iter"] != args.full_iters:
        row["notes"].append(f"full model's last snapshot is {row['full_final_iter']}, not {args.full_iters}")
    sm = row["summary"]["median_duration_ms"]
    if sm is not None and row["full_ms"] is not None and not math.isclose(sm, row["full_ms"], rel_tol=1e-6):
        row["notes"].append(f"summary.json's median {sm:.1f} ms differs from the final snapshot's "
                            f"{row['full_ms']:.1f} ms")
    if proc.returncode != 0:
        row["notes"].append(f"the job exited {proc.returncode}")
    lo, hi = args.target
    row["in_window"] = row["full_ms"] is not None and lo <= row["full_ms"] <= hi
    row["in_window_at"] = [int(k) for k, v in f.items() if lo <= v <= hi]
    print(f"   exit {row['exit']}, {row['wall_s']:.0f} s, AR-HMM {_ms(row['arhmm_ms'])} ms, full model "
          + ", ".join(f"@{k} {_ms(v)}" for k, v in sorted(f.items(), key=lambda kv: int(kv[0])) if int(k) > 0)
          + f" ms; stages run: {[k for k, v in stages.items() if v == 'ran']}"
          + (f"; NOTES: {row['notes']}" if row["notes"] else ""), flush=True)
    return row


# ---------------------------------------------------------------- grid, refinement, verdict
def valid(row: dict) -> bool:
    """Measured by its own run (rows of older versions of this file have no "valid": their exit says)."""
    return bool(row.get("valid", row.get("exit") == 0
                         and not any("not rewritten" in n for n in row.get("notes", []))))


def side(row: dict, lo: float, hi: float) -> str | None:
    """'below', 'in', 'above' the window for the full model's final median, None if unmeasured."""
    v = row.get("full_ms")
    if not valid(row) or v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return "below" if v < lo else "above" if v > hi else "in"


def brackets(rows: list[dict], lo: float, hi: float) -> list[tuple[dict, dict]]:
    """Neighbouring runs (by kappa) with the full model below the window at one, above at the other."""
    rs = sorted(rows, key=lambda r: r["log10_kappa"])
    return [(a, b) for a, b in zip(rs, rs[1:], strict=False)
            if {side(a, lo, hi), side(b, lo, hi)} == {"below", "above"}]


def verdict(rows: list[dict], lo: float, hi: float) -> tuple[str, dict]:
    ok = sorted((r for r in rows if valid(r) and r.get("in_window")), key=lambda r: r["log10_kappa"])
    parts, info = [], []
    for a, b in brackets(rows, lo, hi):
        res = b["log10_kappa"] - a["log10_kappa"]
        parts.append(f"it jumps from {_ms(a['full_ms'])} ms at kappa {a['kappa']:.4g} to "
                     f"{_ms(b['full_ms'])} ms at kappa {b['kappa']:.4g} ({res:.4g} decades apart)")
        info.append({"from_kappa": a["kappa"], "from_ms": a["full_ms"], "to_kappa": b["kappa"],
                     "to_ms": b["full_ms"], "resolution_decades": res})
    if ok:
        def trail(r):
            f = r["full_snapshots_ms"]
            return "/".join(_ms(f[k]) for k in sorted(f, key=int) if int(k) > 0)

        ks = ", ".join(f"{r['kappa']:.4g} ({_ms(r['full_ms'])} ms; snapshots {trail(r)})" for r in ok)
        text = f"in the window [{lo:g}, {hi:g}] ms (full model, final snapshot) at kappa {ks}"
        if parts:
            text += "; elsewhere the median crosses the window without landing in it: " + "; ".join(parts)
        return text, {"reached": True, "kappas": [r["kappa"] for r in ok], "crossings": info}
    if info:
        rs = sorted(c["resolution_decades"] for c in info)
        res = f"{rs[0]:.4g}" if rs[0] == rs[-1] else f"{rs[0]:.4g} to {rs[-1]:.4g}"
        return (f"no kappa in the grid (resolution {res} decades near the crossing) puts the full "
                f"model's median in [{lo:g}, {hi:g}] ms: " + "; ".join(parts),
                {"reached": False, "crossings": info})
    meas = [r for r in rows if side(r, lo, hi) is not None]
    if not meas:
        return "no run produced a full model", {"reached": False}
    where = {side(r, lo, hi) for r in meas}
    lo_r, hi_r = min(meas, key=lambda r: r["full_ms"]), max(meas, key=lambda r: r["full_ms"])
    return (f"no kappa in the grid puts the full model's median in [{lo:g}, {hi:g}] ms and none brackets "
            f"it: every measured median is {'/'.join(sorted(where))} the window, from {_ms(lo_r['full_ms'])} "
            f"ms (kappa {lo_r['kappa']:.4g}) to {_ms(hi_r['full_ms'])} ms (kappa {hi_r['kappa']:.4g})",
            {"reached": False, "crossings": []})


# ---------------------------------------------------------------- report
def _ms(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def table(rows: list[dict], args, fps: float) -> str:
    lo, hi = args.target
    iters = sorted({int(k) for r in rows for k in r.get("full_snapshots_ms", {}) if int(k) > 0})
    head = ("| log10 kappa | kappa (AR-HMM) | full kappa | AR-HMM median ms | "
            + " | ".join(f"full @{i}" for i in iters) + " | in window (final) | exit | stages run | wall s |")
    out = [f"Dataset {args.dataset} ({fps:g} fps): tuning off, AR-HMM {args.arhmm_iters} + full model "
           f"{args.full_iters} iterations, snapshots every {args.save_every}, full_kappa = kappa / 10, "
           f"seed {args.seed}, window [{lo:g}, {hi:g}] ms. Medians: jax-moseq get_durations at each "
           "checkpoint snapshot.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["log10_kappa"]):
        ok = valid(r)
        f = r.get("full_snapshots_ms", {}) if ok else {}
        ran = [k for k, v in r.get("stages", {}).items() if v == "ran"]
        judged = ("YES" if r.get("in_window") else "no") if ok else "NOT MEASURED"
        out.append(f"| {r['log10_kappa']:g} | {r['kappa']:.3g} | {r['full_kappa']:.3g} "
                   f"| {_ms(r.get('arhmm_ms') if ok else None)} | "
                   + " | ".join(_ms(f.get(str(i))) for i in iters)
                   + f" | {judged} | {r['exit']} | {', '.join(ran) or '-'} "
                   f"| {r['wall_s']:.0f} |")
    notes = [f"- kappa {r['kappa']:.3g}: {n}" for r in rows for n in r.get("notes", [])]
    mid = [f"- kappa {r['kappa']:.3g}: in the window at snapshot(s) {r['in_window_at']} but not at the final one"
           for r in rows if valid(r) and r.get("in_window_at") and not r.get("in_window")]
    if notes or mid:
        out += ["", "Notes:"] + notes + mid
    return "\n".join(out)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=[n for n, d in real_data.DATASETS.items() if d[1] != "tiled"])
    ap.add_argument("--out", type=Path, help="folder for kappa_sweep.json/.md, logs (default /tmp/sweep/<dataset>)")
    ap.add_argument("--project", type=Path, help="the project dir (default OUT/project)")
    ap.add_argument("--grid", nargs=3, type=float, default=[2.0, 20.0, 1.0], metavar=("LO", "HI", "STEP"),
                    help="log10(kappa) from LO to HI (inclusive) in steps of STEP (default 2 20 1)")
    ap.add_argument("--refine", type=int, default=4, help="bisections per bracketing pair (default 4)")
    ap.add_argument("--min-step", type=float, default=1 / 16,
                    help="stop bisecting a bracket this many decades wide (default 1/16)")
    ap.add_argument("--arhmm-iters", type=int, default=50)
    ap.add_argument("--full-iters", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", nargs=2, type=float, default=[300.0, 400.0], metavar=("LO", "HI"))
    ap.add_argument("--no-config-reset", dest="config_reset", action="store_false",
                    help="leave config.yml's kappa as the previous run wrote it (each AR-HMM then starts from a "
                         "state drawn with the previous run's full-model kappa; see reset_config_kappa)")
    ap.add_argument("--resume", action="store_true", help="reuse runs in OUT/kappa_sweep.json made with the "
                                                          "same settings")
    args = ap.parse_args(argv)
    out = args.out or Path("/tmp/sweep") / args.dataset
    (out / "logs").mkdir(parents=True, exist_ok=True)
    project = (args.project or out / "project").resolve()
    manifest, fps = dataset_manifest(args.dataset, project, args)
    lo, hi = args.target
    g_lo, g_hi, g_step = args.grid
    grid = [round(g_lo + i * g_step, 6) for i in range(int(math.floor((g_hi - g_lo) / g_step + 1e-9)) + 1)]
    settings = {"dataset": args.dataset, "fps": fps, "arhmm_iters": args.arhmm_iters,
                "full_iters": args.full_iters, "save_every": args.save_every, "seed": args.seed,
                "target_ms": [lo, hi], "full_kappa_ratio": FULL_RATIO, "project": str(project),
                "config_reset": args.config_reset}
    rows: list[dict] = []
    jf = out / "kappa_sweep.json"
    if args.resume and jf.exists():
        old = json.loads(jf.read_text())
        if old.get("settings") == settings:
            rows = old.get("runs", [])
            print(f"resuming: {len(rows)} runs reused from {jf}", flush=True)
        else:
            print(f"not resuming: {jf} was made with other settings", flush=True)
    t_start = time.monotonic()
    wall_before = sum(r["wall_s"] for r in rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()

    def measured(x):
        return next((r for r in rows if abs(r["log10_kappa"] - x) < 1e-9 and valid(r)), None)

    def save():
        text, info = verdict(rows, lo, hi)
        doc = {"settings": settings, "grid": [g_lo, g_hi, g_step], "refine": args.refine,
               "min_step": args.min_step, "git_head": commit, "manifest": manifest,
               "wall_s_total": round(wall_before + time.monotonic() - t_start, 1),
               "runs": sorted(rows, key=lambda r: r["log10_kappa"]), "verdict": text, "verdict_info": info}
        jf.write_text(json.dumps(doc, indent=1))
        md = table(rows, args, fps) + f"\n\nVerdict: {text}\n\nTotal job wall time {doc['wall_s_total']:.0f} s.\n"
        (out / "kappa_sweep.md").write_text(md)
        return md

    def run_at(x):
        r = measured(x)
        if r is None:
            r = run_one(x, manifest, fps, out, args)
            r["phase"] = phase
            rows[:] = [o for o in rows if abs(o["log10_kappa"] - x) >= 1e-9] + [r]  # a failed one is replaced
            save()
        return r

    phase = "grid"
    for x in grid:
        run_at(x)
    phase = "refine"
    done_pairs: set = set()
    while True:  # bisect every bracketing pair of the grid; new midpoints never create new pairs to chase
        todo = [(a, b) for a, b in brackets(rows, lo, hi)
                if (a["log10_kappa"], b["log10_kappa"]) not in done_pairs]
        if not todo:
            break
        a, b = todo[0]
        done_pairs.add((a["log10_kappa"], b["log10_kappa"]))
        for _ in range(args.refine):
            if b["log10_kappa"] - a["log10_kappa"] <= args.min_step + 1e-9:
                break
            mid = run_at(round((a["log10_kappa"] + b["log10_kappa"]) / 2, 9))
            sm = side(mid, lo, hi)
            if sm in (None, "in"):
                break
            if sm == side(a, lo, hi):
                a = mid
            else:
                b = mid
            done_pairs.add((a["log10_kappa"], b["log10_kappa"]))
    md = save()
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

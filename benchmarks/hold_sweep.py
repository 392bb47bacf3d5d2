"""Hold sweep: does ANY kappa keep the full model's median syllable duration in the window as it ages?

The issue lets a ``real_data.py`` row end with exit 5 only where it is measured that no kappa
reaches the window for that data. For the model delivered, reaching is not enough: it must stay
in the window 100 more iterations (``stability.py``). This benchmark measures, for one project the
job left (``real_data.py --keep``), whether any kappa does that from where the job's full model
starts, so that a tuner that misses can be told from data that gives it nothing to find.

From the AR-HMM state the job delivered (the latest snapshot of ``<model>_arhmm/checkpoint.h5``:
the job cuts that checkpoint at the state it delivers, and its full model starts there), the full
model runs at each kappa of a log grid for ``--iters`` Gibbs iterations (default 360: the job's
full-model budget, 1.3 x 200, plus the stability check's 100), through the job's own Gibbs loop
(``kpms_job.kpms.gibbs.run_gibbs``, as ``stability.py`` does), in a scratch copy (the project is
only read). The median syllable duration (jax-moseq's ``get_durations`` at ``--fps``) is taken
after every iteration. Per kappa it prints the median at a few ages, the share of states from
``--from`` (default 200) on that are in the window, and whether the states at ``--deliver-at``
(default 260, where the job's budget ends) and ``--iters`` are both in it ("holds": a model
delivered there would pass the stability check).

One fixed chain key for every kappa (the snapshot's own), as the job's probes have: the spread
between neighbouring kappas is then partly the chain's own wandering, which is what a tuner faces.
``--keys K1 K2 ...`` runs the grid again with each of those random keys instead (the same start,
other draws of the chain): whether a kappa that holds does so for the data or for one draw.

    .venv/bin/python benchmarks/real_data.py /tmp/rd --datasets openfield --keep
    .venv/bin/python benchmarks/hold_sweep.py /tmp/rd/projects/openfield/project --fps 30 \\
        --grid 5 12 1 --out /tmp/hold/openfield

Writes OUT/hold_sweep.json (every per-iteration median) and OUT/hold_sweep.md, rewritten after
each kappa.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks import kappa_sweep  # noqa: E402

AGES = (25, 50, 100, 200)


def arhmm_name(project: Path) -> str:
    names = sorted(p.parent.name for p in project.glob("*_arhmm/checkpoint.h5"))
    if len(names) != 1:
        raise SystemExit(f"{project}: expected one <model>_arhmm/checkpoint.h5, found {names or 'none'}")
    return names[0]


def recording_seconds(data, fps: float) -> float:
    import numpy as np

    return float(np.asarray(data["mask"]).sum()) / fps


def run_kappa(project: Path, name: str, kappa: float, iters: int, fps: float,
              key: int | None = None) -> tuple[list, float]:
    """Per-iteration medians of the full model at ``kappa`` from the delivered AR-HMM state
    (``key``: another draw of the chain, the same state with a fresh random key)."""
    import jax

    from kpms_job.kpms import gibbs
    from kpms_job.resources import model as memory

    scratch = Path(tempfile.mkdtemp(prefix="kpms-hold-"))
    try:
        (scratch / name).mkdir()
        shutil.copyfile(project / name / "checkpoint.h5", scratch / name / "checkpoint.h5")
        model, data, metadata, _ = gibbs.load_latest_snapshot(str(scratch), name)
        if key is not None:
            model["seed"] = jax.random.PRNGKey(key)
        medians = []

        def record(it, m):
            medians.append(gibbs.median_duration_ms(m, data, fps))

        scan = memory.kalman_scan_allowed(jax.default_backend())
        gibbs.run_gibbs(gibbs.set_kappa(model, kappa), data, metadata, str(scratch), "hold", start_iter=0,
                        num_iters=iters, ar_only=False, save_every=10**9, fps=fps,
                        parallel_message_passing=scan, kalman_scan=scan, on_iteration=record,
                        progress_plots=False)
        return medians, recording_seconds(data, fps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def summarise(kappa: float, medians: list, lo: float, hi: float, start: int, deliver_at: int) -> dict:
    def at(age):  # the state after ``age`` iterations
        return medians[age - 1] if 0 < age <= len(medians) else None

    def inside(ms):
        return ms is not None and lo <= ms <= hi

    late = [m for m in medians[start:] if math.isfinite(m)]
    end = len(medians)
    return {"kappa": kappa, "ages": {a: at(a) for a in (*AGES, deliver_at, end)},
            "share_in_window": sum(inside(m) for m in late) / len(late) if late else 0.0,
            "late_min": min(late, default=None), "late_max": max(late, default=None),
            "holds": inside(at(deliver_at)) and inside(at(end))}


def label(r: dict) -> str:
    return f"{r['kappa']:.3g}" + ("" if r.get("key") is None else f" (key {r['key']})")


def table(rows: list, args, meta: dict) -> str:
    lo, hi = args.target
    ages = (*AGES, args.deliver_at, args.iters)
    head = (f"Hold sweep: {args.project} (AR-HMM state at kappa {meta['arhmm_kappa']:.3g}; "
            f"{meta['seconds']:.0f} s of recordings, about {meta['syllables']:.0f} syllables at "
            f"{meta['centre_ms']:.0f} ms). Full model from that state at each kappa, {args.iters} iterations; "
            f"window [{lo:g}, {hi:g}] ms at {args.fps:g} fps.\n\n"
            "| kappa | " + " | ".join(f"median @{a}" for a in ages)
            + f" | states {args.start}-{args.iters} in window | their range ms | holds (@{args.deliver_at} and "
            f"@{args.iters}) |\n|" + "---|" * (len(ages) + 4))

    def ms(v):
        return "-" if v is None or not math.isfinite(v) else f"{v:.0f}"

    lines = [head]
    for r in rows:
        lines.append(f"| {label(r)} | " + " | ".join(ms(r["ages"][a]) for a in ages)
                     + f" | {100 * r['share_in_window']:.0f}% | {ms(r['late_min'])}-{ms(r['late_max'])} | "
                     + ("YES" if r["holds"] else "no") + " |")
    best = max(rows, key=lambda r: r["share_in_window"], default=None)
    held = [label(r) for r in rows if r["holds"]]
    lines.append("")
    lines.append(f"Holds at: {', '.join(held)}." if held else "No kappa of the grid holds the window.")
    if best is not None:
        lines.append(f"Most states in the window from iteration {args.start} on: kappa {label(best)}, "
                     f"{100 * best['share_in_window']:.0f}% of them.")
    return "\n".join(lines)


def draws_table(rows: list, deliver_at: int, end: int) -> str:
    """Per kappa, how many of its draws (random keys) hold: whether a kappa holds for the data or for one draw."""
    by_kappa: dict = {}
    for r in rows:
        by_kappa.setdefault(round(math.log10(r["kappa"]), 6), []).append(r)

    def ms(r, age):
        v = r["ages"].get(age, r["ages"].get(str(age)))
        return "-" if v is None or not math.isfinite(v) else f"{v:.0f}"

    lines = [f"| kappa | draws that hold (@{deliver_at} and @{end} in the window) | each draw: key, median "
             f"@{deliver_at}/@{end} ms |", "|---|---|---|"]
    for x in sorted(by_kappa):
        group = by_kappa[x]
        held = sum(bool(r["holds"]) for r in group)
        each = "; ".join(f"{'own' if r.get('key') is None else r['key']}: {ms(r, deliver_at)}/{ms(r, end)}"
                         + (" holds" if r["holds"] else "") for r in group)
        lines.append(f"| {10 ** x:.3g} | {held} of {len(group)} | {each} |")
    return "\n".join(lines)


def load_runs(folders: list) -> tuple[list, int, int]:
    """The rows of earlier runs (their hold_sweep.json), merged, with the two ages "holds" is judged at."""
    rows, deliver_at, end, seen = [], None, None, set()
    for folder in folders:
        path = folder / "hold_sweep.json" if folder.is_dir() else folder
        saved = json.loads(path.read_text())
        for r in saved["rows"]:
            draw = (round(math.log10(r["kappa"]), 6), r.get("key"))
            if draw in seen:  # runs over overlapping grids: one chain counted once
                continue
            seen.add(draw)
            # runs before these were saved used the defaults, the two largest ages
            ages = sorted(int(a) for a in r["ages"])
            deliver_at, end = saved.get("deliver_at", ages[-2]), saved.get("iters", ages[-1])
            rows.append(r)
    if not rows:
        raise SystemExit("no runs to summarise: expected hold_sweep.json files from earlier runs")
    return rows, deliver_at, end


def young_vs_old(rows: list, lo: float, hi: float, age: int = 40, horizon: int = 100) -> str:
    """How well a young chain foretells where it sits late: the side of the window (below, in, above)
    of its mean log median at ``age`` (over the last 10 iterations), and of that level carried on by
    its change over the 20 iterations before, for ``horizon`` more, against the side at the end (the
    last 20 states). A tuner's full-model probes are 15-35 iterations old."""
    def mean_log(m, a, b):
        v = [math.log10(x) for x in m[a - 1:b] if x and x > 0]
        return sum(v) / len(v) if v else float("nan")

    def side(x):
        return -1 if x < math.log10(lo) else (1 if x > math.log10(hi) else 0)

    level = moved = 0
    for r in rows:
        m = r["medians"]
        late = side(mean_log(m, len(m) - 19, len(m)))
        now = mean_log(m, age - 9, age)
        change = (now - mean_log(m, age - 29, age - 20)) / 20.0
        level += side(now) == late
        moved += side(now + change * horizon) == late
    return (f"{len(rows)} chains: the level at iteration {age} is on the late side of the window for {level}; "
            f"that level carried on by its change over the 20 iterations before, {horizon} more, for {moved}")


def levels_table(rows: list, deliver_at: int, end: int, span: int = 60) -> str:
    """Per kappa with two draws or more: where each draw's chain sits (the mean of its medians over the
    ``span`` iterations up to ``deliver_at``, and up to ``end``), how far apart the draws sit, and a
    state's own noise about its chain's level (the sd of each median about the mean of the 21 around
    it, over the same iterations, the median over draws). A window narrower than the draws' spread is
    missed by some draws whatever the tuner does at that kappa; the state's own noise says how much
    of a miss one state adds."""
    by_kappa: dict = {}
    for r in rows:
        if len(r["medians"]) >= end:
            by_kappa.setdefault(round(math.log10(r["kappa"]), 6), []).append(r)

    def level(m, upto):
        vals = [v for v in m[upto - span:upto] if v and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    def own_noise(m):
        seg = m[deliver_at - span:end]
        res = [seg[i] - sum(seg[i - 10:i + 11]) / 21 for i in range(10, len(seg) - 10)]
        return math.sqrt(sum(x * x for x in res) / len(res)) if res else float("nan")

    lines = [f"| kappa | draws | levels @{deliver_at} ms (spread) | levels @{end} ms (spread) | "
             f"a state's own noise, sd ms |", "|---|---|---|---|---|"]
    for x in sorted(by_kappa):
        group = by_kappa[x]
        if len(group) < 2:
            continue
        cols = []
        for upto in (deliver_at, end):
            lv = sorted(level(r["medians"], upto) for r in group)
            cols.append(f"{', '.join(f'{v:.0f}' for v in lv)} ({lv[-1] - lv[0]:.0f})")
        noise = sorted(own_noise(r["medians"]) for r in group)[len(group) // 2]
        lines.append(f"| {10 ** x:.3g} | {len(group)} | {cols[0]} | {cols[1]} | {noise:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, nargs="?", help="a project the job left (real_data.py --keep)")
    ap.add_argument("--fps", type=float)
    ap.add_argument("--grid", nargs=3, type=float, metavar=("LO", "HI", "STEP"),
                    help="log10 kappa from LO to HI in STEP (default: the AR-HMM's kappa / 1e5 to x 10, "
                         "one per decade)")
    ap.add_argument("--target", nargs=2, type=float, default=[300.0, 400.0], metavar=("LO", "HI"))
    ap.add_argument("--iters", type=int, default=360)
    ap.add_argument("--deliver-at", type=int, default=260)
    ap.add_argument("--from", dest="start", type=int, default=200, help="first state counted in the share")
    ap.add_argument("--keys", nargs="+", type=lambda v: None if v == "own" else int(v), default=[None],
                    help="random keys to draw each kappa's chain with, 'own' for the snapshot's own "
                         "(the default)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarise", nargs="+", type=Path, metavar="OUT",
                    help="print the per-kappa draws table of earlier runs' OUT folders (nothing is fitted)")
    args = ap.parse_args(argv)
    if args.summarise:
        rows, deliver_at, end = load_runs(args.summarise)
        print(draws_table(rows, deliver_at, end))
        print()
        print(levels_table(rows, deliver_at, end))
        print()
        print(young_vs_old(rows, *args.target))
        return 0
    if args.project is None or args.fps is None or args.out is None:
        ap.error("a project, --fps and --out are needed to run a sweep (or --summarise OUT ... to merge runs)")
    os.environ.setdefault("MPLBACKEND", "Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    name = arhmm_name(args.project)
    k_ar = kappa_sweep.checkpoint_kappa(args.project / name / "checkpoint.h5")
    if args.grid:
        lo, hi, step = args.grid
        grid = [lo + i * step for i in range(int(round((hi - lo) / step)) + 1)]
    else:
        top = round(math.log10(k_ar))
        grid = [float(v) for v in range(top - 5, top + 2)]
    rows, text = [], ""
    for x, key in ((x, key) for x in grid for key in args.keys):
        t0 = time.monotonic()
        medians, seconds = run_kappa(args.project, name, 10 ** x, args.iters, args.fps, key)
        centre = math.sqrt(args.target[0] * args.target[1])
        meta = {"arhmm_kappa": k_ar, "seconds": seconds, "centre_ms": centre,
                "syllables": seconds * 1000.0 / centre}
        row = summarise(10 ** x, medians, *args.target, args.start, args.deliver_at)
        row["key"] = key
        row["medians"] = medians
        row["wall_s"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        print(f"kappa {label(row)}: " + " ".join(f"{m:.0f}" for m in medians[9::10]), flush=True)
        text = table(rows, args, meta)
        (args.out / "hold_sweep.md").write_text(text + "\n")
        (args.out / "hold_sweep.json").write_text(json.dumps({"project": str(args.project), **meta,
                                                              "target_ms": args.target, "deliver_at": args.deliver_at,
                                                              "iters": args.iters, "rows": rows}))
    print()
    print(text)
    if len(args.keys) > 1:
        print()
        print(draws_table(rows, args.deliver_at, args.iters))
    return 0


if __name__ == "__main__":
    sys.exit(main())

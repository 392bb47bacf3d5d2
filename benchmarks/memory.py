"""Memory: the model's estimate against the measured peak of a real full-model fit.

Real recordings are TILED (repeated, each copy starting at another frame) into recordings of
10,000 frames up to ``--frames`` frames: repeats of real tracking data, not new recordings.
The default, ``openfield``, alternates the two real DeepLabCut predictions of the same
open-field video that ../shared/data holds (the bundled examples/data csv, from ethome, and
DeepLabCut's own older h5; 2330 frames x 4 keypoints each); ``golden_mouse`` is one
4860-frame recording with 27 keypoints.

The parent process plans against this machine's memory with the job's own planner
(:func:`kpms_job.resources.ladder.choose` on :func:`kpms_job.resources.machine.budget`; no JAX in the parent),
then starts a fresh child process that loads and tiles the data, runs PCA and the model
initialisation and ``--iters`` full-model Gibbs iterations through the job's adapter
(``kpms_job.kpms.gibbs.run_gibbs``) with the chosen settings. The measured peak is the child's peak
resident memory over its whole life (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, checked
against /proc polling every 0.2 s); the child also reports its peak during the fit alone.

    .venv/bin/python benchmarks/memory.py                          # 1,000,000 frames
    .venv/bin/python benchmarks/memory.py --frames 200000 --recording golden_mouse

Exit 0 when measured / estimate is within 1 +- 25%, 1 when outside, 2 when it refuses to
run (the estimate does not fit the memory available now), 3 when the child failed or hung (a
watchdog kills it after 240 s without CPU time). A JSON line with every figure
ends the output (``--json PATH`` also saves it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RECORDINGS = {  # name: (format, files, anterior, posterior, keypoints)
    "openfield": ("deeplabcut", [DATA / "ethome/openfield_dlc_inference_example.csv",
                                 DATA / "DeepLabCut/m3v1mp4DeepCut_resnet50_openfieldOct30shuffle1_15001.h5"],
                  "snout", "tailbase", 4),
    "golden_mouse": ("deeplabcut", [DATA / "DeepLabCut/golden_mouseDLC_dlcrnetms5_golden_mouseOct19shuffle1_2000.h5"],
                     "nose", "tail_base", 27),
}
SEG = 10_000
GiB = float(1 << 30)
TOLERANCE = 0.25
STALL_S = 240  # a child without CPU time this long is hung


def status(field: str, pid="self") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid) -> float:
    """User + system CPU time of a process (the watchdog's sign of life)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def tiled_lengths(frames: int) -> list[int]:
    full, rest = divmod(frames, SEG)
    return [SEG] * full + ([rest] if rest else [])


# --------------------------------------------------------------------------- child
def child(args) -> int:
    """Load, tile, PCA, init, and ``--iters`` full-model iterations; print the figures as JSON."""
    import numpy as np

    from kpms_job.kpms import gibbs, io, patches, project
    from kpms_job.resources import model as memory

    fmt, files, anterior, posterior, _ = RECORDINGS[args.recording]
    sources = []
    for path in files:
        coords, confs, bodyparts = io.load_file(str(path), fmt, [])
        sources.append((next(iter(coords.values())), next(iter(confs.values())), list(bodyparts)))
    bodyparts = sources[0][2]
    assert all(s[2] == bodyparts for s in sources), "tiled sources must share their bodyparts"
    coords, confs = {}, {}
    for i, size in enumerate(tiled_lengths(args.frames)):  # tile i: source i % n, from frame i * 997
        c, f, _ = sources[i % len(sources)]
        idx = (np.arange(size) + i * 997) % len(c)
        coords[f"tile{i:04d}"], confs[f"tile{i:04d}"] = c[idx], f[idx]
    scan = memory.kalman_scan_allowed(gibbs.backend())
    patches.install(location_scan=scan)  # before init_model: it runs patched steps
    gibbs.configure(args.mixed_map_iters)
    work = Path(tempfile.mkdtemp(prefix="kpms-mem-"))
    pd = str(work / "project")
    project.setup_project(pd, bodyparts=bodyparts, use=bodyparts, anterior=[anterior], posterior=[posterior],
                    skeleton=[], fps=30.0, video_dir=None, conf_threshold=0.5, outlier_scale_factor=6.0,
                    noise_calibration=None, num_states=args.num_states, kappa=1e6, seed=0)
    project.update_config(pd, latent_dim=args.latent_dim)
    config = project.load_config(pd)
    t = time.monotonic()
    data, metadata = project.format_data(coords, confs, config)
    del coords, confs, sources
    pca = project.fit_pca(data, config, pd)
    model = gibbs.init_model(data, pca, config, seed=0)
    model = gibbs.set_kappa(model, 1e5)
    t_prep = time.monotonic() - t
    peak_before_fit = status("VmHWM")
    with open("/proc/self/clear_refs", "w") as fh:  # the fit's own peak from here
        fh.write("5")
    times, t = [], time.monotonic()

    def on_iteration(it, mdl):
        times.append(time.monotonic() - t)
        print(f"  iteration {it}: {times[-1]:.0f} s, RSS {status('VmRSS') / GiB:.2f} GiB, "
              f"fit peak {status('VmHWM') / GiB:.2f} GiB", file=sys.stderr, flush=True)

    try:
        gibbs.run_gibbs(model, data, metadata, pd, "bench", start_iter=0, num_iters=args.iters, ar_only=False,
                    save_every=args.iters, fps=30.0, parallel_message_passing=False, kalman_scan=scan,
                    on_iteration=on_iteration, progress_plots=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"padded_frames": int(np.size(data["mask"])), "segments": int(np.shape(data["mask"])[0]),
           "latent_dim": int(model["states"]["x"].shape[-1]), "keypoints": len(bodyparts),
           "peak_before_fit": peak_before_fit, "fit_peak": status("VmHWM"), "prepare_s": round(t_prep, 1),
           "iteration_s": [round(b - a, 1) for a, b in zip([0.0, *times], times, strict=False)]}
    print("CHILD " + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- parent
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--recording", choices=sorted(RECORDINGS), default="openfield")
    p.add_argument("--latent-dim", type=int, default=4)
    p.add_argument("--num-states", type=int, default=100)
    p.add_argument("--iters", type=int, default=3, help="full-model Gibbs iterations")
    p.add_argument("--budget-gb", type=float, help="plan against this budget (default: this machine's memory)")
    p.add_argument("--mixed-map-iters", type=int, help="force this setting instead of the plan's")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    fmt, files, _, _, keypoints = RECORDINGS[args.recording]
    missing = [f for f in files if not f.exists()]
    if missing:
        print(f"skipped: {missing[0]} is not here (../shared/data holds the real recordings)")
        return 0
    from kpms_job.resources import ladder, model
    from kpms_job.resources import machine as host

    machine = host.detect({**os.environ, "JAX_PLATFORMS": "cpu"})
    if args.budget_gb:
        budget, source = args.budget_gb * GiB, "--budget-gb"
    else:
        budget, source = host.budget(machine, "auto")
    lengths = tiled_lengths(args.frames)
    shape = model.Shape(frames=args.frames, keypoints=keypoints, latent_dim=args.latent_dim,
                         num_states=args.num_states, recordings=tuple(lengths))
    choice = ladder.choose(shape, budget, "cpu")
    setting = model.Setting(False, args.mixed_map_iters) if args.mixed_map_iters else choice.setting
    est_full = model.estimate(shape, setting, "full_model", "cpu")
    est_ar = model.estimate(shape, setting, "arhmm", "cpu")  # the child's init runs the discrete step
    est = ladder.need(est_ar, est_full)
    print(f"data: {', '.join(f.name for f in files)} (real {fmt} tracking, {keypoints} keypoints) TILED into "
          f"{len(lengths)} recordings = {shape.frames:,} frames: repeats of real recordings, not new recordings; "
          f"{shape.segments} segments, {shape.padded_frames:,} padded frames; latent_dim {args.latent_dim}, "
          f"num_states {args.num_states}")
    print(f"machine: {machine.ram_total / GiB:.1f} GiB RAM, {machine.ram_available / GiB:.1f} GiB available; "
          f"budget {budget / GiB:.1f} GiB ({source}); CPU backend")
    print(f"plan: {choice.setting.label()} ({'fits' if choice.fits else 'DOES NOT FIT'}): {choice.reason}")
    if setting != choice.setting:
        print(f"forced: {setting.label()}")
    print(f"estimate: {est.describe()}")
    avail = host.system_memory()[1]
    if est.total > 0.95 * avail:
        print(f"refusing to run: the estimate ({est.total / GiB:.1f} GiB) does not fit the {avail / GiB:.1f} GiB "
              "available now")
        return 2

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--frames", str(args.frames),
           "--recording", args.recording, "--latent-dim", str(args.latent_dim), "--num-states",
           str(args.num_states), "--iters", str(args.iters), "--mixed-map-iters", str(setting.mixed_map_iters)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=str(ROOT))
    polled, cpu, moved, hung = 0, -1.0, time.monotonic(), False
    while proc.poll() is None:  # /proc polling, a cross-check of ru_maxrss; and a watchdog
        polled = max(polled, status("VmRSS", proc.pid))
        now = cpu_seconds(proc.pid)
        if now > cpu:
            cpu, moved = now, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            hung = True
            proc.kill()
        time.sleep(0.2)
    stdout = proc.stdout.read()
    wall = time.monotonic() - t0
    if hung:
        # seen on a 2-core machine at 500,000 and 1,000,000 frames before the adapter's location patch:
        # jax-moseq's resample_location always used the associative-scan Kalman sampler, whose batched
        # LU calls (LAPACK dgetrf's ParallelBatchMap) waited forever on the XLA:CPU pool they occupied
        # (jaxlib 0.10.2). A CPU plan now samples the centroid sequentially.
        print(f"the child hung: no CPU time for {STALL_S} s ({wall:.0f} s in): probably an XLA:CPU thread-pool "
              "deadlock (see the comment here); fewer --frames, or a machine with more cores")
        return 3
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest of the children
    if proc.returncode != 0:
        print(f"the child failed (exit {proc.returncode}) after {wall:.0f} s")
        return 3
    got = json.loads(stdout.split("CHILD ", 1)[1].splitlines()[0])
    assert got["padded_frames"] == shape.padded_frames and got["segments"] == shape.segments, (got, shape)
    ratio = maxrss / est.total
    fit_ratio = got["fit_peak"] / est_full.total
    out = {
        "recordings": [str(f.relative_to(DATA)) for f in files], "tiled": True, "frames": shape.frames,
        "padded_frames": shape.padded_frames, "segments": shape.segments, "keypoints": keypoints,
        "latent_dim": args.latent_dim, "num_states": args.num_states, "iters": args.iters,
        "budget_gib": round(budget / GiB, 2), "budget_source": source, "setting": setting.as_dict(),
        "plan_fits": choice.fits,
        "estimate_gib": round(est.total / GiB, 3), "estimate_fit": est.stage,
        "estimate_parts_gib": {"base": round(est.base / GiB, 3), "resident": round(est.resident / GiB, 3),
                               "step": round(est.steps[est.peak_step] / GiB, 3), "largest_step": est.peak_step},
        "estimate_full_model_gib": round(est_full.total / GiB, 3), "estimate_arhmm_gib": round(est_ar.total / GiB, 3),
        "measured_peak_gib": round(maxrss / GiB, 3), "measured_peak_polled_gib": round(polled / GiB, 3),
        "measured_peak_before_fit_gib": round(got["peak_before_fit"] / GiB, 3),
        "measured_fit_peak_gib": round(got["fit_peak"] / GiB, 3),
        "ratio_measured_over_estimate": round(ratio, 3), "ratio_fit_peak_over_full_model_estimate": round(fit_ratio, 3),
        "seconds": {"prepare": got["prepare_s"], "iterations": got["iteration_s"], "child_wall": round(wall, 1)},
        "xla_flags": env.get("XLA_FLAGS", ""),
    }
    print(f"measured: peak resident memory of the fresh process {maxrss / GiB:.2f} GiB (ru_maxrss; /proc polling "
          f"{polled / GiB:.2f} GiB); before the fit (load, PCA, init) {got['peak_before_fit'] / GiB:.2f} GiB; "
          f"during the {args.iters} full-model iterations {got['fit_peak'] / GiB:.2f} GiB "
          f"(full-model estimate {est_full.total / GiB:.2f} GiB, ratio {fit_ratio:.3f})")
    print(f"time: prepare {got['prepare_s']} s, iterations {got['iteration_s']} s, child {wall:.0f} s")
    within = abs(ratio - 1) <= TOLERANCE
    print(f"measured / estimate = {maxrss / GiB:.2f} / {est.total / GiB:.2f} GiB = {ratio:.3f} "
          f"({'within' if within else 'OUTSIDE'} {TOLERANCE:.0%})")
    line = json.dumps(out)
    print("RESULT " + line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())

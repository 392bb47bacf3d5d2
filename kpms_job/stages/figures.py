"""Syllable figures and grid movies. A figure that cannot be drawn is reported, not fatal.

Grid movies are written in this process, one frame at a time (kpms.results.grid_movies):
their memory does not grow with the data. The three figures drawn by keypoint-moseq's own
functions (syllable_frequencies, duration_distribution, similarity_dendrogram) run in a
child process started with ``python -m kpms_job.stages.figures`` (spawned, never a fork of
this JAX process; JAX on the CPU there). The parent polls the child's resident memory and
stops it above a cap (half the memory available when the stage starts, at least 1 GiB;
``KPMS_JOB_FIGURE_MEM_GB`` sets it) or after ``KPMS_JOB_FIGURE_TIMEOUT_S`` (1800 s): that
figure is reported as failed and the next ones run in a fresh child. Their cost on the
bundled recording tiled to 9,320 frames (benchmarks/figures_memory.py): 60 MiB above the
loaded results for all three, 40 of them the dendrogram's (its density sampling holds every
instance's trajectory: linear in the frames, hence the cap), so one child for all three, not
one each (each would add a JAX import).

Trajectory plots (``outputs.trajectory_plots``: keypoint-moseq's ``generate_trajectory_plots``,
a PNG beside each of its PDFs, no GIFs: a GIF rasterises every frame of every syllable's plot)
are drawn last in the same child, by :mod:`kpms_job.kpms.trajectories`. Their density sampling
computes the trajectory of every syllable instance (its ``sampling_options`` cap only the PCA's
sample), so their memory grows with the frames: the child hands them at most 200,000 frames,
the first frames of each recording in proportion to its length (``trajectories.MAX_FRAMES``).
Measured by benchmarks/trajectory_memory.py (the bundled recording tiled, synthetic syllables,
peak above the loaded data): 49 MiB at 2,330 frames, 51 MiB at 9,320 (4x), 61 at 74,560, then
uncapped 136 MiB at 298,240 and 243 MiB at 596,480 frames (about 0.35 MiB per 1,000 frames, with
4 keypoints), capped 100 and 103 MiB there. On fitted models (benchmarks/figures_memory.py, 3+3
iterations) the child drawing them alone peaked at 591 MiB on the bundled recording and 596 MiB
tiled 4x (9,320 frames), of which about 550 are JAX and the loaded results; the whole stage, its
own process, at 604 and 626 MiB.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

from . import arrays

log = logging.getLogger("kpms_job")

FIGURES = ("syllable_frequencies", "duration_distribution", "similarity_dendrogram")
GiB = 2**30

TITLE = "syllable figures and grid movies"
DEPS = ("ingest", "outliers", "results")
READS = ("model.name", "outputs.figures", "outputs.grid_movies", "outputs.trajectory_plots", "inputs.videos")
OUTPUTS = ()  # what was made is reported in the stage's info; a missing figure reruns nothing


def _first_line(exc) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def memory_cap() -> int:
    """Bytes a figure child may hold: ``KPMS_JOB_FIGURE_MEM_GB``, else half the memory available."""
    if os.environ.get("KPMS_JOB_FIGURE_MEM_GB"):
        return int(float(os.environ["KPMS_JOB_FIGURE_MEM_GB"]) * GiB)
    from ..resources.machine import system_memory

    return max(GiB, system_memory()[1] // 2)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_isolated(argv_for, labels, cap: int, timeout: float = 1800.0):
    """Run figures ``labels`` in child processes ``argv_for(remaining)``; return (made, failed).

    The child prints one JSON line per figure (``{"label", "error"}``, error None when made).
    A child stopped above ``cap`` bytes, after ``timeout`` s, or dead for another reason costs
    the figure it was drawing; the rest go on in a fresh child.
    """
    made, failed, todo = [], {}, list(labels)
    while todo:
        env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
        p = subprocess.Popen(argv_for(todo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        t0, why = time.monotonic(), None
        while p.poll() is None:
            rss = _rss(p.pid)
            if rss > cap:
                why = f"stopped: more than {cap / GiB:.1f} GiB of memory"
            elif time.monotonic() - t0 > timeout:
                why = f"stopped: more than {timeout:.0f} s"
            if why:
                p.kill()
                break
            time.sleep(0.2)
        out, err = p.communicate()
        for line in out.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("label") in todo:
                todo.remove(rec["label"])
                if rec["error"]:
                    failed[rec["label"]] = rec["error"]
                else:
                    made.append(rec["label"])
        if todo:  # the child died (or was stopped) while drawing todo[0]
            label = todo.pop(0)
            failed[label] = why or f"the figure process exited with code {p.returncode}"
            log.debug("figure process stderr: %s", err[-2000:])
    for label, why in failed.items():
        log.warning("could not make %s: %s", label, why)
    return made, failed


def _child(project_dir: str, model_name: str, fps: float, npz: str, labels: list[str]) -> int:
    """In the child: draw ``labels`` with keypoint-moseq, one JSON line each."""
    from pathlib import Path

    from ..kpms import project, trajectories
    from ..kpms import results as R

    results, config = R.load_results(project_dir, model_name), project.load_config(project_dir)
    draw = {"syllable_frequencies": lambda: R.plot_frequencies(results, project_dir, model_name),
            "duration_distribution": lambda: R.plot_durations(results, project_dir, model_name, fps),
            "similarity_dendrogram": lambda: R.plot_dendrogram(arrays.load(Path(npz))[0], results, project_dir,
                                                               model_name, config),
            "trajectory_plots": lambda: trajectories.plot(arrays.load(Path(npz))[0], results, project_dir,
                                                          model_name, config, fps)}
    for label in labels:
        try:
            draw[label]()
            error = None
        except Exception as exc:  # noqa: BLE001 - one figure must not sink the others
            error = _first_line(exc)
        print(json.dumps({"label": label, "error": error}), flush=True)
    return 0


def run(ctx):
    from ..kpms import project
    from ..kpms import results as R

    pd, name, out = str(ctx.project_dir), ctx.model_name, ctx.m["outputs"]
    made, failed = [], {}

    labels = (FIGURES if out["figures"] else ()) + (("trajectory_plots",) if out["trajectory_plots"] else ())
    if labels:
        npz = str(ctx.work_dir / "preprocessed.npz")
        fps = float(ctx.fps)
        made, failed = run_isolated(
            lambda todo: [sys.executable, "-m", "kpms_job.stages.figures", pd, name, str(fps), npz, *todo],
            labels, memory_cap(), float(os.environ.get("KPMS_JOB_FIGURE_TIMEOUT_S", 1800)))
    if out["grid_movies"]:
        videos = ctx.m["inputs"].get("videos")
        label = "grid_movies (video)" if videos else "grid_movies (keypoints only)"
        try:
            results = R.load_results(pd, name)
            coords, _, _ = arrays.load(ctx.work_dir / "preprocessed.npz")
            n = R.grid_movies(results, pd, name, coords, project.load_config(pd), videos)
            made.append(f"{label}: {n} movies")
        except Exception as exc:  # noqa: BLE001 - one figure must not sink the job
            failed[label] = _first_line(exc)
            log.warning("could not make %s: %s", label, failed[label])
    return {"made": made, "failed": failed, "files": _files(ctx.project_dir, name, made)}


def natural_order(path) -> list:
    """Sort key: Syllable2 before Syllable10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _files(project_dir, name: str, made: list[str]) -> dict:
    """The files made, relative to the project dir, for the report: ``{"syllable_frequencies":
    [png], "duration_distribution": [png], "similarity_dendrogram": [png], "trajectory_plots":
    [all_trajectories.png, Syllable0.png, ...], "grid_movies": [syllable0.webm, ...]}``, each key
    only when that output was made."""
    model = project_dir / name

    def rel(paths):
        return [str(p.relative_to(project_dir)) for p in sorted(paths, key=natural_order) if p.exists()]

    files = {label: rel([model / f"{label}.png"]) for label in FIGURES if label in made}
    if "trajectory_plots" in made:
        files["trajectory_plots"] = rel((model / "trajectory_plots").glob("*.png"))
    if any(m.startswith("grid_movies") for m in made):
        files["grid_movies"] = rel((model / "grid_movies").glob("syllable*.webm"))  # kpms/movies.py EXT
    return files


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5:]))

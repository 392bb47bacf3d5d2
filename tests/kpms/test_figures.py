"""Grid movies in bounded memory (kpms_job.kpms.movies), resumable per syllable.

The data: the bundled real recording (2330 frames x 4 keypoints, 30 fps) with synthetic
syllables (4 labels in runs of 0.2-0.8 s) and keypoint-moseq's centroids and headings; see
tests/figures_probe.py. No model is fitted.

``KPMS_JOB_PROBE_IMPL=kpms`` runs the memory test against keypoint-moseq's own
``generate_grid_movies`` (what the job used before): it fails there (growth 471 MiB at 1x,
1838 MiB at 4x the frames).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/, where figures_probe.py lives
PROBE = HERE / "figures_probe.py"
SCALE = 0.25  # keypoints x 0.25: tiles of 96 px, so that the old writer's check stays under 2.5 GiB

#: The most the writer's peak may grow when a movie has 4x the frames. Holding one movie's
#: frames as uint8 would add 45 MiB here (270 more frames of 192 x 288 pixels); keypoint-moseq's
#: float64 stacks add 1.3 GiB.
GROWTH_BOUND_MIB = 32


def probe(tmp_path: Path, repeat: int, impl: str) -> dict:
    out = tmp_path / f"{impl}{repeat}"
    r = subprocess.run([sys.executable, str(PROBE), str(out), "--repeat", str(repeat), "--scale", str(SCALE),
                        "--impl", impl, "--grid", "2x3"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TQDM_DISABLE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_grid_movie_memory_does_not_grow_with_frames_per_movie(tmp_path):
    """The same recording at 30 and 120 fps (4x the frames per recording and per movie): the
    writer's peak memory, each in a fresh process, grows by less than one movie's frames."""
    impl = os.environ.get("KPMS_JOB_PROBE_IMPL", "ours")
    small, large = probe(tmp_path, 1, impl), probe(tmp_path, 4, impl)
    assert small["movies"] == large["movies"] == 4
    extra = large["peak_mib"] - small["peak_mib"]
    assert extra < GROWTH_BOUND_MIB, f"peak grew {extra:.0f} MiB with 4x the frames: {small} -> {large}"


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, str(HERE))
    try:
        import figures_probe
    finally:
        sys.path.remove(str(HERE))
    return figures_probe.data(1, SCALE)


def _frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_grid_movies_resume_per_syllable_and_never_fork(tmp_path, data):
    """A rerun skips finished movies; a partial temp file is redone; new results redo all."""
    from kpms_job.kpms import movies as kpms_movies

    results, coords, config = data
    forks = []
    os.register_at_fork(before=lambda: forks.append(1))

    def write(res=results):
        return kpms_movies.write_grid_movies(res, None, None, coords, config, output_dir=tmp_path,
                                             grids=((2, 3),))

    first = write()
    assert first["grid"] == (2, 3) and first["skipped"] == [] and len(first["written"]) == 4
    assert not forks, "writing grid movies forked the (JAX) process"
    movies = {s: tmp_path / f"syllable{s}.webm" for s in first["written"]}
    assert all(_frames(p) == 90 for p in movies.values())  # (1 s before + 2 s after onset) x 30 fps
    stamp = {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in movies.items()}

    again = write()
    assert again["written"] == [] and sorted(again["skipped"]) == sorted(first["written"])
    assert {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in movies.items()} == stamp

    s = first["written"][1]  # killed while writing this one: a partial temp file, no movie
    movies[s].unlink()
    (tmp_path / f"syllable{s}.tmp.webm").write_bytes(b"\0" * 1000)
    third = write()
    assert third["written"] == [s] and len(third["skipped"]) == 3
    assert not (tmp_path / f"syllable{s}.tmp.webm").exists() and _frames(movies[s]) == 90

    changed = {k: dict(v, syllable=(np.asarray(v["syllable"]) + 1) % 4) for k, v in results.items()}
    fourth = write(changed)
    assert fourth["skipped"] == [] and len(fourth["written"]) == 4, "movies of old results were kept"


def test_grid_movies_show_keypoint_moseqs_instances(tmp_path, data):
    """Same seed, same grid: the movies equal keypoint-moseq's generate_grid_movies' up to the codec."""
    import cv2
    import keypoint_moseq as kpms

    from kpms_job.kpms import movies as kpms_movies

    results, coords, config = data
    ours = kpms_movies.write_grid_movies(results, None, None, coords, config, output_dir=tmp_path / "ours",
                                         grids=((1, 2),))
    np.random.seed(0)
    theirs = kpms.generate_grid_movies(results, output_dir=str(tmp_path / "kpms"), coordinates=dict(coords),
                                       keypoints_only=True, rows=1, cols=2, **config)
    assert sorted(ours["written"]) == sorted(int(s) for s in theirs)
    for s in ours["written"]:
        a, b = (cv2.VideoCapture(str(tmp_path / d / f"syllable{s}.{ext}"))
                for d, ext in (("ours", "webm"), ("kpms", "mp4")))
        for _ in range(0, 90, 15):
            (ok_a, fa), (ok_b, fb) = a.read(), b.read()
            assert ok_a and ok_b and fa.shape == fb.shape
            assert np.abs(fa.astype(float) - fb).mean() < 2.0, f"syllable {s}: frames differ"
            for _ in range(14):
                a.read(), b.read()


FAKE_FIGURE = """
import json, sys, time
for label in sys.argv[1:]:
    if label == "hog":  # runaway memory: 64 MiB at a time, up to 3 GiB
        hold = []
        for _ in range(48):
            hold.append(bytearray(64 * 2**20))
            time.sleep(0.02)
    if label == "dies":
        sys.exit(9)
    error = "ValueError: no syllables" if label == "raises" else None
    print(json.dumps({"label": label, "error": error}), flush=True)
"""


def test_a_figure_that_fails_or_runs_away_costs_that_figure_only():
    """keypoint-moseq's figures run in child processes: one that raises, dies or grows past
    the memory cap is reported as failed, and the others are still made."""
    from kpms_job.stages.figures import run_isolated

    made, failed = run_isolated(lambda todo: [sys.executable, "-c", FAKE_FIGURE, *todo],
                                ["a", "hog", "b", "raises", "dies", "c"], cap=400 * 2**20, timeout=60)
    assert made == ["a", "b", "c"]
    assert failed["raises"] == "ValueError: no syllables"
    assert failed["hog"].startswith("stopped: more than 0.4 GiB")
    assert "exited with code 9" in failed["dies"]

"""Grid movies in bounded memory, one syllable at a time. Part of the adapter layer.

The :mod:`kpms_job.kpms` package is the adapter layer: the only modules that
call keypoint_moseq. Import it only where JAX may be imported (keypoint_moseq imports JAX).

keypoint-moseq's ``generate_grid_movies`` renders every tile of a syllable's movie as a stack
of float64 frames, stacks the tiles, concatenates them into the grid and hands the whole
movie to imageio (1280 x 1920 pixels x 150 frames at 50 fps is 8.8 GB in float64, held
several times over; 20+ GiB was seen on a 6,000-frame recording). imageio-ffmpeg starts
ffmpeg with ``preexec_fn=os.setpgrp``, so Python forks the multithreaded JAX process.

Here the science is keypoint-moseq's own: the instances (``get_syllable_instances``,
``sample_instances``, seeded), the window size (``get_grid_movie_window_size``), the
smoothed centroids and headings, the skeleton (``get_edges``), the video check
(``check_videos``) and the drawing (``overlay_keypoints_on_image``), with
``generate_grid_movies``' defaults. Only the frame loop is ours: :class:`_Tile` computes
what ``viz._grid_movie_tile`` computes (keypoint-moseq 0.8.1), one frame at a time, into
uint8 frames, and each grid frame goes straight to ``cv2.VideoWriter`` (OpenCV's own
FFmpeg libraries, in this process: no fork, no ffmpeg executable). Memory holds one grid
frame, whatever the recording length.

Files land where keypoint-moseq writes them, ``<project>/<model>/grid_movies/syllable<N>.webm``.
Each movie is written to ``syllable<N>.tmp.webm`` and renamed when complete; a rerun on the
same results skips syllables whose movie exists and redoes a partial one. A marker file
(``.kpms-job-grid.json``) holds a hash of the results and settings the movies were made
from: when it differs (new results, another codec), the old movies are removed first.

The format is WebM with VP8: OpenCV's wheels ship no H.264 encoder, and of what they can
write only VP8/VP9 play in web browsers (the project's report.html shows the movies), as in
VLC, mpv and ffmpeg; MPEG-4 Part 2 (``mp4v``, used before) plays in no browser. VP8 encodes
about twice as fast as VP9 here (1.3 s against 2.4 s for 200 frames of 768x512).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from keypoint_moseq import util as kutil
from keypoint_moseq import viz as kviz

from .. import watchdog

log = logging.getLogger("kpms_job")

#: Grids tried in turn: the first that at least one syllable fills is used for every movie.
GRIDS = ((4, 6), (3, 4), (2, 3), (1, 2))

# generate_grid_movies' defaults (keypoint-moseq 0.8.1)
BEFORE_ONSET_SEC, AFTER_ONSET_SEC = 1.0, 2.0
SMOOTHING_FILTER_FRAMES = 9
MIN_FREQUENCY = 0.005
MIN_INSTANCE_DURATION_SEC = 0.1
DOT_RADIUS, DOT_COLOR = 4, (255, 255, 255)
MAX_VIDEO_SIZE = 1920
KEYPOINT_COLORMAP = "autumn"
MARKER = ".kpms-job-grid.json"
FOURCC = "VP80"
EXT = ".webm"


class _Tile:
    """One instance of a syllable, rendered frame by frame as ``viz._grid_movie_tile`` does."""

    def __init__(self, key, start, end, *, video_paths, centroids, headings, coordinates, window_size,
                 scaled_window_size, before, after, edges, plot_options, video_frame_indexes, use_dims):
        self.before, self.length = before, end - start
        self.window_size, self.scaled = window_size, scaled_window_size
        self.scale_factor = scaled_window_size / window_size
        self.edges, self.plot_options = edges, plot_options
        clip = slice(start - before, start + after)
        cs = centroids[key][clip]
        h, c = headings[key][start], cs[before]
        r = np.float32([[np.cos(h), np.sin(h)], [-np.sin(h), np.cos(h)]])
        xy = coordinates[key][clip].copy() if coordinates is not None else None
        if cs.shape[-1] == 3:
            if video_paths is not None:
                raise ValueError("3D keypoints are not supported when video paths are provided")
            ds = np.array(use_dims)
            if ds[1] == 2:
                xy[:, :, :2] = ((xy[:, :, :2] - c[:2]) @ r.T) + c[:2]
                xy[:, :, 2] = -(xy[:, :, 2] - c[2]) + c[2]
                r = np.float32([[1, 0], [0, 1]])
            cs, c, xy = cs[:, ds], c[ds], xy[:, :, ds]
        self.reader = None
        if video_paths is not None:
            from vidio.read import OpenCVReader

            self.frame_ixs = video_frame_indexes[key][clip]
            self.reader = OpenCVReader(video_paths[key])
            c = r @ c - window_size // 2
            self.M = np.float32([[np.cos(h), np.sin(h), -c[0]], [-np.sin(h), np.cos(h), -c[1]]])
            self.xy, self.cs = xy, cs
        else:
            self.xy = (xy - c) @ r.T * self.scale_factor + scaled_window_size // 2
            self.cs = (cs - c) @ r.T * self.scale_factor + scaled_window_size // 2

    def _dot(self, ii) -> bool:
        return 0 <= ii - self.before <= self.length and DOT_RADIUS > 0

    def frame(self, ii: int) -> np.ndarray:
        """Frame ``ii`` of the clip: uint8 RGB, ``scaled_window_size`` square."""
        if self.reader is not None:
            img = self.reader[int(self.frame_ixs[ii])]
            if self.xy is not None:  # overlay_keypoints (generate_grid_movies' default: off)
                img = kviz.overlay_keypoints_on_image(img, self.xy[ii], edges=self.edges, **self.plot_options)
            img = cv2.warpAffine(img, self.M, (self.window_size, self.window_size))
            img = cv2.resize(img, (self.scaled, self.scaled))
            if self._dot(ii):
                pos = tuple(int(x) for x in self.M @ np.append(self.cs[ii], 1) * self.scale_factor)
                cv2.circle(img, pos, DOT_RADIUS, DOT_COLOR, -1, cv2.LINE_AA)
            return img
        img = np.zeros((self.scaled, self.scaled, 3), np.uint8)
        img = kviz.overlay_keypoints_on_image(img, self.xy[ii], edges=self.edges, **self.plot_options)
        if self._dot(ii):
            cv2.circle(img, (int(self.cs[ii][0]), int(self.cs[ii][1])), DOT_RADIUS, DOT_COLOR, -1, cv2.LINE_AA)
        return img

    def close(self):
        if self.reader is not None:
            self.reader.close()


def _results_key(syllables, centroids, headings, coordinates, settings) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for k in sorted(syllables):
        h.update(k.encode())
        for a in (syllables[k], centroids[k], headings[k], coordinates[k] if coordinates else None):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def plan(results, coordinates, config, *, video_dir=None, grids=GRIDS, seed=0):
    """Everything a grid movie needs, computed as ``generate_grid_movies`` does (no frames).

    The grid is the first of ``grids`` that at least one syllable fills (``rows * cols``
    instances of at least 0.1 s, 1 s from the start and 2 s from the end of their recording,
    for a syllable used at least 0.5% of the time); every movie uses that grid, and a syllable
    with fewer instances gets no movie, as in keypoint-moseq. Short data thus get smaller
    grids (4x6, then 3x4, 2x3, 1x2) rather than movies of mostly blank tiles. Instances are
    sampled with ``np.random.seed(seed)`` (the global random state is restored afterwards),
    so a rerun samples the same ones, and so does ``generate_grid_movies`` after the same
    ``np.random.seed(seed)``.

    Returns None when no syllable fills even the smallest grid.
    """
    fps = float(config["fps"])
    before, after = round(BEFORE_ONSET_SEC * fps), round(AFTER_ONSET_SEC * fps)
    min_frames = max(1, round(MIN_INSTANCE_DURATION_SEC * fps))
    bodyparts, use = config.get("bodyparts"), config.get("use_bodyparts")
    keypoints_only = not video_dir
    coordinates = dict(coordinates)
    if bodyparts is not None and use is not None:
        coordinates = kutil.reindex_by_bodyparts(coordinates, bodyparts, use)
    skeleton = config.get("skeleton") or []
    edges = kutil.get_edges(use, skeleton) if (skeleton and keypoints_only) else []
    check = getattr(kutil, "_check_coordinates_match_results", None)
    if check is not None:
        check(coordinates, results)
    syllables = {k: np.asarray(v["syllable"]) for k, v in results.items()}
    centroids, headings = kutil.filter_centroids_headings(
        {k: np.asarray(v["centroid"]) for k, v in results.items()},
        {k: np.asarray(v["heading"]) for k, v in results.items()},
        smoothing_filter_frames=SMOOTHING_FILTER_FRAMES)
    video_paths = video_frame_indexes = None
    if not keypoints_only:
        video_paths = kutil.check_videos({k: v[:, None, :] for k, v in centroids.items()}, video_dir=video_dir,
                                         print_table=False, fps=fps)
        video_frame_indexes = {k: np.arange(len(v)) for k, v in syllables.items()}
    for rows, cols in grids:
        instances = kutil.get_syllable_instances(syllables, before_onset_frames=before, after_onset_frames=after,
                                                 min_instance_duration_frames=min_frames,
                                                 min_frequency=MIN_FREQUENCY, min_instances=rows * cols)
        if instances:
            break
    else:
        return None
    state = np.random.get_state()
    try:
        np.random.seed(int(seed))
        sampled = kutil.sample_instances(instances, rows * cols, coordinates=coordinates,
                                         centroids=centroids, headings=headings)
    finally:
        np.random.set_state(state)
    window_size = kviz.get_grid_movie_window_size(sampled, centroids, headings, coordinates, before, after)
    scaled = int(np.floor(MAX_VIDEO_SIZE / max(rows, cols) / 16) * 16)
    scaled = min(scaled, window_size)
    settings = {"grid": [rows, cols], "fps": fps, "video_dir": str(video_dir or ""), "seed": int(seed),
                "edges": [list(map(int, e)) for e in edges], "window": [window_size, scaled], "codec": FOURCC}
    return {"rows": rows, "cols": cols, "fps": fps, "before": before, "after": after, "sampled": sampled,
            "window_size": window_size, "scaled_window_size": scaled, "edges": edges,
            "centroids": centroids, "headings": headings, "coordinates": coordinates,
            "video_paths": video_paths, "video_frame_indexes": video_frame_indexes,
            "keypoints_only": keypoints_only,
            "key": _results_key(syllables, centroids, headings, coordinates, settings)}


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null: OpenCV's FFmpeg backend prints from C, past Python's sys.stderr."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def write_movie(p: dict, instances, path: Path) -> None:
    """Write one syllable's grid movie to ``path``, one grid frame at a time (tmp name, then rename)."""
    rows, cols, s = p["rows"], p["cols"], p["scaled_window_size"]
    n_frames = p["before"] + p["after"]
    plot_options = {"keypoint_colormap": KEYPOINT_COLORMAP}
    tmp = path.with_name(path.stem + ".tmp" + EXT)
    tiles = []
    writer = None
    try:
        for key, start, end in instances:
            tiles.append(_Tile(key, int(start), int(end), video_paths=p["video_paths"], centroids=p["centroids"],
                               headings=p["headings"],
                               coordinates=p["coordinates"] if p["keypoints_only"] else None,
                               window_size=p["window_size"], scaled_window_size=s, before=p["before"],
                               after=p["after"], edges=p["edges"], plot_options=plot_options,
                               video_frame_indexes=p["video_frame_indexes"], use_dims=[0, 1]))
        with _stderr_silenced():  # FFmpeg's "tag 'VP80' is not supported ... webm" is harmless: it picks VP8
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), p["fps"], (cols * s, rows * s))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {tmp} (codec {FOURCC})")
        grid = np.zeros((rows * s, cols * s, 3), np.uint8)
        for ii in range(n_frames):
            for i, tile in enumerate(tiles):
                r, c = divmod(i, cols)
                grid[r * s:(r + 1) * s, c * s:(c + 1) * s] = tile.frame(ii)
            writer.write(cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        writer.release()
        writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for tile in tiles:
            tile.close()


def write_grid_movies(results, project_dir, model_name, coordinates, config, video_dir=None, *,
                      grids=GRIDS, seed=0, output_dir=None) -> dict:
    """Write a grid movie per syllable, one at a time; skip those already written for these results.

    See :func:`plan` for the grid and which syllables get a movie. Returns a dict with the
    grid ``(rows, cols)``, the syllables ``written`` now and those ``skipped`` (already there);
    ``grid`` is None when no syllable has enough instances for even a 1x2 grid.
    """
    out = Path(output_dir) if output_dir else Path(project_dir) / model_name / "grid_movies"
    p = plan(results, coordinates, config, video_dir=video_dir, grids=grids, seed=seed)
    if p is None:
        return {"grid": None, "written": [], "skipped": []}
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    try:
        old = json.loads(marker.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        old = None
    for f in out.glob("syllable*.tmp.*"):
        f.unlink()
    if old != p["key"]:
        for f in [*out.glob("syllable*.mp4"), *out.glob("syllable*.webm")]:
            f.unlink()
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({"key": p["key"], "grid": [p["rows"], p["cols"]]}))
        os.replace(tmp, marker)
    written, skipped = [], []
    for syllable, instances in p["sampled"].items():
        path = out / f"syllable{int(syllable)}{EXT}"
        if path.exists():
            skipped.append(int(syllable))
            continue
        write_movie(p, instances, path)
        watchdog.progress(f"grid movie {path.name} written")  # long studies write many movies
        written.append(int(syllable))
        log.debug("grid movie %s written", path.name)
    return {"grid": (p["rows"], p["cols"]), "written": written, "skipped": skipped}

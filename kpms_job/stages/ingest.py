"""Load the recordings, check them, exclude unusable ones, write the project config."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np

from .. import groups, inputs, tracking_files
from ..errors import InputDataError, ManifestError
from . import arrays

log = logging.getLogger("kpms_job")

TITLE = "load recordings, QA, project config"
DEPS = ()
# inputs.paths and inputs.videos count by the files they name, by content and not by path
# (pipeline.input_hashes): a project whose data are mounted elsewhere is still up to date.
# model.kappa and preprocessing.outlier_scale_factor go into config.yml as starting values
# only: the fits set their own kappa and the outliers stage passes and records its factor.
READS = ("inputs.format", "inputs.exclude_individuals",
         "bodyparts.use", "bodyparts.anterior", "bodyparts.posterior", "bodyparts.skeleton", "fps",
         "preprocessing.conf_threshold", "preprocessing.max_nan_fraction", "preprocessing.min_frames",
         "preprocessing.noise_calibration", "model.num_states", "model.seed")
OUTPUTS = ("config.yml", ".kpms-job/keypoints.npz")
# keypoint-moseq's FAQ ("How much data do I need?"): "a few hours (a few hundred thousand frames)";
# below one hour, the least that is "a few hours", the user is told what to expect
FAQ_HOURS = 1.0


def read_file(path: str, fmt: str, exclude_individuals, field: str = "inputs.format"):
    """One tracking file: (coords, confs, bodyparts); any loader failure is a data error naming the file."""
    from ..kpms import io

    try:
        return io.load_file(path, fmt, exclude_individuals)
    except InputDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a data problem here
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputDataError(
            f"{path}: could not be read as {field} '{fmt}' ({type(exc).__name__}: {text}). "
            f"Check that the file is complete and that {field} matches how it was made.") from exc


def why_excluded(sel: np.ndarray, max_nan_fraction: float, min_frames: int, where: str) -> str | None:
    """Why a recording (its used keypoints) is left out, or None; ``where`` names the settings."""
    frames = sel.shape[0]
    nan_frac = float(np.isnan(sel).any(axis=-1).mean()) if frames else 1.0
    if nan_frac > max_nan_fraction:
        return f"{nan_frac:.0%} of its keypoint positions are missing, above {where}max_nan_fraction {max_nan_fraction}"
    if frames < min_frames:
        return f"{frames} frames, fewer than {where}min_frames {min_frames}"
    return None


def _load_all(m):
    fmt = m["inputs"]["format"]
    coords, confs, origin = {}, {}, {}
    bodyparts = None
    first_file = None
    for path in inputs.expand(m):
        c, f, bps = read_file(path, fmt, m["inputs"]["exclude_individuals"])
        if bodyparts is None:
            bodyparts, first_file = bps, path
        elif list(bps) != list(bodyparts):
            if set(bps) == set(bodyparts):  # same bodyparts, other order: put them in ours
                idx = [list(bps).index(b) for b in bodyparts]
                c = {k: v[:, idx] for k, v in c.items()}
                f = {k: v[:, idx] for k, v in f.items()}
            else:
                raise InputDataError(
                    f"{path}: its bodyparts differ from those of {first_file}: it lacks "
                    f"{sorted(set(bodyparts) - set(bps)) or 'none'} and adds "
                    f"{sorted(set(bps) - set(bodyparts)) or 'none'}. Every recording must have the "
                    "same bodyparts: list the shared ones in bodyparts.use, or split the job.")
        for name in c:
            if name in coords:
                raise InputDataError(
                    f"{path}: recording name '{name}' is also produced by {origin[name]}; "
                    "rename one of the files (recording names come from file names).")
            origin[name] = path
        coords.update(c)
        confs.update(f)
    return coords, confs, list(bodyparts), origin


def _resolve_fps(m, names, origin):
    from ..kpms import io

    if m["fps"] != "auto":
        return float(m["fps"]), "manifest"
    found = {}
    if m["inputs"].get("videos"):
        try:
            videos = io.find_videos(m["inputs"]["videos"], names)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not match videos to recordings: %s", exc)
            videos = {}
        for v in videos.values():
            fps = tracking_files.video_fps(v)
            if fps:
                found[v] = fps
    if not found and m["inputs"]["format"] == "nwb":
        for path in set(origin.values()):
            fps = io.nwb_fps(path)
            if fps and 1.0 < fps < 2000.0:  # timestamps in frame numbers give 1 fps: not a rate
                found[path] = fps
    if not found:
        raise ManifestError([
            "fps: 'auto' could not find the frame rate (no video in inputs.videos matched the "
            "recordings, and no NWB timing in seconds). Set fps to the recordings' frame rate, "
            "for example fps: 30"])
    rates = sorted(set(round(v, 3) for v in found.values()))
    if len(rates) > 1:
        raise ManifestError([f"fps: 'auto' found different frame rates {rates} in {sorted(found)}; "
                             "set fps explicitly (one job models recordings of one frame rate)"])
    return rates[0], f"auto: {Path(next(iter(found))).name}"


def run(ctx):
    from ..kpms import project

    m = ctx.m
    pre = m["preprocessing"]
    coords, confs, bodyparts, origin = _load_all(m)
    # the groups name recordings, which only the loaded files name: checked here, before any fit
    # (pipeline.check_groups checks them again when this stage is done and the groups change)
    groups.assign(m.get("groups"), list(coords))
    use = m["bodyparts"]["use"] or bodyparts
    missing = [b for b in use + (m["bodyparts"]["anterior"] or []) + (m["bodyparts"]["posterior"] or [])
               + [b for pair in m["bodyparts"]["skeleton"] for b in pair] if b not in bodyparts]
    if missing:
        hints = []
        for b in sorted(set(missing)):
            close = difflib.get_close_matches(b, bodyparts, n=1, cutoff=0.6)
            close = close or [c for c in bodyparts if c.lower() == b.lower()]
            if close:
                hints.append(f"'{b}' -> '{close[0]}'?")
        hint = f" Did you mean: {', '.join(hints)}" if hints else ""
        raise InputDataError(
            f"{next(iter(origin.values()))}: bodyparts {sorted(set(missing))} named in the manifest "
            f"are not in the recordings, which have {bodyparts}. Fix bodyparts in the manifest.{hint}")
    anterior = m["bodyparts"]["anterior"] or [use[0]]
    posterior = m["bodyparts"]["posterior"] or [use[-1]]
    if set(anterior) & set(posterior):
        raise InputDataError(
            f"bodyparts: anterior {anterior} and posterior {posterior} share "
            f"{sorted(set(anterior) & set(posterior))}; name different bodyparts for each end of the body.")
    use_idx = [bodyparts.index(b) for b in use]

    recordings, excluded = {}, {}
    for name, xy in coords.items():
        xy = np.asarray(xy, dtype=float)
        sel = xy[:, use_idx]
        if np.isinf(sel).any():
            raise InputDataError(
                f"{origin[name]}: recording '{name}' has {int(np.isinf(sel).sum())} infinite coordinate "
                "values; the file is damaged. Re-export it from the tracker, or remove it from inputs.paths.")
        frames = sel.shape[0]
        nan_frac = float(np.isnan(sel).any(axis=-1).mean()) if frames else 1.0
        low_conf = float((np.asarray(confs[name])[:, use_idx] < pre["conf_threshold"]).mean()) if frames else 1.0
        recordings[name] = {"file": origin[name], "frames": int(frames),
                            "nan_fraction": round(nan_frac, 4), "low_confidence_fraction": round(low_conf, 4)}
        why = why_excluded(sel, pre["max_nan_fraction"], pre["min_frames"], "preprocessing.")
        if why:
            excluded[name] = why
    for name, why in excluded.items():
        log.warning("excluded %s (%s): %s", name, origin[name], why)
    kept = [n for n in sorted(coords) if n not in excluded]
    if not kept:
        detail = "; ".join(f"{origin[n]} [{n}]: {w}" for n, w in excluded.items())
        raise InputDataError(f"no recording is usable: {detail}")

    fps, fps_source = _resolve_fps(m, kept, origin)
    arrays.save(ctx.work_dir / "keypoints.npz", {n: coords[n] for n in kept},
                {n: confs[n] for n in kept}, bodyparts)
    project.setup_project(
        str(ctx.project_dir), bodyparts=bodyparts, use=use, anterior=anterior, posterior=posterior,
        skeleton=m["bodyparts"]["skeleton"], fps=fps, video_dir=m["inputs"].get("videos"),
        conf_threshold=pre["conf_threshold"], outlier_scale_factor=pre["outlier_scale_factor"],
        noise_calibration=pre.get("noise_calibration"), num_states=m["model"]["num_states"],
        kappa=m["model"]["kappa"], seed=m["model"]["seed"])
    total = sum(recordings[n]["frames"] for n in kept)
    log.info("%d recording(s), %d frames, %d bodyparts used, fps %.3g (%s)",
             len(kept), total, len(use), fps, fps_source)
    little = too_little_data(total, fps)
    if little:
        log.warning("%s", little)
    return {"recordings": recordings, "used": kept, "excluded": excluded, "bodyparts": bodyparts,
            "use_bodyparts": use, "anterior": anterior, "posterior": posterior, "fps": fps,
            "fps_source": fps_source, "frames": total}


def too_little_data(frames: int, fps: float) -> str | None:
    """What to expect from recordings shorter than keypoint-moseq asks for, or None.

    Measured (``benchmarks/hold_sweep.py``: the full model from the tuned AR-HMM's state, 360
    iterations at each kappa of a grid): on the four recording sets of 8 to 78 s whose tuning
    failed in ``real_data.py``, the median of one state over iterations 200-360 at one kappa ranged
    by 20% up to a factor of 2 at most kappas, or jumped to seconds, and the syllables lengthened
    with age by up to 2.3x between iterations 25 and 260. After 25 iterations the median hardly
    depends on kappa; kappa sets which way it then moves. With other random keys from the same
    state (``hold_sweep.py --keys``), even the best kappa held at most about six draws in ten in
    the window (8 of 13), and mostly far fewer (2 of 6, 3 of 12, 1 of 3, 1 of 4).
    """
    seconds = frames / fps
    if seconds >= FAQ_HOURS * 3600:
        return None
    length = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (f"the recordings hold {length} in all ({frames} frames at {fps:g} fps); keypoint-moseq's FAQ "
            "asks for a few hours (a few hundred thousand frames). With this little data the median "
            "syllable duration of one model state wanders from iteration to iteration, and the full "
            "model's syllables may keep lengthening for hundreds of iterations, so the kappas that keep "
            "the median in the target window can be few and hard to find: kappa tuning may end with "
            "exit 5 (outside the window, or not stable in it). More or longer recordings make it steadier.")

"""``kpms-job apply``: label new recordings with a fitted model, in batches, each kept as it finishes.

Order of work (validate before compute): the manifest, the fitted project and this installation
(versions, frame rate), then every new file is read and checked against the model (bodyparts,
dimensions) before the first batch runs. Results go to ``<project>/applied/<name>/`` under that
folder's own lock, never over the fit's own results.

Resumable and idempotent: the state (``applied/<name>/.kpms-job/apply.json``) records, per input
file, the hash of its content and of the model, and the recordings it gave. A file whose hashes
match and whose recordings are in ``results.h5`` is done; the others are pending. After each batch
``results.h5`` is replaced whole (atomically) and then the state, so a kill loses at most the
batch in flight. Pending recordings are packed into batches in name order, greedily up to the batch
size, so a rerun after a kill forms the same batches as the run it resumes, and since
``apply_model`` resamples with the model's own random key, it gets the same labels.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .. import faults, inputs, runlog, signals
from ..errors import InputDataError, Interrupted
from ..state import ProjectLock, atomic_write_text, fingerprint, hash_file, now_iso, state_dir
from . import report, trained

log = logging.getLogger("kpms_job")

STATE_FILE = "apply.json"
TRAINING = trained.TRAINING


def out_dir(m: dict) -> Path:
    return Path(m["apply"]["project_dir"]) / "applied" / m["apply"]["name"]


def _model_key(t: trained.Trained, a: dict) -> str:
    """What a recording's labels depend on besides its own data: the model and how it is applied."""
    return fingerprint(hash_file(t.checkpoint), a["num_iters"], t.bodyparts, t.use, t.anterior, t.posterior,
                       t.fps, trained.installed_versions(), t.config.get("outlier_scale_factor"),
                       t.config.get("conf_threshold"), "apply-1")


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"files": {}}


def _recordings_in(path: Path) -> set[str]:
    """The recordings a results.h5 holds (its top-level groups), read without keypoint-moseq."""
    import h5py

    if not path.exists():
        return set()
    with h5py.File(path, "r") as f:
        return set(f.keys())


def pack(frames: dict[str, int], limit: int) -> list[list[str]]:
    """Recordings in name order, packed greedily into batches of at most ``limit`` frames (a longer
    recording is a batch of its own). Dropping the batches at the front leaves the rest as they were."""
    batches, cur, size = [], [], 0
    for name in sorted(frames):
        n = frames[name]
        if cur and size + n > limit:
            batches.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        batches.append(cur)
    return batches


def batch_frames(a: dict, t: trained.Trained, latent_dim: int, lengths: list[int]) -> tuple[int, str]:
    """The batch size: the manifest's, or the most frames the fitting planner fits on this machine."""
    if a["batch_frames"]:
        return int(a["batch_frames"]), "apply.batch_frames"
    from ..resources import ladder, machine
    from ..resources.model import Shape

    found = machine.detect()
    budget, source = machine.budget(found, (t.manifest.get("resources") or {}).get("vram_budget_gb", "auto"))
    shape = Shape(frames=max(sum(lengths), 1), keypoints=len(t.use), latent_dim=latent_dim,
                  num_states=t.num_states,
                  recordings=tuple(lengths) or (1,))
    n = ladder.max_frames(shape, budget, found.backend)
    if n <= 0:
        return 1, f"the memory plan fits no batch in {budget / 2**30:.1f} GiB ({source}): one recording at a time"
    return n, f"the memory plan: the most frames a fit of this model fits in {budget / 2**30:.1f} GiB ({source})"


def _load_new(m: dict, t: trained.Trained, files: list[str]):
    """Read the pending files and check each against the model: (coords, confs, origin)."""
    from ..stages.ingest import read_file

    a = m["apply"]
    coords, confs, origin = {}, {}, {}
    for path in files:
        c, f, bps = read_file(path, a["inputs"]["format"], a["inputs"]["exclude_individuals"], "apply.inputs.format")
        idx = trained.match_bodyparts(t, path, bps, c)
        for name in c:
            if name in origin:
                raise InputDataError(f"{path}: recording name '{name}' is also produced by {origin[name]}; "
                                     "rename one of the files (recording names come from file names)")
            coords[name] = np.asarray(c[name], dtype=float)[:, idx]
            confs[name] = np.asarray(f[name], dtype=float)[:, idx]
            origin[name] = path
    return coords, confs, origin


def _excluded(t: trained.Trained, coords: dict) -> dict[str, str]:
    """The fit's own rules (preprocessing.max_nan_fraction, min_frames) applied to the new recordings."""
    from ..stages.ingest import why_excluded

    pre = t.manifest.get("preprocessing") or {}
    use_idx = [t.bodyparts.index(b) for b in t.use]
    out = {}
    for name, xy in coords.items():
        why = why_excluded(xy[:, use_idx], pre.get("max_nan_fraction", 1.0), pre.get("min_frames", 0),
                           "the fit's ")
        if why:
            out[name] = why
    return out


def run(m: dict, wait: bool = False) -> int:
    t0 = time.monotonic()
    a = m["apply"]
    t = trained.read(a["project_dir"], a["model"])
    trained.check_setup(t, a["fps"])
    files = inputs.expand({"inputs": a["inputs"], "project_dir": str(t.project_dir)})
    out = out_dir(m)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..state import output_error

        raise output_error(exc, out) from exc
    runlog.start(out, "apply", manifest=m.get("source"))
    lock = ProjectLock(out)
    lock.acquire(wait=wait)
    try:
        return _run_locked(m, t, files, out, lock, t0)
    finally:
        lock.release()


def _run_locked(m, t, files, out, lock, t0) -> int:
    from ..kpms import apply as K
    from ..kpms import project
    from ..resources.machine import detect
    from ..resources.model import kalman_scan_allowed

    a = m["apply"]
    state_path = state_dir(out) / STATE_FILE
    st = _read_state(state_path)
    key = _model_key(t, a)
    res_path = out / "results.h5"
    have = _recordings_in(res_path)
    # a file is known by its content and its name (recording names come from file names), not by
    # its folder: data mounted elsewhere are still done
    hashes = {f: fingerprint(hash_file(f), Path(f).name) for f in files}
    if a["relabel_training"]:
        hashes[TRAINING] = fingerprint(hash_file(t.project_dir / ".kpms-job" / "preprocessed.npz"), TRAINING)
    done = {f for f, h in hashes.items()
            if (rec := st["files"].get(h)) and rec["model"] == key and set(rec["recordings"]) <= have}
    pending = [f for f in hashes if f not in done]
    log.info("apply %s to %d file(s) -> %s: %d done, %d to apply", t.model_name, len(hashes), out,
             len(done), len(pending))

    coords, confs, origin = _load_new(m, t, [f for f in pending if f != TRAINING])
    excluded = _excluded(t, coords)
    for name, why in excluded.items():
        log.warning("excluded %s (%s): %s", name, origin[name], why)
        coords.pop(name), confs.pop(name)
    if coords:  # the fit's outlier removal, with its factor; QA plots in the applied folder
        coords, confs = project.remove_outliers(coords, confs, str(out), t.config["outlier_scale_factor"],
                                                t.bodyparts)
    if TRAINING in pending:
        from ..stages import arrays

        tc, tf, _ = arrays.load(t.project_dir / ".kpms-job" / "preprocessed.npz")
        for name in tc:  # the fit's own arrays, outliers already removed
            if name in origin:
                raise InputDataError(
                    f"{origin[name]}: its recording '{name}' is one the model was fitted on, which "
                    "apply.relabel_training applies already; drop the file from apply.inputs, or set "
                    "relabel_training: false to apply it as a new recording")
            coords[name], confs[name] = tc[name], tf[name]
            origin[name] = TRAINING
    ran = []
    # the outputs beside results.h5 (CSVs, figures, NWB, summary) are made again when their settings change
    outputs_key = fingerprint(m["outputs"], m.get("nwb"), key)
    fresh = (out / "summary.json").exists() and st.get("outputs") == outputs_key
    results = K.read_results(res_path) if pending or not fresh else None
    if coords:
        model = K.load_model(str(t.project_dir), t.model_name)
        size, size_why = batch_frames(a, t, K.latent_dim(model), [len(v) for v in coords.values()])
        batches = pack({n: len(v) for n, v in coords.items()}, size)
        backend = detect().backend
        log.info("%d recording(s), %d frames, in %d batch(es) of at most %d frames (%s)", len(coords),
                 sum(len(v) for v in coords.values()), len(batches), size, size_why)
        config = project.load_config(str(t.project_dir))  # keypoint-moseq's, defaults filled, as the fit used
        for i, names in enumerate(batches, 1):
            if signals.requested() or lock.lost:
                raise Interrupted(f"stopped before batch {i} of {len(batches)}; {len(ran)} batch(es) kept. "
                                  "Rerun the same command to continue")
            faults.point(f"apply-batch:{i}")
            tb = time.monotonic()
            got = K.apply_batch(model, {n: coords[n] for n in names}, {n: confs[n] for n in names}, config,
                                a["num_iters"], kalman_scan_allowed(backend))
            results = {**results, **got}
            with signals.critical():  # a stop's forced exit waits for the batch's results and state
                K.write_results(res_path, results)
                _commit(st, state_path, hashes, origin, names, results, key)
            ran.append(names)
            log.info("batch %d/%d: %s (%d frames) in %.0f s", i, len(batches), ", ".join(names),
                     sum(len(coords[n]) for n in names), time.monotonic() - tb)
    if results is None:
        print(f"nothing to do: every recording of {out} is applied and up to date "
              f"({time.monotonic() - t0:.1f} s)")
        return 0
    # files whose every recording was excluded count as done: nothing more will come of them
    _commit(st, state_path, hashes, origin, [], results, key, excluded=excluded)
    wanted = {n for h in hashes.values() if h in st["files"] for n in st["files"][h]["recordings"]}
    if set(results) - wanted:  # recordings of files no longer among the inputs
        log.info("dropped from results.h5: %s (their files are no longer in apply.inputs)",
                 sorted(set(results) - wanted))
        results = {n: v for n, v in results.items() if n in wanted}
        K.write_results(res_path, results)
    report.write(m, t, out, results, st, hashes, excluded, len(ran), time.monotonic() - t0)
    st["outputs"] = outputs_key
    atomic_write_text(state_path, json.dumps(st, indent=1, sort_keys=True))
    what = (f"{sum(len(b) for b in ran)} recording(s) applied in {len(ran)} batch(es)" if ran else
            "no recording needed applying; the outputs were made again (their settings changed)")
    print(f"done: {what}, {time.monotonic() - t0:.0f} s. Results: {out}/summary.md")
    return 0


def _commit(st, state_path, hashes, origin, names, results, key, excluded=None) -> None:
    """Record every file all of whose recordings are now in ``results`` (or excluded)."""
    excluded = excluded or {}
    by_file: dict[str, list[str]] = {}
    for n, f in origin.items():
        by_file.setdefault(f, []).append(n)
    for f, recs in by_file.items():
        if all(n in results or n in excluded for n in recs):
            st["files"][hashes[f]] = {"path": f, "model": key, "recordings": sorted(n for n in recs if n in results),
                                      "excluded": {n: excluded[n] for n in recs if n in excluded}, "at": now_iso()}
    state_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps(st, indent=1, sort_keys=True))

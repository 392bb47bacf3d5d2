"""Developer tool: measure the memory model's coefficients (:data:`kpms_job.resources.model.COEFFS`).

Compiles the real jax-moseq Gibbs steps (with the job's patches installed) for a grid of small
real shapes and fits each step's bytes per frame by least squares; prints a new ``COEFFS`` to
paste into kpms_job/resources/model.py. Takes minutes; the job itself never runs it.

    .venv/bin/python tools/calibrate_memory.py                       # every step
    .venv/bin/python tools/calibrate_memory.py --steps discrete,ar_params [--records]

The model is initialised on the bundled real recording (:func:`calibration_model`); every step
of one full-model iteration is compiled for ``segments`` x ``seg_length`` frames (abstract
shapes: nothing of that size is allocated) and XLA's memory analysis gives its temporaries and
outputs (:func:`compiled_step_memory`). The batched steps are compiled at mixed_map_iters 1 and
2, which separates their whole and chunk parts.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kpms_job.resources.model import BATCHED, COEFFS, KALMAN, MAX_SEG_LENGTH, STEP_FEATURES, STEPS_FULL, Shape, features  # noqa: E402

#: The shapes (keypoints, latent_dim, num_states) :func:`calibrate` compiles.
CALIBRATION_GRID = ((4, 4, 100), (8, 4, 100), (8, 8, 100), (8, 8, 30), (12, 10, 100), (16, 6, 50))
CALIBRATION_SEGMENTS = 4
CALIBRATION_SEG_LENGTH = MAX_SEG_LENGTH
EXAMPLE_CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"


def install_patches():
    """The job's patches, as a fit on this backend installs them."""
    from kpms_job.kpms import gibbs, patches
    from kpms_job.resources import model as memory

    patches.install(location_scan=memory.kalman_scan_allowed(gibbs.backend()))


def calibration_model(keypoints: int, latent_dim: int, num_states: int):
    """A model initialised on the bundled real recording, for memory calibration.

    The bundled recording (examples/data, 2330 frames x 4 keypoints) is used twice, as
    two recordings. For more than 4 keypoints, extra keypoints are midpoints of two
    real ones plus 1 px of noise: XLA's memory analysis depends on array shapes only,
    and the values only have to let PCA and the initialisation run.
    """
    import tempfile

    import keypoint_moseq as kpms

    from kpms_job.kpms.common import quiet
    from kpms_job.kpms.io import load_file

    install_patches()
    coords, confs, bodyparts = load_file(str(EXAMPLE_CSV), "deeplabcut", [])
    c, f = next(iter(coords.values())), next(iter(confs.values()))
    names = list(bodyparts)
    rng = np.random.default_rng(0)
    base = c.shape[1]
    while c.shape[1] < keypoints:
        i = c.shape[1]
        a, b = i % base, (i + 1) % base
        extra = (c[:, a:a + 1] + c[:, b:b + 1]) / 2 + rng.normal(0, 1, (len(c), 1, c.shape[2]))
        c = np.concatenate([c, extra], axis=1)
        f = np.concatenate([f, f[:, a:a + 1]], axis=1)
        names.append(f"extra{i}")
    c, f = c[:, :keypoints], f[:, :keypoints]
    names = names[:keypoints]
    with tempfile.TemporaryDirectory() as pd, quiet():
        kpms.setup_project(pd, overwrite=True, bodyparts=names, use_bodyparts=names,
                           anterior_bodyparts=[names[0]], posterior_bodyparts=[names[-1]])
        kpms.update_config(pd, num_states=int(num_states), latent_dim=int(latent_dim))
        config = kpms.load_config(pd)
        data, _ = kpms.format_data({"a": c, "b": c}, {"a": f, "b": f}, **config)
        pca = kpms.fit_pca(**data, **config)
        model = kpms.init_model(data, pca=pca, **config)
    return data, model


def _resample_steps(data, model, parallel_message_passing: bool):
    """(name, jitted function, args, kwargs) of each step of one resample_model call.

    Mirrors jax_moseq.models.keypoint_slds.resample_model / arhmm.resample_model of jax-moseq 0.3.7.
    """
    from functools import partial

    import jax
    from jax_moseq.models import arhmm, keypoint_slds
    from jax_moseq.utils.transitions import count_transitions

    seed, st, pa, hy = model["seed"], model["states"], model["params"], model["hypparams"]
    d = {k: v for k, v in data.items() if k != "conf"}
    yield "transitions", count_transitions, (int(pa["betas"].shape[0]), st["z"], d["mask"]), {}
    yield ("ar_params", getattr(arhmm.resample_ar_params, "__wrapped__", arhmm.resample_ar_params), (seed,),
           dict(**d, **st, **pa, **hy["ar_hypparams"]))
    yield "discrete", arhmm.resample_discrete_stateseqs, (seed,), dict(**d, **st, **pa)
    cont = jax.jit(partial(keypoint_slds.resample_continuous_stateseqs, jitter=1e-3,
                           parallel_message_passing=bool(parallel_message_passing)))
    yield "continuous", cont, (seed,), dict(**d, **st, **pa)
    yield "heading", keypoint_slds.resample_heading, (seed,), dict(**d, **st, **pa)
    loc = jax.jit(partial(keypoint_slds.resample_location, parallel_message_passing=bool(parallel_message_passing)))
    yield "location", loc, (seed,), dict(**d, **st, **pa, **hy["cen_hypparams"])
    yield ("scales", keypoint_slds.resample_scales, (seed,),
           dict(**d, **st, **pa, s_0=model["noise_prior"], **hy["obs_hypparams"]))


def compiled_step_memory(data, model, *, segments: int, seg_length: int, parallel_message_passing: bool,
                         mixed_map_iters: int, only=None) -> dict:
    """XLA's memory analysis of each Gibbs step, compiled for ``segments`` x ``seg_length`` frames.

    The arrays of ``data`` / ``model`` are replaced by abstract shapes with that many
    segments (nothing of that size is allocated). JAX's trace caches are cleared first,
    because jax-moseq reads ``mixed_map_iters`` at trace time: run this in a process
    that fits nothing else.

    Returns
    -------
    dict of step -> {"temp", "output", "argument": bytes, "frames", "chunk_frames": int}
    """
    import jax
    from jax_moseq.utils import get_mixed_map_iters, set_mixed_map_iters

    install_patches()
    n0, t0 = np.shape(data["mask"])
    t = int(seg_length) + 30  # jax_moseq.utils.batch adds 30 frames of overlap to each segment

    def abstract(a):  # (segments, frames[-nlags], ...) arrays get the new sizes
        if hasattr(a, "shape") and np.ndim(a) >= 2 and a.shape[0] == n0 and t0 - 5 <= a.shape[1] <= t0:
            return jax.ShapeDtypeStruct((int(segments), t - (t0 - a.shape[1]), *a.shape[2:]), a.dtype)
        return a

    data_a = jax.tree_util.tree_map(abstract, dict(data))
    model_a = jax.tree_util.tree_map(abstract, dict(model))
    before = get_mixed_map_iters()
    set_mixed_map_iters(int(mixed_map_iters))
    jax.clear_caches()
    out = {}
    try:
        for name, fn, args, kwargs in _resample_steps(data_a, model_a, parallel_message_passing):
            if only is not None and name not in only:
                continue
            ma = fn.lower(*args, **kwargs).compile().memory_analysis()
            out[name] = {"temp": int(ma.temp_size_in_bytes), "output": int(ma.output_size_in_bytes),
                         "argument": int(ma.argument_size_in_bytes), "frames": int(segments) * t,
                         "chunk_frames": math.ceil(int(segments) / int(mixed_map_iters)) * t}
    finally:
        set_mixed_map_iters(before)
        jax.clear_caches()
    return out


def fit_coefficients(records) -> dict[str, dict[str, float]]:
    """Least-squares coefficients per term from measured step memory.

    ``records``: dicts with keypoints, latent_dim, num_states, nlags, step, pmp, mmi,
    frames (per compiled call), chunk_frames and bytes (temp + output). The whole and
    chunk parts of a batched step (:data:`BATCHED`) are separated with its memory at
    mixed_map_iters 1 and 2 for the same shape.
    """
    rows: dict[str, list] = {}
    by_shape: dict = {}
    for r in records:
        shape = Shape(frames=r["frames"], keypoints=r["keypoints"], latent_dim=r["latent_dim"],
                      num_states=r["num_states"], nlags=r.get("nlags", 3))
        if r["step"] not in BATCHED:
            rows.setdefault(r["step"], []).append((features(shape), r["bytes"] / r["frames"]))
        else:
            term = r["step"]
            if term in KALMAN:
                term += ".par" if r["pmp"] else ".seq"
            key = (r["keypoints"], r["latent_dim"], r["num_states"], term)
            by_shape.setdefault(key, {})[r["mmi"]] = (shape, r["frames"], r["chunk_frames"], r["bytes"])
    for (_, _, _, term), runs in by_shape.items():
        if 1 not in runs or 2 not in runs:
            continue
        shape, f1, c1, b1 = runs[1]
        _, f2, c2, b2 = runs[2]
        chunk = (b1 - b2) / (c1 - c2)  # bytes per chunk frame
        whole = (b1 - chunk * c1) / f1
        rows.setdefault(f"{term}.chunk", []).append((features(shape), chunk))
        rows.setdefault(f"{term}.whole", []).append((features(shape), whole))
    out = {}
    for term, data in rows.items():
        names = STEP_FEATURES[term]
        a = np.array([[f[n] for n in names] for f, _ in data])
        y = np.array([v for _, v in data])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        out[term] = {n: round(float(c), 3) for n, c in zip(names, coef, strict=True) if abs(c) > 1e-9}
    return out


def calibrate(grid=CALIBRATION_GRID, segments=CALIBRATION_SEGMENTS, seg_length=CALIBRATION_SEG_LENGTH,
              progress=print, steps=None) -> tuple[dict, list]:
    """Recompute :data:`COEFFS` (takes minutes); returns (coefficients, records).

    ``steps`` (names in :data:`STEPS_FULL`) restricts the measurement to those steps; the
    coefficients of the others are kept from :data:`COEFFS`.
    """
    records = []
    for k, d, s in grid:
        data, model = calibration_model(k, d, s)
        for pmp in (False, True):
            for mmi in (1, 2):
                only = set(steps or STEPS_FULL)
                if pmp:  # parallel message passing changes the Kalman steps only
                    only &= set(KALMAN)
                if mmi > 1:
                    only &= set(BATCHED)
                if not only:
                    continue
                measured = compiled_step_memory(data, model, segments=segments, seg_length=seg_length,
                                                parallel_message_passing=pmp, mixed_map_iters=mmi,
                                                only=tuple(only))
                for step, mem in measured.items():
                    rec = {"keypoints": k, "latent_dim": d, "num_states": s, "nlags": 3, "step": step,
                           "pmp": pmp, "mmi": mmi, "frames": mem["frames"], "chunk_frames": mem["chunk_frames"],
                           "bytes": mem["temp"] + mem["output"]}
                    records.append(rec)
                    if progress:
                        progress(f"K={k} D={d} S={s} pmp={pmp} mmi={mmi} {step}: "
                                 f"{rec['bytes'] / mem['frames']:.0f} bytes/frame")
    fitted = fit_coefficients(records)
    if steps is None:
        return fitted, records
    return {**{t: c for t, c in COEFFS.items() if t not in fitted}, **fitted}, records


if __name__ == "__main__":
    only = sys.argv[sys.argv.index("--steps") + 1].split(",") if "--steps" in sys.argv else None
    coeffs, recs = calibrate(steps=only)
    if "--records" in sys.argv:
        print(json.dumps(recs, indent=1))
    print("COEFFS = " + json.dumps(coeffs, indent=4))

"""Measure the memory model's coefficients (:data:`kpms_job.resources.model.COEFFS`): a developer tool.

Compiles the real jax-moseq steps of one Gibbs iteration for a grid of small real shapes,
reads XLA's memory analysis of each (nothing of the compiled size is allocated) and fits
the bytes per frame of each step by least squares over the size features of
:func:`kpms_job.resources.model.features`. Takes minutes on a CPU; the job never runs it.
Rerun it after a change to a patched step or a new jax / jax-moseq, and paste the printed
``COEFFS`` into ``kpms_job/resources/model.py``::

    .venv/bin/python tools/calibrate_memory.py --calibrate                      # every step
    .venv/bin/python tools/calibrate_memory.py --calibrate --steps discrete,ar_params
    .venv/bin/python tools/calibrate_memory.py --calibrate --records            # and the raw records

``--steps`` measures only those steps (names in ``STEPS_FULL``) and keeps the others'
coefficients from the model.
"""

from __future__ import annotations

from kpms_job.resources.model import (
    BATCHED,
    COEFFS,
    KALMAN,
    MAX_SEG_LENGTH,
    STEP_FEATURES,
    STEPS_FULL,
    Shape,
    features,
)

#: The shapes (keypoints, latent_dim, num_states) :func:`calibrate` compiles.
CALIBRATION_GRID = ((4, 4, 100), (8, 4, 100), (8, 8, 100), (8, 8, 30), (12, 10, 100), (16, 6, 50))
CALIBRATION_SEGMENTS = 4
CALIBRATION_SEG_LENGTH = MAX_SEG_LENGTH


def fit_coefficients(records) -> dict[str, dict[str, float]]:
    """Least-squares coefficients per term from measured step memory.

    ``records``: dicts with keypoints, latent_dim, num_states, nlags, step, pmp, mmi,
    frames (per compiled call), chunk_frames and bytes (temp + output). The whole and
    chunk parts of a batched step (:data:`BATCHED`) are separated with its memory at
    mixed_map_iters 1 and 2 for the same shape.
    """
    import numpy as np

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
    """Recompute :data:`COEFFS` by compiling the real jax-moseq steps (takes minutes).

    For each (keypoints, latent_dim, num_states) in ``grid``, a model is initialised on
    the bundled real recording (:func:`kpms_adapter.calibration_model`), then every
    step of one full-model iteration is compiled for ``segments`` x ``seg_length``
    frames (abstract shapes: nothing of that size is allocated) and XLA's memory
    analysis gives its temporaries and outputs. The batched steps (:data:`BATCHED`) are
    compiled at mixed_map_iters 1 and 2. ``steps`` (names in :data:`STEPS_FULL`)
    restricts the measurement to those steps; the coefficients of the others are kept
    from :data:`COEFFS`. Returns (coefficients, records).
    """
    from kpms_job import kpms_adapter as A  # imports JAX: only here, never at module import

    records = []
    for k, d, s in grid:
        data, model = A.calibration_model(k, d, s)
        for pmp in (False, True):
            for mmi in (1, 2):
                only = set(steps or STEPS_FULL)
                if pmp:  # parallel message passing changes the Kalman steps only
                    only &= set(KALMAN)
                if mmi > 1:
                    only &= set(BATCHED)
                if not only:
                    continue
                measured = A.compiled_step_memory(data, model, segments=segments, seg_length=seg_length,
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
    import json
    import sys

    if "--calibrate" in sys.argv:  # [--steps discrete,continuous] [--records]
        only = sys.argv[sys.argv.index("--steps") + 1].split(",") if "--steps" in sys.argv else None
        coeffs, recs = calibrate(steps=only)
        if "--records" in sys.argv:
            print(json.dumps(recs, indent=1))
        print("COEFFS = " + json.dumps(coeffs, indent=4))
    else:
        print(__doc__)

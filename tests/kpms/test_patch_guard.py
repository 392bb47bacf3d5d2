"""The jax-moseq patches install only on the jax-moseq they were written for, and the planner
plans a step whose patch did not install as jax-moseq's own (unbatched)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from kpms_job.resources import ladder, model
from kpms_job.resources.model import Setting, Shape

ROOT = Path(__file__).resolve().parents[2]


def test_a_step_without_its_patch_is_planned_unbatched():
    shape = Shape(frames=2_000_000, keypoints=8, latent_dim=10, num_states=100)
    all_patched = model.estimate(shape, Setting(False, 8))
    no_scales = model.estimate(shape, Setting(False, 8), patched=model.PATCHED_STEPS - {"scales"})
    assert no_scales.steps["scales"] == model.estimate(shape, Setting(False, 1)).steps["scales"]
    assert no_scales.steps["scales"] > 1.3 * all_patched.steps["scales"]
    # jax-moseq's own AR step holds a num_states x frames mask
    no_ar = model.estimate(shape, Setting(False, 8), patched=model.PATCHED_STEPS - {"ar_params"})
    assert no_ar.steps["ar_params"] > 2 * all_patched.steps["ar_params"]
    # without its patch the centroid step takes the scan on a CPU too
    no_loc = model.estimate(shape, Setting(False, 1), patched=model.PATCHED_STEPS - {"location"})
    assert no_loc.steps["location"] == model.batched_bytes("location.par", shape, 1)
    # the plan batches more (or gives up sooner) when it cannot batch the discrete step
    budget = model.estimate(shape, Setting(False, 1)).total * 0.9
    assert (ladder.choose(shape, budget, patched=model.PATCHED_STEPS - {"discrete"}).setting.mixed_map_iters
            >= ladder.choose(shape, budget).setting.mixed_map_iters)
    assert model.estimate(shape, Setting(False, 8), patched=None).total == all_patched.total


@pytest.mark.slow
def test_check_names_what_does_not_match():
    from kpms_job.kpms import patches
    from kpms_job.kpms.patches import scales

    assert patches.check(scales) is None
    other_version = types.SimpleNamespace(JAX_MOSEQ="9.9.9", SOURCES=scales.SOURCES)
    assert "written for jax-moseq 9.9.9, found 0.3.7" in patches.check(other_version)
    changed = types.SimpleNamespace(JAX_MOSEQ=scales.JAX_MOSEQ,
                                    SOURCES={**scales.SOURCES, "jax._src.random.core._gamma_one": "0" * 16})
    assert "the source of jax._src.random.core._gamma_one changed" in patches.check(changed)
    gone = types.SimpleNamespace(JAX_MOSEQ=scales.JAX_MOSEQ, SOURCES={"jax._src.random.core._no_such": "0" * 16})
    assert "jax._src.random.core._no_such is missing" in patches.check(gone)


@pytest.mark.slow
def test_a_patch_whose_source_changed_is_skipped_logged_and_reported_to_the_planner():
    code = textwrap.dedent("""
        import json, logging
        from kpms_job.kpms import patches
        from kpms_job.kpms.patches import scales
        from jax_moseq.models.keypoint_slds import gibbs, initialize

        logging.basicConfig(level=logging.WARNING)
        own = gibbs.resample_scales
        scales.SOURCES = {**scales.SOURCES, "jax_moseq.models.keypoint_slds.gibbs.resample_scales": "0" * 16}
        assert not patches.installed() and patches.active() == frozenset()  # nothing on import
        skipped = patches.install(location_scan=False)
        print("JSON" + json.dumps({
            "skipped": sorted(skipped), "active": sorted(patches.active()),
            "scales_is_jax_moseqs": gibbs.resample_scales is own and initialize.resample_scales is own,
            "location_patched": gibbs.resample_location is not patches.original("location")}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.split("JSON", 1)[1])
    assert out == {"skipped": ["scales"], "active": ["ar_params", "continuous", "discrete", "location"],
                   "scales_is_jax_moseqs": True, "location_patched": True}
    assert "jax-moseq patch scales is not installed (the source of " in res.stderr
    assert "unbatched by mixed_map_iters" in res.stderr

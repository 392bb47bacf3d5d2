"""The patched centroid step (kpms_job.kpms.patches.location) samples what jax-moseq's own
``resample_location`` samples with the same key, bit for bit, at mixed_map_iters 1, 2 and 3: with
the associative scan (what jax-moseq's ``resample_model`` always runs) and with the sequential
Kalman filter (what the job runs on a CPU: jax-moseq's own code with ``parallel_message_passing``
False); another key samples another centroid."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from patch_fixtures import *  # noqa: F403 (its fixtures; a conftest.py here would shadow tests/conftest.py)

from kpms_job.kpms import patches

pytestmark = pytest.mark.slow
NAME = "location"
PARALLEL = pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])


def _args(m) -> dict:
    return dict(**m.data, **m.states, **m.params, **m.hypparams["cen_hypparams"])


def _original(parallel: bool):
    import jax

    if parallel:  # jax-moseq's own, as resample_model calls it
        return patches.original(NAME)
    return jax.jit(partial(patches.original(NAME).__wrapped__, parallel_message_passing=False))


@pytest.fixture(scope="module")
def reference(small_model, mixed_map_iters):
    """jax-moseq's own samples at mixed_map_iters 1: {(parallel, key name): v}, "different" for the different key."""
    keys = {**small_model.keys, "different": small_model.different_key}
    with mixed_map_iters(1):
        return {(parallel, name): np.asarray(_original(parallel)(key, **_args(small_model)))
                for parallel in kalman_modes() for name, key in keys.items()}  # noqa: F405


def test_the_patch_is_where_jax_moseq_looks_the_step_up_with_the_fits_kalman_algorithm(small_model):
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs

    from kpms_job.kpms import gibbs as kpms_gibbs
    from kpms_job.resources import model as memory

    assert "location" in patches.active()
    assert gibbs.resample_location is not patches.original(NAME)
    assert keypoint_slds.resample_location is gibbs.resample_location
    assert gibbs.resample_location.parallel_default == memory.kalman_scan_allowed(kpms_gibbs.backend())


@PARALLEL
@pytest.mark.parametrize("iters", [1, 2, 3])
def test_the_patched_step_samples_jax_moseqs_centroid_with_the_same_key(small_model, reference, mixed_map_iters, rel,
                                                                        iters, parallel):
    from jax_moseq.models.keypoint_slds import gibbs

    skip_unless_the_job_runs(parallel)  # noqa: F405
    with mixed_map_iters(iters):
        for name, key in small_model.keys.items():
            v = np.asarray(gibbs.resample_location(key, **_args(small_model), parallel_message_passing=parallel))
            assert v.shape == reference[parallel, name].shape
            assert np.array_equal(v, reference[parallel, name]), (name, rel(v, reference[parallel, name]))
            assert rel(v, reference[parallel, "different"]) > 1e-3, name  # it depends on its key

"""The patched noise-scale step (kpms_job.kpms.patches.scales) draws what jax-moseq's own
``resample_scales`` draws with the same key, at mixed_map_iters 1, 2 and 3: each element from the
key ``jr.gamma`` gives it, so they differ by rounding only (XLA fuses the arithmetic differently
inside the map); another key draws other scales."""

from __future__ import annotations

import numpy as np
import pytest
from patch_fixtures import *  # noqa: F403 (its fixtures; a conftest.py here would shadow tests/conftest.py)

from kpms_job.kpms import patches

pytestmark = pytest.mark.slow
NAME = "scales"
ROUNDING = 1e-14  # relative


def _args(m) -> dict:
    return dict(**m.data, **m.states, **m.params, s_0=m.noise_prior, **m.hypparams["obs_hypparams"])


@pytest.fixture(scope="module")
def reference(small_model, mixed_map_iters):
    """jax-moseq's own draws at mixed_map_iters 1: {key name: s}, "different" for the different key."""
    keys = {**small_model.keys, "different": small_model.different_key}
    with mixed_map_iters(1):
        return {name: np.asarray(patches.original(NAME)(key, **_args(small_model))) for name, key in keys.items()}


def test_the_patch_is_where_jax_moseq_looks_the_step_up(small_model):
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs, initialize

    assert "scales" in patches.active()
    assert gibbs.resample_scales is not patches.original(NAME)
    assert gibbs.resample_scales is initialize.resample_scales is keypoint_slds.resample_scales


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_the_patched_step_draws_jax_moseqs_scales_with_the_same_key(small_model, reference, mixed_map_iters, rel,
                                                                    iters):
    from jax_moseq.models.keypoint_slds import gibbs

    with mixed_map_iters(iters):
        for name, key in small_model.keys.items():
            s = np.asarray(gibbs.resample_scales(key, **_args(small_model)))
            assert rel(s, reference[name]) <= ROUNDING, (name, rel(s, reference[name]))
            assert rel(s, reference["different"]) > 1e-3, name  # it depends on its key

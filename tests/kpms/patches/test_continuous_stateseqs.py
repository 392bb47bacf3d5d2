"""The patched Kalman step of the latent states (kpms_job.kpms.patches.continuous_stateseqs) samples
what jax-moseq's own keypoint-SLDS ``resample_continuous_stateseqs`` samples with the same key, at
mixed_map_iters 1, 2 and 3, with the sequential Kalman filter and with parallel message passing (the
associative scan). They may differ by rounding only: XLA fuses the arithmetic differently inside the
map, and jax-moseq's own step changes as much between mixed_map_iters 1 and 2. Another key changes
the sample by orders of magnitude more."""

from __future__ import annotations

import numpy as np
import pytest
from patch_fixtures import *  # noqa: F403 (its fixtures; a conftest.py here would shadow tests/conftest.py)

from kpms_job.kpms import patches

pytestmark = pytest.mark.slow
NAME = "continuous_stateseqs"
ROUNDING = 1e-6  # relative
PARALLEL = pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])


def _args(m, parallel: bool) -> dict:
    return dict(**m.data, **m.states, **m.params, parallel_message_passing=parallel)


@pytest.fixture(scope="module")
def reference(small_model, mixed_map_iters):
    """jax-moseq's own samples at mixed_map_iters 1: {(parallel, key name): x}, "different" for the different key."""
    keys = {**small_model.keys, "different": small_model.different_key}
    with mixed_map_iters(1):
        return {(parallel, name): np.asarray(patches.original(NAME)(key, **_args(small_model, parallel)))
                for parallel in kalman_modes() for name, key in keys.items()}  # noqa: F405


def test_the_patch_is_where_jax_moseq_looks_the_step_up(small_model):
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs

    assert "continuous" in patches.active()
    assert gibbs.resample_continuous_stateseqs is not patches.original(NAME)
    assert keypoint_slds.resample_continuous_stateseqs is gibbs.resample_continuous_stateseqs


def test_jax_moseqs_own_step_changes_by_rounding_between_mixed_map_iters(small_model, reference, mixed_map_iters,
                                                                        rel):
    """What the rounding tolerance of the patch is measured against (with the sequential filter)."""
    with mixed_map_iters(2):
        for name, key in small_model.keys.items():
            x = patches.original(NAME)(key, **_args(small_model, False))
            assert rel(x, reference[False, name]) < ROUNDING, name


@PARALLEL
@pytest.mark.parametrize("iters", [1, 2, 3])
def test_the_patched_step_samples_jax_moseqs_states_with_the_same_key(small_model, reference, mixed_map_iters, rel,
                                                                      iters, parallel):
    from jax_moseq.models.keypoint_slds import gibbs

    skip_unless_the_job_runs(parallel)  # noqa: F405
    with mixed_map_iters(iters):
        for name, key in small_model.keys.items():
            x = np.asarray(gibbs.resample_continuous_stateseqs(key, **_args(small_model, parallel)))
            assert rel(x, reference[parallel, name]) <= ROUNDING, (name, rel(x, reference[parallel, name]))
            assert rel(x, reference[parallel, "different"]) > 1e-3, name  # it depends on its key

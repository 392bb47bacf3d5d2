"""The patched discrete-state step (kpms_job.kpms.patches.discrete_stateseqs) samples the z that
jax-moseq's own ``resample_discrete_stateseqs`` samples with the same key, bit for bit, at
mixed_map_iters 1, 2 and 3 (4 sequences: 3 batches pad one); another key samples other states."""

from __future__ import annotations

import numpy as np
import pytest
from patch_fixtures import *  # noqa: F403 (its fixtures; a conftest.py here would shadow tests/conftest.py)

from kpms_job.kpms import patches

pytestmark = pytest.mark.slow
NAME = "discrete_stateseqs"


def _args(m) -> dict:
    return dict(x=m.states["x"], mask=m.data["mask"], **{k: m.params[k] for k in ("Ab", "Q", "pi")})


@pytest.fixture(scope="module")
def reference(small_model, mixed_map_iters):
    """jax-moseq's own samples at mixed_map_iters 1: {key name: z}, "different" for the different key."""
    keys = {**small_model.keys, "different": small_model.different_key}
    with mixed_map_iters(1):
        return {name: np.asarray(patches.original(NAME)(key, **_args(small_model))) for name, key in keys.items()}


def test_the_patch_is_where_jax_moseq_looks_the_step_up(small_model):
    from jax_moseq.models import arhmm
    from jax_moseq.models.arhmm import gibbs, initialize

    assert "discrete" in patches.active()
    assert gibbs.resample_discrete_stateseqs is not patches.original(NAME)
    assert arhmm.resample_discrete_stateseqs is initialize.resample_discrete_stateseqs \
        is gibbs.resample_discrete_stateseqs


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_the_patched_step_samples_jax_moseqs_states_with_the_same_key(small_model, reference, mixed_map_iters,
                                                                      iters):
    from jax_moseq.models.arhmm import gibbs

    with mixed_map_iters(iters):
        for name, key in small_model.keys.items():
            z = np.asarray(gibbs.resample_discrete_stateseqs(key, **_args(small_model)))
            assert z.shape == reference[name].shape
            assert int((z != reference[name]).sum()) == 0, (name, iters)
            assert len(np.unique(z)) > 1, name  # a real sample, not a constant
            assert (z != reference["different"]).mean() > 0.05, name  # it depends on its key

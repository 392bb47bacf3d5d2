"""The patched AR parameter step (kpms_job.kpms.patches.ar_params) samples the Ab and Q that
jax-moseq's own ``resample_ar_params`` samples with the same key, bit for bit; another key samples
others. (The step maps over states, not sequences: mixed_map_iters does not batch it.)"""

from __future__ import annotations

import numpy as np
import pytest
from patch_fixtures import *  # noqa: F403 (its fixtures; a conftest.py here would shadow tests/conftest.py)

from kpms_job.kpms import patches

pytestmark = pytest.mark.slow
NAME = "ar_params"


def _args(m) -> dict:
    return dict(x=m.states["x"], mask=m.data["mask"], z=m.states["z"],
                **{k: m.params[k] for k in ("Ab", "Q", "pi")}, **m.hypparams["ar_hypparams"])


def test_the_patch_is_where_jax_moseq_looks_the_step_up(small_model):
    from jax_moseq.models import arhmm
    from jax_moseq.models.arhmm import gibbs

    assert "ar_params" in patches.active()
    assert gibbs.resample_ar_params is not patches.original(NAME)
    assert arhmm.resample_ar_params is gibbs.resample_ar_params


def test_the_patched_step_samples_jax_moseqs_parameters_with_the_same_key(small_model, rel):
    from jax_moseq.models.arhmm import gibbs

    args = _args(small_model)
    different = patches.original(NAME)(small_model.different_key, **args)
    for name, key in small_model.keys.items():
        want = patches.original(NAME)(key, **args)
        got = gibbs.resample_ar_params(key, **args)
        for param, a, b, c in zip(("Ab", "Q"), got, want, different, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b)), (name, param, rel(a, b))
            assert rel(a, c) > 1e-3, (name, param)  # it depends on its key

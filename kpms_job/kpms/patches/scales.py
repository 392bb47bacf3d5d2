"""Draw the noise scales one sequence at a time, from the keys upstream's single draw uses.

Target: ``jax_moseq.models.keypoint_slds.gibbs.resample_scales`` (also called by
``keypoint_slds.initialize``, so ``init_model`` uses it).

Upstream computes the squared errors of all frames and draws every frame's scale in one
``jr.gamma`` call, whose temporaries were the largest arrays of a fit with millions of frames
(15 GiB at 10 M frames). ``jr.gamma`` draws element ``i`` with key ``i`` of
``jr.split(seed, size)`` (``jax._src.random.core._gamma_impl``); this version splits the same keys
and draws each sequence's elements under ``mixed_map`` with JAX's per-element sampler
(``_gamma_one``).

Invariant: element ``i`` is drawn with key ``jr.split(seed, size)[i]``, so the scales equal
upstream's up to rounding. ``_gamma_one`` and ``_gamma_impl`` are private to JAX: their sources
are checked with jax-moseq's (``SOURCES``), and without them the step stays upstream's. An
upstream version would need a public per-key gamma sampler in JAX.

Installed as ``keypoint_slds.gibbs``, ``keypoint_slds`` and ``keypoint_slds.initialize``'s
``resample_scales``.
"""

from __future__ import annotations

NAME = "resample_scales"
JAX_MOSEQ = "0.3.7"
SOURCES = {"jax_moseq.models.keypoint_slds.gibbs.resample_scales": "f01783a71220a34d",
           "jax._src.random.core._gamma_impl": "174ebdba9b00c9d3",
           "jax._src.random.core._gamma_one": "efbb6563b9b62a2b"}


def modules():
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs, initialize

    return (gibbs, keypoint_slds, initialize)


def make():
    from functools import partial

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from jax._src.random.core import _gamma_one
    from jax_moseq.models.keypoint_slds import gibbs
    from jax_moseq.utils import mixed_map

    @jax.jit
    def resample_scales(seed, Y, x, v, h, Cd, sigmasq, nu_s, s_0, **kwargs):
        """jax-moseq's ``resample_scales``, one sequence at a time, with the same random keys."""
        n, per = Y.shape[0], int(np.prod(Y.shape[1:-1]))
        # jr.gamma(seed, a, shape) draws element i with key i of jr.split(seed, size)
        keys = jr.split(seed, n * per)
        if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jr.key_data(keys)
        keys = keys.reshape(n, per, -1)
        s_0 = jnp.broadcast_to(s_0, Y.shape[:-1])
        degs = nu_s + 3

        def one_sequence(keys, Y, x, v, h, s_0):
            variance = gibbs.compute_squared_error(Y, x, v, h, Cd) / sigmasq + s_0 * nu_s
            draws = jax.vmap(partial(_gamma_one, log_space=False))(
                jax.random.wrap_key_data(keys), jnp.full(per, degs / 2, variance.dtype))
            return variance / draws.reshape(variance.shape) / 2

        return mixed_map(one_sequence)(keys, Y, x, v, h, s_0)

    return resample_scales

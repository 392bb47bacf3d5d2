"""Build the AR parameter step's per-state masks inside its map over states.

Target: ``jax_moseq.models.arhmm.gibbs.resample_ar_params``.

Upstream builds a ``num_states x frames`` float mask (``mask * eye(num_states)[:, z]``) before it
maps over the states: 16 x num_states bytes per frame, the largest array of a fit with many
frames. This version maps over the states with the same keys and builds each state's row of that
mask inside the map, then calls upstream's own ``_resample_regression_params`` with it.

Invariant: state ``k`` uses key ``jr.split(seed, num_states)[k]`` and the same mask row as
upstream, so ``Ab`` and ``Q`` are bit-identical to upstream's.

Installed as ``arhmm.gibbs`` and ``arhmm``'s ``resample_ar_params`` (``arhmm.resample_model``
looks it up in ``arhmm.gibbs``).
"""

from __future__ import annotations

NAME = "resample_ar_params"
JAX_MOSEQ = "0.3.7"
SOURCES = {"jax_moseq.models.arhmm.gibbs.resample_ar_params": "2dbdc8cbb8d8f11f"}


def modules():
    from jax_moseq.models import arhmm
    from jax_moseq.models.arhmm import gibbs

    return (gibbs, arhmm)


def make():
    from functools import partial

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models.arhmm import gibbs

    @gibbs.nan_check
    @partial(jax.jit, static_argnames=("num_states", "nlags"))
    def resample_ar_params(seed, *, nlags, num_states, mask, x, z, nu_0, S_0, M_0, K_0, **kwargs):
        """jax-moseq's ``resample_ar_params`` without the ``num_states x frames`` mask array."""
        seeds = jr.split(seed, num_states)
        valid = mask[..., nlags:].reshape(-1)
        z_flat = z.reshape(-1)
        eye = jnp.eye(num_states)
        x_in = gibbs.pad_affine(gibbs.get_lags(x, nlags)).reshape(-1, nlags * x.shape[-1] + 1)
        x_out = x[..., nlags:, :].reshape(-1, x.shape[-1])

        def one_state(args):
            key, state = args
            state_mask = valid * eye[state][z_flat]  # row `state` of upstream's masks
            return gibbs._resample_regression_params(x_in, x_out, nu_0, S_0, M_0, K_0, (key, state_mask))

        return jax.lax.map(one_state, (seeds, jnp.arange(num_states)))

    return resample_ar_params

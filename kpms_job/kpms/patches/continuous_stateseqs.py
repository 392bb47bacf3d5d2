"""Run the full model's Kalman step one sequence at a time, its preparation included.

Target: ``jax_moseq.models.keypoint_slds.gibbs.resample_continuous_stateseqs`` (which calls
``jax_moseq.models.slds.gibbs.resample_continuous_stateseqs``).

Upstream batches only the Kalman sampler itself with ``mixed_map``; the preparation before it
(``to_vanilla_slds``, ``ar_to_lds_emissions``: flattened and aligned keypoints, the emission
noise) and the lag reformatting after it run over all frames at once, whole-data intermediates
that were among the largest arrays of a fit with millions of frames. This version does all of it
per sequence inside one ``mixed_map``, with upstream's functions.

Invariant: sequence ``n`` is sampled with key ``jr.split(seed, N)[n]``, as upstream's
``batched_kalman_sample`` does; the result equals upstream's up to rounding (XLA fuses the
arithmetic differently inside the map; upstream's own step changes as much between
``mixed_map_iters`` values).

Installed as ``keypoint_slds.gibbs`` and ``keypoint_slds``'s ``resample_continuous_stateseqs``.
"""

from __future__ import annotations

NAME = "resample_continuous_stateseqs"
JAX_MOSEQ = "0.3.7"
SOURCES = {"jax_moseq.models.keypoint_slds.gibbs.resample_continuous_stateseqs": "d0e36ecb762ffbc6",
           "jax_moseq.models.slds.gibbs.resample_continuous_stateseqs": "463eedb9f85ce5a8"}


def modules():
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs

    return (gibbs, keypoint_slds)


def make():
    from functools import partial

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models.keypoint_slds import alignment
    from jax_moseq.utils import mixed_map
    from jax_moseq.utils.kalman import ar_to_lds_dynamics, ar_to_lds_emissions, kalman_sample

    @partial(jax.jit, static_argnames=("parallel_message_passing",))
    def resample_continuous_stateseqs(seed, Y, mask, v, h, s, z, Cd, sigmasq, Ab, Q, jitter=1e-3,
                                      parallel_message_passing=True, **kwargs):
        """jax-moseq's keypoint-SLDS ``resample_continuous_stateseqs``, one sequence at a time."""
        # the lines of keypoint_slds.resample_continuous_stateseqs and slds.resample_continuous_stateseqs
        latent_dim = Ab.shape[1]
        n_lags = Ab.shape[2] // latent_dim
        ar_dim = latent_dim * n_lags
        m0, S0 = jnp.zeros(ar_dim), 10 * jnp.eye(ar_dim)
        A_, b_, Q_ = ar_to_lds_dynamics(Ab, Q)
        hold = jnp.zeros((ar_dim, ar_dim)).at[-latent_dim:, -latent_dim:].set(jnp.eye(latent_dim))
        masked_dynamics = {"weights": hold, "bias": jnp.zeros(ar_dim), "cov": jnp.eye(ar_dim) * 10}

        def one_sequence(key, Y, mask, v, h, s, z):
            y, s, Cd_, sigmasq_ = alignment.to_vanilla_slds(Y, v, h, s, Cd, sigmasq)
            C_, d_, R_, y_, _, _ = ar_to_lds_emissions(Cd_, sigmasq_ * s, y, m0, S0, n_lags)
            x = kalman_sample(key, y_, mask[n_lags - 1:], z, m0, S0, A_, b_, Q_, C_, d_, R_, masked_dynamics,
                              jnp.ones(y.shape[-1]) * 10, jitter=jitter, parallel=parallel_message_passing)
            if n_lags > 1:
                x = jnp.concatenate([x[0, :(n_lags - 1) * latent_dim].reshape(n_lags - 1, latent_dim),
                                     x[:, -latent_dim:]], axis=0)
            return x

        return mixed_map(one_sequence)(jr.split(seed, mask.shape[0]), Y, mask, v, h, s, z)

    return resample_continuous_stateseqs

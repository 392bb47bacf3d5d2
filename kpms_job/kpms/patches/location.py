"""Compute the centroid step one sequence at a time, inside its Kalman map.

Target: ``jax_moseq.models.keypoint_slds.gibbs.resample_location``.

Upstream rotates the estimated keypoints, computes the squared errors and the weighted mean
offsets of all frames at once before its Kalman sampler (whole-data intermediates); this version
does it per sequence inside one ``mixed_map``, with upstream's functions.

Upstream's ``resample_model`` never passes ``parallel_message_passing`` to this step, so upstream
always samples the centroid with the associative scan. The scan's batched LU calls deadlock
XLA:CPU's thread pool when as many run at once as it has threads (see
:func:`kpms_job.resources.model.kalman_scan_allowed`), so the caller of :func:`make` chooses the default:
the scan where it is allowed, the sequential filter (no LU call; the same distribution, another
random stream) on a CPU. An upstream change would pass ``parallel_message_passing`` through
``resample_model`` instead.

Invariant: sequence ``n`` uses key ``jr.split(seed, N)[n]``; with the same Kalman algorithm the
result is bit-identical to upstream's.

Installed as ``keypoint_slds.gibbs`` and ``keypoint_slds``'s ``resample_location``.
"""

from __future__ import annotations

NAME = "resample_location"
JAX_MOSEQ = "0.3.7"
SOURCES = {"jax_moseq.models.keypoint_slds.gibbs.resample_location": "1290b939fd3bdeef",
           # the default above exists because resample_model does not pass the algorithm on
           "jax_moseq.models.keypoint_slds.gibbs.resample_model": "1ba12376a595ab6f"}


def modules():
    from jax_moseq.models import keypoint_slds
    from jax_moseq.models.keypoint_slds import gibbs

    return (gibbs, keypoint_slds)


def make(*, parallel_default: bool):
    """The step; ``parallel_default``: the Kalman algorithm when the caller does not choose one."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models.keypoint_slds import alignment
    from jax_moseq.utils import mixed_map
    from jax_moseq.utils.kalman import kalman_sample

    na = jnp.newaxis

    @partial(jax.jit, static_argnames=("parallel_message_passing",))
    def per_sequence(seed, Y, mask, x, h, s, Cd, sigmasq, sigmasq_loc, parallel_message_passing):
        k, d = Y.shape[-2:]
        masked_dynamics = {"weights": jnp.eye(d), "bias": jnp.zeros(d), "cov": jnp.eye(d) * (sigmasq_loc * 10)}
        masked_obs_noise = jnp.ones(d) * (sigmasq.max() * 10)

        def one_sequence(key, Y, mask, x, h, s):
            Y_rot = alignment.apply_rotation(alignment.estimate_aligned(x, Cd, k), h)
            variance = s * sigmasq
            gammasq = 1 / (1 / variance).sum(-1, keepdims=True)
            mu = jnp.einsum("...tkd, ...tk->...td", Y - Y_rot, gammasq / variance)
            return kalman_sample(key, mu, mask, jnp.zeros_like(mask[1:], dtype=int), jnp.zeros(d),
                                 jnp.eye(d) * 1e4, jnp.eye(d)[na], jnp.zeros(d)[na], jnp.eye(d)[na] * sigmasq_loc,
                                 jnp.eye(d), jnp.zeros(d), jnp.repeat(gammasq, d, axis=-1), masked_dynamics,
                                 masked_obs_noise, parallel=parallel_message_passing)

        return mixed_map(one_sequence)(jr.split(seed, mask.shape[0]), Y, mask, x, h, s)

    def resample_location(seed, Y, mask, x, h, s, Cd, sigmasq, sigmasq_loc, parallel_message_passing=None,
                          **kwargs):
        """jax-moseq's ``resample_location``, one sequence at a time, with the fit's Kalman algorithm."""
        if parallel_message_passing is None:
            parallel_message_passing = parallel_default
        return per_sequence(seed, Y, mask, x, h, s, Cd, sigmasq, sigmasq_loc,
                            parallel_message_passing=bool(parallel_message_passing))

    resample_location.parallel_default = bool(parallel_default)
    return resample_location

"""Batch the discrete-state step over sequences.

Target: ``jax_moseq.models.arhmm.gibbs.resample_discrete_stateseqs`` (the discrete-state step of
every AR-HMM and full-model Gibbs iteration, and of ``arhmm.init_states``).

Upstream computes the AR log likelihoods of *all* sequences for every state at once
(``num_states`` x frames floats) and then samples every sequence's HMM in one ``vmap``: its memory
grows with all frames x num_states, and ``mixed_map_iters`` cannot batch it. This version computes,
per sequence, the same thing with the same functions (``ar_log_likelihood``,
``sample_hmm_stateseq``, ``get_nlags``) and maps over the sequences with
``jax_moseq.utils.mixed_map``, so ``mixed_map_iters`` batches it like the Kalman step.

Invariant: sequence ``n`` is sampled with key ``jr.split(seed, N)[n]``, as upstream's ``vmap``
does, so the states are bit-identical to upstream's whatever ``mixed_map_iters``.

Installed as ``arhmm.gibbs``, ``arhmm`` and ``arhmm.initialize``'s ``resample_discrete_stateseqs``
(``arhmm.resample_model`` looks it up in ``arhmm.gibbs`` at trace time).
"""

from __future__ import annotations

NAME = "resample_discrete_stateseqs"
JAX_MOSEQ = "0.3.7"
SOURCES = {"jax_moseq.models.arhmm.gibbs.resample_discrete_stateseqs": "7ad6e69efcdf438e"}


def modules():
    from jax_moseq.models import arhmm
    from jax_moseq.models.arhmm import gibbs, initialize

    return (gibbs, arhmm, initialize)


def make():
    from functools import partial

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models.arhmm import gibbs
    from jax_moseq.utils import mixed_map

    def one_sequence(key, x, mask, Ab, Q, pi, nlags):
        # upstream's lines, for one sequence: x (T, latent_dim), mask (T,)
        log_likelihoods = jax.lax.map(partial(gibbs.ar_log_likelihood, x), (Ab, Q))  # (num_states, T - nlags)
        _, z = gibbs.sample_hmm_stateseq(key, pi, jnp.moveaxis(log_likelihoods, 0, -1),
                                         mask.astype(float)[nlags:])
        return z

    @jax.jit
    def resample_discrete_stateseqs(seed, x, mask, Ab, Q, pi, **kwargs):
        """jax-moseq's ``resample_discrete_stateseqs``, batched over sequences by ``mixed_map``."""
        nlags = gibbs.get_nlags(Ab)
        fn = partial(one_sequence, nlags=nlags)
        return mixed_map(fn, in_axes=(0, 0, 0, None, None, None))(
            jr.split(seed, mask.shape[0]), x, mask, Ab, Q, pi)

    return resample_discrete_stateseqs

"""Shared fixtures of the patch tests, which star-import them (a conftest.py here would shadow
tests/conftest.py, imported by name): the job's patches installed once in this process, and a small
real model cut into sequences that each patched step and jax-moseq's own are run on.

The model is ``tools.calibrate_memory.calibration_model(4, 4, 20)`` (the bundled real recording,
twice; 4 keypoints, latent_dim 4, 20 states), cut into :data:`SEQUENCES` sequences of
:data:`LENGTH` frames: small enough that every step compiles in seconds, the Kalman steps' associative
scan included, and 4 sequences so that mixed_map_iters 3 pads one batch.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `tools` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

#: Frames of each sequence, and where the sequences start in each of the model's two recordings
#: (the first starts in the padding before the recording, so its mask is not all ones).
LENGTH = 150
STARTS = (0, LENGTH)
SEQUENCES = 2 * len(STARTS)
#: The keys the tests sample with: the model's own, another, and one whose samples must differ.
OTHER_KEY = 7
DIFFERENT_KEY = 99


def _cut(a, nlags: int = 0):
    """Sequences of LENGTH frames (LENGTH - nlags for z) from each recording of ``a`` (recordings x frames ...)."""
    a = np.asarray(a)
    return np.stack([a[r, start: start + LENGTH - nlags] for r in range(a.shape[0]) for start in STARTS])


@pytest.fixture(scope="session")
def small_model():
    """The patches installed as a fit on this backend installs them, and the small model, cut.

    Returns a namespace: ``data`` (Y, mask), ``states``, ``params``, ``hypparams``, ``noise_prior``,
    ``seed`` (the model's key), ``keys`` ({"model": ..., "other": ...}) and ``different_key``.
    """
    import jax.random as jr
    from jax_moseq.models.arhmm.gibbs import get_nlags

    from kpms_job.kpms import patches
    from tools.calibrate_memory import calibration_model, install_patches

    install_patches()
    assert not patches.skipped(), patches.skipped()
    data, model = calibration_model(4, 4, 20)
    nlags = get_nlags(model["params"]["Ab"])
    states = {k: _cut(v, nlags if k == "z" else 0) for k, v in model["states"].items()}
    assert states["z"].shape == (SEQUENCES, LENGTH - nlags)
    return SimpleNamespace(
        data={k: _cut(v) for k, v in data.items() if k != "conf"},
        states=states,
        params=model["params"],
        hypparams=model["hypparams"],
        noise_prior=_cut(model["noise_prior"]),
        seed=model["seed"],
        keys={"model": model["seed"], "other": jr.PRNGKey(OTHER_KEY)},
        different_key=jr.PRNGKey(DIFFERENT_KEY),
    )


def kalman_modes() -> tuple[bool, ...]:
    """The Kalman algorithms (``parallel_message_passing``) a test may run in this process: the
    sequential filter always, the associative scan only where the job itself runs it
    (:func:`kpms_job.resources.model.kalman_scan_allowed`). On XLA:CPU the scan's batched LU calls
    can deadlock the process at 0% CPU; they did in this suite's process, and CI sat there until
    its time ran out."""
    from kpms_job.kpms.gibbs import backend
    from kpms_job.resources.model import kalman_scan_allowed

    return (False, True) if kalman_scan_allowed(backend()) else (False,)


def skip_unless_the_job_runs(parallel: bool) -> None:
    """Skip a test of the associative scan where the job never runs it (:func:`kalman_modes`)."""
    if parallel not in kalman_modes():
        pytest.skip("the job never runs the associative-scan Kalman sampler on this backend "
                    "(kalman_scan_allowed), and on XLA:CPU it can deadlock the test process")


@pytest.fixture(scope="session")
def rel():
    """The largest relative difference of ``a`` from ``b``, elementwise: ``rel(a, b)``."""

    def rel(a, b) -> float:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-300)))

    return rel


@pytest.fixture(scope="session")
def mixed_map_iters():
    """``with mixed_map_iters(n):`` runs its block at jax-moseq's mixed_map_iters ``n``.

    mixed_map_iters is global state read at trace time: JAX's caches are cleared when it is set, and
    the value before the block is restored after it (a test that fails inside restores it too).
    """
    import jax
    from jax_moseq.utils import get_mixed_map_iters, set_mixed_map_iters

    @contextmanager
    def at(iters: int):
        before = get_mixed_map_iters()
        set_mixed_map_iters(iters)
        jax.clear_caches()
        try:
            yield
        finally:
            set_mixed_map_iters(before)
            jax.clear_caches()

    return at

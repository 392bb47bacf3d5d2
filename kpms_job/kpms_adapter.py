"""The ONLY module that calls keypoint_moseq and jax_moseq (with :mod:`kpms_job.kpms_movies`).

The adapter layer is this module and :mod:`kpms_job.kpms_movies` (grid movies written one
frame at a time with keypoint-moseq's own instance sampling and drawing; see
:func:`grid_movies`).

keypoint-moseq's API has sharp edges (see ARCHITECTURE.md); this module knows them,
so every other module stays simple and an upgrade touches one file. Importing this
module imports JAX (about 6 s): the pipeline imports it only when a stage runs.

Five patches of jax-moseq, applied once when this module is imported, make a fit's memory
scale with one batch of sequences instead of all frames (x num_states); they compute what
jax-moseq computes, with jax-moseq's own functions (tests/test_memory.py).

1. :func:`_patch_discrete_stateseqs`: ``jax_moseq.models.arhmm.gibbs.resample_discrete_stateseqs``
(the discrete-state step of every AR-HMM and full-model Gibbs iteration, and of
``arhmm.init_states``) computes the AR log likelihoods of *all* sequences for every state
at once (``num_states`` x frames floats) and then samples every sequence's HMM in one
``vmap``: its memory grows with all frames x num_states and ``mixed_map_iters`` cannot
batch it. The replacement computes, per sequence, exactly the same thing with jax-moseq's
own functions (``ar_log_likelihood``, ``sample_hmm_stateseq``, ``get_nlags``) and maps
over the sequences with ``jax_moseq.utils.mixed_map``, so ``mixed_map_iters`` batches it
like the Kalman step. Each sequence gets the key of ``jr.split(seed, N)`` it gets in the
original, so the states do not depend on ``mixed_map_iters`` and equal the original's
(tests/test_memory.py checks both on the bundled recording). The names patched:
``arhmm.gibbs.resample_discrete_stateseqs`` (``arhmm.resample_model`` looks it up there
at trace time; ``keypoint_slds.resample_model`` calls ``arhmm.resample_model``),
``arhmm.resample_discrete_stateseqs`` and ``arhmm.initialize.resample_discrete_stateseqs``.
The original stays at :data:`ORIGINAL_DISCRETE_STATESEQS`.

2. :func:`_patch_ar_params`: ``jax_moseq.models.arhmm.gibbs.resample_ar_params`` builds a
   ``num_states x frames`` float mask (``mask * eye(num_states)[:, z]``) before it maps
   over the states: 16 x num_states bytes per frame, the largest array of a fit with
   many frames. The replacement maps over the states with the same keys
   (``jr.split(seed, num_states)``) and builds each state's row of that mask inside the
   map, then calls jax-moseq's own ``_resample_regression_params`` with it. Patched:
   ``arhmm.gibbs.resample_ar_params`` (looked up by ``arhmm.resample_model``) and
   ``arhmm.resample_ar_params``; the original is :data:`ORIGINAL_AR_PARAMS`.

Three more make the full model's other per-frame steps run one sequence at a time under
``mixed_map`` (so ``mixed_map_iters`` batches them too), with jax-moseq's own functions and
the keys jax-moseq uses. Each computed whole-data intermediates (flattened and aligned
keypoints, rotated estimates, squared errors, the gamma sampler's temporaries) that were the
largest arrays of a fit with millions of frames (15 GiB in ``resample_scales`` at 10 M frames):

3. :func:`_patch_continuous_stateseqs`: keypoint-SLDS ``resample_continuous_stateseqs``
   (``to_vanilla_slds``, ``ar_to_lds_emissions``, ``kalman_sample`` and the lag
   reformatting, per sequence; key ``jr.split(seed, N)[n]`` as in ``batched_kalman_sample``).
   Equal to the original up to rounding (XLA fuses the arithmetic differently inside the
   map; jax-moseq's own step also changes by rounding between mixed_map_iters values).
4. :func:`_patch_location`: ``resample_location``, bit-identical. jax-moseq's
   ``resample_model`` never passes ``parallel_message_passing`` to it, so its own always
   samples the centroid with the associative scan, and so does the patched step on a GPU.
   On a CPU, at every size, it takes the sequential filter (:data:`LOCATION_KALMAN`, set by
   :func:`run_gibbs`), and so does the continuous step (the planner never gives a CPU
   ``parallel_message_passing=True``): the scan's batched LU calls (``lapack_dgetrf_ffi``
   through jaxlib 0.10's ``ParallelBatchMap``) deadlock XLA:CPU's thread pool when as many run
   at once as it has threads (49,000 frames in 9 recordings and 1 M frames on 2 cores; see
   :func:`kpms_job.memory.kalman_scan_allowed`). The sequential filter has no LU call and
   samples the same distribution (another random stream).
5. :func:`_patch_scales`: ``resample_scales`` (also used by ``init_model``). jax's gamma
   draws element ``i`` from key ``i`` of ``jr.split(seed, size)``; the patch splits the same
   keys and draws each sequence's with JAX's per-element sampler (``_gamma_one``, private:
   without it the step stays unpatched). Equal to the original up to rounding.

The patched names: ``keypoint_slds.gibbs`` and ``keypoint_slds`` (and
``keypoint_slds.initialize`` for the scales); the originals stay at :data:`ORIGINAL_CONTINUOUS_STATESEQS`,
:data:`ORIGINAL_LOCATION` and :data:`ORIGINAL_SCALES`. Checked by tests/test_memory.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from . import faults, watchdog
from .errors import InputDataError, JobError
from .memory import kalman_scan_allowed

log = logging.getLogger("kpms_job")

os.environ.setdefault("TQDM_DISABLE", "1")  # our own progress replaces keypoint-moseq's bars
os.environ.setdefault("MPLBACKEND", "Agg")

import h5py  # noqa: E402
import jax  # noqa: E402
import keypoint_moseq as kpms  # noqa: E402
import matplotlib  # noqa: E402
from jax_moseq.models import keypoint_slds  # noqa: E402
from jax_moseq.utils import (  # noqa: E402
    check_for_nans,
    device_put_as_scalar,
    get_durations,
    set_mixed_map_iters,  # noqa: E402
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# --------------------------------------------------------------------------- jax-moseq patch
def _install(name: str, replacement, modules):
    """Put ``replacement`` in place of jax-moseq's ``name`` in ``modules``; return the original.

    Idempotent: a second call (a reloaded module) finds the replacement and returns the
    original it keeps.
    """
    original = getattr(modules[0], name)
    if getattr(original, "_kpms_job_batched", False):
        return original._kpms_job_original
    replacement.__doc__ = original.__doc__
    replacement._kpms_job_batched = True
    replacement._kpms_job_original = original
    for module in modules:
        setattr(module, name, replacement)
    return original


def _patch_discrete_stateseqs():
    """Batch jax-moseq's discrete-state step by sequence (see the module docstring). Idempotent."""
    from functools import partial

    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models import arhmm
    from jax_moseq.models.arhmm import gibbs, initialize
    from jax_moseq.utils import mixed_map

    def one_sequence(key, x, mask, Ab, Q, pi, nlags):
        # the original's lines, for one sequence: x (T, latent_dim), mask (T,)
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

    return _install("resample_discrete_stateseqs", resample_discrete_stateseqs, (gibbs, arhmm, initialize))


def _patch_ar_params():
    """Build the per-state masks of jax-moseq's AR parameter step inside its map (module docstring). Idempotent."""
    from functools import partial

    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models import arhmm
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
            state_mask = valid * eye[state][z_flat]  # row `state` of the original's masks
            return gibbs._resample_regression_params(x_in, x_out, nu_0, S_0, M_0, K_0, (key, state_mask))

        return jax.lax.map(one_state, (seeds, jnp.arange(num_states)))

    return _install("resample_ar_params", resample_ar_params, (gibbs, arhmm))


def _keypoint_slds_modules(*extra):
    from jax_moseq.models.keypoint_slds import gibbs as kgibbs

    return (kgibbs, keypoint_slds, *extra)


def _patch_continuous_stateseqs():
    """Run the full model's Kalman step per sequence, preparation included (module docstring). Idempotent."""
    from functools import partial

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

    return _install("resample_continuous_stateseqs", resample_continuous_stateseqs, _keypoint_slds_modules())


#: Kalman algorithm of the centroid step: jax-moseq's ``resample_model`` never passes
#: ``parallel_message_passing`` to ``resample_location``, so its own always uses the associative
#: scan. :func:`run_gibbs` sets here what the patched step uses when the caller does not say:
#: the scan on a GPU, the sequential filter on a CPU at every size
#: (:func:`kpms_job.memory.kalman_scan_allowed`: the scan's batched LU deadlocks XLA:CPU).
LOCATION_KALMAN = {"parallel_message_passing": True}


def _patch_location():
    """Compute the centroid step per sequence, inside its Kalman map (module docstring). Idempotent."""
    from functools import partial

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
            parallel_message_passing = LOCATION_KALMAN["parallel_message_passing"]
        return per_sequence(seed, Y, mask, x, h, s, Cd, sigmasq, sigmasq_loc,
                            parallel_message_passing=bool(parallel_message_passing))

    return _install("resample_location", resample_location, _keypoint_slds_modules())


def _patch_scales():
    """Draw the noise scales per sequence, from the keys jax-moseq's one draw uses (module docstring).

    Needs JAX's per-element gamma sampler (``jax._src.random.core._gamma_one``, private):
    without it (another JAX) the step stays jax-moseq's own and None is returned.
    """
    from functools import partial

    import jax.numpy as jnp
    import jax.random as jr
    from jax_moseq.models.keypoint_slds import initialize
    from jax_moseq.utils import mixed_map

    try:
        from jax._src.random.core import _gamma_one
    except ImportError:  # pragma: no cover - the lock pins a JAX that has it
        log.warning("this JAX has no per-element gamma sampler: jax-moseq's noise-scale step stays unbatched")
        return None
    from jax_moseq.models.keypoint_slds import gibbs as kgibbs

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
            variance = kgibbs.compute_squared_error(Y, x, v, h, Cd) / sigmasq + s_0 * nu_s
            draws = jax.vmap(partial(_gamma_one, log_space=False))(
                jax.random.wrap_key_data(keys), jnp.full(per, degs / 2, variance.dtype))
            return variance / draws.reshape(variance.shape) / 2

        return mixed_map(one_sequence)(keys, Y, x, v, h, s_0)

    return _install("resample_scales", resample_scales, _keypoint_slds_modules(initialize))


#: jax-moseq's own steps, before the patches (for tests).
ORIGINAL_DISCRETE_STATESEQS = _patch_discrete_stateseqs()
ORIGINAL_AR_PARAMS = _patch_ar_params()
ORIGINAL_CONTINUOUS_STATESEQS = _patch_continuous_stateseqs()
ORIGINAL_LOCATION = _patch_location()
ORIGINAL_SCALES = _patch_scales()


class FitOutOfMemory(JobError):
    """XLA could not allocate memory during a fit (caught and escalated by the runner)."""


class FitNaN(JobError):
    """The sampler produced NaNs; the fit stopped at the last good iteration."""


@contextlib.contextmanager
def quiet():
    """Route keypoint-moseq's prints and warnings to the debug log."""
    buf = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buf):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            plt.close("all")
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("keypoint-moseq: %s", line.strip())
    for w in caught:
        log.debug("keypoint-moseq warning: %s", str(w.message).replace("\n", " "))


def configure(mixed_map_iters: int) -> None:
    """Set jax-moseq's batching before the first trace (it is read at trace time)."""
    set_mixed_map_iters(int(mixed_map_iters))


# --------------------------------------------------------------------------- loading
def _dlc_bodypart_order(path: str) -> list[str] | None:
    """Bodypart order of the keypoint axis of a multi-animal DeepLabCut file.

    keypoint-moseq 0.8.1 returns multi-animal bodyparts as a ``set`` whose order is
    arbitrary; the coordinates follow the column order of the file, read here.
    """
    import pandas as pd

    if path.endswith(".csv"):
        df = pd.read_csv(path, header=[0, 1, 2, 3], index_col=0, nrows=1)
    else:
        df = pd.read_hdf(path)
    if "individuals" not in (df.columns.names or []):
        return None
    first = df.columns.get_level_values("individuals").unique()[0]
    bps = df.xs(first, axis=1, level="individuals").columns.get_level_values("bodyparts")
    return list(dict.fromkeys(bps))


def _nwb_without_skeleton(path: str, name: str):
    """Read an NWB PoseEstimation that has no Skeleton (keypoint-moseq raises ValueError)."""
    from ndx_pose import PoseEstimation
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(path, mode="r", load_namespaces=True) as nwbio:
        objs = [o for o in nwbio.read().all_children() if isinstance(o, PoseEstimation)]
        if len(objs) != 1:
            raise InputDataError(f"{path}: expected one PoseEstimation, found {len(objs)}")
        series = objs[0].pose_estimation_series
        bodyparts = list(series.keys())
        coords = np.stack([series[bp].data[()] for bp in bodyparts], axis=1)
        confs = []
        for bp in bodyparts:
            c = series[bp].confidence
            confs.append(np.ones(coords.shape[0]) if c is None else np.asarray(c[()]))
        return {name: coords}, {name: np.stack(confs, axis=1)}, bodyparts


def _sleap_analysis_without_scores(path: str, name: str):
    """A SLEAP analysis .h5 without ``point_scores`` (keypoint-moseq raises KeyError): confidence 1."""
    with h5py.File(path, "r") as f:
        coords = f["tracks"][()].transpose((0, 3, 2, 1))
        bodyparts = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["node_names"]]
    confs = np.where(np.isnan(coords).any(-1), 0.0, 1.0)
    if coords.shape[0] == 1:
        return {name: coords[0]}, {name: confs[0]}, bodyparts
    return ({f"{name}_track{i}": coords[i] for i in range(coords.shape[0])},
            {f"{name}_track{i}": confs[i] for i in range(coords.shape[0])}, bodyparts)


def nwb_fps(path: str) -> float | None:
    """Frame rate from an NWB pose series (rate, or median timestamp step)."""
    from ndx_pose import PoseEstimation
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(path, mode="r", load_namespaces=True) as nwbio:
        objs = [o for o in nwbio.read().all_children() if isinstance(o, PoseEstimation)]
        if not objs:
            return None
        s = next(iter(objs[0].pose_estimation_series.values()))
        if getattr(s, "rate", None):
            return float(s.rate)
        ts = s.timestamps
        if ts is None or len(ts) < 2:
            return None
        step = float(np.median(np.diff(np.asarray(ts[: min(len(ts), 10000)]))))
        return 1.0 / step if step > 0 else None


def load_file(path: str, fmt: str, exclude_individuals: list[str]):
    """Load one tracking file with keypoint-moseq's loader.

    Returns
    -------
    coordinates, confidences : dict of name -> ndarray
    bodyparts : list of str, in the order of the keypoint axis
    """
    try:
        with quiet():
            coords, confs, bodyparts = kpms.load_keypoints(
                path, fmt, exclude_individuals=list(exclude_individuals))
    except KeyError as exc:
        if fmt == "sleap" and "point_scores" in str(exc) and path.endswith((".h5", ".hdf5")):
            log.info("%s has no point_scores; confidences set to 1", path)
            return _sleap_analysis_without_scores(path, Path(path).stem)
        raise
    except ValueError as exc:
        if fmt == "nwb" and "skeleton" in str(exc).lower() or fmt == "nwb" and "nodes" in str(exc).lower():
            log.info("%s has no Skeleton; reading its pose series directly", path)
            name = Path(path).stem
            return _nwb_without_skeleton(path, name)
        raise
    if isinstance(bodyparts, set):
        order = _dlc_bodypart_order(path) if fmt == "deeplabcut" else None
        if order is None or set(order) != bodyparts:
            raise InputDataError(
                f"{path}: keypoint-moseq returned the bodyparts as an unordered set and their "
                "order could not be read from the file")
        bodyparts = order
    return coords, confs, list(bodyparts)


def video_fps(path: str) -> float | None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0
    finally:
        cap.release()
    return float(fps) if fps and fps > 0 else None


def find_videos(video_dir: str, names: list[str]) -> dict:
    with quiet():
        return kpms.find_matching_videos(names, video_dir, as_dict=True)


# --------------------------------------------------------------------------- project
def setup_project(project_dir: str, *, bodyparts, use, anterior, posterior, skeleton, fps,
                  video_dir, conf_threshold, outlier_scale_factor, noise_calibration,
                  num_states, kappa, seed) -> None:
    extra = {}
    if noise_calibration:
        extra["error_estimator"] = {"slope": float(noise_calibration["slope"]),
                                    "intercept": float(noise_calibration["intercept"])}
    with quiet():
        kpms.setup_project(
            project_dir, overwrite=True,
            bodyparts=list(bodyparts), use_bodyparts=list(use),
            anterior_bodyparts=list(anterior), posterior_bodyparts=list(posterior),
            skeleton=[list(p) for p in skeleton], fps=float(fps), video_dir=video_dir or "",
            conf_threshold=float(conf_threshold), outlier_scale_factor=float(outlier_scale_factor),
            **extra)
        kpms.update_config(project_dir, num_states=int(num_states), kappa=float(kappa),
                           seed=int(seed))


def load_config(project_dir: str) -> dict:
    with quiet():
        return kpms.load_config(project_dir)


def update_config(project_dir: str, **kwargs) -> None:
    """update_config, with numpy scalars cast (they corrupt the YAML otherwise)."""
    clean = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kwargs.items()}
    with quiet():
        kpms.update_config(project_dir, **clean)


def remove_outliers(coords, confs, project_dir, scale, bodyparts):
    with quiet():
        return kpms.outlier_removal(dict(coords), dict(confs), project_dir, overwrite=True,
                                    outlier_scale_factor=float(scale), bodyparts=list(bodyparts))


def format_data(coords, confs, config):
    """kpms.format_data with 64-bit inputs.

    keypoint-moseq casts the coordinates to float64 but not the confidences, and SLEAP
    files hold float32 scores: ``init_model`` then refuses the data ("JAX is configured
    to use 64-bit precision, but following arguments contain 32-bit arrays").
    """
    coords = {k: np.asarray(v, dtype=np.float64) for k, v in coords.items()}
    confs = {k: np.asarray(v, dtype=np.float64) for k, v in confs.items()}
    with quiet():
        return kpms.format_data(coords, confs, **config)


# --------------------------------------------------------------------------- PCA
def fit_pca(data, config, project_dir):
    with quiet():
        pca = kpms.fit_pca(**data, **config)
        kpms.save_pca(pca, project_dir)
    return pca


def load_pca(project_dir):
    with quiet():
        return kpms.load_pca(project_dir)


def pca_dims_for(pca, fraction: float) -> int:
    cs = np.cumsum(pca.explained_variance_ratio_)
    above = np.nonzero(cs >= fraction - 1e-12)[0]
    return int(above[0] + 1) if len(above) else len(cs)


def pca_variance(pca, dims: int) -> float:
    return float(np.sum(pca.explained_variance_ratio_[:dims]))


def plot_pca(pca, config, project_dir):
    with quiet():
        kpms.plot_scree(pca, project_dir=project_dir)
        kpms.plot_pcs(pca, project_dir=project_dir, interactive=False, **config)


# --------------------------------------------------------------------------- fitting
def checkpoint_path(project_dir, model_name) -> Path:
    return Path(project_dir) / model_name / "checkpoint.h5"


def init_model(data, pca, config, seed: int):
    cfg = dict(config)
    cfg["seed"] = int(seed)
    with quiet():
        return kpms.init_model(data, pca=pca, **cfg)


def set_kappa(model, kappa: float):
    with quiet():
        return kpms.update_hypparams(model, kappa=float(kappa))


def model_kappa(model) -> float:
    return float(model["hypparams"]["trans_hypparams"]["kappa"])


def saved_iterations(path) -> list[int]:
    with h5py.File(path, "r") as f:
        return sorted(int(k) for k in f["model_snapshots"].keys())


def load_latest_snapshot(project_dir, model_name):
    """The newest snapshot that loads; newer half-written snapshots are deleted.

    Returns (model, data, metadata, iteration), or None when the checkpoint is
    missing or unreadable as a whole (the caller then starts the fit again).
    """
    path = checkpoint_path(project_dir, model_name)
    if not path.exists():
        return None
    try:
        iters = saved_iterations(path)
    except Exception as exc:  # noqa: BLE001 - any h5 failure means the file is unusable
        log.warning("checkpoint %s is unreadable (%s); the fit starts again", path, exc)
        return None
    for it in reversed(iters):
        try:
            with quiet():
                model, data, metadata, _ = kpms.load_checkpoint(path=str(path), iteration=it)
            return model, data, metadata, it
        except Exception as exc:  # noqa: BLE001
            log.warning("snapshot %d in %s is damaged (%s); falling back to the one before", it, path, exc)
            try:
                with h5py.File(path, "a") as f:
                    del f[f"model_snapshots/{it}"]
            except Exception:  # noqa: BLE001
                return None
    return None


def _save_snapshot(path, model, iteration: int, *, first=False, data=None, metadata=None):
    from keypoint_moseq.io import save_hdf5

    from .signals import critical

    with critical(), quiet():
        if first:
            tmp = path.with_name(path.name + ".tmp")
            if tmp.exists():
                tmp.unlink()
            save_hdf5(str(tmp), {"model_snapshots": {str(iteration): model},
                                 "metadata": metadata, "data": data})
            os.replace(tmp, path)
        else:
            save_hdf5(str(path), model, f"model_snapshots/{iteration}", exist_ok=True, overwrite=True)


def load_snapshot(project_dir, model_name, iteration: int):
    with quiet():
        model, _, _, _ = kpms.load_checkpoint(path=str(checkpoint_path(project_dir, model_name)),
                                              iteration=int(iteration))
    return model


def drop_snapshots_after(path, iteration: int) -> None:
    """Prepare a checkpoint to continue after ``iteration`` (new snapshots are not reindexed)."""
    with h5py.File(path, "a") as f:
        if "kpms_job_reindexed" in f.attrs:
            del f.attrs["kpms_job_reindexed"]
        for k in list(f["model_snapshots"].keys()):
            if int(k) > iteration:
                del f["model_snapshots"][k]


def _steady(model):
    """The model as every Gibbs iteration should see it: arrays committed to one device.

    jax-moseq's ``mixed_map`` (a ``pmap``) returns arrays committed to its own mesh, while
    an initial or reloaded model holds uncommitted arrays. jit caches on the argument
    shardings, so without this the first two or three iterations of every process, and the
    first after every reload of a snapshot (kappa tuning rolls back to one), compile all
    resampling steps again: about 17 s per reload for the full model on a CPU. Placing
    every array on its device explicitly is a no-copy relabelling that keeps the shardings
    identical from the first iteration on.
    """
    model = device_put_as_scalar(model)

    def commit(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) == 1:
            return jax.device_put(a, jax.sharding.SingleDeviceSharding(next(iter(a.sharding.device_set))))
        return a

    return jax.tree_util.tree_map(commit, model)


def run_gibbs(model, data, metadata, project_dir, model_name, *, start_iter: int, num_iters: int,
              ar_only: bool, save_every: int, fps: float, parallel_message_passing: bool,
              on_iteration=None, should_stop=None, finished=None, on_nan=None, save_now=None,
              progress_plots=True):
    """Gibbs sampling with keypoint-moseq's model and checkpoint format.

    Like ``kpms.fit_model`` (same resampling function, same checkpoint layout, so
    ``kpms.load_checkpoint`` reads it) but snapshot ``i`` is always the model after
    ``i`` resamples, so resuming from snapshot ``k`` runs iterations ``k+1..`` and
    gives the same chain as an uninterrupted run. It also checks ``should_stop``
    after every iteration (a graceful stop saves first), lets ``on_iteration``
    adjust the model (kappa tuning), ends early when ``finished(i)`` says so, and
    lets ``on_nan`` replace a model that produced NaNs.

    Returns
    -------
    model, last_iteration, done
    """
    path = checkpoint_path(project_dir, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if start_iter == 0:
        _save_snapshot(path, model, 0, first=True, data=data, metadata=metadata)
    else:
        drop_snapshots_after(path, start_iter)
    model = _steady(model)
    scan_allowed = kalman_scan_allowed(jax.default_backend())
    LOCATION_KALMAN["parallel_message_passing"] = scan_allowed
    if parallel_message_passing and not scan_allowed:
        # the planner never asks for it on a CPU; a direct caller gets the safe filter too
        log.warning("parallel_message_passing=True is not used on a CPU (its batched LU deadlocks XLA:CPU)")
        parallel_message_passing = False
    it, done = start_iter, False
    last_plot = time.monotonic()
    with watchdog.fit(model_name):  # each iteration is progress; the first one includes the compile
        for it in range(start_iter + 1, num_iters + 1):
            try:
                faults.point(f"resample:{model_name}:{it}")
                new = keypoint_slds.resample_model(
                    data, **model, ar_only=ar_only, jitter=1e-3,
                    parallel_message_passing=parallel_message_passing)
            except RuntimeError as exc:
                if "RESOURCE_EXHAUSTED" in str(exc):
                    raise FitOutOfMemory(str(exc).splitlines()[0]) from exc
                raise
            any_nans, _, messages = check_for_nans(new)
            if any_nans:
                replacement = on_nan(it, model) if on_nan is not None else None
                if replacement is None:
                    raise FitNaN(f"NaNs at iteration {it} of {model_name}: " + "; ".join(messages))
                log.warning("%s: NaNs at iteration %d; continuing from the previous state", model_name, it)
                new = replacement
            elif on_iteration is not None:
                new = on_iteration(it, new) or new
            model = _steady(new)
            watchdog.progress(f"iteration {it} of {model_name}", iteration=True)
            faults.point(f"iter:{model_name}:{it}")
            done = finished(it) if finished is not None else it == num_iters
            stopping = bool(should_stop and should_stop()) and not done
            if done or it % save_every == 0 or stopping or (save_now is not None and save_now(it)):
                _save_snapshot(path, model, it)
                watchdog.progress(f"snapshot {it} of {model_name} saved")
                # a figure takes about a second: at the end, and at save points at most every 2 minutes
                if progress_plots and not stopping and (done or (it % save_every == 0
                                                                and time.monotonic() - last_plot >= 120)):
                    last_plot = time.monotonic()
                    try:
                        with quiet():
                            kpms.plot_progress(model, data, str(path), it, project_dir, model_name,
                                               savefig=True, fps=fps)
                    except Exception as exc:  # noqa: BLE001 - a figure never stops a fit
                        log.debug("progress plot failed: %s", exc)
            if done or stopping:
                break
    return model, it, done


def median_duration_ms(model, data, fps: float) -> float:
    """Median syllable duration with jax-moseq's own duration function."""
    z = np.asarray(model["states"]["z"])
    mask = np.asarray(data["mask"])
    durs = get_durations(z, mask)
    return float(np.median(durs)) * 1000.0 / float(fps) if len(durs) else float("nan")


# --------------------------------------------------------------------------- results
REINDEX_MARK = "kpms_job_reindexed"


def reindex_at(path: str):
    """Reindex the checkpoint at ``path`` by frequency and mark it as done."""
    with quiet():
        kpms.reindex_syllables_in_checkpoint(path=path)
    with h5py.File(path, "a") as f:
        f.attrs[REINDEX_MARK] = True


def is_reindexed(path: str) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get(REINDEX_MARK, False))


def extract_results(project_dir, model_name):
    path = Path(project_dir) / model_name / "results.h5"
    if path.exists():
        path.unlink()
    with quiet():
        model, _, metadata, _ = kpms.load_checkpoint(project_dir, model_name)
        return kpms.extract_results(model, metadata, project_dir, model_name)


def save_csvs(results, project_dir, model_name):
    with quiet():
        kpms.save_results_as_csv(results, project_dir, model_name)


def load_results(project_dir, model_name):
    with quiet():
        return kpms.load_results(project_dir, model_name)


def syllable_stats(results, fps: float) -> dict:
    z = {k: np.asarray(v["syllable"]) for k, v in results.items()}
    durs = get_durations(z)
    allz = np.concatenate(list(z.values()))
    freqs = np.bincount(allz) / len(allz)
    return {"median_duration_ms": float(np.median(durs)) * 1000.0 / fps,
            "syllables_over_0_5pct": int(np.sum(freqs > 0.005)),
            "syllables_used": int(np.sum(freqs > 0))}


def _savefig(fig, project_dir, model_name, stem):
    base = Path(project_dir) / model_name / stem
    fig.savefig(f"{base}.pdf")
    fig.savefig(f"{base}.png", dpi=150)


def plot_frequencies(results, project_dir, model_name):
    with quiet():
        fig, _ = kpms.plot_syllable_frequencies(results=results)
        _savefig(fig, project_dir, model_name, "syllable_frequencies")


def plot_durations(results, project_dir, model_name, fps):
    with quiet():
        fig, _ = kpms.plot_duration_distribution(results=results, fps=fps)
        _savefig(fig, project_dir, model_name, "duration_distribution")


def plot_dendrogram(coords, results, project_dir, model_name, config):
    with quiet():
        kpms.plot_similarity_dendrogram(dict(coords), results, project_dir, model_name, **config)


def grid_movies(results, project_dir, model_name, coords, config, video_dir=None) -> int:
    """Grid movies per syllable, in ``<project>/<model>/grid_movies/syllable<N>.mp4``.

    Written by :mod:`kpms_job.kpms_movies` (adapter layer) one syllable at a time, one frame
    at a time, in this process (keypoint-moseq's ``generate_grid_movies`` holds whole movies
    as float64 and forks for ffmpeg). The grid shrinks for short data (4x6, 3x4, 2x3, 1x2);
    a rerun skips movies already written for the same results. Returns the movies there.
    """
    from .kpms import movies as kpms_movies

    with quiet():
        done = kpms_movies.write_grid_movies(results, project_dir, model_name, dict(coords), config,
                                             video_dir, seed=int(config.get("seed", 0) or 0))
    if done["grid"] is None:
        raise InputDataError("no syllable has enough instances for a grid movie (the data are short)")
    log.info("grid movies (%dx%d): %d written, %d already there", *done["grid"], len(done["written"]),
             len(done["skipped"]))
    return len(done["written"]) + len(done["skipped"])



# --------------------------------------------------------------------------- memory
def calibration_model(keypoints: int, latent_dim: int, num_states: int):
    """A model initialised on the bundled real recording, for memory calibration.

    The bundled recording (examples/data, 2330 frames x 4 keypoints) is used twice, as
    two recordings. For more than 4 keypoints, extra keypoints are midpoints of two
    real ones plus 1 px of noise: XLA's memory analysis depends on array shapes only,
    and the values only have to let PCA and the initialisation run.
    """
    import tempfile

    csv = Path(__file__).resolve().parent.parent / "examples" / "data" / "openfield_dlc_inference_example.csv"
    coords, confs, bodyparts = load_file(str(csv), "deeplabcut", [])
    c, f = next(iter(coords.values())), next(iter(confs.values()))
    names = list(bodyparts)
    rng = np.random.default_rng(0)
    base = c.shape[1]
    while c.shape[1] < keypoints:
        i = c.shape[1]
        a, b = i % base, (i + 1) % base
        extra = (c[:, a:a + 1] + c[:, b:b + 1]) / 2 + rng.normal(0, 1, (len(c), 1, c.shape[2]))
        c = np.concatenate([c, extra], axis=1)
        f = np.concatenate([f, f[:, a:a + 1]], axis=1)
        names.append(f"extra{i}")
    c, f = c[:, :keypoints], f[:, :keypoints]
    names = names[:keypoints]
    with tempfile.TemporaryDirectory() as pd, quiet():
        kpms.setup_project(pd, overwrite=True, bodyparts=names, use_bodyparts=names,
                           anterior_bodyparts=[names[0]], posterior_bodyparts=[names[-1]])
        kpms.update_config(pd, num_states=int(num_states), latent_dim=int(latent_dim))
        config = kpms.load_config(pd)
        data, _ = kpms.format_data({"a": c, "b": c}, {"a": f, "b": f}, **config)
        pca = kpms.fit_pca(**data, **config)
        model = kpms.init_model(data, pca=pca, **config)
    return data, model


def _resample_steps(data, model, parallel_message_passing: bool):
    """(name, jitted function, args, kwargs) of each step of one resample_model call.

    Mirrors jax_moseq.models.keypoint_slds.resample_model / arhmm.resample_model 0.8.1.
    """
    from functools import partial

    from jax_moseq.models import arhmm
    from jax_moseq.utils.transitions import count_transitions

    seed, st, pa, hy = model["seed"], model["states"], model["params"], model["hypparams"]
    d = {k: v for k, v in data.items() if k != "conf"}
    yield "transitions", count_transitions, (int(pa["betas"].shape[0]), st["z"], d["mask"]), {}
    yield ("ar_params", getattr(arhmm.resample_ar_params, "__wrapped__", arhmm.resample_ar_params), (seed,),
           dict(**d, **st, **pa, **hy["ar_hypparams"]))
    yield "discrete", arhmm.resample_discrete_stateseqs, (seed,), dict(**d, **st, **pa)
    cont = jax.jit(partial(keypoint_slds.resample_continuous_stateseqs, jitter=1e-3,
                           parallel_message_passing=bool(parallel_message_passing)))
    yield "continuous", cont, (seed,), dict(**d, **st, **pa)
    yield "heading", keypoint_slds.resample_heading, (seed,), dict(**d, **st, **pa)
    loc = jax.jit(partial(keypoint_slds.resample_location, parallel_message_passing=bool(parallel_message_passing)))
    yield "location", loc, (seed,), dict(**d, **st, **pa, **hy["cen_hypparams"])
    yield ("scales", keypoint_slds.resample_scales, (seed,),
           dict(**d, **st, **pa, s_0=model["noise_prior"], **hy["obs_hypparams"]))


def compiled_step_memory(data, model, *, segments: int, seg_length: int, parallel_message_passing: bool,
                         mixed_map_iters: int, only=None) -> dict:
    """XLA's memory analysis of each Gibbs step, compiled for ``segments`` x ``seg_length`` frames.

    The arrays of ``data`` / ``model`` are replaced by abstract shapes with that many
    segments (nothing of that size is allocated). JAX's trace caches are cleared first,
    because jax-moseq reads ``mixed_map_iters`` at trace time: run this in a process
    that fits nothing else.

    Returns
    -------
    dict of step -> {"temp", "output", "argument": bytes, "frames", "chunk_frames": int}
    """
    import math

    n0, t0 = np.shape(data["mask"])
    t = int(seg_length) + 30  # jax_moseq.utils.batch adds 30 frames of overlap to each segment

    def abstract(a):  # (segments, frames[-nlags], ...) arrays get the new sizes
        if hasattr(a, "shape") and np.ndim(a) >= 2 and a.shape[0] == n0 and t0 - 5 <= a.shape[1] <= t0:
            return jax.ShapeDtypeStruct((int(segments), t - (t0 - a.shape[1]), *a.shape[2:]), a.dtype)
        return a

    data_a = jax.tree_util.tree_map(abstract, dict(data))
    model_a = jax.tree_util.tree_map(abstract, dict(model))
    from jax_moseq.utils import get_mixed_map_iters

    before = get_mixed_map_iters()
    set_mixed_map_iters(int(mixed_map_iters))
    jax.clear_caches()
    out = {}
    try:
        for name, fn, args, kwargs in _resample_steps(data_a, model_a, parallel_message_passing):
            if only is not None and name not in only:
                continue
            ma = fn.lower(*args, **kwargs).compile().memory_analysis()
            out[name] = {"temp": int(ma.temp_size_in_bytes), "output": int(ma.output_size_in_bytes),
                         "argument": int(ma.argument_size_in_bytes), "frames": int(segments) * t,
                         "chunk_frames": math.ceil(int(segments) / int(mixed_map_iters)) * t}
    finally:
        set_mixed_map_iters(before)
        jax.clear_caches()
    return out

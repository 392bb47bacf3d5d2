"""The Gibbs engine: the initial model, the sampling loop, snapshots, kappa and durations.

The loop is keypoint-moseq's ``fit_model`` made resumable (:func:`run_gibbs`); it runs jax-moseq
with the patches of :mod:`kpms_job.kpms.patches`, which the fitting code installs with
:func:`kpms_job.kpms.patches.install` before the first trace (:func:`init_model` and
:func:`run_gibbs` refuse to run without them: the same seed would give another chain).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import h5py
import jax
import numpy as np
from jax_moseq.models import keypoint_slds
from jax_moseq.utils import check_for_nans, device_put_as_scalar, get_durations, set_mixed_map_iters

from .. import faults, watchdog
from ..errors import FitNaN, FitOutOfMemory
from . import patches
from .common import kpms, log, quiet


def backend() -> str:
    """JAX's backend in this process ("cpu", "gpu", ...)."""
    return jax.default_backend()


def configure(mixed_map_iters: int) -> None:
    """Set jax-moseq's batching before the first trace (it is read at trace time)."""
    set_mixed_map_iters(int(mixed_map_iters))


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: XLA's (a RuntimeError with status RESOURCE_EXHAUSTED, the one way
    jaxlib reports it, from the device or XLA:CPU) or the host's (MemoryError)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "RESOURCE_EXHAUSTED" in str(exc))


@contextlib.contextmanager
def out_of_memory_is_fit_error():
    """Turn an allocation failure inside the block into :class:`FitOutOfMemory`.

    ``kpms-job run`` answers that by restarting with the next memory setting. Every step of a
    fit that touches the device needs it, not only the Gibbs step: JAX dispatches asynchronously,
    so the step's own failure may surface at the first read of its result (the NaN check, a
    snapshot's copy to the host), and the initial model and a reloaded snapshot allocate too.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        text = str(exc).strip()
        raise FitOutOfMemory(text.splitlines()[0] if text else f"{type(exc).__name__}: out of host memory") from exc


def _require_patches() -> None:
    if not patches.installed():
        raise RuntimeError("kpms_job.kpms.patches.install() must run before a model is initialised or fitted")


def checkpoint_path(project_dir, model_name) -> Path:
    return Path(project_dir) / model_name / "checkpoint.h5"


def init_model(data, pca, config, seed: int):
    _require_patches()
    cfg = dict(config)
    cfg["seed"] = int(seed)
    faults.point("init_model")
    with quiet():
        return kpms.init_model(data, pca=pca, **cfg)


def set_kappa(model, kappa: float):
    with quiet():
        return kpms.update_hypparams(model, kappa=float(kappa))


def model_kappa(model) -> float:
    return float(model["hypparams"]["trans_hypparams"]["kappa"])


def median_duration_ms(model, data, fps: float) -> float:
    """Median syllable duration with jax-moseq's own duration function."""
    z = np.asarray(model["states"]["z"])
    mask = np.asarray(data["mask"])
    durs = get_durations(z, mask)
    return float(np.median(durs)) * 1000.0 / float(fps) if len(durs) else float("nan")


# --------------------------------------------------------------------------- snapshots
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

    from ..signals import critical

    faults.point(f"snapshot:{Path(path).parent.name}:{iteration}")  # copying the model to the host
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
    from .results import REINDEX_MARK

    with h5py.File(path, "a") as f:
        if REINDEX_MARK in f.attrs:
            del f.attrs[REINDEX_MARK]
        for k in list(f["model_snapshots"].keys()):
            if int(k) > iteration:
                del f["model_snapshots"][k]


def end_chain_at(project_dir, model_name, iteration: int, kappa: float | None = None) -> None:
    """Make snapshot ``iteration`` the checkpoint's last, as if the chain had ended there:
    ``kpms.load_checkpoint``, reindexing and the results read the last one. On a copy swapped in
    atomically, so a kill leaves the whole chain or the ended one; repeating it changes nothing.

    ``kappa``: the kappa that state was fitted at, written into it. A snapshot saved at a tuner's
    check holds the kappa the tuner then moved to, which the state never ran at (real data: an
    AR-HMM delivered at 1e15 whose checkpoint said 1e18).
    """
    import shutil

    from ..signals import critical

    path = checkpoint_path(project_dir, model_name)
    key = f"model_snapshots/{iteration}/hypparams/trans_hypparams/kappa"

    def kappa_off(f) -> bool:
        # relative: the tuner keeps log10 kappa, and a rewrite by one ulp would be no change
        return kappa is not None and key in f and abs(float(f[key][()]) / float(kappa) - 1.0) > 1e-9

    with h5py.File(path, "r") as f:
        if max(int(k) for k in f["model_snapshots"]) <= iteration and not kappa_off(f):
            return
    tmp = path.with_name("checkpoint.end.tmp.h5")
    with critical():
        shutil.copyfile(path, tmp)
        drop_snapshots_after(tmp, iteration)
        with h5py.File(tmp, "a") as f:
            if kappa_off(f):
                f[key][()] = float(kappa)
        os.replace(tmp, path)


# --------------------------------------------------------------------------- sampling
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


def plot_progress(model, data, project_dir, model_name, iteration: int, fps: float) -> None:
    """keypoint-moseq's progress figure for the snapshot at ``iteration`` (its history up to there),
    also saved as ``fitting_progress.png`` for the report; a failure is logged, never raised."""
    path = checkpoint_path(project_dir, model_name)
    try:
        with quiet():
            fig, _ = kpms.plot_progress(model, data, str(path), iteration, project_dir, model_name,
                                        savefig=True, fps=fps)
        fig.savefig(path.with_name("fitting_progress.png"), dpi=100)
    except Exception as exc:  # noqa: BLE001 - a figure never stops a fit
        log.debug("progress plot failed: %s", exc)


def run_gibbs(model, data, metadata, project_dir, model_name, *, start_iter: int, num_iters: int,
              ar_only: bool, save_every: int, fps: float, parallel_message_passing: bool, kalman_scan: bool,
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

    ``kalman_scan``: whether the associative-scan Kalman sampler may run on this backend
    (:func:`kpms_job.resources.model.kalman_scan_allowed`); where it may not, ``parallel_message_passing``
    is ignored and the centroid step takes the sequential filter too.

    Returns
    -------
    model, last_iteration, done
    """
    patches.install(location_scan=kalman_scan)
    path = checkpoint_path(project_dir, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with out_of_memory_is_fit_error():
        if start_iter == 0:
            _save_snapshot(path, model, 0, first=True, data=data, metadata=metadata)
        else:
            drop_snapshots_after(path, start_iter)
        model = _steady(model)
    if parallel_message_passing and not kalman_scan:
        # the planner never asks for it on a CPU; a direct caller gets the safe filter too
        log.warning("parallel_message_passing=True is not used on a CPU (its batched LU deadlocks XLA:CPU)")
        parallel_message_passing = False
    it, done = start_iter, False
    last_plot = time.monotonic()
    # each iteration is progress for the watchdog; the first one includes the compile
    with out_of_memory_is_fit_error(), watchdog.fit(model_name):
        for it in range(start_iter + 1, num_iters + 1):
            faults.point(f"resample:{model_name}:{it}")
            new = keypoint_slds.resample_model(
                data, **model, ar_only=ar_only, jitter=1e-3,
                parallel_message_passing=parallel_message_passing)
            faults.point(f"nan-check:{model_name}:{it}")  # the first read of the new state's values
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
                    plot_progress(model, data, project_dir, model_name, it, fps)
            if done or stopping:
                break
    return model, it, done

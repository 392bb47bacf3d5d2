"""Patches of jax-moseq that make a fit's memory scale with one batch of sequences, installed on request.

jax-moseq's Gibbs steps compute whole-data intermediates (``num_states`` x frames log likelihoods
and masks, aligned keypoints, the gamma sampler's temporaries) that ``mixed_map_iters`` cannot
batch; at millions of frames they are the largest arrays of a fit. Each module here replaces one
step with one that computes, per sequence under ``jax_moseq.utils.mixed_map``, what jax-moseq's
step computes, with jax-moseq's own functions and the random keys it uses, shaped as the change
would be proposed upstream (its docstring names the target function and the invariant it keeps):

=======================  ==========================================================  ===========
module                   target                                                      planner step
=======================  ==========================================================  ===========
discrete_stateseqs       ``jax_moseq.models.arhmm.gibbs.resample_discrete_stateseqs``  discrete
ar_params                ``jax_moseq.models.arhmm.gibbs.resample_ar_params``           ar_params
continuous_stateseqs     ``jax_moseq.models.keypoint_slds.gibbs.resample_continuous_stateseqs``  continuous
location                 ``jax_moseq.models.keypoint_slds.gibbs.resample_location``    location
scales                   ``jax_moseq.models.keypoint_slds.gibbs.resample_scales``      scales
=======================  ==========================================================  ===========

Nothing is patched on import. :func:`install` (called by the fitting code, before the first trace)
checks for each patch that the installed jax-moseq is the version it was written for and that the
source of every function it mirrors hashes as it did then; a patch whose check fails is logged and
skipped, and that step stays jax-moseq's own (correct, but unbatched). :func:`active` tells the
memory planner which steps are patched, so it plans a skipped one as unbatched.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("kpms_job")

#: The patch modules, in the order they are installed; each name is also the step it is reported as.
NAMES = ("discrete_stateseqs", "ar_params", "continuous_stateseqs", "location", "scales")
#: The memory planner's step for each patch (kpms_job.resources.model).
STEPS = {"discrete_stateseqs": "discrete", "ar_params": "ar_params", "continuous_stateseqs": "continuous",
         "location": "location", "scales": "scales"}

_active: dict[str, object] = {}  # name -> jax-moseq's original function, for installed patches
_skipped: dict[str, str] = {}  # name -> why it was not installed
_location_scan: bool | None = None


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    obj = getattr(importlib.import_module(module), name)
    return getattr(obj, "_kpms_job_original", obj)


def source_hash(path: str) -> str:
    """First 16 hex digits of the SHA-256 of the source of the function at ``path`` (unpatched)."""
    return hashlib.sha256(inspect.getsource(_resolve(path)).encode()).hexdigest()[:16]


def check(patch) -> str | None:
    """Why ``patch`` (a patch module) does not fit what is installed, or None when it does."""
    try:
        have = version("jax-moseq")
    except PackageNotFoundError:
        return "jax-moseq is not installed"
    if have != patch.JAX_MOSEQ:
        return f"written for jax-moseq {patch.JAX_MOSEQ}, found {have}"
    for path, expected in patch.SOURCES.items():
        try:
            got = source_hash(path)
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            return f"{path} is missing ({type(exc).__name__}: {exc})"
        if got != expected:
            return f"the source of {path} changed (hash {got}, written for {expected})"
    return None


def _put(name: str, replacement, modules) -> object:
    """Put ``replacement`` in place of jax-moseq's ``name`` in ``modules``; return the original."""
    original = getattr(modules[0], name)
    original = getattr(original, "_kpms_job_original", original)
    replacement.__doc__ = replacement.__doc__ or original.__doc__
    replacement._kpms_job_original = original
    for module in modules:
        setattr(module, name, replacement)
    return original


def install(*, location_scan: bool) -> dict[str, str]:
    """Install every patch whose check passes; return {name: why} of those skipped.

    ``location_scan``: the Kalman algorithm of the centroid step, which jax-moseq's
    ``resample_model`` never chooses (the associative scan where it is allowed, see
    :func:`kpms_job.resources.model.kalman_scan_allowed`). Installing again with the same value does
    nothing; with another value it replaces the centroid step only.
    """
    global _location_scan
    if _active or _skipped:
        if location_scan != _location_scan and "location" in _active:
            from . import location

            _put(location.NAME, location.make(parallel_default=location_scan), location.modules())
        _location_scan = location_scan
        return dict(_skipped)
    _location_scan = location_scan
    for name in NAMES:
        patch = importlib.import_module(f"{__name__}.{name}")
        why = check(patch)
        if why is None:
            try:
                replacement = patch.make(parallel_default=location_scan) if name == "location" else patch.make()
            except ImportError as exc:  # a private function it needs is gone
                why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            _skipped[name] = why
            log.warning("jax-moseq patch %s is not installed (%s): the %s step stays jax-moseq's own, "
                        "unbatched by mixed_map_iters", name, why, STEPS[name])
            continue
        _active[name] = _put(patch.NAME, replacement, patch.modules())
    return dict(_skipped)


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return bool(_active or _skipped)


def active() -> frozenset[str]:
    """The planner steps (:data:`STEPS` values) whose patch is installed in this process."""
    return frozenset(STEPS[n] for n in _active)


def skipped() -> dict[str, str]:
    """{patch name: why} of the patches :func:`install` did not install."""
    return dict(_skipped)


def original(name: str):
    """jax-moseq's own function that patch ``name`` replaced (tests compare the two)."""
    if name in _active:
        return _active[name]
    patch = importlib.import_module(f"{__name__}.{name}")
    return getattr(patch.modules()[0], patch.NAME)

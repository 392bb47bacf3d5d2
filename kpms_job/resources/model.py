"""The memory model of a keypoint-MoSeq fit: pure arithmetic, no JAX import.

What it models
--------------
One Gibbs iteration of jax-moseq 0.3.7 (``keypoint_slds.resample_model``) runs a fixed
sequence of separately jitted steps: transition counts, AR parameters, discrete states
(the AR-HMM; the full model adds continuous states ``x`` by Kalman sampling, heading,
location and noise scales). The peak memory of a fit is therefore

    base  +  resident arrays  +  the largest step's XLA temporaries and outputs

where *base* is the process itself (Python, JAX, keypoint-moseq, compiled code),
*resident* is the data and model state that live through the fit (the data, the old and
the new model during an iteration, a host copy while a snapshot is written) and the
step term comes from XLA's own buffer assignment (``compiled.memory_analysis()``).

Every step's memory is linear in the number of (padded) frames. Its bytes per frame are
a linear combination of features of the model's size (:func:`features`), with
coefficients measured, not guessed: the developer tool ``tools/calibrate_memory.py`` compiles
the real jax-moseq steps for a grid of small real shapes and fits them by least squares (it
prints a new :data:`COEFFS`). Four steps are split by
``mixed_map_iters`` (jax-moseq's ``mixed_map``): the Kalman sampling of the full model
(``continuous``) and, batched by the job's patches of jax-moseq (see
:mod:`kpms_job.kpms.patches`), the discrete-state sampling of both models (``discrete``), the
centroid (``location``) and the noise scales (``scales``). A patch that did not install (another
jax-moseq) leaves its step unbatched: :func:`estimate` takes the installed patches
(``patched``) and plans such a step at mixed_map_iters 1. Each has a *whole*
part (over all frames) and a *chunk* part (over one batch of ``ceil(segments /
mixed_map_iters)`` segments). ``parallel_message_passing`` (an associative scan instead
of a sequential Kalman filter) is much faster on a GPU and needs several times the memory.

keypoint-moseq turns on 64-bit floats for the whole process, so arrays are 8 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GiB = float(1 << 30)
BYTES = 8  # float64 / int64: keypoint-moseq enables jax x64
SEG_OVERLAP = 30  # jax_moseq.utils.batch(seg_overlap=30)
MAX_SEG_LENGTH = 10_000  # keypoint_moseq.util.format_data(max_seg_length=10_000)

# --------------------------------------------------------------------------- constants
#: Per-frame bytes of each step: {step: {feature: coefficient}}; see :func:`features`.
#: Measured with tools/calibrate_memory.py (jax 0.10.2, jax-moseq 0.3.7, keypoint-moseq 0.8.1,
#: XLA:CPU; its grid at 4 segments x 10,030 frames). ``discrete.*``
#: and ``ar_params`` re-measured after the patches of those two steps
#: (``tools/calibrate_memory.py --steps discrete,ar_params``: the same grid,
#: the discrete step at mixed_map_iters 1 and 2). The discrete step at 1 needs what
#: jax-moseq's own needs, 24 x num_states bytes/frame, at 2 about half (fit within 13% on
#: the grid); ar_params fell from 16 x num_states + 12 x LD to 34 + 22 x LD (within 1%).
#: ``continuous.*``, ``location.*`` and ``scales.*`` re-measured after the
#: per-sequence patches of those steps (``--steps continuous,location,scales``): at 10 M
#: frames the scales step fell from 15.2 GiB (one unbatched gamma draw) to 9.6 GiB + a chunk.
COEFFS: dict[str, dict[str, float]] = {
    "transitions": {"1": 17.436},
    "ar_params": {"1": 34.316, "LD": 21.677},
    # jax-moseq's own step, before the patch of it (kpms_job.kpms.patches.ar_params): its
    # num_states x frames mask; measured with the same grid before that patch was written
    "ar_params.unpatched": {"S": 16.0, "LD": 12.0},
    "discrete.whole": {"1": 23.867, "D": 20.726},
    "discrete.chunk": {"1": -157.202, "S": 24.425},
    "continuous.seq.whole": {"1": 80.271, "K": 47.76, "LD": 4.231},
    "continuous.seq.chunk": {"1": 54.158, "K": -46.82, "LD2": 16.38},
    "continuous.par.whole": {"K": 48.072, "LD": 19.482, "LD2": 7.744},
    "continuous.par.chunk": {"LD2": 96.561},
    "heading": {"1": 72.068, "K": 28.754},
    "location.seq.whole": {"1": 146.086, "K": 51.504},
    "location.seq.chunk": {"1": -22.034, "K": -11.5},
    "location.par.whole": {"1": 201.287, "K": 52.257},
    "location.par.chunk": {"1": 172.869, "K": -14.756},
    "scales.whole": {"1": 138.047, "K": 111.508},
    "scales.chunk": {"1": -129.996, "K": 78.492},
}

#: Bytes of the job process before any fit-sized array: Python, JAX, keypoint-moseq,
#: matplotlib, the compiled steps and the compiler's own peak. Measured on XLA:CPU as the
#: peak resident memory of the tiny job (2 recordings x 2330 frames: 2.2 and 2.35 GiB).
BASE_BYTES = {"cpu": 2.2 * GiB, "gpu": 0.0}
#: Device memory outside JAX's pool on a GPU (CUDA context, cuDNN/cuBLAS workspaces).
GPU_CONTEXT_BYTES = int(0.6 * GiB)

STEPS_ARHMM = ("transitions", "ar_params", "discrete")
STEPS_FULL = STEPS_ARHMM + ("continuous", "heading", "location", "scales")


# --------------------------------------------------------------------------- shapes
def seg_length_for(lengths) -> int:
    """keypoint-moseq's segment length for these recording lengths (``_find_optimal_segment_length``)."""
    lengths = [int(n) for n in lengths]
    total = sum(lengths)
    seg = MAX_SEG_LENGTH
    for seg in sorted({min(n, MAX_SEG_LENGTH) for n in lengths}, reverse=True):
        if sum(-n % seg for n in lengths) / total * 100 <= 50:
            break
    else:
        seg = MAX_SEG_LENGTH
    while True:
        rem = [n % seg for n in lengths if n % seg]
        if all(r >= 4 for r in rem):
            return seg
        seg += min(rem)


@dataclass(frozen=True)
class Shape:
    """The sizes that decide a fit's memory.

    Parameters
    ----------
    frames : int
        Frames in all recordings together.
    recordings : tuple of int, optional
        Frames per recording (decides keypoint-moseq's segments and padding). Default:
        ``frames`` cut into recordings of 10,000 frames.
    dims : int
        2 for 2D keypoints, 3 for 3D.
    """

    frames: int
    keypoints: int = 8
    latent_dim: int = 10
    num_states: int = 100
    recordings: tuple = ()
    nlags: int = 3
    dims: int = 2

    def __post_init__(self):
        if not self.recordings:
            full, rest = divmod(int(self.frames), MAX_SEG_LENGTH)
            object.__setattr__(self, "recordings", (MAX_SEG_LENGTH,) * full + ((rest,) if rest else ()))

    @property
    def seg_length(self) -> int:
        return seg_length_for(self.recordings)

    @property
    def segments(self) -> int:
        seg = self.seg_length
        return sum(math.ceil(n / seg) for n in self.recordings)

    @property
    def padded_frames(self) -> int:
        """Frames in jax-moseq's arrays: segments x (segment length + overlap)."""
        return self.segments * (self.seg_length + SEG_OVERLAP)

    def chunk_frames(self, mixed_map_iters: int) -> int:
        """Frames in one batch of jax-moseq's ``mixed_map``."""
        return math.ceil(self.segments / max(1, int(mixed_map_iters))) * (self.seg_length + SEG_OVERLAP)


def features(shape: Shape) -> dict[str, float]:
    """The size features the per-frame coefficients multiply.

    ``LD`` is the Kalman state dimension (latent_dim x nlags); the Kalman filter keeps an
    ``LD x LD`` covariance per frame, the HMM an ``S``-vector per frame.
    """
    k, d, s, ld = shape.keypoints, shape.latent_dim, shape.num_states, shape.latent_dim * shape.nlags
    return {"1": 1.0, "K": float(k), "D": float(d), "S": float(s), "LD": float(ld), "LD2": float(ld * ld),
            "KLD": float(k * ld), "SLD": float(s * ld)}


#: Steps that ``mixed_map_iters`` batches: a whole and a chunk term each (jax-moseq batches
#: ``continuous``; the patches in kpms_job.kpms.patches the others).
BATCHED = ("continuous", "discrete", "location", "scales")
#: Steps with a ``.par`` (associative scan) and a ``.seq`` (sequential Kalman filter) term.
KALMAN = ("continuous", "location")
def kalman_scan_allowed(backend: str) -> bool:
    """Whether the associative-scan Kalman sampler (``parallel_message_passing=True``, and the
    centroid step's own scan) may run on ``backend``: never on a CPU.

    On XLA:CPU the job never uses the associative-scan Kalman sampler, at any size: neither for the
    centroid (``location``: jax-moseq's own step always takes the scan; the job's patch takes the
    sequential filter on a CPU) nor for the continuous states (:func:`.ladder.ladder` offers only
    ``parallel_message_passing=False`` on a CPU, even when the manifest pins ``true``). Why: jaxlib
    0.10.x runs every batched LAPACK call (``lapack_dgetrf_ffi``, ``lapack_dpotrf_ffi``, ...) through
    ``jax::ParallelBatchMap``, which queues the batch on XLA:CPU's intra-op pool and blocks on a
    ``BlockingCounter``; when as many such calls run at once as the pool has threads (2 on a 2-core
    machine), every pool thread waits for work only a pool thread could do: a deadlock at 0% CPU.
    The scan's ``vmap``-ed operator issues many independent batched LU decompositions (``jnp.linalg.solve``
    over all frames) that XLA may run concurrently (seen at 49,000 frames in 9 recordings, at 500,000
    and at 1,000,000 on 2 cores). The sequential filter has no LU at all: its Cholesky calls
    (batched over one ``mixed_map`` batch of sequences) follow each other inside a ``lax.scan``.
    ``--xla_cpu_multi_thread_eigen=false`` does not help (reproduced with 8 independent batched
    ``jnp.linalg.solve`` calls in one jitted function: it hangs with and without the flag, while the same
    calls chained one after another complete). A third-party report (unverified) says jaxlib 0.11.1+ compiles that
    parallel path out.
    """
    return backend != "cpu"


#: The features each step's bytes per frame depend on.
STEP_FEATURES = {  # chosen by leave-one-shape-out error on the calibration records (at most 10%)
    "transitions": ("1",),
    "ar_params": ("1", "LD"),
    "ar_params.unpatched": ("S", "LD"),  # the lagged x; no num_states x frames mask since the patch
    "discrete.whole": ("1", "D"),  # copies of x (mixed_map's reshape), keys, z: within 13% on the grid
    "discrete.chunk": ("1", "S"),  # per batch: the AR log likelihoods and HMM messages, num_states per frame
    "continuous.seq.whole": ("1", "K", "LD"),
    "continuous.seq.chunk": ("1", "K", "LD2"),
    "continuous.par.whole": ("K", "LD", "LD2"),
    "continuous.par.chunk": ("LD2",),
    "heading": ("1", "K"),
    "location.seq.whole": ("1", "K"),
    "location.seq.chunk": ("1", "K"),
    "location.par.whole": ("1", "K"),
    "location.par.chunk": ("1", "K"),
    "scales.whole": ("1", "K"),
    "scales.chunk": ("1", "K"),
}


def per_frame(term: str, shape: Shape, coeffs=None, clamp: bool = True) -> float:
    """Bytes per frame of ``term``; ``clamp=False`` keeps a negative value (a batched step's chunk
    part is negative where splitting into batches costs copies: only whole + chunk is a size)."""
    c = (coeffs or COEFFS)[term]
    f = features(shape)
    value = sum(v * f[k] for k, v in c.items())
    return max(0.0, value) if clamp else value


def batched_bytes(term: str, shape: Shape, mixed_map_iters: int, coeffs=None) -> float:
    """Bytes of a batched step's ``term`` (e.g. ``location.seq``): whole part over all frames plus
    chunk part over one batch, clamped as a sum (a negative chunk part is the cost of batching)."""
    return max(0.0, per_frame(f"{term}.whole", shape, coeffs, clamp=False) * shape.padded_frames
               + per_frame(f"{term}.chunk", shape, coeffs, clamp=False) * shape.chunk_frames(mixed_map_iters))


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True, order=True)
class Setting:
    parallel_message_passing: bool
    mixed_map_iters: int

    def label(self) -> str:
        return f"parallel_message_passing={self.parallel_message_passing}, mixed_map_iters={self.mixed_map_iters}"

    def as_dict(self) -> dict:
        return {"parallel_message_passing": self.parallel_message_passing, "mixed_map_iters": self.mixed_map_iters}


# --------------------------------------------------------------------------- estimates
@dataclass
class Estimate:
    """Peak memory of one fit, with its parts (bytes)."""

    stage: str
    setting: Setting | None
    base: float
    resident: float
    steps: dict = field(default_factory=dict)

    @property
    def peak_step(self) -> str:
        return max(self.steps, key=self.steps.get)

    @property
    def total(self) -> float:
        return self.base + self.resident + max(self.steps.values())

    def describe(self) -> str:
        process = f"{gib(self.base)} process + " if self.base else ""
        return (f"{gib(self.total)} = {process}{gib(self.resident)} data and state + "
                f"{gib(self.steps[self.peak_step])} in its largest step ({self.peak_step})")


def resident_bytes(shape: Shape, backend: str = "cpu") -> float:
    """Arrays alive through a fit: data, two copies of the model state, a host copy.

    Per frame: data ``Y`` (K x dims), ``conf`` (K), ``mask``, ``noise_prior`` (K); model
    state ``x`` (D), ``z``, ``h``, ``v`` (dims), ``s`` (K), held twice during an
    iteration (old and new model). On a CPU the host is the device, so the snapshot
    writer's numpy copy of the state and the keypoints read back for it count too.
    """
    k, d, dims = shape.keypoints, shape.latent_dim, shape.dims
    data = k * dims + k + 1 + k
    state = d + 1 + 1 + dims + k
    per = data + 2 * state
    if backend == "cpu":
        per += state + k * dims + k
    return BYTES * per * shape.padded_frames


#: The steps a patch of jax-moseq changes (kpms_job.kpms.patches.STEPS); ``patched=None`` means all.
PATCHED_STEPS = frozenset({"discrete", "ar_params", "continuous", "location", "scales"})


def estimate(shape: Shape, setting: Setting | None, stage: str = "full_model", backend: str = "cpu",
             coeffs=None, patched=None) -> Estimate:
    """Peak memory of the AR-HMM (``stage='arhmm'``) or full-model fit with ``setting``.

    ``setting=None``: no batching (mixed_map_iters 1, parallel_message_passing off).
    ``patched``: the steps whose jax-moseq patch is installed (``kpms.patches.active()``);
    None: all of them, as with the jax-moseq of the lock. A step left unpatched is jax-moseq's
    own: planned at mixed_map_iters 1 (jax-moseq batches only the Kalman sampler of the
    continuous step, not its whole-data preparation: at 1 it errs on the safe side), the AR
    parameter step with its ``num_states x frames`` mask, the centroid step with the
    associative scan it always takes.
    """
    coeffs = coeffs or COEFFS
    setting = setting or Setting(False, 1)
    patched = PATCHED_STEPS if patched is None else frozenset(patched)
    frames = shape.padded_frames
    steps = {}
    names = STEPS_ARHMM if stage == "arhmm" else STEPS_FULL
    for name in names:
        own = name in PATCHED_STEPS and name not in patched
        if name in BATCHED:
            term = name
            if name == "continuous":
                term += ".par" if setting.parallel_message_passing else ".seq"
            elif name == "location":
                term += ".par" if own or kalman_scan_allowed(backend) else ".seq"
            steps[name] = batched_bytes(term, shape, 1 if own else setting.mixed_map_iters, coeffs)
        elif own and f"{name}.unpatched" in coeffs:
            steps[name] = per_frame(f"{name}.unpatched", shape, coeffs) * frames
        else:
            steps[name] = per_frame(name, shape, coeffs) * frames
    return Estimate(stage, setting, BASE_BYTES.get(backend, 0.0), resident_bytes(shape, backend), steps)


def gib(n: float) -> str:
    """Bytes as GiB (MiB below 1 GiB)."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / (1 << 20):.0f} MiB"

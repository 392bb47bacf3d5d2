"""Accelerator detection, the memory budget, and the fitting settings chosen from them.

Three moments, in this order:

1. :func:`prepare_environment` (``cmd_run``, before anything imports JAX): find the
   GPUs this process may use (NVML if ``nvidia-ml-py`` is installed, else
   ``nvidia-smi``; ``CUDA_VISIBLE_DEVICES`` honoured), turn the manifest's
   ``resources.vram_budget_gb`` into bytes and set ``XLA_PYTHON_CLIENT_MEM_FRACTION``
   so that JAX takes the budget instead of its default 75% of the GPU.
2. :func:`plan_for_context` (the first fit of a process, before the first trace): the
   memory model (:mod:`kpms_job.memory`) picks ``parallel_message_passing`` and
   ``mixed_map_iters``; settings that already ran out of memory are skipped.
3. :func:`after_out_of_memory` (``cmd_run``, when a fit raised an XLA
   RESOURCE_EXHAUSTED error): record it, pick the next setting for a fresh process, or
   raise :class:`errors.OutOfMemory` (exit 4) when the most frugal one failed too.

The job state's ``resources`` entry keeps the settings in use, the budget, the
estimates, every out-of-memory attempt and the peak memory seen.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from . import memory
from .errors import OutOfMemory

log = logging.getLogger("kpms_job")

GiB = memory.GiB
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")
JAX_MEMORY_VARS = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")


# --------------------------------------------------------------------------- detection
@dataclass
class Gpu:
    index: str
    name: str
    total: int
    free: int
    source: str


@dataclass
class Machine:
    """What this process may use, found without importing JAX."""

    backend: str  # "gpu" or "cpu": what JAX will use
    gpus: list = field(default_factory=list)
    ram_total: int = 0
    ram_available: int = 0
    ram_source: str = ""
    notes: list = field(default_factory=list)


def _visible(gpus: list[Gpu], env=None) -> tuple[list[Gpu], str | None]:
    """The GPUs CUDA_VISIBLE_DEVICES lets this process see (indices or UUIDs), in its order."""
    env = os.environ if env is None else env
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return gpus, None
    spec = spec.strip()
    if spec in ("", "-1", "none", "NoDevFiles"):
        return [], f"CUDA_VISIBLE_DEVICES={spec!r} hides every GPU"
    out = []
    for item in (s.strip() for s in spec.split(",")):
        match = [g for g in gpus if g.index == item or (item.startswith(("GPU-", "MIG-")) and g.name.endswith(item))]
        if not match:
            break  # CUDA stops at the first invalid entry
        out.append(match[0])
    return out, f"CUDA_VISIBLE_DEVICES={spec}"


def _nvml_gpus() -> list[Gpu] | None:
    try:
        import pynvml  # nvidia-ml-py, only if installed
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no GPU
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            out.append(Gpu(str(i), f"{name} {uuid}", int(mem.total), int(mem.free), "NVML"))
        return out
    finally:
        pynvml.nvmlShutdown()


def _smi_gpus() -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=index,name,uuid,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    out = []
    for line in res.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            out.append(Gpu(parts[0], f"{parts[1]} {parts[2]}", int(float(parts[3])) << 20,
                           int(float(parts[4])) << 20, "nvidia-smi"))
        except ValueError:
            continue
    return out


def _cgroup_limit() -> tuple[int | None, int | None]:
    """(limit, usage) of this container's memory cgroup, where it has a limit."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = open(limit_path).read().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:
            return None, None
        try:
            usage = int(open(usage_path).read().strip())
        except (OSError, ValueError):
            usage = None
        return int(raw), usage
    return None, None


def system_memory() -> tuple[int, int, str]:
    """(total, available, source) of the memory this process may use (cgroup limit honoured)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, avail, source = int(vm.total), int(vm.available), "psutil"
    except ImportError:
        info = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        total, source = info["MemTotal"], "/proc/meminfo"
        avail = info.get("MemAvailable", info.get("MemFree", 0))
    limit, usage = _cgroup_limit()
    if limit is not None and limit < total:
        total = limit
        avail = min(avail, limit - (usage or 0))
        source += " and the container's memory limit"
    return total, max(0, avail), source


def jax_has_cuda() -> bool:
    import importlib.util

    for name in CUDA_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def detect(env=None) -> Machine:
    """The GPUs and memory this process may use (no JAX import)."""
    env = os.environ if env is None else env
    m = Machine("cpu")
    m.ram_total, m.ram_available, m.ram_source = system_memory()
    platforms = env.get("JAX_PLATFORMS", env.get("JAX_PLATFORM_NAME", "")).lower()
    if platforms and "cuda" not in platforms and "gpu" not in platforms:
        m.notes.append(f"JAX_PLATFORMS={platforms}: planning for the CPU")
        return m
    gpus = _nvml_gpus()
    if gpus is None:
        gpus = _smi_gpus()
    if not gpus:
        if gpus is None:
            m.notes.append("no NVIDIA driver tools found (nvidia-smi, NVML): planning for the CPU")
        return m
    gpus, note = _visible(gpus, env)
    if note:
        m.notes.append(note)
    if not gpus:
        return m
    m.gpus = gpus
    if jax_has_cuda():
        m.backend = "gpu"
    else:
        m.notes.append(f"{len(gpus)} GPU(s) found, but this JAX has no CUDA plugin: it runs on the CPU")
    return m


# --------------------------------------------------------------------------- budget
def _own_rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def budget(machine: Machine, vram_budget_gb="auto") -> tuple[float, str]:
    """Bytes a fit may use, and where the number comes from.

    GPU: the manifest's ``vram_budget_gb`` (at most the GPU's total), or what is free on
    it now (``auto``); the job uses the first visible GPU. CPU: what the system (or the
    container's limit) has available plus what this process holds already, or the
    manifest's number if that is smaller (on a CPU the budget bounds system memory).
    """
    if machine.backend == "gpu":
        g = machine.gpus[0]
        if vram_budget_gb == "auto":
            return float(g.free), f"free on GPU {g.index} ({g.name}, {memory.gib(g.total)} total; {g.source})"
        b = min(float(vram_budget_gb) * GiB, float(g.total))
        return b, f"resources.vram_budget_gb on GPU {g.index} ({g.name}, {memory.gib(g.total)} total)"
    avail = float(machine.ram_available + _own_rss())
    what = f"available system memory ({machine.ram_source})"
    if vram_budget_gb != "auto" and float(vram_budget_gb) * GiB < avail:
        return float(vram_budget_gb) * GiB, "resources.vram_budget_gb (bounding system memory on this CPU)"
    return avail, what


def prepare_environment(m: dict, env=None) -> dict:
    """Set JAX's GPU memory fraction from the budget; call before anything imports JAX.

    Returns what it decided ({"backend", "budget_bytes", "budget_source", "set": {...}}),
    also kept in ``KPMS_JOB_BUDGET`` for the planner of this process and its restarts.
    A variable the user set already (XLA_PYTHON_CLIENT_*) is left alone.
    """
    env = os.environ if env is None else env
    machine = detect(env)
    res = (m.get("resources") or {})
    b, source = budget(machine, res.get("vram_budget_gb", "auto"))
    out = {"backend": machine.backend, "budget_bytes": int(b), "budget_source": source, "set": {},
           "notes": machine.notes}
    if machine.backend == "gpu":
        g = machine.gpus[0]
        out["device"] = g.name
        out["device_total_bytes"] = g.total
        user = [k for k in JAX_MEMORY_VARS if k in env]
        if user:
            out["notes"] = [*machine.notes, "JAX memory set by the user: " + ", ".join(f"{k}={env[k]}" for k in user)]
        else:
            pool = max(0.0, b - memory.GPU_CONTEXT_BYTES)
            fraction = min(0.95, max(0.05, pool / g.total))
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
            out["set"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
            log.info("GPU %s: %s budget (%s); JAX may take %.1f%% of it", g.index, memory.gib(b), source,
                     100 * fraction)
    env["KPMS_JOB_BUDGET"] = json.dumps(out)
    return out


# --------------------------------------------------------------------------- the plan
def shape_from_state(m: dict, state) -> memory.Shape | None:
    """The fit's sizes from the ingest and PCA records (None before ingest has run)."""
    ing = (state.stage("ingest") or {}).get("info") or {}
    if not ing.get("used"):
        return None
    lengths = tuple(int(ing["recordings"][n]["frames"]) for n in ing["used"])
    pca = (state.stage("pca") or {}).get("info") or {}
    k = len(ing.get("use_bodyparts") or ing.get("bodyparts") or [])
    latent = pca.get("latent_dim") or (m.get("pca") or {}).get("latent_dim") or min(10, 2 * (k - 1))
    return memory.Shape(frames=sum(lengths), keypoints=k, latent_dim=int(latent),
                        num_states=int(m["model"]["num_states"]), recordings=lengths)


def _signature(shape: memory.Shape, backend: str, device: str, res: dict) -> str:
    """What out-of-memory attempts are valid for: the sizes, the device and the budget setting.

    The measured budget is left out on purpose: free memory differs from one process to
    the next, and a restart must see the attempts of the process before it.
    """
    from .state import fingerprint

    return fingerprint(shape.recordings, shape.keypoints, shape.latent_dim, shape.num_states, backend, device,
                       res.get("vram_budget_gb", "auto"), res.get("parallel_message_passing", "auto"),
                       res.get("mixed_map_iters", "auto"))


def _jax_budget(backend: str, prepared: dict, res: dict) -> tuple[float, str, str]:
    """(budget bytes, its source, device name) seen from inside JAX."""
    import jax

    dev = jax.devices()[0]
    if backend == "gpu":
        stats = dev.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            used = stats.get("bytes_in_use", 0)
            return float(limit - used), f"JAX's memory pool on {dev.device_kind}", str(dev.device_kind)
        return float(prepared.get("budget_bytes", 0)), prepared.get("budget_source", "?"), str(dev.device_kind)
    b, source = budget(detect(), res.get("vram_budget_gb", "auto"))
    return b, source, "cpu"


def plan_for_context(ctx, patched=None) -> dict:
    """Choose parallel_message_passing and mixed_map_iters for this process (imports JAX).

    ``patched``: the steps whose jax-moseq patch is installed in this process
    (``kpms.patches.active()``); a step without its patch is planned as jax-moseq's own,
    unbatched (:func:`memory.estimate`). None: all of them.
    """
    import jax

    res = ctx.m["resources"]
    backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    prepared = json.loads(os.environ.get("KPMS_JOB_BUDGET", "{}"))
    budget_bytes, source, device = _jax_budget(backend, prepared, res)
    shape = shape_from_state(ctx.m, ctx.state)
    old = ctx.state.get("resources") or {}
    if shape is None:  # no ingest record (a fit run outside the pipeline): keep it simple
        shape = memory.Shape(frames=1, keypoints=4, latent_dim=4, num_states=int(ctx.m["model"]["num_states"]))
    sig = _signature(shape, backend, device, res)
    attempts = [a for a in old.get("attempts", []) if a.get("signature") == sig]
    failed = [a["setting"] for a in attempts if a.get("outcome") == "out of memory"]
    choice = memory.choose(shape, budget_bytes, backend, res["parallel_message_passing"], res["mixed_map_iters"],
                           failed=failed, patched=patched)
    plan = {"backend": jax.default_backend(), **choice.as_dict(), "budget_source": source, "device": device,
            "frames": shape.frames, "padded_frames": shape.padded_frames, "segments": shape.segments,
            "signature": sig, "attempts": attempts, "jax_env": prepared.get("set", {}),
            "patched": sorted(memory.PATCHED_STEPS if patched is None else patched),
            "peak_bytes": old.get("peak_bytes") if old.get("signature") == sig else None,
            "peak_source": old.get("peak_source") if old.get("signature") == sig else None,
            "planned_at": time.time()}
    if failed and choice.skipped and not choice.tried:
        # every rung failed already (a restart that should not have happened): say so and stop
        raise OutOfMemory(_oom_message(plan, shape, budget_bytes))
    if res["parallel_message_passing"] is True and not memory.kalman_scan_allowed(backend):
        log.warning("resources.parallel_message_passing: true is not used on a CPU: the associative scan's "
                    "batched LU calls can deadlock XLA:CPU; the Kalman steps run sequentially")
    log.info("fitting on %s: parallel_message_passing=%s, mixed_map_iters=%d (%s)", plan["backend"],
             choice.setting.parallel_message_passing, choice.setting.mixed_map_iters, choice.reason)
    if not choice.fits:
        log.warning("the memory model estimates that no setting fits the budget of %s (%s); trying the most "
                    "frugal one: %s", memory.gib(budget_bytes), source, choice.reason)
    ctx.state.put("resources", plan)
    _reset_peak()
    return plan


# --------------------------------------------------------------------------- peak memory
def _reset_peak() -> None:
    """Start this process's peak resident memory (VmHWM) from now, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_bytes(backend: str) -> tuple[int | None, str]:
    """The peak memory of this process: device pool peak on a GPU, peak RSS on a CPU."""
    if backend == "gpu":
        try:
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return int(stats["peak_bytes_in_use"]), "GPU peak_bytes_in_use"
        except Exception:  # noqa: BLE001
            pass
        return None, "unknown"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "peak resident memory (VmHWM)"
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak resident memory (maxrss)"


def record_peak(state) -> int | None:
    """Keep the largest peak seen in the state's ``resources`` entry (cheap; no write if unchanged)."""
    plan = state.get("resources")
    if not plan:
        return None
    now, source = peak_bytes("gpu" if plan.get("backend") == "gpu" else "cpu")
    if now is None:
        return None
    if now > (plan.get("peak_bytes") or 0) * 1.01:
        plan = {**plan, "peak_bytes": now, "peak_source": source,
                "peak_vs_estimate": round(now / max(1, plan["estimate_bytes"]["full_model"]), 3)}
        state.put("resources", plan)
    return now


def watch_peak(ctx) -> None:
    """Record the peak memory after every Gibbs iteration, through the runner's stop poll.

    ``run_gibbs`` calls ``should_stop`` (``ctx.stop``) after each iteration: wrapping it
    updates the state's peak there, in the main thread, without a hook in the fit itself.
    """
    if getattr(ctx.stop, "_kpms_peak", False):
        return
    inner = ctx.stop

    def stop():
        record_peak(ctx.state)
        return bool(inner and inner())

    stop._kpms_peak = True
    ctx.stop = stop


# --------------------------------------------------------------------------- out of memory
def _oom_message(plan: dict, shape: memory.Shape, budget_bytes: float) -> str:
    tried = "; ".join(f"{memory.Setting(**a['setting']).label()} ({a.get('stage', '?')})"
                      for a in plan.get("attempts", []) if a.get("outcome") == "out of memory")
    fit_frames = memory.max_frames(shape, budget_bytes, plan.get("backend", "cpu"), patched=plan.get("patched"))
    states = memory.max_states(shape, budget_bytes, plan.get("backend", "cpu"), patched=plan.get("patched"))
    hints = [f"raise resources.vram_budget_gb or run on a machine with more memory (budget was "
             f"{memory.gib(budget_bytes)}, {plan.get('budget_source', '')})"]
    if fit_frames and fit_frames < shape.frames:
        hints.append(f"fit fewer frames per job (the memory model says about {fit_frames:,} fit, "
                     f"this job has {shape.frames:,})")
    if 0 < states < shape.num_states:
        hints.append(f"lower model.num_states (at most about {states} fit)")
    return (f"out of memory after every fallback: tried {tried or 'nothing'}. "
            f"The most frugal setting needs about {memory.gib(plan['estimate_bytes']['full_model'])} by the "
            f"memory model. To fix: " + "; or ".join(hints) + ". Completed iterations are kept in the "
            "checkpoint: rerun the same command after the change to continue.")


def after_out_of_memory(m: dict, state, error: str, stage: str | None) -> dict:
    """Record an out-of-memory error of a fit and choose the setting for the next process.

    Returns the next setting (a dict); raises :class:`OutOfMemory` when the most frugal
    setting ran out of memory too. Settings the memory model says save nothing over the
    failed one, in the fit that failed (the AR-HMM's discrete step is batched by
    ``mixed_map_iters`` but not changed by ``parallel_message_passing``), are skipped;
    the most frugal one is always tried (a fresh process may find memory another process
    has freed meanwhile).
    """
    plan = dict(state.get("resources") or {})
    if not plan:
        raise OutOfMemory(f"out of memory during the {stage or 'fit'} before any memory plan was made: {error}")
    setting = {"parallel_message_passing": bool(plan["parallel_message_passing"]),
               "mixed_map_iters": int(plan["mixed_map_iters"])}
    attempts = list(plan.get("attempts", []))
    attempts.append({"setting": setting, "outcome": "out of memory", "stage": stage, "error": error[:300],
                     "signature": plan.get("signature"), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    plan["attempts"] = attempts
    res = m.get("resources") or {}
    shape = shape_from_state(m, state) or memory.Shape(frames=1)
    backend = "gpu" if plan.get("backend") == "gpu" else "cpu"
    rungs = memory.ladder(backend, shape.segments, res.get("parallel_message_passing", "auto"),
                          res.get("mixed_map_iters", "auto"))
    failed = [memory.Setting(**a["setting"]) for a in attempts if a.get("outcome") == "out of memory"]
    done = [rungs.index(f) for f in failed if f in rungs]
    left = rungs[max(done) + 1:] if done else rungs
    if len(left) > 1:  # skip rungs the model says save nothing over the failed one; keep the last
        fit = "arhmm" if stage == "arhmm" else "full_model"
        patched = plan.get("patched")  # the patches the failed process had installed
        failed_est = memory.estimate(shape, memory.Setting(**setting), fit, backend, patched=patched).total
        saving = [r for r in left[:-1]
                  if memory.estimate(shape, r, fit, backend, patched=patched).total < 0.99 * failed_est]
        left = saving + left[-1:]
    state.put("resources", plan)
    if not left:
        raise OutOfMemory(_oom_message(plan, shape, float(plan.get("budget_bytes", 0))))
    nxt = left[0]
    plan["next"] = nxt.as_dict()
    state.put("resources", plan)
    log.warning("out of memory in the %s with %s (%s); restarting with %s", stage or "fit",
                memory.Setting(**setting).label(), error.splitlines()[0][:200], nxt.label())
    return nxt.as_dict()



"""What this process may use, found without importing JAX: GPUs, system memory, the budget.

:func:`prepare_environment` runs in ``cmd_run`` before anything imports JAX: it finds the
GPUs this process may use (NVML if ``nvidia-ml-py`` is installed, else ``nvidia-smi``;
``CUDA_VISIBLE_DEVICES`` honoured), turns the manifest's ``resources.vram_budget_gb`` into
bytes and sets ``XLA_PYTHON_CLIENT_MEM_FRACTION`` so that JAX takes the budget instead of its
default 75% of the GPU. What to run with that budget is :mod:`.planner`'s decision.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from . import model

log = logging.getLogger("kpms_job")

GiB = model.GiB
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
    kind: str = ""  # the product name alone, as JAX's device_kind has it


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
            out.append(Gpu(str(i), f"{name} {uuid}", int(mem.total), int(mem.free), "NVML", name))
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
                           int(float(parts[4])) << 20, "nvidia-smi", parts[1]))
        except ValueError:
            continue
    return out


def driver_version() -> str | None:
    """The NVIDIA driver's version (NVML, else nvidia-smi); None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - not installed or no driver: ask nvidia-smi
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.strip().splitlines()
    return lines[0].strip() if res.returncode == 0 and lines else None


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
            return float(g.free), f"free on GPU {g.index} ({g.name}, {model.gib(g.total)} total; {g.source})"
        b = min(float(vram_budget_gb) * GiB, float(g.total))
        return b, f"resources.vram_budget_gb on GPU {g.index} ({g.name}, {model.gib(g.total)} total)"
    avail = float(machine.ram_available + _own_rss())
    what = f"available system memory ({machine.ram_source})"
    if vram_budget_gb != "auto" and float(vram_budget_gb) * GiB < avail:
        return float(vram_budget_gb) * GiB, "resources.vram_budget_gb (bounding system memory on this CPU)"
    return avail, what


def prepare_environment(m: dict, env=None) -> dict:
    """Set JAX's GPU memory fraction from the budget; call before anything imports JAX.

    Returns what it decided ({"backend", "budget_bytes", "budget_source", "set": {...}}),
    which ``cmd_run`` hands to the stages in the run context (``Context.prepared``) for the
    planner. A variable the user set already (XLA_PYTHON_CLIENT_*) is left alone.
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
            pool = max(0.0, b - model.GPU_CONTEXT_BYTES)
            fraction = min(0.95, max(0.05, pool / g.total))
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
            out["set"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
            log.info("GPU %s: %s budget (%s); JAX may take %.1f%% of it", g.index, model.gib(b), source,
                     100 * fraction)
    return out


# --------------------------------------------------------------------------- peak memory
def reset_peak() -> None:
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

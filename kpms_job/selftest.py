"""``kpms-job selftest``: can this machine (or image) run the job? Versions, the GPU, a tiny fit.

Checks, in order, and prints each: the package versions; the NVIDIA GPUs and driver the host
shows (NVML or nvidia-smi, no JAX); the devices JAX sees, with their memory, and whether its
CUDA plugin loaded; then a real few-iteration fit (the whole pipeline, in a child process) on
30 s of bundled tracking data (kpms_job/selftest_data, MIT) in a temporary folder.

The GPU is required when this JAX has the CUDA plugin (the CUDA image) or with
``--require-gpu``: then a missing or unusable GPU fails the test with the reason and what to
do. With a CPU-only JAX (``JAX=cpu`` image, a laptop) the fit runs on the CPU, as the job would.
Exit 0 when every check passes, 78 otherwise (the machine cannot run the job as it is).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .errors import EXIT_SELFTEST
from .resources import machine as M

MIN_DRIVER = "525.60.13"  # CUDA 12's minor-version compatibility baseline (Linux), as JAX's install guide says
DATA = Path(__file__).resolve().parent / "selftest_data" / "openfield_first900.csv"


def _version_tuple(v: str) -> tuple:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def _say(ok: bool | None, what: str) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "info"}[ok]
    print(f"  [{mark}] {what}", flush=True)


def manifest(folder: Path) -> Path:
    """A tiny manifest for the bundled data: a few iterations of each fit, no figures."""
    m = {"project_dir": str(folder / "project"),
         "inputs": {"format": "deeplabcut", "paths": [str(DATA)]},
         "bodyparts": {"anterior": ["snout"], "posterior": ["tailbase"]},
         "fps": 30, "model": {"num_states": 10, "kappa": 1e4, "seed": 0}, "tuning": "off",
         "fitting": {"arhmm_iters": 3, "full_iters": 3, "save_every": 3},
         "outputs": {"csv": True, "figures": False, "grid_movies": False, "nwb": False}}
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(m))
    return path


def _jax_devices() -> tuple[str, list[dict], str | None]:
    """(default backend, devices with memory, error) as JAX sees them, in a child process: a
    CUDA plugin that fails to load must not take this process with it."""
    code = ("import json, jax\n"
            "out = []\n"
            "for d in jax.devices():\n"
            "    try: stats = d.memory_stats() or {}\n"
            "    except Exception: stats = {}\n"
            "    out.append({'device': str(d), 'platform': d.platform, 'kind': d.device_kind,\n"
            "                'memory': stats.get('bytes_limit')})\n"
            "print(json.dumps({'backend': jax.default_backend(), 'devices': out}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return "", [], (res.stderr.strip().splitlines() or ["JAX failed to start"])[-1]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    return found["backend"], found["devices"], None


def run(require_gpu: bool = False, cpu: bool = False) -> int:
    from . import pipeline

    failures: list[str] = []
    print("kpms-job selftest")
    print("versions:")
    for name, v in pipeline.package_versions().items():
        _say(v is not None, f"{name} {v or 'NOT installed'}")
    print(f"  [info] python {sys.version.split()[0]}")
    cuda = M.jax_has_cuda()
    env_cpu = cpu or os.environ.get("JAX_PLATFORMS", "").lower() == "cpu"
    need_gpu = (require_gpu or cuda) and not env_cpu
    print("GPU (as the host shows it):")
    found = M.detect()
    gpus = found.gpus
    driver = M.driver_version()
    for g in gpus:
        _say(None, f"GPU {g.index}: {g.kind or g.name}, {g.total / 2**30:.1f} GiB ({g.source})")
    if driver:
        ok = _version_tuple(driver) >= _version_tuple(MIN_DRIVER)
        _say(ok, f"NVIDIA driver {driver} (the CUDA 12 wheels need {MIN_DRIVER} or newer)")
        if not ok and need_gpu:
            failures.append(f"the NVIDIA driver {driver} is older than {MIN_DRIVER}, the least the CUDA 12 "
                            "libraries in this image run on: update the host's driver")
    elif not gpus:
        _say(None if not need_gpu else False, "no NVIDIA GPU or driver visible (no NVML, no nvidia-smi)")
    for note in found.notes:
        _say(None, note)
    print("JAX:")
    _say(None, f"CUDA plugin {'installed' if cuda else 'not installed (a CPU-only JAX)'}")
    env = dict(os.environ, JAX_PLATFORMS="cpu") if env_cpu else None
    if env_cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    backend, devices, error = _jax_devices()
    if error:
        _say(False, f"JAX did not start: {error}")
        failures.append(f"JAX did not start ({error})")
    for d in devices:
        mem = f", {d['memory'] / 2**30:.1f} GiB" if d.get("memory") else ""
        _say(None, f"{d['device']} ({d['kind']}{mem})")
    on_gpu = any(d["platform"] == "gpu" for d in devices)
    if need_gpu and not error:
        if on_gpu:
            _say(True, "the CUDA plugin loaded: JAX runs on the GPU")
        else:
            why = ("this JAX has the CUDA plugin but sees no GPU" if cuda else
                   "--require-gpu, but this JAX has no CUDA plugin (a CPU-only build)")
            if not cuda:
                hint = ("use the CUDA build: the image built without --build-arg JAX=cpu, or "
                        "pip install the requirements-cuda.lock packages")
            elif not gpus:
                hint = ("start the container with the GPU: docker run --gpus all, apptainer run --nv, or a "
                        "Kubernetes resources.limits nvidia.com/gpu: 1")
            else:
                hint = ("the host shows a GPU but JAX cannot use it: check the driver version above and "
                        "CUDA_VISIBLE_DEVICES")
            _say(False, f"{why}; {hint}")
            failures.append(f"{why}: {hint}")
    elif not error:
        _say(True, f"JAX runs on the {backend.upper()}" + (" (as asked: --cpu)" if env_cpu and cuda else ""))
    print("a real fit (3 + 3 iterations on 900 bundled frames):")
    if failures:
        _say(None, "skipped: the checks above failed")
    else:
        with tempfile.TemporaryDirectory(prefix="kpms-job-selftest-") as tmp:
            t0 = time.monotonic()
            res = subprocess.run([sys.executable, "-m", "kpms_job", "run", str(manifest(Path(tmp)))],
                                 capture_output=True, text=True, env=env, timeout=1800)
            seconds = time.monotonic() - t0
            results = Path(tmp) / "project" / "kpms_job" / "results.h5"
            if res.returncode == 0 and results.is_file():
                _say(True, f"the pipeline ran end to end in {seconds:.0f} s on the {backend.upper()}")
            else:
                tail = "\n".join(res.stderr.strip().splitlines()[-15:])
                _say(False, f"the test fit failed (exit {res.returncode}):\n{tail}")
                failures.append(f"the test fit failed with exit code {res.returncode}")
    if failures:
        print("selftest FAILED:\n" + "\n".join(f"  - {f}" for f in failures), file=sys.stderr)
        return EXIT_SELFTEST
    print("selftest passed")
    return 0

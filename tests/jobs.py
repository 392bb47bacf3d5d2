"""Helpers to write tiny manifests and run the real job in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"


def tiny_manifest(tmp: Path, **overrides) -> Path:
    """The bundled recording (1 x 2330 frames x 4 keypoints, 30 fps) with few iterations."""
    m = {
        "project_dir": "./project",
        "inputs": {"format": "deeplabcut", "paths": [str(EXAMPLE_CSV)]},
        "bodyparts": {"anterior": ["snout"], "posterior": ["tailbase"],
                      "skeleton": [["snout", "tailbase"]]},
        "fps": 30,
        "model": {"num_states": 20, "kappa": 1e4, "seed": 0},
        "tuning": "off",
        "fitting": {"arhmm_iters": 6, "full_iters": 6, "save_every": 2},
        "outputs": {"grid_movies": False, "trajectory_plots": False},  # each costs a figure child
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            m.setdefault(section, {})[field] = value
        else:
            m[section] = value
    path = tmp / "manifest.yml"
    path.write_text(yaml.safe_dump(m))
    return path


def default_signals() -> None:
    """``preexec_fn`` of every job the tests start: TERM and INT at their defaults and not blocked,
    as a shell, slurmstepd or a container runtime starts the job.

    A child inherits its parent's signal mask and ignored signals. The tests that run the job
    in-process install its signal watcher, which blocks TERM and INT in pytest's main thread; a job
    started from there would inherit the block in every thread it ever starts and so pass a
    graceful-stop test that fails in production (it did: a TERM killed the real job with 143 while
    the test's job exited 75).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_job(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    e = dict(os.environ, NO_COLOR="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kpms_job", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=ROOT, preexec_fn=default_signals)


def start_job(*args, env=None) -> subprocess.Popen:
    e = dict(os.environ, NO_COLOR="1")
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "kpms_job", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=e, cwd=ROOT,
                            preexec_fn=default_signals)

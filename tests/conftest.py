"""Shared fixtures of the fast suite: the CLI in-process and in a subprocess, manifests on disk."""

from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "manifest.yml"
SHARED_DATA = ROOT.parent / "shared" / "data"  # real tracking data; absent on a fresh clone
TEST_DATA = Path(__file__).resolve().parent / "data"


# One JAX compile cache for every job the session runs (the job's default is one per project dir):
# the tests fit the same few shapes in hundreds of fresh project dirs, and a tiny job that finds its
# programs compiled takes about 33 s instead of 55 s here. Tests of the cache's own place unset it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kpms-job-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

#: Seconds one test may run before the whole session is stopped (KPMS_TEST_TIMEOUT overrides): a test
#: that hangs (a deadlock in native code, say) would otherwise hold CI until its own limit and print
#: nothing about where. It is well above the slowest test (`pytest --durations=10` lists them).
TEST_TIMEOUT = float(os.environ.get("KPMS_TEST_TIMEOUT", 1200))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Stop the session once a test runs past TEST_TIMEOUT, naming the test and printing every
    thread's stack: a Python timer does it (it runs while the main thread waits in native code),
    after lifting pytest's capture of the terminal; faulthandler's own watchdog, which needs no GIL,
    is the backstop that exits if the timer cannot run."""
    capture = item.config.pluginmanager.getplugin("capturemanager")

    def stop():
        if capture is not None:
            capture.suspend_global_capture(in_=False)
        sys.stderr.write(f"\n{item.nodeid} ran past {TEST_TIMEOUT:.0f} s (KPMS_TEST_TIMEOUT): "
                         "stopping the test session; every thread's stack follows\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(TEST_TIMEOUT, stop)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(TEST_TIMEOUT + 60, exit=True)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _fresh_logger():
    """``main()`` points the kpms_job logger at the sys.stderr of its test; undo that afterwards."""
    yield
    logger = logging.getLogger("kpms_job")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def cli(capsys):
    """Run ``kpms_job.cli.main(args)`` in this process: returns (exit code, stdout, stderr)."""
    from kpms_job.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_cli(*args, cwd=ROOT, timeout=120) -> subprocess.CompletedProcess:
    """``python -m kpms_job.cli ARGS`` in a fresh process (for ``run``: it installs signal handlers)."""
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "kpms_job.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_manifest(folder: Path, content, name: str = "manifest.yml") -> Path:
    """Write a manifest: text as it is, or a dict as YAML (JSON for a .json name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".json"):
        import json

        path.write_text(json.dumps(content))
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def job(tmp_path):
    """A manifest (written to tmp_path) whose one input is a small real file copied beside it.

    Returns the manifest path; the input is ``tmp_path/data/rec1.csv`` (the first 50 frames
    of the bundled DeepLabCut example: 4 keypoints). Nothing heavy runs on it here: the
    tests that use it plan, validate and fingerprint.
    """
    data = tmp_path / "data"
    data.mkdir()
    lines = (ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv").read_text().splitlines()
    (data / "rec1.csv").write_text("\n".join(lines[:53]) + "\n")
    return write_manifest(tmp_path, {
        "project_dir": "./project",
        "inputs": {"format": "deeplabcut", "paths": ["data/*.csv"]},
        "bodyparts": {"anterior": ["snout"], "posterior": ["tailbase"]},
        "fps": 30,
        "tuning": "off",
        "fitting": {"arhmm_iters": 5, "full_iters": 10, "save_every": 5},
    })


def record_all(m: dict) -> None:
    """Record every stage of manifest ``m`` as done, as ``pipeline.run`` does, each with one output file.

    A finished project as far as planning can tell, without running keypoint-moseq.
    """
    from kpms_job import pipeline
    from kpms_job.state import JobState

    project = Path(m["project_dir"])
    state = JobState(project)
    for d in pipeline.decide(m, state):
        out = f"{d.stage.name}.out"
        project.mkdir(parents=True, exist_ok=True)
        (project / out).write_text("done")
        state.record_stage(d.stage.name, d.fingerprint, 0.1, {"outputs": [out], "_parts": d.parts})

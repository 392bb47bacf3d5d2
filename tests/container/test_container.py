"""The real Dockerfile, built and run: what `docker build` / `docker run` would do.

What stands in for what, because this machine (and CI) has no Docker engine and no
container registry, only Debian's and PyPI's package servers:

- ``buildah bud --isolation chroot`` builds the unchanged Dockerfile in place of ``docker build``;
- a local Debian bookworm base made by debootstrap, with Debian's python3 (3.11), stands in for
  the pinned ``python:3.11-slim-bookworm`` base (``--build-arg BASE_IMAGE``,
  deploy/container/local-base.sh);
- CPU JAX stands in for CUDA JAX (``--build-arg JAX=cpu``): there is no GPU;
- ``buildah run --isolation chroot --user UID`` with the image's own ENTRYPOINT stands in for
  ``docker run --user UID -v DATA:/data IMAGE /data/manifest.yml`` (``podman run`` fails here on
  rlimits). It does not remount the root filesystem read-only, so the test checks instead that
  the job, as an arbitrary UID, wrote nothing outside /tmp and the data mount;
- the example manifest with 5+5 iterations and 20 states stands in for the example's 50+100 and
  100 states (the same data, figures and grid movie).

Marked ``container``; skips when buildah, debootstrap or root are missing, except in CI
(CI=true), where .ci/setup-system.sh installs them and a skip would hide a broken image.
Needs the package servers (the build installs from requirements.lock).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/kpms-base:bookworm"
IMAGE = "localhost/kpms-job:cpu-test"
UID = 54321  # not in the image's /etc/passwd: an arbitrary UID, as OpenShift or `docker run --user` give
TIMINGS = ROOT / "build" / "container-test-times.json"


def _missing_prerequisites() -> str | None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        return f"needs {' and '.join(missing)} (sudo .ci/setup-system.sh installs them)"
    if os.geteuid() != 0:
        return "needs root: buildah with --isolation chroot runs as root here"
    return None


def _record(key: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[key] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(data, indent=1) + "\n")


def _sh(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def image() -> dict:
    """Build the Dockerfile (CPU JAX, local bookworm base) once per session; returns its config.

    buildah's layer cache makes a rebuild with an unchanged context take seconds, and the
    debootstrap base is cached in build/, so the minutes are spent once per machine.
    """
    reason = _missing_prerequisites()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the container test, but it {reason}")
        pytest.skip(reason)
    t0 = time.monotonic()
    base = _sh([str(ROOT / "deploy/container/local-base.sh"), BASE], timeout=900, cwd=ROOT)
    assert base.returncode == 0, f"local base image failed:\n{base.stdout}\n{base.stderr}"
    _record("base_image_s", time.monotonic() - t0)

    t0 = time.monotonic()
    build = ["buildah", "bud", "--format", "docker", "--isolation", "chroot", "--layers", "--pull-never",
             "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "JAX=cpu", "-t", IMAGE]
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():  # the host's CAs, for a TLS-inspecting proxy
        build += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    out = _sh([*build, "."], timeout=1800, cwd=ROOT)
    assert out.returncode == 0, f"buildah bud failed:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    _record("image_build_s", time.monotonic() - t0)
    info = json.loads(_sh(["buildah", "inspect", "--type", "image", IMAGE], timeout=60).stdout)
    return info["OCIv1"]["config"]


@pytest.fixture
def container(image):
    """A fresh working container of the image; yields (name, mount point of its root)."""
    name = f"kpms-test-{uuid.uuid4().hex[:8]}"
    made = _sh(["buildah", "from", "--pull-never", "--name", name, IMAGE], timeout=120)
    assert made.returncode == 0, made.stderr
    root = _sh(["buildah", "mount", name], timeout=60).stdout.strip()
    try:
        yield name, Path(root)
    finally:
        _sh(["buildah", "umount", name], timeout=60)
        _sh(["buildah", "rm", name], timeout=120)


def run_in(container_name: str, image_config: dict, *args: str, data: Path | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess:
    """``docker run --user UID [-v data:/data] IMAGE args``: the image's own ENTRYPOINT and args.

    TINI_SUBREAPER: under buildah's chroot isolation tini is not PID 1 (no PID namespace), so
    it registers as a subreaper instead of warning; under Docker or Kubernetes it is PID 1.
    """
    cmd = ["buildah", "run", "--isolation", "chroot", "--user", f"{UID}:{UID}", "--env", "TINI_SUBREAPER=1"]
    if data is not None:
        cmd += ["-v", f"{data}:/data"]
    cmd += [container_name, "--", *image_config["Entrypoint"], *args]
    return _sh(cmd, timeout=timeout)


def fast_example(data: Path) -> Path:
    """The bundled example (2 real recordings, 2 x 5,700 frames x 7 keypoints) with 5+5 iterations,
    20 states and tuning off instead of 50+200, 100 and tuning on (about 2 minutes instead of 5)."""
    m = yaml.safe_load((ROOT / "examples" / "manifest.yml").read_text())
    m["fitting"] = {"arhmm_iters": 5, "full_iters": 5, "save_every": 5}
    m["model"] = {"num_states": 20}
    m["tuning"] = "off"
    m["project_dir"] = "./project"
    shutil.copytree(ROOT / "examples" / "two_mice", data / "two_mice")
    (data / "manifest.yml").write_text(yaml.safe_dump(m, sort_keys=False))
    return data / "manifest.yml"


def files_owned_by(root: Path, uid: int, skip=()) -> list[str]:
    """Paths under ``root`` (not following links, not under the top-level ``skip``) owned by ``uid``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.lstat().st_uid == uid:
                found.append(str(path.relative_to(root)))
    return found


def test_image_runs_as_non_root_under_tini_with_the_manifest_as_its_argument(image):
    assert image["Entrypoint"][0] == "/usr/bin/tini", "tini must be PID 1"
    user = image["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"the image's user must be a non-root UID, got {image['User']!r}"
    labels = image["Labels"]
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"OCI label {key} missing"
    assert labels["kpms-job.jax"] == "cpu" and labels["org.opencontainers.image.base.name"] == BASE
    env = dict(e.split("=", 1) for e in image["Env"])
    assert env["HOME"] == "/tmp"


def test_exit_codes_pass_through_tini(container, image, tmp_path):
    name, _ = container
    version = run_in(name, image, "--version", timeout=300)
    assert version.returncode == 0 and "kpms-job" in version.stdout, version.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.yml").write_text("inputs: {format: nosuchformat, paths: []}\n")
    bad = run_in(name, image, "validate", "/data/bad.yml", data=data, timeout=300)
    assert bad.returncode == 2, f"a manifest error must exit 2 through tini:\n{bad.stdout}\n{bad.stderr}"
    assert "inputs.format" in bad.stderr


def test_selftest_passes_in_the_image_which_holds_no_test_tools(container, image):
    """`kpms-job selftest` in the CPU image: versions, devices and a tiny fit, as a user's first
    check; the image has the runtime lock only, and says which build it is."""
    name, rootfs = container
    out = run_in(name, image, "selftest", timeout=900)
    assert out.returncode == 0, f"selftest failed in the image:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "selftest passed" in out.stdout and "the pipeline ran end to end" in out.stdout
    venv = rootfs / "opt" / "venv"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    tools = [t for t in ("pytest", "_pytest", "hypothesis", "ruff", "selenium", "importlinter", "nwbinspector")
             if (site / t).exists()] + [b for b in ("pytest", "ruff", "hadolint", "lint-imports")
                                         if (venv / "bin" / b).exists()]
    assert not tools, f"test tools in the image: {tools}"
    baked = json.loads((rootfs / "opt" / "kpms-job" / "image.json").read_text())
    assert baked["jax"] == "cpu" and baked["revision"] and baked["image"]


def test_apptainer_runscript_passes_its_arguments_on(container, image):
    """apptainer.def's %runscript, run by /bin/sh in the image as Apptainer runs it."""
    name, _ = container
    text = (ROOT / "apptainer.def").read_text()
    runscript = text.split("%runscript", 1)[1].split("\n%", 1)[0]
    out = _sh(["buildah", "run", "--isolation", "chroot", "--user", f"{UID}:{UID}", name, "--",
               "/bin/sh", "-c", runscript, "runscript", "validate", "--help"], timeout=300)
    assert out.returncode == 0, out.stderr
    assert "check the manifest" in out.stdout


def test_example_job_runs_in_the_image_as_an_arbitrary_uid(container, image, tmp_path):
    name, rootfs = container
    data = tmp_path / "data"
    data.mkdir()
    fast_example(data)
    # the data mount is writable by the job's UID (Kubernetes: fsGroup; Docker: the owner)
    for p in [data, *data.rglob("*")]:
        os.chown(p, UID, UID)

    t0 = time.monotonic()
    out = run_in(name, image, "/data/manifest.yml", data=data, timeout=1200)
    _record("example_job_in_image_s", time.monotonic() - t0)
    (tmp_path / "job.log").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, f"the job failed in the image:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"

    project = data / "project"
    results = project / "kpms_job" / "results.h5"
    assert results.exists(), f"no results.h5; project has {sorted(p.name for p in project.iterdir())}"
    summary = json.loads((project / "summary.json").read_text())
    assert summary["iterations"] == {"arhmm": 5, "full_model": 5}
    assert summary["fitting_settings"]["backend"] == "cpu"
    import h5py

    with h5py.File(results, "r") as h5:
        labels = {rec: h5[rec]["syllable"][()] for rec in h5}
    assert set(labels) == set(summary["recordings"]["used"])
    assert sum(len(v) for v in labels.values()) == summary["frames"]  # every frame of every recording labelled
    assert results.stat().st_uid == UID, "outputs must belong to the job's UID"
    assert list((project / "kpms_job" / "grid_movies").glob("*.webm")), "no grid movie (ffmpeg in the image?)"

    # As an arbitrary UID the job could write only to the data mount and /tmp: nothing else in
    # the image belongs to that UID afterwards (what readOnlyRootFilesystem would enforce).
    written = files_owned_by(rootfs, UID, skip=("tmp", "data"))
    assert written == [], f"the job wrote into the image outside /tmp and /data: {written[:10]}"
    caches = rootfs / "tmp" / f"kpms-job-{UID}"
    assert (caches / "matplotlib").is_dir() and (caches / "numba").is_dir(), "caches must go to /tmp per UID"

    # idempotent in the image too: a second run finds every stage done
    t0 = time.monotonic()
    again = run_in(name, image, "/data/manifest.yml", data=data, timeout=600)
    _record("second_run_in_image_s", time.monotonic() - t0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout

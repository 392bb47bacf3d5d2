"""Restarts without fitting: which task a process runs, the stage graph, and what a change reruns."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpms_job import manifest, pipeline, restarts
from kpms_job.errors import EXIT_BUSY, EXIT_MANIFEST, RestartsPending, UsageError
from kpms_job.state import JobState


def _m(job, n: int) -> dict:
    m = manifest.load(job)
    m["restarts"] = n
    return m


def _record(m: dict, state: JobState) -> None:
    """Record every stage of ``m`` as done, each in the state that owns it, as pipeline.run does."""
    states = pipeline.restart_states(m, state)
    for d in pipeline.decide(m, state, states=states):
        owner = state if d.restart is None else JobState(state.project_dir, restart=d.restart, parent=state)
        out = f"{d.key}.out"
        (state.project_dir / out).write_text("done")
        owner.record_stage(d.stage.name, d.fingerprint, 0.1, {"outputs": [out], "_parts": d.parts})
        if d.restart is not None:
            states[d.restart] = owner


def test_each_restart_has_its_seed_and_name(job):
    m = _m(job, 3)
    assert [restarts.manifest_for(m, i)["model"]["seed"] for i in range(3)] == [0, 1, 2]
    assert [restarts.restart_name(m, i) for i in range(3)] == ["kpms_job-r00", "kpms_job-r01", "kpms_job-r02"]
    assert m["model"]["seed"] == 0 and m["model"]["name"] == "kpms_job"  # the manifest itself is untouched


def test_the_graph_fits_each_restart_then_selects_once(job):
    keys = [d.key for d in pipeline.decide(_m(job, 2), JobState(Path(job).parent / "project"))]
    assert keys == ["ingest", "outliers", "pca", "arhmm@r00", "full_model@r00", "arhmm@r01", "full_model@r01",
                    "select", "reindex", "results", "figures", "analysis", "summary"]
    one = [d.key for d in pipeline.decide(_m(job, 1), JobState(Path(job).parent / "project"))]
    assert one == list(pipeline.ORDER)  # restarts: 1 keeps the single-model graph


def test_one_more_restart_fits_only_that_one_and_selects_again(job):
    project = Path(job).parent / "project"
    project.mkdir()
    state = JobState(project)
    _record(_m(job, 3), state)
    assert not any(d.run for d in pipeline.decide(_m(job, 3), state))
    run = [d.key for d in pipeline.decide(_m(job, 4), state) if d.run]
    assert run == ["arhmm@r03", "full_model@r03", "select", "reindex", "results", "figures", "analysis", "summary"]
    # a change a fit reads refits every restart
    m = _m(job, 3)
    m["model"]["kappa"] = 2e4
    run = {d.key for d in pipeline.decide(m, state) if d.run}
    assert {f"{s}@r{i:02d}" for s in ("arhmm", "full_model") for i in range(3)} <= run


@pytest.mark.parametrize(("task", "env", "expected"), [
    (None, {}, None), ("2", {}, 2), ("select", {}, "select"),
    ("auto", {"JOB_COMPLETION_INDEX": "1"}, 1), ("auto", {"SLURM_ARRAY_TASK_ID": "2"}, 2),
    ("auto", {"JOB_COMPLETION_INDEX": "0", "SLURM_ARRAY_TASK_ID": "2"}, 0),
])
def test_task_is_an_index_select_or_the_array_index(job, task, env, expected):
    assert restarts.parse_task(task, _m(job, 3), env) == expected


@pytest.mark.parametrize(("task", "env", "says"), [
    ("3", {}, "expected a restart index from 0 to 2 (restarts: 3 in the manifest), got 3"),
    ("x", {}, "expected a restart index (0 to 2), select or auto, got 'x'"),
    ("auto", {}, "--task auto reads the task index from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "7"}, "SLURM_ARRAY_TASK_ID=7: expected a restart index from 0 to 2"),
])
def test_a_wrong_task_says_what_was_expected(job, task, env, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        restarts.parse_task(task, _m(job, 3), env)


def test_select_without_restarts_is_a_usage_error(job):
    with pytest.raises(UsageError, match="restarts: 1, so there is nothing to select"):
        restarts.parse_task("select", _m(job, 1), {})


def test_select_waits_for_restarts_others_fit_and_refuses_ones_nobody_fits():
    busy = RestartsPending("/p", [(1, True)])
    assert busy.exit_code == EXIT_BUSY and "r01 are being fitted by other jobs" in str(busy)
    idle = RestartsPending("/p", [(0, False), (2, True)])
    assert idle.exit_code == EXIT_MANIFEST and "r00 are not fitted yet" in str(idle) and "--task 0" in str(idle)


def test_the_selection_rule_is_read_by_select_alone(job):
    project = Path(job).parent / "project"
    project.mkdir()
    state = JobState(project)
    _record(_m(job, 3), state)
    m = _m(job, 3)
    m["restart_selection"] = "eml"
    assert [d.key for d in pipeline.decide(m, state) if d.run] == ["select", "reindex", "results", "figures",
                                                                    "analysis", "summary"]


@pytest.mark.parametrize(("rule", "medians", "expected"), [
    ("eml_in_window", [350, 250, 380], (2, 0)),   # r01 scores best but ended outside the window
    ("eml", [350, 250, 380], (1, 2)),             # whatever the median
    ("eml_in_window", [250, 450, None], (1, 2)),  # none in the window: all compete
    ("eml_in_window", [350, 250, 250], (0, None)),  # one in the window: no runner-up among them
])
def test_select_picks_the_best_eml_among_the_restarts_the_rule_admits(rule, medians, expected):
    from kpms_job.stages.select import pick

    best, runner_up, _ = pick([-10.0, -1.0, -5.0], medians, [300, 400], rule)
    assert (best, runner_up) == expected


def test_a_restart_without_a_finite_score_is_never_selected():
    from kpms_job.stages.select import pick

    assert pick([float("nan"), -3.0], [350, 350], [300, 400], "eml")[0] == 1
    with pytest.raises(RuntimeError, match="no restart has a finite"):
        pick([float("nan")] * 2, [350, 350], [300, 400], "eml")

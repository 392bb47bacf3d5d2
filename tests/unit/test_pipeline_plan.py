"""What a rerun does: the plan (run or skip, and why) on recorded job states, without running a stage."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, record_all, write_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpms_job import inputs, manifest, pipeline
from kpms_job.cli import main
from kpms_job.errors import InputDataError
from kpms_job.state import JobState

# written out, not read from pipeline.STAGES: a stage lost or moved there must fail these tests
ALL = ["ingest", "outliers", "pca", "arhmm", "full_model", "reindex", "results", "figures", "analysis", "summary"]
FROM_FULL_MODEL = {"full_model", "reindex", "results", "figures", "analysis", "summary"}
EXAMPLE_CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"
EXAMPLE_DATA = manifest.read_manifest_file(ROOT / "examples" / "openfield.yml")  # its data/ is EXAMPLE_CSV
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


def plan(m) -> dict:
    """{stage: reason} for the stages that would run."""
    return {d.stage.name: d.reason for d in pipeline.decide(m, JobState(m["project_dir"])) if d.run}


def edit(path: Path, **changes) -> dict:
    """Change ``section__field=value`` in the manifest file and load it again."""
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return manifest.load(path)


@pytest.fixture
def done(job):
    """The ``job`` manifest with every stage recorded as done: (manifest path, loaded manifest)."""
    m = manifest.load(job)
    record_all(m)
    return job, m


def test_a_fresh_project_runs_every_stage_in_order(job):
    decisions = pipeline.decide(manifest.load(job), JobState(job.parent / "project"))
    assert [d.stage.name for d in decisions] == ALL
    assert all(d.run and d.reason == "not done yet" for d in decisions)


def test_a_fully_recorded_state_skips_every_stage(done):
    _, m = done
    decisions = pipeline.decide(m, JobState(m["project_dir"]))
    assert not any(d.run for d in decisions)
    assert all("unchanged" in d.reason for d in decisions)


def test_more_full_iters_reruns_the_full_fit_and_what_follows_only(done):
    path, _ = done
    runs = plan(edit(path, fitting__full_iters=20))
    assert set(runs) == FROM_FULL_MODEL  # not ingest, outliers, pca, arhmm
    assert runs["full_model"] == "its manifest settings changed"
    assert runs["reindex"] == "an earlier stage changed"


@pytest.mark.parametrize("change,first", [
    ({"preprocessing__outlier_scale_factor": 4.0}, "outliers"),
    ({"pca__latent_dim": 3}, "pca"),
    ({"fitting__arhmm_iters": 7}, "arhmm"),
    ({"model__kappa": 123.0}, "arhmm"),
    ({"preprocessing__conf_threshold": 0.2}, "ingest"),
    ({"groups": {"a": ["rec1"]}}, "analysis"),  # the figures draw no group: an edit of them skips figures
])
def test_a_changed_setting_reruns_its_stage_and_everything_after(done, change, first):
    path, _ = done
    runs = plan(edit(path, **change))
    assert set(runs) == set(ALL[ALL.index(first):])
    assert runs[first] == "its manifest settings changed"


def test_equal_values_written_differently_change_nothing(done):
    path, _ = done
    text = path.read_text()
    # reorder sections and spell 30 as 30.0 and 10 as 1e1: the same job
    data = yaml.safe_load(text)
    data = dict(reversed(list(data.items())))
    data["fps"] = 30.0
    path.write_text(yaml.safe_dump(data, sort_keys=False).replace("full_iters: 10", "full_iters: 1e1"))
    assert plan(manifest.load(path)) == {}


def test_touching_an_input_changes_nothing_but_new_content_reruns_from_ingest(done):
    path, m = done
    rec = path.parent / "data" / "rec1.csv"
    later = time.time() + 7200
    os.utime(rec, (later, later))
    assert plan(m) == {}
    rec.write_text(rec.read_text().replace("0.9", "0.8", 1))
    runs = plan(m)
    assert set(runs) == set(ALL)
    assert runs["ingest"] == "input files changed"
    assert runs["pca"] == "an earlier stage changed"


def test_a_new_recording_matching_the_pattern_reruns_from_ingest(done):
    path, m = done
    rec = path.parent / "data" / "rec1.csv"
    (rec.parent / "rec2.csv").write_text(rec.read_text())
    assert plan(m)["ingest"] == "input files changed"


def test_a_missing_output_reruns_that_stage_and_what_follows(done):
    _, m = done
    (Path(m["project_dir"]) / "pca.out").unlink()
    runs = plan(m)
    assert set(runs) == set(ALL[ALL.index("pca"):])
    assert runs["pca"] == "output missing: pca.out"
    assert runs["arhmm"] == "an earlier stage reruns"


def test_other_package_versions_rerun_everything(done, monkeypatch):
    _, m = done
    versions = pipeline.package_versions()
    monkeypatch.setattr(pipeline, "package_versions", lambda: {**versions, "keypoint-moseq": "9.9.9"})
    runs = plan(m)
    assert set(runs) == set(ALL) and runs["ingest"] == "package versions changed"


def test_deciding_imports_neither_jax_nor_keypoint_moseq(job):
    code = textwrap.dedent(f"""
        import sys
        from kpms_job import manifest, pipeline
        from kpms_job.cli import main
        from kpms_job.state import JobState
        m = manifest.load({str(job)!r})
        pipeline.decide(m, JobState(m["project_dir"]))
        assert main(["plan", {str(job)!r}]) == 0
        heavy = ("jax", "jaxlib", "keypoint_moseq", "jax_moseq", "h5py", "matplotlib", "torch", "tensorflow")
        print("HEAVY", sorted(name for name in heavy if name in sys.modules))
    """)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert time.monotonic() - t0 < 10  # a plan answers in about a second, not after a JAX import


# ---------------------------------------------------------------- kpms-job plan
LINE = re.compile(r"^\s+(RUN|skip)\s+(\w+)\s+(.+?)\s{2,}(.+)$")


def _plan_lines(out):
    return [LINE.match(line).groups() for line in out.splitlines() if LINE.match(line)]


def test_plan_on_a_fresh_project_lists_every_stage_and_writes_nothing(cli, job):
    code, out, err = cli("plan", job)
    assert code == 0, err
    lines = _plan_lines(out)
    assert [stage for _, stage, _, _ in lines] == ALL
    assert all(verb == "RUN" and reason == "not done yet" for verb, _, _, reason in lines)
    assert f"{len(ALL)} of {len(ALL)} stages would run" in out
    # the memory plan for the manifest's own data, counted from its files before anything ran
    assert "50 frames in 1 recording(s)" in out and "4 keypoints" in out, out
    assert "sizes counted from the input files before ingest" in out and "chosen: " in out
    assert not (job.parent / "project").exists()  # a dry run


def test_plan_after_a_finished_run_says_nothing_to_do_and_after_an_edit_why(cli, done):
    path, _ = done
    code, out, _ = cli("plan", path)
    assert code == 0
    assert all(verb == "skip" and "unchanged" in reason for verb, _, _, reason in _plan_lines(out))
    assert "nothing to do" in out
    edit(path, fitting__full_iters=99)
    code, out, _ = cli("plan", path)
    verbs = {stage: (verb, reason) for verb, stage, _, reason in _plan_lines(out)}
    assert verbs["arhmm"][0] == "skip" and verbs["ingest"][0] == "skip"
    assert verbs["full_model"] == ("RUN", "its manifest settings changed")
    assert f"{len(FROM_FULL_MODEL)} of {len(ALL)} stages would run" in out


def test_plan_with_a_pattern_that_matches_nothing_exits_3_and_shows_it(cli, tmp_path):
    path = write_manifest(tmp_path, "inputs: {format: deeplabcut, paths: [tracking/*.h5]}\n")
    code, out, err = cli("plan", path)
    assert code == 3
    assert str(tmp_path / "tracking" / "*.h5") in err and "matches no file" in err
    assert "Traceback" not in out + err


# ---------------------------------------------------------------- which files are inputs
def _m(tmp_path, paths, fmt="deeplabcut", project="./project"):
    return manifest.load(write_manifest(tmp_path, {"project_dir": project,
                                                   "inputs": {"format": fmt, "paths": paths}}))


def test_a_file_whose_name_looks_like_a_glob_is_found(tmp_path):
    rec = tmp_path / "mouse[1].csv"
    rec.write_text("x")
    (tmp_path / "mouse1.csv").write_text("x")
    assert inputs.expand(_m(tmp_path, ["mouse[1].csv"])) == [str(rec)]


def test_the_jobs_own_csv_results_are_never_inputs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rec.csv").write_text("x")
    results = tmp_path / "project" / "kpms_job" / "results"
    results.mkdir(parents=True)
    (results / "rec.csv").write_text("syllable")
    assert inputs.expand(_m(tmp_path, ["**/*.csv"])) == [str(tmp_path / "data" / "rec.csv")]
    # project_dir is the manifest's folder: the data still count, the job's folders do not
    qa = tmp_path / "kpms_job" / "results"
    qa.mkdir(parents=True)
    (qa / "rec.csv").write_text("syllable")
    got = inputs.expand(_m(tmp_path, ["**/*.csv"], project="."))
    assert str(tmp_path / "data" / "rec.csv") in got and str(qa / "rec.csv") not in got


def test_a_folder_takes_the_files_of_the_format_inside_it(tmp_path):
    (tmp_path / "data" / "day1").mkdir(parents=True)
    (tmp_path / "data" / "day1" / "a.slp").write_text("x")
    (tmp_path / "data" / "notes.txt").write_text("x")
    assert inputs.expand(_m(tmp_path, ["data"], fmt="sleap")) == [str(tmp_path / "data" / "day1" / "a.slp")]


def test_a_file_of_the_wrong_kind_for_the_format_is_an_input_error(tmp_path):
    (tmp_path / "rec.csv").write_text("x")
    with pytest.raises(InputDataError, match=r"suffix \.nwb .* but got \.csv"):
        inputs.expand(_m(tmp_path, ["rec.csv"], fmt="nwb"))


# ---------------------------------------------------------------- property-based
@st.composite
def odd_but_valid_edits(draw):
    """The example manifest with paths, names and numbers a user might write: valid or not."""
    m = copy.deepcopy(EXAMPLE_DATA)
    text = st.text(alphabet="ab/.*?[]~_- ", min_size=1, max_size=12)
    edits = {
        ("project_dir",): text | st.sampled_from(["/", ".", "..", "~", "data", "./project/"]),
        ("inputs", "paths"): st.lists(text | st.just("data/*.csv"), min_size=1, max_size=3),
        ("inputs", "videos"): text | st.sampled_from([".", "data"]),
        ("model", "name"): text,
        ("fps",): st.floats(allow_nan=False) | st.just("auto"),
        ("bodyparts", "use"): st.lists(st.sampled_from(["snout", "leftear", "tailbase", "x"]), max_size=4),
    }
    for path in draw(st.lists(st.sampled_from(sorted(edits)), min_size=1, max_size=3)):
        parent = m if len(path) == 1 else m[path[0]]
        parent[path[-1]] = draw(edits[path])
    if draw(st.booleans()):  # and sometimes any value for a whole section
        m[draw(st.sampled_from(sorted(m)))] = draw(VALUES)
    return m


@settings(max_examples=60, deadline=None)
@given(odd_but_valid_edits())
def test_plan_on_odd_manifests_exits_0_2_or_3_never_crashes(m):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "job"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "openfield_dlc_inference_example.csv").symlink_to(EXAMPLE_CSV)
        path = folder / "manifest.yml"
        path.write_text(yaml.safe_dump(m, sort_keys=False, allow_unicode=True))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["plan", str(path)])
        text = out.getvalue() + err.getvalue()
        assert code in (0, 2, 3), text
        assert "Traceback" not in text
        assert code == 0 or err.getvalue().startswith("kpms-job: error:")

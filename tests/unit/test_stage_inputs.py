"""Which manifest edits rerun which stages, and which restart a fit from iteration 0.

Each stage module declares the manifest fields its outputs depend on (``READS`` and
``READS_TUNED`` in kpms_job/stages/<stage>.py). These tables pin what the declarations
mean to a user who edits the manifest of a finished job. Pure and fast: ``pipeline.decide``
on recorded states, and the fits' keys taken from the stages' own code with the Gibbs
sampler and keypoint-moseq replaced by stand-ins that stop at the fit.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import yaml
from conftest import record_all

from kpms_job import manifest, pipeline
from kpms_job.fitting import tuned
from kpms_job.stages import arhmm, full_model
from kpms_job.state import JobState

ALL = [s.name for s in pipeline.STAGES]


def after(stage: str) -> set:
    """``stage`` and every stage after it."""
    return set(ALL[ALL.index(stage):])


def edited(path, changes: dict) -> dict:
    """Set ``{"section.field": value}`` (or ``{"section": value}``) in the manifest file; load it."""
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section][name] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return manifest.load(path)


BASES = {"off": {"tuning": "off"}, "tuned": {"tuning": {}}}

# (tuning of the finished job, the edit, the stages a rerun runs)
RERUNS = [
    ("off", {"model.full_kappa": 3e4}, after("full_model")),
    ("off", {"model.kappa": 1e5}, after("arhmm")),
    # the summary judges the median against the window, tuned or not; no fit reruns
    ("off", {"targets.median_duration_ms": [200, 300]}, {"summary"}),
    ("off", {"tuning": {"enabled": False, "full_budget": 2.0, "arhmm_aim": 0.5}}, set()),
    ("off", {"tuning": {}}, after("arhmm")),
    ("off", {"outputs.figures": False}, {"figures", "summary"}),
    ("off", {"outputs.grid_movies": False}, {"figures", "summary"}),
    ("off", {"outputs.csv": False}, {"results", "figures", "analysis", "summary"}),  # the results stage writes the CSVs
    ("off", {"outputs.nwb": True}, {"results", "figures", "analysis", "summary"}),  # ... and the NWB files
    ("off", {"nwb": {"lab": "Example lab"}}, {"results", "figures", "analysis", "summary"}),  # their metadata
    ("off", {"outputs.trajectory_plots": False}, {"figures", "summary"}),
    ("off", {"groups": {"a": ["rec1"]}}, {"analysis", "summary"}),
    ("off", {"syllable_names": {"0": "rear"}}, {"analysis", "summary"}),
    ("off", {"fitting.arhmm_iters": 7}, after("arhmm")),
    ("off", {"fitting.full_iters": 20}, after("full_model")),
    ("off", {"fitting.save_every": 2}, after("arhmm")),
    ("off", {"model.name": "other"}, after("arhmm")),
    ("off", {"model.seed": 3}, set(ALL)),
    ("off", {"model.num_states": 20}, set(ALL)),
    ("off", {"pca.latent_dim": 3}, after("pca")),
    ("off", {"pca.variance_explained": 0.8}, after("pca")),
    ("off", {"preprocessing.outlier_scale_factor": 4.0}, after("outliers")),
    ("off", {"preprocessing.conf_threshold": 0.2}, set(ALL)),
    ("off", {"preprocessing.min_frames": 10}, set(ALL)),
    ("off", {"bodyparts.skeleton": [["snout", "tailbase"]]}, set(ALL)),
    ("off", {"fps": 25}, set(ALL)),
    ("off", {"resources.vram_budget_gb": 4}, set()),
    ("tuned", {"model.full_kappa": 3e4}, after("full_model")),
    ("tuned", {"model.kappa": 1e5}, after("arhmm")),
    ("tuned", {"targets.median_duration_ms": [200, 300]}, after("arhmm")),
    ("tuned", {"tuning.full_budget": 2.0}, after("full_model")),
    ("tuned", {"tuning.full_kappa_ratio": 0.5}, after("full_model")),
    ("tuned", {"tuning.stability_iters": 50}, after("full_model")),
    ("tuned", {"tuning.arhmm_aim": 0.5}, after("arhmm")),
    ("tuned", {"tuning.arhmm_budget": 2.0}, after("arhmm")),
    ("tuned", {"tuning.check_every": 5}, after("arhmm")),
    ("tuned", {"tuning.check_every": 10}, set()),  # the default, written out
    ("tuned", {"tuning.fixed_fraction": 0.5}, after("arhmm")),
    ("tuned", {"fitting.arhmm_iters": 7}, after("arhmm")),
    ("tuned", {"fitting.full_iters": 20}, after("full_model")),
    ("tuned", {"fitting.save_every": 2}, after("arhmm")),
    ("tuned", {"model.name": "other"}, after("arhmm")),
    ("tuned", {"tuning": "off"}, after("arhmm")),
    ("tuned", {"outputs.grid_movies": False}, {"figures", "summary"}),
]


def _row_id(row) -> str:
    base, change, _ = row
    return f"{base}:{','.join(f'{k}={json.dumps(v)}' for k, v in change.items())}"


@pytest.fixture
def finished(job):
    """Load a finished job's manifest with tuning ``base``, and the manifest after ``change``."""

    def make(base: str, change: dict):
        before = edited(job, BASES[base])
        record_all(before)
        return before, edited(job, change)

    return make


def reruns(m: dict) -> set:
    return {d.stage.name for d in pipeline.decide(m, JobState(m["project_dir"])) if d.run}


@pytest.mark.parametrize("row", RERUNS, ids=_row_id)
def test_an_edit_reruns_exactly_the_stages_that_read_it(finished, row):
    base, change, expected = row
    _, m = finished(base, change)
    assert reruns(m) == expected


def test_every_declared_field_is_a_field_of_the_manifest():
    schema = manifest.load_schema()
    tuning = schema["properties"]["tuning"]["oneOf"][1]["properties"]
    for st in pipeline.STAGES:
        for path in st.reads + st.reads_tuned:
            section, _, name = path.partition(".")
            node = tuning if section == "tuning" else schema["properties"][section].get("properties", {})
            assert (name in node) if name else section in schema["properties"], f"{st.name}: {path}"


def _upstream(name: str) -> set:
    deps = set(pipeline.BY_NAME[name].deps)
    return deps.union(*(_upstream(d) for d in deps))


class _StateInMemory(JobState):
    def save(self) -> None:
        pass


def test_each_declared_field_is_pinned_by_a_row_or_read_upstream(job, monkeypatch):
    """Dropping a field from a stage's declaration makes a row of RERUNS fail, unless a stage it
    depends on reads that field too (an edit of it reruns this stage anyway)."""
    schema = manifest.load_schema()
    monkeypatch.setattr(manifest, "load_schema", lambda: schema)
    versions = pipeline.package_versions()
    monkeypatch.setattr(pipeline, "package_versions", lambda: versions)
    original, cases = job.read_text(), []
    for base, change, expected in RERUNS:
        job.write_text(original)
        before = edited(job, BASES[base])
        cases.append((before, edited(job, change), pipeline.input_hashes(before), expected))

    def all_rows_hold() -> bool:
        for before, m, files, expected in cases:
            state = _StateInMemory(job.parent / "nowhere")
            for d in pipeline.decide(before, state, files):
                state.record_stage(d.stage.name, d.fingerprint, 0.1, {"_parts": d.parts})
            if {d.stage.name for d in pipeline.decide(m, state, files) if d.run} != expected:
                return False
        return True

    assert all_rows_hold()
    declared, unpinned = list(pipeline.STAGES), []
    for i, st in enumerate(declared):
        for attr in ("reads", "reads_tuned"):
            read_upstream = {f for d in _upstream(st.name) for f in getattr(pipeline.BY_NAME[d], attr)}
            for f in getattr(st, attr):
                if f in read_upstream or (attr == "reads_tuned" and st.reads_tuned == st.reads):
                    continue
                stages = list(declared)
                stages[i] = dataclasses.replace(st, **{attr: tuple(x for x in getattr(st, attr) if x != f)})
                monkeypatch.setattr(pipeline, "STAGES", stages)
                if all_rows_hold():
                    unpinned.append(f"{st.name}.{attr}: {f}")
                monkeypatch.setattr(pipeline, "STAGES", declared)
    # inputs.videos needs video files to edit; every other declared field has a row
    assert unpinned == ["figures.reads: inputs.videos"]


# ---------------------------------------------------------------- which fits start again
class _AtTheFit(Exception):
    pass


def chain_keys(m: dict, monkeypatch) -> dict:
    """{"arhmm": key, "full": key}: what the two fits of manifest ``m`` would run under.

    The stages run as in a job up to the call of ``fit_chain``, which records the key and
    stops. The AR-HMM's result (kappa, iterations), which the full model starts from, is
    made a function of its key, as a real chain's is.
    """
    import kpms_job.kpms

    for part in ("gibbs", "project"):  # no JAX: the stages stop at their fit
        fake = types.ModuleType(f"kpms_job.kpms.{part}")
        monkeypatch.setitem(sys.modules, f"kpms_job.kpms.{part}", fake)
        monkeypatch.setattr(kpms_job.kpms, part, fake, raising=False)
    keys = {}

    def stop_at_fit(chain):
        def fit_chain(ctx, model_name, key, make_model, num_iters, **kwargs):
            keys[chain] = key
            fits = ctx.state.get("fits", {})
            fits[model_name] = key
            ctx.state.put("fits", fits)
            raise _AtTheFit
        return fit_chain

    state = JobState(m["project_dir"])
    ctx = pipeline.Context(m, state)
    ctx.fingerprints = {d.stage.name: d.fingerprint for d in pipeline.decide(m, state, files={"rec1.csv": ["x"]})}
    is_tuned = manifest.tuning_settings(m) is not None
    for chain, module in (("arhmm", arhmm), ("full", full_model)):
        monkeypatch.setattr(tuned if is_tuned else module, "fit_chain", stop_at_fit(chain))
        with pytest.raises(_AtTheFit):
            module.run(ctx)
        if chain == "arhmm":
            iters = m["fitting"]["arhmm_iters"]
            state.record_stage("arhmm", ctx.fingerprints["arhmm"], 0.1, {
                "kappa": float(int(keys["arhmm"][:6], 16)), "median_duration_ms": 250.0,
                "iterations": iters * 2 + int(keys["arhmm"][6], 16) if is_tuned else iters})
    return keys


# (tuning, the edit, the fits that start again from iteration 0)
RESTARTS = [
    ("off", {"model.full_kappa": 3e4}, {"full"}),
    ("off", {"model.kappa": 1e5}, {"arhmm", "full"}),
    ("off", {"model.seed": 3}, {"arhmm", "full"}),
    ("off", {"pca.latent_dim": 3}, {"arhmm", "full"}),
    ("off", {"fitting.arhmm_iters": 7}, {"full"}),  # the AR-HMM continues; the full model starts later on
    ("off", {"fitting.full_iters": 20}, set()),  # continues
    ("off", {"fitting.save_every": 2}, set()),
    ("off", {"targets.median_duration_ms": [200, 300]}, set()),
    ("off", {"tuning": {"enabled": False, "full_budget": 2.0}}, set()),
    ("off", {"outputs.csv": False}, set()),
    ("off", {"resources.vram_budget_gb": 4}, set()),
    ("tuned", {"model.full_kappa": 3e4}, {"full"}),
    ("tuned", {"model.kappa": 1e5}, {"arhmm", "full"}),
    ("tuned", {"targets.median_duration_ms": [200, 300]}, {"arhmm", "full"}),
    ("tuned", {"tuning.full_budget": 2.0}, {"full"}),
    ("tuned", {"tuning.full_kappa_ratio": 0.5}, {"full"}),
    ("tuned", {"tuning.stability_iters": 50}, {"full"}),
    ("tuned", {"tuning.arhmm_aim": 0.5}, {"arhmm", "full"}),
    ("tuned", {"tuning.arhmm_budget": 2.0}, {"arhmm", "full"}),
    ("tuned", {"fitting.arhmm_iters": 7}, {"arhmm", "full"}),  # the tuner's schedule depends on it
    ("tuned", {"fitting.full_iters": 20}, {"full"}),
    ("tuned", {"fitting.save_every": 2}, set()),
    ("tuned", {"outputs.grid_movies": False}, set()),
]


@pytest.mark.parametrize("row", RESTARTS, ids=_row_id)
def test_an_edit_restarts_exactly_the_fits_it_changes(job, monkeypatch, row):
    base, change, expected = row
    before = chain_keys(edited(job, BASES[base]), monkeypatch)
    after_edit = chain_keys(edited(job, change), monkeypatch)
    assert {chain for chain in before if before[chain] != after_edit[chain]} == expected


# ---------------------------------------------------------------- outputs
def test_a_stage_records_its_declared_outputs_and_may_not_report_others(job, monkeypatch):
    m = manifest.load(job)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(job.parent / "jax-cache"))
    for st in pipeline.STAGES:
        monkeypatch.setattr(st.module, "run", lambda ctx: {})
    state = JobState(m["project_dir"])
    pipeline.run(m, state)
    assert state.stage("reindex")["info"]["outputs"] == ["kpms_job/checkpoint.h5"]
    assert state.stage("summary")["info"]["outputs"] == ["summary.json", "summary.md", "report.html"]
    monkeypatch.setattr(pipeline.BY_NAME["results"].module, "run", lambda ctx: {"outputs": ["kpms_job/extra.csv"]})
    state.forget_stage("results")
    with pytest.raises(RuntimeError, match=r"results wrote \['kpms_job/extra.csv'\].*OUTPUTS"):
        pipeline.run(m, state)

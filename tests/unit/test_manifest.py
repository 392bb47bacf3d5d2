"""Manifest validation: every mistake is reported at once, by field path, with exit 2 and no traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLE, write_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpms_job import manifest
from kpms_job.cli import main

MINIMAL = "inputs: {format: deeplabcut, paths: [data/*.csv]}\n"


def test_the_example_manifest_validates(cli):
    code, out, err = cli("validate", EXAMPLE)
    assert code == 0, err
    assert "valid" in out and "deeplabcut" in out
    assert err == ""


# (id, manifest text, what stderr must contain: the field path first)
INVALID = [
    ("typo-top-level", MINIMAL + "fiting: {full_iters: 3}\n", ["fiting:", "did you mean 'fitting'"]),
    ("typo-inputs", "inputs: {fromat: deeplabcut, paths: [a.csv]}\n",
     ["inputs.fromat:", "did you mean 'format'", "inputs.format: required"]),
    ("typo-model", MINIMAL + "model: {num_state: 20}\n", ["model.num_state:", "did you mean 'num_states'"]),
    ("unknown-key-no-close-match", MINIMAL + "colour: blue\n", ["colour:", "allowed keys here"]),
    ("wrong-type", MINIMAL + "fitting: {full_iters: many}\n", ["fitting.full_iters:", "positive integer", '"many"']),
    ("negative", MINIMAL + "fitting: {full_iters: -5}\n", ["fitting.full_iters:", "-5"]),
    ("fraction-for-integer", MINIMAL + "fitting: {save_every: 2.5}\n", ["fitting.save_every:", "2.5"]),
    ("bool-for-integer", MINIMAL + "model: {num_states: true}\n", ["model.num_states:", "true"]),
    ("negative-kappa", MINIMAL + "model: {kappa: -1.0e4}\n", ["model.kappa:", "positive number"]),
    ("nan-kappa", MINIMAL + "model: {kappa: .nan}\n", ["model.kappa:", "finite number"]),
    ("infinite-fps", MINIMAL + "fps: .inf\n", ["fps:", "finite number"]),
    ("out-of-range", MINIMAL + "preprocessing: {conf_threshold: 1.5}\n",
     ["preprocessing.conf_threshold:", "between 0 and 1"]),
    ("bad-enum-format", "inputs: {format: dlc, paths: [a.csv]}\n", ["inputs.format:", "deeplabcut", '"dlc"']),
    ("bad-fps-string", MINIMAL + "fps: 30fps\n", ["fps:", "or auto", '"30fps"']),
    ("zero-fps", MINIMAL + "fps: 0\n", ["fps:", "positive number"]),
    ("fps-exponent-without-digits", MINIMAL + "fps: .e5\n", ["fps:", '".e5"']),  # was exit 2 "not valid JSON"
    ("targets-min-above-max", MINIMAL + "targets: {median_duration_ms: [400, 300]}\n",
     ["targets.median_duration_ms:", "min < max"]),
    ("targets-one-number", MINIMAL + "targets: {median_duration_ms: [300]}\n", ["targets.median_duration_ms:"]),
    ("anterior-equals-posterior", MINIMAL + "bodyparts: {anterior: [nose], posterior: [nose]}\n",
     ["bodyparts.posterior:", "nose"]),
    ("anterior-not-in-use", MINIMAL + "bodyparts: {use: [neck, tail_base], anterior: [nose]}\n",
     ["bodyparts.anterior:", "'nose' is not in bodyparts.use"]),
    ("skeleton-not-in-use", MINIMAL + "bodyparts: {use: [neck, tail_base], skeleton: [[neck, nose]]}\n",
     ["bodyparts.skeleton[0]:", "'nose'"]),
    ("bodypart-twice", MINIMAL + "bodyparts: {use: [nose, neck, nose]}\n", ["bodyparts.use:", "['nose'] listed twice"]),
    ("skeleton-triple", MINIMAL + "bodyparts: {skeleton: [[a, b, c]]}\n", ["bodyparts.skeleton[0]:"]),
    ("section-is-a-list", MINIMAL + "bodyparts: [nose, neck]\n", ["bodyparts:", "section of settings"]),
    ("section-left-empty", MINIMAL + "fitting:\n", ["fitting:", "found null"]),
    ("missing-inputs", "fps: 30\n", ["inputs: required but missing"]),
    ("missing-inputs-paths", "inputs: {format: deeplabcut}\n", ["inputs.paths: required but missing"]),
    ("empty-inputs-paths", "inputs: {format: deeplabcut, paths: []}\n", ["inputs.paths:", "non-empty"]),
    ("paths-item-not-text", "inputs: {format: deeplabcut, paths: [a.csv, 3]}\n", ["inputs.paths[1]:"]),
    ("model-name-with-slash", MINIMAL + "model: {name: my/model}\n", ["model.name:", "letters, digits"]),
    ("tuning-not-off", MINIMAL + "tuning: maybe\n", ["tuning:", '"maybe"']),
    ("tuning-typo", MINIMAL + "tuning: {enabeld: true}\n", ["tuning.enabeld:", "did you mean 'enabled'"]),
    ("noise-calibration-half", MINIMAL + "preprocessing: {noise_calibration: {slope: 1.0}}\n",
     ["preprocessing.noise_calibration.intercept: required"]),
    ("vram-negative", MINIMAL + "resources: {vram_budget_gb: -2}\n", ["resources.vram_budget_gb:"]),
    ("outputs-not-bool", MINIMAL + "outputs: {csv: sometimes}\n", ["outputs.csv:", "true or false"]),
    ("number-key", MINIMAL + "1: 2\n", ["unknown key '1'"]),  # crashed with exit 1 before
    ("duplicate-key", MINIMAL + "fps: 30\nfps: 25\n", ["line 3", "'fps' appears twice"]),
    ("top-level-list", "- inputs\n- fps\n", ["(top level):", "mapping of sections"]),
    ("top-level-text", "just some words\n", ["(top level):"]),
    ("empty-file", "", ["manifest.yml is empty"]),
    ("only-comments", "# inputs: later\n", ["manifest.yml is empty"]),
    ("yaml-syntax", "inputs: {format: deeplabcut, paths: [a.csv]\nfps: 30\n", ["manifest.yml, line", "not valid YAML"]),
    ("yaml-tabs", "inputs:\n\tformat: deeplabcut\n", ["line 2", "spaces, not tabs"]),
    ("yaml-python-tag", "inputs: !!python/object/apply:os.system [echo hi]\n", ["not valid YAML"]),
    ("not-utf8", b"inputs: {format: \xff\xfe}\n", ["cannot read"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_manifest_exits_2_with_the_field_path(cli, tmp_path, text, expected):
    path = write_manifest(tmp_path, text)
    code, out, err = cli("validate", path)
    assert code == 2, (out, err)
    assert err.startswith("kpms-job: error:")
    for piece in expected:
        assert piece in err, f"{piece!r} not in:\n{err}"
    assert "Traceback" not in out + err
    assert not (tmp_path / "project").exists()


@pytest.mark.parametrize("args", [["run"], []], ids=["run", "bare-manifest-means-run"])
@pytest.mark.parametrize("case", ["typo-top-level", "bad-fps-string", "yaml-syntax"])
def test_run_rejects_an_invalid_manifest_before_touching_anything(cli, tmp_path, args, case):
    text, expected = next(c[1:] for c in INVALID if c[0] == case)
    path = write_manifest(tmp_path, text)
    code, out, err = cli(*args, path)
    assert code == 2
    assert expected[0] in err and "Traceback" not in out + err
    assert not (tmp_path / "project").exists()


def test_three_mistakes_give_three_messages_in_one_round(cli, tmp_path):
    path = write_manifest(tmp_path, "inputs: {format: dlc, paths: [a.csv]}\nfitting: {full_iters: -1}\n"
                                    "fps: fast\ntargets: {median_duration_ms: [400, 300]}\n")
    code, _, err = cli("validate", path)
    assert code == 2
    assert "4 problems" in err
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    # a schema mistake does not hide the min/max check: all four in one round
    assert [line.split(":")[0][4:] for line in lines] == [
        "fitting.full_iters", "fps", "inputs.format", "targets.median_duration_ms"]


def test_debug_shows_the_traceback(cli, tmp_path):
    path = write_manifest(tmp_path, MINIMAL + "fps: fast\n")
    code, _, err = cli("validate", path, "--debug")
    assert code == 2 and "Traceback" in err and "fps:" in err


def test_a_json_manifest_works_too(cli, tmp_path):
    good = write_manifest(tmp_path, {"inputs": {"format": "sleap", "paths": ["*.slp"]}, "fps": 25}, "m.json")
    code, out, err = cli("validate", good)
    assert code == 0, err
    assert "format sleap" in out
    bad = write_manifest(tmp_path, {"inputs": {"format": "sleap", "paths": ["*.slp"]},
                                    "fitting": {"full_iters": 0}}, "bad.json")
    code, _, err = cli("validate", bad)
    assert code == 2 and "fitting.full_iters:" in err
    broken = write_manifest(tmp_path, '{"inputs": {"format": "sleap",', "broken.json")
    code, _, err = cli("validate", broken)
    assert code == 2 and "broken.json, line 1" in err and "not valid JSON" in err
    twice = write_manifest(tmp_path, '{"fps": 30, "fps": 25, "inputs": {"format": "sleap", "paths": "a"}}',
                           "twice.json")
    code, _, err = cli("validate", twice)
    assert code == 2 and "'fps' appears twice" in err


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    path = write_manifest(tmp_path, MINIMAL + "model: {kappa: 1e6, full_kappa: 2.5E+4}\n"
                                              "fitting: {full_iters: 1e3, arhmm_iters: 50.0}\n")
    m = manifest.load(path)
    assert m["model"]["kappa"] == 1e6 and isinstance(m["model"]["kappa"], float)
    assert m["model"]["full_kappa"] == 2.5e4
    # integer fields reach the pipeline as int (range(1e3) would fail when the fit starts)
    assert m["fitting"]["full_iters"] == 1000 and type(m["fitting"]["full_iters"]) is int
    assert type(m["fitting"]["arhmm_iters"]) is int


@pytest.mark.parametrize("value", ["off", "false"])
def test_tuning_off_turns_tuning_off(tmp_path, value):
    m = manifest.load(write_manifest(tmp_path, MINIMAL + f"tuning: {value}\n"))
    assert manifest.tuning_settings(m) is None
    on = manifest.load(write_manifest(tmp_path, MINIMAL, "on.yml"))
    assert manifest.tuning_settings(on) is not None


def test_defaults_are_filled_in(tmp_path):
    m = manifest.load(write_manifest(tmp_path, MINIMAL))
    assert m["fps"] == "auto"
    assert m["fitting"] == {"arhmm_iters": 50, "full_iters": 200, "save_every": 25}
    assert m["targets"]["median_duration_ms"] == [300, 400]
    assert m["bodyparts"]["use"] is None and m["model"]["name"] == "kpms_job"


def test_relative_paths_resolve_against_the_manifest_folder_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "experiment"
    write_manifest(folder, "project_dir: out/project\n"
                           "inputs: {format: deeplabcut, paths: [tracking/*.h5, /abs/x.h5], videos: vids}\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    m = manifest.load(Path("../../experiment/manifest.yml"))
    assert m["project_dir"] == str(folder.resolve() / "out" / "project")
    assert m["inputs"]["paths"] == [str(folder.resolve() / "tracking" / "*.h5"), "/abs/x.h5"]
    assert m["inputs"]["videos"] == str(folder.resolve() / "vids")
    # a single pattern given as text is a list of one
    one = manifest.load(write_manifest(folder, "inputs: {format: nwb, paths: a.nwb}\n", "one.yml"))
    assert one["inputs"]["paths"] == [str(folder.resolve() / "a.nwb")]


def test_unknown_home_folder_is_a_manifest_error(cli, tmp_path):
    path = write_manifest(tmp_path, "project_dir: ~no_such_user_kpms/project\n" + MINIMAL)
    code, out, err = cli("validate", path)
    assert code == 2 and "project_dir:" in err and "Traceback" not in out + err


# ---------------------------------------------------------------- property-based
KEYS = st.sampled_from(["inputs", "format", "paths", "fps", "model", "kappa", "fitting", "full_iters",
                        "bodyparts", "use", "anterior", "posterior", "skeleton", "tuning", "targets",
                        "median_duration_ms", "project_dir", "videos", "name", "pca", "latent_dim"])
SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["auto", "off", "deeplabcut", "1e6", "~x/y", "*.h5"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(KEYS | st.text(max_size=8) | st.integers(-5, 5) | st.booleans(),
                                     inner, max_size=4)),
    max_leaves=20)


def _validate_text(content) -> tuple[int, str, str]:
    """``main(["validate", file])`` on ``content`` in a fresh folder: (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "manifest.yml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(path)])
    return code, out.getvalue(), err.getvalue()


def _check(code, out, err):
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err
    if code == 2:
        assert err.startswith("kpms-job: error:") and "\n  - " in err, err
    else:
        assert "valid" in out


def _dump(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


SETTINGS = settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(VALUES)
def test_any_yaml_structure_gets_exit_0_or_2_with_a_message(value):
    _check(*_validate_text(_dump(value)))


@SETTINGS
@given(st.text(alphabet=string.printable + "äß{}[]:-&*!|>'\"%@`", max_size=120) | st.binary(max_size=60))
def test_any_text_gets_exit_0_or_2_with_a_message(content):
    _check(*_validate_text(content))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


EXAMPLE_DATA = manifest.read_manifest_file(EXAMPLE)
EXAMPLE_PATHS = [p for p in _paths(EXAMPLE_DATA) if p]


@st.composite
def mutated_example(draw):
    """The example manifest with 1-3 random edits: a value replaced, a key dropped or misspelt."""
    m = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent = m
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced it
        if not isinstance(parent, (dict, list)):
            continue  # an earlier edit replaced it with a string, which indexes but cannot be edited
        edit = draw(st.sampled_from(["replace", "drop", "misspell"]))
        if edit == "replace":
            parent[path[-1]] = draw(VALUES)
        elif edit == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif edit == "misspell" and isinstance(parent, dict) and isinstance(path[-1], str):
            key = path[-1]
            parent[key + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(key)
    return m


@SETTINGS
@given(mutated_example())
def test_mutations_of_the_example_get_exit_0_or_2_with_a_message(m):
    code, out, err = _validate_text(_dump(m))
    _check(code, out, err)
    if code == 2:  # every message names where: a field path, or the file's line
        for line in err.splitlines():
            if line.startswith("  - "):
                assert ":" in line


def test_the_example_is_valid_json_too(cli, tmp_path):
    path = write_manifest(tmp_path, json.dumps(EXAMPLE_DATA), "example.json")
    code, _, err = cli("validate", path)
    assert code == 0, err


@SETTINGS
@given(VALUES | mutated_example())
def test_run_on_random_malformed_manifests_exits_2_or_3_never_a_crash(value):
    """`run` validates before any work: exit 2 with a message (3 if the manifest happens to be
    valid and its inputs are missing), never exit 1 or a traceback, and no project dir."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "manifest.yml"
        path.write_text(_dump(value))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", str(path)])
        assert code in (2, 3), (code, err.getvalue())
        assert "Traceback" not in out.getvalue() + err.getvalue()
        assert err.getvalue().startswith("kpms-job: error:")
        assert not (Path(d) / "project").exists()

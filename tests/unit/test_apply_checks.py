"""The apply manifest, the checks against the fitted model, and batch packing (no keypoint-moseq)."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kpms_job.apply import manifest, run, trained
from kpms_job.errors import InputDataError, ManifestError


def write(tmp_path, data, name="apply.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_apply_manifest_defaults_paths_and_name(tmp_path):
    m = manifest.load(write(tmp_path, {"apply": {"project_dir": "proj", "inputs": {
        "format": "deeplabcut", "paths": "new/*.csv"}}}, "sessions.yml"))
    a = m["apply"]
    assert a["project_dir"] == str((tmp_path / "proj").resolve())
    assert a["inputs"]["paths"] == [str(tmp_path / "new/*.csv")] and a["name"] == "sessions"
    assert a["num_iters"] == 500 and a["relabel_training"] is False and m["outputs"]["nwb"] is False


def test_apply_manifest_problems_are_all_named_at_once(tmp_path):
    with pytest.raises(ManifestError) as e:
        manifest.load(write(tmp_path, {"apply": {"project_dir": "p", "inputs": {"format": "dlc", "paths": []},
                                                 "num_itres": 5, "name": "a/b"}}))
    text = str(e.value)
    for part in ("apply.num_itres: unknown key 'num_itres'; did you mean 'num_iters'",
                 "apply.inputs.format", "apply.inputs.paths", "apply.name"):
        assert part in text, text
    assert e.value.exit_code == 2


def test_a_fitting_manifest_given_to_apply_says_so(tmp_path):
    with pytest.raises(ManifestError, match="this is a fitting manifest"):
        manifest.load(write(tmp_path, {"inputs": {"format": "deeplabcut", "paths": ["x.csv"]}, "fps": 30}))


def fitted(**kw):
    base = dict(project_dir=Path("/p"), model_name="m", fps=30.0, bodyparts=["nose", "ear", "tail"],
                use=["nose", "tail"], anterior=["nose"], posterior=["tail"], versions={}, manifest={}, dims=2)
    base.update(kw)
    return trained.Trained(**base)


def test_the_model_s_versions_and_frame_rate_must_be_those_of_the_fit():
    have = trained.installed_versions()
    other = {p: f"{v}.0" for p, v in have.items() if v}
    with pytest.raises(ManifestError) as e:
        trained.check_setup(fitted(versions=other), fps=60)
    text = str(e.value)
    assert "was fitted with keypoint-moseq" in text and "apply.fps: the model was fitted at 30 fps" in text
    trained.check_setup(fitted(versions=have), fps=30.05)  # within half a percent: the same rate


def test_bodyparts_are_matched_by_name_and_missing_ones_named_with_their_roles():
    t = fitted()
    coords = {"r": np.zeros((5, 4, 2))}
    assert trained.match_bodyparts(t, "f.csv", ["tail", "extra", "ear", "nose"], coords) == [3, 2, 0]
    with pytest.raises(InputDataError) as e:
        trained.match_bodyparts(t, "f.csv", ["ear", "tail"], {"r": np.zeros((5, 2, 2))})
    assert "f.csv" in str(e.value) and "lacks nose (used, anterior)" in str(e.value)
    with pytest.raises(InputDataError, match="fitted on 2-D keypoints, but this file has 3-D"):
        trained.match_bodyparts(t, "f.csv", ["nose", "ear", "tail"], {"r": np.zeros((5, 3, 3))})


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), st.integers(1, 5000), min_size=1, max_size=12),
       st.integers(1, 8000), st.data())
def test_a_rerun_after_finished_batches_packs_the_rest_as_before(frames, limit, data):
    batches = run.pack(frames, limit)
    assert sorted(n for b in batches for n in b) == sorted(frames)
    assert all(len(b) == 1 or sum(frames[n] for n in b) <= limit for b in batches)
    k = data.draw(st.integers(0, len(batches)))
    done = {n for b in batches[:k] for n in b}
    assert run.pack({n: f for n, f in frames.items() if n not in done}, limit) == batches[k:]


def test_validate_knows_an_apply_manifest(tmp_path, cli):
    path = write(tmp_path, {"apply": {"project_dir": "p", "inputs": {"format": "sleap", "paths": ["a.slp"]}}})
    code, out, _ = cli("validate", str(path))
    assert code == 0 and "valid apply manifest" in out and "applied/apply/" in out
    bad = write(tmp_path, {"apply": {"project_dir": "p", "inputs": {"format": "sleap", "paths": ["a.slp"]},
                                     "fps": -1}}, "bad.yml")
    code, _, err = cli("validate", str(bad))
    assert code == 2 and "apply.fps" in err

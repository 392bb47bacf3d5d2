"""Groups and syllable names in the manifest: mappings, fnmatch patterns, index CSVs, and the
messages a wrong one gets (kpms_job.groups; no keypoint-moseq)."""

from __future__ import annotations

import pytest
import yaml

from kpms_job import groups, manifest
from kpms_job.errors import EXIT_INPUT, EXIT_MANIFEST, InputDataError, ManifestError

RECORDINGS = ["ctrl1", "ctrl2", "ko1", "ko2", "pilot"]


def test_names_and_patterns_assign_recordings_and_the_rest_is_ungrouped():
    out = groups.assign({"ctrl": ["ctrl*"], "ko": ["ko2", "ko1"]}, RECORDINGS)
    assert out == {"ctrl": ["ctrl1", "ctrl2"], "ko": ["ko1", "ko2"], "ungrouped": ["pilot"]}


def test_every_recording_named_means_no_ungrouped_group():
    assert groups.assign({"a": ["ctrl?"], "b": ["ko[12]", "pilot"]}, RECORDINGS) == {
        "a": ["ctrl1", "ctrl2"], "b": ["ko1", "ko2", "pilot"]}


def test_no_groups_assigns_nothing():
    assert groups.assign(None, RECORDINGS) == {}
    assert groups.assign({}, RECORDINGS) == {}


def test_a_name_with_pattern_characters_that_is_a_recording_is_that_recording():
    assert groups.assign({"a": ["rec[1]"]}, ["rec[1]", "rec1"]) == {"a": ["rec[1]"], "ungrouped": ["rec1"]}


def test_an_unknown_recording_is_named_with_the_known_ones():
    with pytest.raises(InputDataError) as e:
        groups.assign({"ctrl": ["ctrl1", "ctrl9"]}, RECORDINGS)
    text = str(e.value)
    assert "groups.ctrl" in text and "'ctrl9' matches no recording" in text
    assert "ctrl1, ctrl2, ko1, ko2, pilot" in text and "Fix groups" in text
    assert e.value.exit_code == EXIT_INPUT


def test_a_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(InputDataError, match=r"pattern 'wt_\*' matches no recording"):
        groups.assign({"wt": ["wt_*"]}, RECORDINGS)


def test_a_recording_in_two_groups_is_an_error_naming_both():
    with pytest.raises(InputDataError, match=r"'ko1' is in 'ko' and in 'all_k'"):
        groups.assign({"ko": ["ko1"], "all_k": ["k*"]}, RECORDINGS)


def test_index_csv_is_read_like_keypoint_moseqs(tmp_path):
    path = tmp_path / "index.csv"
    path.write_text("name,group,notes\nctrl1, ctrl ,x\n\nko1,ko,\nctrl2,ctrl,\n")
    assert groups.read_index_csv(path) == {"ctrl": ["ctrl1", "ctrl2"], "ko": ["ko1"]}


@pytest.mark.parametrize("text,match", [
    ("name,cohort\nctrl1,a\n", r"expected the columns name, group in .*index.csv, but got name, cohort"),
    ("name,group\nctrl1,\n", r"expected a name and a group on every row"),
    ("name,group\nctrl1,a\nctrl1,b\n", r"'ctrl1' is listed again"),
    ("name,group\n", r"expected at least one row"),
])
def test_a_bad_index_csv_says_what_is_wrong(tmp_path, text, match):
    path = tmp_path / "index.csv"
    path.write_text(text)
    with pytest.raises(InputDataError, match=match):
        groups.read_index_csv(path)


def test_syll_info_csv_gives_the_labels(tmp_path):
    path = tmp_path / "syll_info.csv"
    path.write_text("syllable,label,short_description,movie_path\n0,rear,,\n1,,,\n2,groom,face,x.mp4\n")
    assert groups.read_syll_info(path) == {"0": "rear", "2": "groom"}


def _manifest(tmp_path, **fields):
    data = {"inputs": {"format": "deeplabcut", "paths": ["data/*.csv"]}, "fps": 30, **fields}
    path = tmp_path / "study" / "manifest.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_manifest_reads_a_relative_index_csv_against_its_folder(tmp_path):
    path = _manifest(tmp_path, groups="meta/index.csv", syllable_names={0: "rear", "3": "groom"})
    (path.parent / "meta").mkdir()
    (path.parent / "meta" / "index.csv").write_text("name,group\nctrl1,ctrl\nko1,ko\n")
    m = manifest.load(path)
    assert m["groups"] == {"ctrl": ["ctrl1"], "ko": ["ko1"]}
    assert m["syllable_names"] == {"0": "rear", "3": "groom"}


def test_a_missing_index_csv_is_a_data_error_naming_the_path(tmp_path):
    path = _manifest(tmp_path, groups="index.csv")
    with pytest.raises(InputDataError) as e:
        manifest.load(path)
    assert f"groups: expected a CSV file, but {path.parent / 'index.csv'} does not exist" in str(e.value)


def test_no_groups_and_no_names_by_default(tmp_path):
    m = manifest.load(_manifest(tmp_path))
    assert m["groups"] is None and m["syllable_names"] is None
    assert m["outputs"]["trajectory_plots"] is True


@pytest.mark.parametrize("fields,message", [
    ({"groups": {"ctrl": []}}, "groups.ctrl: expected"),
    ({"groups": ["ctrl1"]}, "groups: expected a mapping group -> [recording names or patterns]"),
    ({"syllable_names": {"x": "rear"}}, "syllable_names: expected a mapping syllable index -> name"),
    ({"syllable_names": {0: "rear", 30: "walk"}, "model": {"num_states": 20}},
     "syllable_names.30: expected a syllable index below model.num_states (20), but got 30"),
    ({"syllable_names": {1: "2.5"}}, "syllable_names.1: expected a name with letters, but got '2.5'"),
])
def test_wrong_groups_or_names_are_manifest_errors(tmp_path, fields, message):
    with pytest.raises(ManifestError) as e:
        manifest.load(_manifest(tmp_path, **fields))
    assert message in str(e.value)
    assert e.value.exit_code == EXIT_MANIFEST

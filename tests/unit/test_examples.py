"""The bundled examples are what the README says: the main one fits with kappa tuning on and the
defaults a user would copy, the quick one and the apply example are valid and find their data."""

from __future__ import annotations

import glob

import yaml
from conftest import ROOT

from kpms_job import manifest
from kpms_job.apply import manifest as apply_manifest

EXAMPLES = ROOT / "examples"


def _files(m: dict) -> list[str]:
    return sorted(f for p in m["inputs"]["paths"] for f in glob.glob(p))


def test_the_main_example_tunes_kappa_with_the_default_iterations_on_its_bundled_recordings():
    raw = yaml.safe_load((EXAMPLES / "manifest.yml").read_text())
    # what a user copies: nothing of the fit set away from its defaults, tuning included
    assert not {"tuning", "fitting", "model", "targets"} & raw.keys(), raw.keys()
    m = manifest.load(EXAMPLES / "manifest.yml")
    assert manifest.tuning_settings(m) is not None
    assert _files(m) == [str(EXAMPLES / "two_mice" / "two_mice.csv")]
    assert (EXAMPLES / "two_mice" / "SOURCE.txt").read_text().count("MIT")


def test_the_quick_example_and_the_apply_example_are_valid_and_find_their_data():
    quick = manifest.load(EXAMPLES / "openfield.yml")
    assert manifest.tuning_settings(quick) is None and _files(quick)
    applied = apply_manifest.load(EXAMPLES / "apply.yml")["apply"]
    assert _files(applied) == [str(EXAMPLES / "two_mice" / "two_mice.csv")]
    # it applies the main example's model
    assert applied["project_dir"] == manifest.load(EXAMPLES / "manifest.yml")["project_dir"]

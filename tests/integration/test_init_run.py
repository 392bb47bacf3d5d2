"""A manifest ``kpms-job init`` wrote for the bundled example runs the whole job as written,
with only the run's size added below it (few iterations, no tuning, no movies)."""

import shutil

import pytest
from jobs import EXAMPLE_CSV, run_job

pytestmark = pytest.mark.slow

SMALL = """
# added by the test: a small run
model: {num_states: 20, kappa: 1.0e4}
tuning: off
fitting: {arhmm_iters: 6, full_iters: 6, save_every: 2}
outputs: {grid_movies: false}
"""


def test_an_init_manifest_runs_to_the_end(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(EXAMPLE_CSV, tmp_path / "data")
    out = tmp_path / "manifest.yml"
    r = run_job("init", tmp_path / "data", "-o", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    # everything below the generated part is commented out: the added keys are its only settings
    out.write_text(text + SMALL)
    r = run_job("run", out)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (tmp_path / "project" / "summary.md").read_text()
    assert "openfield_dlc_inference_example" in summary
    r = run_job("run", out)
    assert r.returncode == 0 and "nothing to do" in r.stdout

"""Bad input and unwritable output: one clear message naming the file, the documented exit
code, never a traceback, and nothing already computed is lost.

The job runs in-process (``cli.main``) so keypoint-moseq is imported once for the module;
only ingest runs for the bad-input cases. Fixtures are small edits of the bundled real
recording (1 x 2330 frames x 4 keypoints).
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from jobs import EXAMPLE_CSV, run_job, tiny_manifest

from kpms_job.cli import main

pytestmark = pytest.mark.slow


def run(manifest, capsys):
    code = main(["run", str(manifest)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def example_df():
    return pd.read_csv(EXAMPLE_CSV, header=[0, 1, 2], index_col=0)


def write_csv(df, path):
    df.to_csv(path)
    return path


def manifest_for(tmp, files, fmt="deeplabcut", **kw):
    m = tiny_manifest(tmp, **kw)
    d = yaml.safe_load(m.read_text())
    d["inputs"] = {"format": fmt, "paths": [str(f) for f in files]}
    m.write_text(yaml.safe_dump(d))
    return m


def test_missing_file(tmp_path, capsys):
    code, err = run(manifest_for(tmp_path, [tmp_path / "nope.csv"]), capsys)
    assert code == 3 and "nope.csv" in err and "matches no file" in err


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "garbage.csv"
    bad.write_bytes(b"\x00\x01\x02 not a csv \xff\xfe")
    code, err = run(manifest_for(tmp_path, [bad]), capsys)
    assert code == 3 and "garbage.csv" in err and "could not be read" in err


def test_truncated_h5(tmp_path, capsys):
    full = tmp_path / "full.h5"
    example_df().to_hdf(full, key="df_with_missing")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(full.read_bytes()[:5000])
    code, err = run(manifest_for(tmp_path, [cut]), capsys)
    assert code == 3 and "cut.h5" in err


def test_wrong_format_string_for_the_files(tmp_path, capsys):
    code, err = run(manifest_for(tmp_path, [EXAMPLE_CSV], fmt="nwb"), capsys)
    assert code == 3 and "openfield_dlc_inference_example.csv" in err and ".nwb" in err
    code, err = run(manifest_for(tmp_path, [EXAMPLE_CSV], fmt="anipose"), capsys)
    assert code == 3 and "openfield_dlc_inference_example.csv" in err


def test_bodyparts_named_in_manifest_but_absent(tmp_path, capsys):
    m = manifest_for(tmp_path, [EXAMPLE_CSV], bodyparts={"use": ["snout", "tailbase", "neck"]})
    code, err = run(m, capsys)
    assert code == 3 and "neck" in err and "openfield_dlc_inference_example.csv" in err


def test_bodyparts_that_differ_between_recordings(tmp_path, capsys):
    df = example_df()
    other = df.drop(columns="rightear", level=1)
    b = write_csv(other, tmp_path / "b.csv")
    code, err = run(manifest_for(tmp_path, [EXAMPLE_CSV, b], bodyparts={}), capsys)
    assert code == 3 and "b.csv" in err and "rightear" in err


def all_nan_csv(tmp_path):
    """The bundled recording with every coordinate missing."""
    df = example_df()
    df.loc[:, [c for c in df.columns if c[2] in ("x", "y")]] = np.nan
    return write_csv(df, tmp_path / "allnan.csv")


def test_all_nan_recording_is_excluded_and_none_left_is_exit_3(tmp_path, capsys):
    f = all_nan_csv(tmp_path)
    code, err = run(manifest_for(tmp_path, [f]), capsys)
    assert code == 3 and "allnan.csv" in err and "max_nan_fraction" in err


def test_all_nan_recording_beside_a_good_one_is_reported_and_the_job_goes_on(tmp_path, capsys):
    f = all_nan_csv(tmp_path)
    from kpms_job import manifest as mf
    from kpms_job import pipeline
    from kpms_job.state import JobState

    m = mf.load(manifest_for(tmp_path, [EXAMPLE_CSV, f]))
    state = JobState(m["project_dir"])
    ctx = pipeline.Context(m, state)
    from kpms_job.stages import ingest

    info = ingest.run(ctx)
    assert info["used"] == ["openfield_dlc_inference_example"]
    assert "allnan" in info["excluded"] and "max_nan_fraction" in info["excluded"]["allnan"]


def test_recording_shorter_than_the_model_can_use(tmp_path, capsys):
    f = write_csv(example_df().iloc[:20], tmp_path / "short.csv")
    code, err = run(manifest_for(tmp_path, [f]), capsys)
    assert code == 3 and "short.csv" in err and "min_frames" in err


def test_non_finite_coordinates(tmp_path, capsys):
    df = example_df()
    df.iloc[10, 0] = np.inf
    f = write_csv(df, tmp_path / "inf.csv")
    code, err = run(manifest_for(tmp_path, [f]), capsys)
    assert code == 3 and "inf.csv" in err and "infinite" in err


def test_anterior_and_posterior_the_same(tmp_path, capsys):
    # named explicitly, this is a contradiction in the manifest itself: exit 2 names the field
    m = manifest_for(tmp_path, [EXAMPLE_CSV], bodyparts={"anterior": ["snout"], "posterior": ["snout"]})
    code, err = run(m, capsys)
    assert code == 2 and "bodyparts" in err and "snout" in err


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_gives_exit_73_and_keeps_finished_stages(tmp_path, small_disk, capsys):
    m = manifest_for(tmp_path, [EXAMPLE_CSV])
    d = yaml.safe_load(m.read_text())
    d["project_dir"] = str(small_disk / "project")
    m.write_text(yaml.safe_dump(d))
    code, err = run(m, capsys)
    assert code == 73, err[-2000:]
    assert "disk is full" in err
    state = json.loads((small_disk / "project" / ".kpms-job" / "state.json").read_text())
    assert "ingest" in state["stages"]  # what finished before the disk filled up is kept


def test_read_only_output_dir_gives_exit_73_and_leaves_state_as_it_was(tmp_path, small_disk, capsys):
    m = manifest_for(tmp_path, [EXAMPLE_CSV])
    d = yaml.safe_load(m.read_text())
    d["project_dir"] = str(small_disk / "project")
    m.write_text(yaml.safe_dump(d))
    run(m, capsys)  # fills what fits
    state_file = small_disk / "project" / ".kpms-job" / "state.json"
    before = state_file.read_text()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code, err = run(m, capsys)
    assert code == 73, err[-2000:]
    assert "not writable" in err
    assert state_file.read_text() == before


def test_nothing_computed_is_lost_when_a_bad_file_appears(tmp_path, capsys):
    """A finished project plus a broken new file: exit 3, the old state and results stay."""
    src = Path(__file__).resolve().parents[1] / "data"
    if not src.exists():
        pytest.skip("no tests/data")
    m = manifest_for(tmp_path, [EXAMPLE_CSV])
    project = tmp_path / "project"
    (project / ".kpms-job").mkdir(parents=True)
    fake_state = {"version": 1, "stages": {"ingest": {"fingerprint": "x", "finished_at": "t", "seconds": 1,
                                                      "info": {}}}, "extra": {}}
    (project / ".kpms-job" / "state.json").write_text(json.dumps(fake_state))
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing useful\n")
    d = yaml.safe_load(m.read_text())
    d["inputs"]["paths"].append(str(bad))
    m.write_text(yaml.safe_dump(d))
    code, err = run(m, capsys)
    assert code == 3 and "bad.csv" in err
    assert json.loads((project / ".kpms-job" / "state.json").read_text()) == fake_state
    shutil.rmtree(project)


def test_h5_error_message_carries_errno():
    # h5py reports the errno only in its message; the pipeline reads it from there
    from kpms_job.pipeline import _as_output_error

    err = _as_output_error(OSError("Unable to create file (errno = 28, error message = 'No space left')"),
                           "results", Path("/p"))
    assert err is not None and err.exit_code == 73
    assert _as_output_error(OSError("something else"), "results", Path("/p")) is None


def test_two_keypoints_fit_with_the_smallest_latent_dim_keypoint_moseq_takes(tmp_path):
    """Two keypoints in 2D leave one pose dimension after alignment; latent_dim 1 made jax-moseq's
    AR-HMM fail with a TypeError (exit 1, real IBL paw data). The job fits with latent_dim 2."""
    manifest = tiny_manifest(tmp_path, bodyparts__use=["snout", "tailbase"], outputs={"grid_movies": False,
                                                                                       "figures": False,
                                                                                       "trajectory_plots": False})
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "project" / "summary.json").read_text())
    assert summary["latent_dim"] == 2

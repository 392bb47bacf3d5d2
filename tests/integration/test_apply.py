"""``kpms-job apply``: a fitted model labels new recordings, in batches, resumably (keypoint-moseq on the CPU).

One tiny fit (the bundled recording, 6 + 6 iterations) is shared by the module; every test applies
it into its own ``applied/<name>/`` folder.
"""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from jobs import EXAMPLE_CSV, ROOT, run_job, tiny_manifest

from kpms_job import runlog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = EXAMPLE_CSV.stem  # the recording's name in the fit
META = {"subject": {"species": "Mus musculus", "sex": "U", "age": "P90D"}, "experimenter": ["Doe, Jane"],
        "institution": "Example", "lab": "Example lab", "experiment_description": "open field",
        "keywords": ["behavior"]}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    out = run_job("run", tiny_manifest(tmp, outputs={"grid_movies": False, "nwb": True}, nwb=META))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "project"


def shifted_copy(folder, name, shift):
    """Another recording: the bundled one circularly shifted by ``shift`` frames, as a DLC csv."""
    lines = EXAMPLE_CSV.read_text().splitlines()
    head, body = lines[:3], lines[3:]
    rows = body[shift:] + body[:shift]
    path = folder / f"{name}.csv"
    path.write_text("\n".join(head + [f"{i},{r.split(',', 1)[1]}" for i, r in enumerate(rows)]) + "\n")
    return path


def apply_manifest(folder, project, paths, fmt="deeplabcut", file="apply.yml", top=None, **apply):
    m = {"apply": {"project_dir": str(project), "inputs": {"format": fmt, "paths": [str(p) for p in paths]},
                   "num_iters": 20, **apply}, **(top or {})}
    path = folder / file
    path.write_text(yaml.safe_dump(m))
    return path


def labels(path):
    with h5py.File(path, "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


def test_relabelling_the_fit_reports_how_well_applied_labels_agree(fitted, tmp_path):
    m = apply_manifest(tmp_path, fitted, [shifted_copy(tmp_path, "later", 700)], relabel_training=True,
                       name="relabel")
    out = run_job("apply", m)
    assert out.returncode == 0, out.stderr[-3000:]
    applied = fitted / "applied" / "relabel"
    s = json.loads((applied / "summary.json").read_text())
    assert set(s["recordings"]) == {NAME, "later"}
    cons = s["consistency"][NAME]
    # the fit's own recording, labelled again by apply_model: most frames keep their fitted label
    # (measured: 0.83 of the frames, NMI 0.53 with 30 iterations on the demo's fit)
    assert cons["frames"] == 2330 and cons["same_label_fraction"] > 0.5 and cons["nmi"] > 0.2, cons
    assert "Consistency with the fit" in (applied / "summary.md").read_text()
    # keypoint-moseq reads the results, in the fit's numbering (reindexed: 0 is the most frequent)
    code = (f"import keypoint_moseq as kpms; r = kpms.load_results(path={str(applied / 'results.h5')!r}); "
            "z = r['later']['syllable']; assert len(z) == 2330; print(sorted(r), int(z.max()))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert got.returncode == 0, got.stderr[-2000:]
    fitted_z = labels(fitted / "kpms_job" / "results.h5")[NAME]
    assert int(got.stdout.split()[-1]) <= 19  # num_states 20
    assert np.bincount(labels(applied / "results.h5")[NAME]).argmax() == np.bincount(fitted_z).argmax()
    for rel in ("results/later.csv", "syllable_frequencies.png", "duration_distribution.png"):
        assert (applied / rel).exists(), rel


def nwb_labels(path, fps=30.0):
    from pynwb import NWBHDF5IO

    from kpms_job.nwb_export import labels_from_bouts

    with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
        f = io.read()
        df = f.processing["behavior"]["syllable_bouts"].to_dataframe()
        frames = len(f.processing["behavior"]["Position"]["centroid"].data)
        return labels_from_bouts(df.start_time, df.stop_time, df.label, fps, frames)


def test_nwb_files_of_the_fit_and_of_an_apply_validate_and_read_back_to_the_labels(fitted, tmp_path):
    from nwbinspector import Importance, inspect_all

    fit_nwb = fitted / "kpms_job" / "nwb" / f"{NAME}.nwb"
    assert np.array_equal(nwb_labels(fit_nwb), labels(fitted / "kpms_job" / "results.h5")[NAME])
    m = apply_manifest(tmp_path, fitted, [shifted_copy(tmp_path, "other", 500)], name="nwb",
                       top={"outputs": {"nwb": True}, "nwb": META})
    assert run_job("apply", m).returncode == 0
    applied = fitted / "applied" / "nwb"
    assert np.array_equal(nwb_labels(applied / "nwb" / "other.nwb"), labels(applied / "results.h5")["other"])
    for folder in (fit_nwb.parent, applied / "nwb"):
        critical = [x for x in inspect_all(str(folder)) if x.importance == Importance.CRITICAL]
        assert not critical, [x.message for x in critical]


def test_rerun_is_a_no_op_and_a_new_file_is_applied_alone(fitted, tmp_path):
    first = shifted_copy(tmp_path, "first", 300)
    m = apply_manifest(tmp_path, fitted, [first], name="grow")
    assert run_job("apply", m).returncode == 0
    res = fitted / "applied" / "grow" / "results.h5"
    before = labels(res)
    again = run_job("apply", m)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr[-2000:]
    assert all(np.array_equal(before[k], v) for k, v in labels(res).items())
    second = shifted_copy(tmp_path, "second", 1200)
    m = apply_manifest(tmp_path, fitted, [first, second], name="grow")
    grown = run_job("apply", m)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "1 done, 1 to apply" in grown.stderr and "batch 1/1: second " in grown.stderr, grown.stderr[-3000:]
    # each apply left its log in its output folder, the newest with this one's lines
    logs = list((res.parent / ".kpms-job" / "logs").glob("*-apply*.log"))
    assert len(logs) == 3 and "INFO batch 1/1: second " in runlog.latest(res.parent).read_text()
    after = labels(res)
    assert set(after) == {"first", "second"} and np.array_equal(after["first"], before["first"])
    m = apply_manifest(tmp_path, fitted, [first, second], name="grow", top={"outputs": {"nwb": True}, "nwb": META})
    more = run_job("apply", m)  # new output settings: the outputs are made again, nothing is applied
    assert more.returncode == 0 and "no recording needed applying" in more.stdout, more.stderr[-2000:]
    assert (res.parent / "nwb" / "second.nwb").exists()
    assert all(np.array_equal(after[k], v) for k, v in labels(res).items())


def test_a_kill_between_batches_loses_only_the_batch_in_flight(fitted, tmp_path):
    files = [shifted_copy(tmp_path, n, s) for n, s in (("a", 100), ("b", 900), ("c", 1700))]
    whole = apply_manifest(tmp_path, fitted, files, name="whole", batch_frames=2330, file="whole.yml")
    assert run_job("apply", whole).returncode == 0
    m = apply_manifest(tmp_path, fitted, files, name="killed", batch_frames=2330)
    killed = run_job("apply", m, env={"KPMS_JOB_FAULT": "kill@apply-batch:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    res = fitted / "applied" / "killed" / "results.h5"
    assert set(labels(res)) == {"a", "b"}  # two batches kept
    rerun = run_job("apply", m)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 done, 1 to apply" in rerun.stderr, rerun.stderr[-2000:]
    want, got = labels(fitted / "applied" / "whole" / "results.h5"), labels(res)
    assert set(got) == {"a", "b", "c"} and all(np.array_equal(want[k], got[k]) for k in want)


def test_recordings_that_do_not_fit_the_model_are_refused_before_any_compute(fitted, tmp_path):
    text = EXAMPLE_CSV.read_text().splitlines()
    text[1] = text[1].replace("snout", "nose")  # the bodyparts row of a DLC csv
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("\n".join(text) + "\n")
    out = run_job("apply", apply_manifest(tmp_path, fitted, [renamed], name="renamed"))
    assert out.returncode == 3, out.stderr[-2000:]
    assert "renamed.csv" in out.stderr and "lacks snout (used, anterior)" in out.stderr, out.stderr[-2000:]
    assert not (fitted / "applied" / "renamed" / "results.h5").exists()
    fast = run_job("apply", apply_manifest(tmp_path, fitted, [EXAMPLE_CSV], name="fast", fps=60))
    assert fast.returncode == 2 and "apply.fps" in fast.stderr and "30 fps" in fast.stderr, fast.stderr[-2000:]
    nowhere = run_job("apply", apply_manifest(tmp_path, tmp_path / "nothing", [EXAMPLE_CSV]))
    assert nowhere.returncode == 2 and "apply.project_dir" in nowhere.stderr, nowhere.stderr[-2000:]

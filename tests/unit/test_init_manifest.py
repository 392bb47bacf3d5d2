"""``kpms-job init``: a manifest that validates, from the bundled example, tests/data and every real
dataset folder in ../shared/data (skipped where that folder is absent, as on a fresh clone)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, SHARED_DATA, TEST_DATA

from kpms_job import init_manifest, manifest

EXAMPLE_CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"


def _init(cli, source, out, *extra):
    code, stdout, err = cli("init", str(source), "-o", str(out), *extra)
    return code, stdout, err


def _flat(text: str) -> str:
    """The manifest's comments as one line (they are wrapped at 100 characters)."""
    return " ".join(line.strip().lstrip("#").strip() for line in text.splitlines())


def _write_video(path, fps, frames=5):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 32))
    for _ in range(frames):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()


def test_bundled_example_proposes_snout_tailbase_deeplabcut_and_marks_fps(cli, tmp_path):
    out = tmp_path / "manifest.yml"
    code, stdout, err = _init(cli, ROOT / "examples" / "data", out)
    assert code == 0, err
    text = out.read_text()
    m = manifest.load(out)  # validates, fills defaults, resolves paths
    assert m["inputs"]["format"] == "deeplabcut"
    assert m["bodyparts"]["use"] == ["snout", "leftear", "rightear", "tailbase"]  # the file's own order
    assert m["bodyparts"]["anterior"] == ["snout"] and m["bodyparts"]["posterior"] == ["tailbase"]
    assert m["inputs"]["paths"] == [str(EXAMPLE_CSV)]
    # examples/data has no video: the rate is keypoint-moseq's default, marked for the user
    assert m["fps"] == 30 and "FIXME: no frame rate found" in text
    assert "FIXME" in stdout and "kpms-job validate" in stdout
    # the defaults are visible as comments, and uncommenting one gives a valid manifest
    assert "#   outlier_scale_factor: 6.0" in text and "#   full_iters: 200" in text
    edited = text.replace("# fitting:\n", "fitting:\n").replace("#   full_iters: 200", "  full_iters: 7")
    (tmp_path / "edited.yml").write_text(edited)
    assert manifest.load(tmp_path / "edited.yml")["fitting"]["full_iters"] == 7


def test_fps_from_a_video_next_to_the_files_and_relative_glob_paths(cli, tmp_path):
    data = tmp_path / "study" / "tracking"
    data.mkdir(parents=True)
    for name in ("mouse1", "mouse2"):
        shutil.copy(EXAMPLE_CSV, data / f"{name}DLC_resnet50_openfield.csv")
        _write_video(data / f"{name}.avi", 25)
    out = tmp_path / "study" / "manifest.yml"
    code, _, err = _init(cli, data, out)
    assert code == 0, err
    raw = yaml.safe_load(out.read_text())
    assert raw["inputs"]["paths"] == ["tracking/*.csv"]  # relative to the manifest
    assert raw["inputs"]["videos"] == "tracking"  # the names match as keypoint-moseq matches them
    assert raw["fps"] == 25
    assert "from the video tracking/mouse" in out.read_text() and "FIXME:" not in out.read_text()
    m = manifest.load(out)
    from kpms_job.inputs import expand

    assert [p.rsplit("/", 1)[1] for p in expand(m)] == ["mouse1DLC_resnet50_openfield.csv",
                                                         "mouse2DLC_resnet50_openfield.csv"]


def test_nan_threshold_leaves_out_near_empty_bodyparts(cli, tmp_path):
    df = pd.read_csv(EXAMPLE_CSV, header=[0, 1, 2], index_col=0)
    n = len(df)
    scorer = df.columns.get_level_values(0)[0]
    df.loc[df.index[: int(0.6 * n)], (scorer, "leftear", "x")] = np.nan   # 60% missing: left out
    df.loc[df.index[: int(0.4 * n)], (scorer, "rightear", "y")] = np.nan  # 40% missing: kept
    (tmp_path / "data").mkdir()
    df.to_csv(tmp_path / "data" / "rec.csv")
    out = tmp_path / "manifest.yml"
    code, _, err = _init(cli, tmp_path / "data", out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["bodyparts"]["use"] == ["snout", "rightear", "tailbase"]
    text = _flat(out.read_text())
    assert "leftear 60.0%" in text and "rightear 40.0%" in text and "Left out: leftear" in text
    assert "at most 50%" in text


@pytest.mark.parametrize("names,anterior,posterior", [
    (["Nose", "EarL", "Tail_Base"], "Nose", "Tail_Base"),
    (["snout", "neck", "tail base"], "snout", "tail base"),
    (["head", "thorax", "TailBase"], "head", "TailBase"),
    (["nose_tip", "spine", "butt"], "nose_tip", "butt"),
    (["Tailroot", "Forehand-Left", "Nose"], "Nose", "Tailroot"),
    (["L1A", "R3B"], None, None),
])
def test_anterior_and_posterior_from_names(names, anterior, posterior):
    assert init_manifest.propose_axis(names, init_manifest.ANTERIOR_NAMES, init_manifest.ANTERIOR_PARTS) == anterior
    assert init_manifest.propose_axis(names, init_manifest.POSTERIOR_NAMES,
                                      init_manifest.POSTERIOR_PARTS) == posterior


def test_no_name_match_leaves_the_default_with_a_check(cli, tmp_path):
    text = EXAMPLE_CSV.read_text().replace("snout", "pointA").replace("tailbase", "pointB")
    (tmp_path / "rec.csv").write_text(text)
    out = tmp_path / "m.yml"
    code, stdout, err = _init(cli, tmp_path / "rec.csv", out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["bodyparts"]["anterior"] is None and m["bodyparts"]["posterior"] is None
    assert "CHECK: no bodypart name says anterior" in out.read_text()
    assert "bodyparts.posterior" in stdout


def test_a_project_dir_and_hidden_folders_in_the_data_folder_are_no_inputs(cli, tmp_path):
    shutil.copy(EXAMPLE_CSV, tmp_path / "rec.csv")
    for folder in ("project/.kpms-job", "project/kpms_job/results", ".ipynb_checkpoints"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(EXAMPLE_CSV, tmp_path / ".ipynb_checkpoints" / "rec-checkpoint.csv")
    shutil.copy(EXAMPLE_CSV, tmp_path / "project" / "kpms_job" / "results" / "rec.csv")
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path, out)
    assert code == 0, err
    assert manifest.load(out)["inputs"]["paths"] == [str(tmp_path / "rec.csv")]
    assert "left out" not in out.read_text()


def test_one_recording_name_in_two_folders_is_a_fixme(cli, tmp_path):
    for folder in ("day1", "day2"):
        (tmp_path / folder).mkdir()
        shutil.copy(EXAMPLE_CSV, tmp_path / folder / "mouse1.csv")
    out = tmp_path / "m.yml"
    code, stdout, err = _init(cli, tmp_path, out)
    assert code == 0, err
    assert "FIXME: files in different folders give the same recording name (mouse1)" in _flat(out.read_text())
    assert "mouse1" in stdout
    manifest.load(out)


def test_many_other_files_are_summarised(cli, tmp_path):
    shutil.copy(EXAMPLE_CSV, tmp_path / "rec.csv")
    for i in range(30):
        (tmp_path / f"notes{i:02d}.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path, out)
    assert code == 0, err
    text = out.read_text()
    assert text.count("  #   - notes") == 20 and "... and 10 more" in text


def test_mixed_formats_take_the_most_files_and_say_so(cli, tmp_path):
    for i in range(2):
        shutil.copy(EXAMPLE_CSV, tmp_path / f"rec{i}.csv")
    shutil.copy(TEST_DATA / "sleap_analysis" / "testDLC_sleap.analysis.h5", tmp_path)
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path, out)
    assert code == 0, err
    text = out.read_text()
    m = manifest.load(out)
    assert m["inputs"]["format"] == "deeplabcut"
    assert yaml.safe_load(text)["inputs"]["paths"] == ["*.csv"]
    assert "CHECK: the folder mixes formats (2 deeplabcut, 1 sleap files)" in text


def test_files_that_only_look_like_a_format_do_not_count_for_it(cli, tmp_path):
    # two DeepLabCut label tables (x, y: no likelihood) look like DeepLabCut output until read; the
    # one Anipose file is then the folder's only recording
    cols = pd.MultiIndex.from_product([["me"], ["nose", "tailbase"], ["x", "y"]],
                                      names=["scorer", "bodyparts", "coords"])
    for i in range(2):
        pd.DataFrame(np.ones((5, 4)), columns=cols).to_hdf(tmp_path / f"CollectedData_{i}.h5", key="df")
    rng = np.random.default_rng(0)
    table = {f"{bp}_{c}": rng.normal(size=100) for bp in ("snout", "tail_base") for c in ("x", "y", "z")}
    table.update({f"{bp}_score": np.ones(100) for bp in ("snout", "tail_base")})
    order = [f"{bp}_{c}" for bp in ("snout", "tail_base") for c in ("x", "y", "z", "score")]
    pd.DataFrame(table)[order].to_csv(tmp_path / "session3d.csv", index=False)
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path, out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["inputs"]["format"] == "anipose" and m["inputs"]["paths"] == [str(tmp_path / "session3d.csv")]
    assert (m["bodyparts"]["anterior"], m["bodyparts"]["posterior"]) == (["snout"], ["tail_base"])
    text = _flat(out.read_text())
    assert "CollectedData_0.h5: a DeepLabCut table with coords ['x', 'y'], expected x, y, likelihood" in text
    assert "mixes formats" not in text


def test_sleap_file_gives_skeleton_and_sleap_format(cli, tmp_path):
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, TEST_DATA / "testDLC_sleap.slp", out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["inputs"]["format"] == "sleap"
    assert len(m["bodyparts"]["use"]) == 14 and m["bodyparts"]["skeleton"]
    assert all(a in m["bodyparts"]["use"] and b in m["bodyparts"]["use"] for a, b in m["bodyparts"]["skeleton"])


def _write_nwb(path, rate=None, timestamps=None):
    """An NWB file with one PoseEstimation (ndx-pose): 3 nodes, a Skeleton with 2 edges, 40 frames."""
    import datetime

    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile("test", "s1", datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    nodes = ["Nose", "Neck", "Tail_Base"]
    skeleton = Skeleton(name="mouse", nodes=nodes, edges=np.array([[0, 1], [1, 2]], dtype="uint8"))
    rng = np.random.default_rng(0)
    series = [PoseEstimationSeries(name=n, data=rng.normal(size=(40, 2)), unit="px", reference_frame="top left",
                                   confidence=np.ones(40), **({"rate": rate} if rate else {"timestamps": timestamps}))
              for n in nodes]
    behavior = nwb.create_processing_module("behavior", "pose")
    behavior.add(Skeletons(skeletons=[skeleton]))
    behavior.add(PoseEstimation(name="pose", pose_estimation_series=series, skeleton=skeleton))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


@pytest.mark.parametrize("timing,fps", [({"rate": 50.0}, 50), ({"timestamps": np.arange(40) / 40.0}, 40)])
def test_nwb_rate_and_skeleton_from_the_file(cli, tmp_path, timing, fps):
    _write_nwb(tmp_path / "rec.nwb", **timing)
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path / "rec.nwb", out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["inputs"]["format"] == "nwb" and m["fps"] == fps
    assert m["bodyparts"]["skeleton"] == [["Nose", "Neck"], ["Neck", "Tail_Base"]]
    assert (m["bodyparts"]["anterior"], m["bodyparts"]["posterior"]) == (["Nose"], ["Tail_Base"])
    assert "from the NWB timing of rec.nwb" in _flat(out.read_text())


def test_nwb_timestamps_in_frame_numbers_are_no_rate(cli, tmp_path):
    # tests/data/nwb/SOURCE.txt: its timestamps are frame numbers (a step of 1, "1 fps")
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, TEST_DATA / "nwb" / "openfield_first300.nwb", out)
    assert code == 0, err
    assert manifest.load(out)["fps"] == 30
    assert "FIXME: no frame rate found" in out.read_text() and "frame numbers" in _flat(out.read_text())


def test_deeplabcut_config_gives_bodyparts_and_skeleton(cli, tmp_path):
    (tmp_path / "videos").mkdir()
    shutil.copy(EXAMPLE_CSV, tmp_path / "videos" / "m1DLC_resnet50.csv")
    cfg = {"Task": "openfield", "multianimalproject": None, "project_path": "/somewhere/else",
           "bodyparts": ["snout", "leftear", "rightear", "tailbase"],
           "skeleton": [["snout", "leftear"], ["snout", "rightear"]]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, tmp_path / "config.yaml", out)
    assert code == 0, err
    m = manifest.load(out)
    assert m["bodyparts"]["skeleton"] == cfg["skeleton"]
    assert yaml.safe_load(out.read_text())["inputs"]["paths"] == ["videos/m1DLC_resnet50.csv"]


def test_refuses_to_overwrite_without_force(cli, tmp_path):
    out = tmp_path / "manifest.yml"
    out.write_text("mine\n")
    code, _, err = _init(cli, EXAMPLE_CSV, out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert out.read_text() == "mine\n"
    code, _, err = _init(cli, EXAMPLE_CSV, out, "--force")
    assert code == 0, err
    manifest.load(out)


def test_a_manifest_that_would_not_validate_is_never_written(cli, tmp_path, monkeypatch):
    real = init_manifest.build
    monkeypatch.setattr(init_manifest, "build", lambda sc, out: (real(sc, out)[0] + "fps: -1\n", []))
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, EXAMPLE_CSV, out)
    assert code == 1 and "does not validate" in err and "fps" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_default_output_is_manifest_yml_in_the_current_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("init", str(EXAMPLE_CSV))
    assert code == 0, err
    assert manifest.load(tmp_path / "manifest.yml")["inputs"]["format"] == "deeplabcut"


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "nope", "no such file or folder"),
    (lambda d: (d / "notes.txt").write_text("hi") and d, "holds no tracking files"),
    (lambda d: (d / "broken.h5").write_bytes(b"not hdf5 at all") and d / "broken.h5", "could not be opened"),
    (lambda d: (d / "bad.csv").write_text("\n".join(EXAMPLE_CSV.read_text().splitlines()[:4] + ["1,a,b,c"]))
     and d / "bad.csv", "could not be read as a deeplabcut tracking file"),
])
def test_bad_sources_exit_3_naming_the_path(cli, tmp_path, make, expected):
    src = make(tmp_path)
    out = tmp_path / "m.yml"
    code, _, err = _init(cli, src, out)
    assert code == 3, err
    assert expected in err and str(src) in err and "Traceback" not in err
    assert not out.exists()


def test_an_unreadable_file_in_a_folder_is_left_out_with_a_check(cli, tmp_path):
    shutil.copy(EXAMPLE_CSV, tmp_path / "good.csv")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    out = tmp_path / "m.yml"
    code, stdout, err = _init(cli, tmp_path, out)
    assert code == 0, err
    assert "CHECK: left out, unreadable:" in out.read_text() and "broken.h5" in stdout
    assert manifest.load(out)["inputs"]["paths"] == [str(tmp_path / "good.csv")]


def test_init_does_not_import_jax(tmp_path):
    code = ("import sys; from kpms_job import init_manifest as i; "
            f"i.write({str(TEST_DATA)!r}, {str(tmp_path / 'm.yml')!r}); "
            "print(sorted(m for m in ('jax', 'keypoint_moseq', 'jax_moseq') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the real datasets
SHARED = sorted(p.name for p in SHARED_DATA.iterdir() if p.is_dir()) if SHARED_DATA.is_dir() else []
NO_LOADER = {"JABS"}  # JABS pose files: keypoint-moseq has no loader for them


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (a fresh clone)")
@pytest.mark.parametrize("folder", SHARED)
def test_every_shared_dataset_folder_gives_a_valid_manifest(cli, tmp_path, folder):
    out = tmp_path / "manifest.yml"
    code, stdout, err = _init(cli, SHARED_DATA / folder, out)
    if folder in NO_LOADER:
        assert code == 3 and "holds no tracking files" in err and "JABS" in err
        return
    assert code == 0, err
    m = manifest.load(out)
    fmt = m["inputs"]["format"]
    assert fmt in init_manifest.PREFERENCE
    from kpms_job.inputs import expand

    assert expand(m)  # every pattern matches a file, of the format's extensions
    use = m["bodyparts"]["use"]
    assert use is None or len(use) >= 2
    for side in ("anterior", "posterior"):
        assert m["bodyparts"][side] is None or set(m["bodyparts"][side]) <= set(use)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (a fresh clone)")
@pytest.mark.parametrize("folder,fmt,fps,anterior,posterior", [
    ("sleap", "sleap", 25, ["head"], ["abdomen"]),      # flies; the video beside the SLEAP file
    ("VAME", "deeplabcut", 25, ["Nose"], ["Tailroot"]),  # 1 csv vs 1 nwb: a tie goes to DeepLabCut
    ("deepof", "deeplabcut", None, ["Nose"], ["Tail_base"]),  # no video matches: the default, FIXME
    ("lightning-pose-eks/data/ibl-paw", "deeplabcut", 60, None, None),  # timestamps .npy: 60 and 150 Hz
])
def test_shared_datasets_details(cli, tmp_path, folder, fmt, fps, anterior, posterior):
    out = tmp_path / "manifest.yml"
    code, _, err = _init(cli, SHARED_DATA / folder, out)
    assert code == 0, err
    m = manifest.load(out)
    assert (m["inputs"]["format"], m["bodyparts"]["anterior"], m["bodyparts"]["posterior"]) == (
        fmt, anterior, posterior)
    text = _flat(out.read_text())
    assert m["fps"] == pytest.approx(fps or 30, abs=0.5)
    assert ("FIXME: no frame rate found" in text) == (fps is None)

"""Real tracking files of every supported kind, loaded the way the ingest stage loads them.

Each test compares what ``kpms_job.kpms.io.load_file`` returns with the file's own values read
independently (pandas for DeepLabCut tables, h5py for SLEAP analysis and NWB files), for
every bodypart: a wrong bodypart order (keypoint-moseq 0.8.1 returns multi-animal bodyparts
as an unordered set) shows up as coordinates under the wrong name. Files in tests/data run
everywhere; the others come from ../shared/data and are skipped where it is absent.
Importing the loaders imports JAX (~6-8 s, once per session).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED_DATA, TEST_DATA, write_manifest

from kpms_job import manifest
from kpms_job.errors import InputDataError

EXAMPLE_CSV = ROOT / "examples" / "data" / "openfield_dlc_inference_example.csv"
MADLC_CSV = ("ethome/e3v813a-20210610T122332-122642DLC_dlcrnetms5_pilot_studySep24shuffle1_100000_el_filtered"
             ".csv")


def shared(rel: str):
    """A file of ../shared/data as a test parameter that is skipped where that folder is absent."""
    return pytest.param(SHARED_DATA / rel, marks=pytest.mark.skipif(
        not (SHARED_DATA / rel).is_file(), reason="../shared/data is absent (a fresh clone)"), id=Path(rel).name)


def local(path: Path):
    return pytest.param(path, id=path.name)


@pytest.fixture(scope="module")
def adapter():
    from types import SimpleNamespace

    from kpms_job.kpms import io, project

    return SimpleNamespace(load_file=io.load_file, format_data=project.format_data)


def read_dlc(path: Path) -> pd.DataFrame:
    """A DeepLabCut table as pandas reads it: columns (scorer, [individuals,] bodyparts, coords)."""
    if path.suffix == ".csv":
        with open(path) as fh:
            rows = 4 if [next(fh) for _ in range(2)][1].startswith("individuals") else 3
        return pd.read_csv(path, header=list(range(rows)), index_col=0)
    return pd.read_hdf(path)


def dlc_values(df: pd.DataFrame, bodypart: str, coord: str, individual: str | None = None) -> np.ndarray:
    sub = df.xs(individual, axis=1, level="individuals") if individual is not None else df
    col = sub.xs(bodypart, axis=1, level="bodyparts").xs(coord, axis=1, level="coords")
    assert col.shape[1] == 1, col.columns
    return col.to_numpy(dtype=float)[:, 0]


def assert_matches_dlc(df, coords, confs, bodyparts, individual=None):
    """Every bodypart's x, y and likelihood equal the file's columns of that name."""
    assert coords.shape == (len(df), len(bodyparts), 2)
    for i, bp in enumerate(bodyparts):
        np.testing.assert_array_equal(coords[:, i, 0], dlc_values(df, bp, "x", individual), err_msg=bp)
        np.testing.assert_array_equal(coords[:, i, 1], dlc_values(df, bp, "y", individual), err_msg=bp)
        np.testing.assert_array_equal(confs[:, i], dlc_values(df, bp, "likelihood", individual), err_msg=bp)


@pytest.mark.parametrize("path", [
    local(EXAMPLE_CSV),
    shared("deepof/testDLC_csv_table.csv"),
    shared("deepof/testDLC_h5_table.h5"),
    shared("VAME/tests_project_sample_data/cropped_video.csv"),
    shared("DeepLabCut/golden_mouseDLC_dlcrnetms5_golden_mouseOct19shuffle1_2000.h5"),
])
def test_single_animal_deeplabcut(adapter, path):
    coords, confs, bodyparts = adapter.load_file(str(path), "deeplabcut", ["single"])
    assert list(coords) == [path.stem]
    df = read_dlc(path)
    assert bodyparts == list(dict.fromkeys(df.columns.get_level_values("bodyparts")))
    assert any(bp.lower() in ("nose", "snout") for bp in bodyparts)
    assert_matches_dlc(df, coords[path.stem], confs[path.stem], bodyparts)


@pytest.mark.parametrize("path", [
    local(TEST_DATA / "testDLC_h5_table_madlc.h5"),
    local(TEST_DATA / "e3v813a_madlc_first100.csv"),
    shared(MADLC_CSV),
])
def test_multi_animal_deeplabcut_takes_the_bodypart_order_from_the_file(adapter, path):
    coords, confs, bodyparts = adapter.load_file(str(path), "deeplabcut", ["single"])
    df = read_dlc(path)
    individuals = list(dict.fromkeys(df.columns.get_level_values("individuals")))
    assert sorted(coords) == sorted(f"{path.stem}_{ind}" for ind in individuals)
    first = df.xs(individuals[0], axis=1, level="individuals")
    assert isinstance(bodyparts, list)
    assert bodyparts == list(dict.fromkeys(first.columns.get_level_values("bodyparts")))
    nose = next(bp for bp in bodyparts if bp.lower() == "nose")
    for ind in individuals:
        name = f"{path.stem}_{ind}"
        i = bodyparts.index(nose)
        np.testing.assert_array_equal(coords[name][:, i, 0], dlc_values(df, nose, "x", ind))
        np.testing.assert_array_equal(coords[name][:, i, 1], dlc_values(df, nose, "y", ind))
        assert_matches_dlc(df, coords[name], confs[name], bodyparts, ind)


def analysis_tracks(path: Path):
    """A SLEAP analysis file read with h5py: tracks (n_tracks, 2, n_nodes, n_frames), node names."""
    with h5py.File(path, "r") as f:
        return f["tracks"][()], [n.decode() for n in f["node_names"][()]]


SLEAP_ANALYSIS = TEST_DATA / "sleap_analysis"
NWB = TEST_DATA / "nwb"
DEEPOF_NODES = ["Nose", "Left_ear", "Right_ear", "Spine_1", "Center", "Spine_2", "Tail_base", "Tail_1",
                "Tail_2", "Tail_tip", "Left_fhip", "Right_fhip", "Left_bhip", "Right_bhip"]


def test_sleap_slp(adapter):
    path = TEST_DATA / "testDLC_sleap.slp"
    coords, confs, bodyparts = adapter.load_file(str(path), "sleap", ["single"])
    assert bodyparts == DEEPOF_NODES
    xy = coords["testDLC_sleap"]
    assert xy.shape == (101, 14, 2) and confs["testDLC_sleap"].shape == (101, 14)
    assert np.isfinite(xy[:, bodyparts.index("Nose")]).mean() > 0.9
    # SLEAP scores are float32; the model needs every array in 64 bits (else init_model refuses)
    data, _ = adapter.format_data(coords, confs, {"bodyparts": bodyparts, "use_bodyparts": bodyparts})
    assert {str(np.asarray(v).dtype) for v in data.values()} == {"float64"}
    tracks, nodes = analysis_tracks(SLEAP_ANALYSIS / "testDLC_sleap.analysis.h5")  # the same predictions
    for i, bp in enumerate(bodyparts):
        np.testing.assert_array_equal(xy[:, i, 0], tracks[0, 0, nodes.index(bp)], err_msg=bp)
        np.testing.assert_array_equal(xy[:, i, 1], tracks[0, 1, nodes.index(bp)], err_msg=bp)


@pytest.mark.parametrize("path", [
    local(SLEAP_ANALYSIS / "testDLC_sleap.analysis.h5"),
    local(SLEAP_ANALYSIS / "flies_first200.analysis.h5"),  # two tracks, no point_scores
    shared("deepof/testDLC_sleap.analysis.h5"),
    shared("sleap/predictions.slp"),  # two flies: one recording per track
])
def test_sleap_matches_the_analysis_tracks(adapter, path):
    coords, confs, bodyparts = adapter.load_file(str(path), "sleap", ["single"])
    analysis = path.with_suffix(".analysis.h5") if path.suffix == ".slp" else path
    tracks, nodes = analysis_tracks(analysis)
    with h5py.File(analysis, "r") as f:
        scores = f["point_scores"][()] if "point_scores" in f else None
    assert sorted(bodyparts) == sorted(nodes)
    names = sorted(coords)
    assert len(names) == tracks.shape[0]
    if len(names) > 1:
        assert names == [f"{path.stem}_track{t}" for t in range(len(names))]
    for t, name in enumerate(names):
        assert coords[name].shape == (tracks.shape[-1], len(nodes), 2)
        for i, bp in enumerate(bodyparts):
            j = nodes.index(bp)
            np.testing.assert_array_equal(coords[name][:, i, 0], tracks[t, 0, j], err_msg=bp)
            np.testing.assert_array_equal(coords[name][:, i, 1], tracks[t, 1, j], err_msg=bp)
            if path.suffix == ".slp":
                continue
            if scores is None:  # an older SLEAP's file: present points count as certain, missing ones not
                present = ~np.isnan(tracks[t, :, j]).any(axis=0)
                np.testing.assert_array_equal(confs[name][:, i], present.astype(float), err_msg=bp)
            else:
                np.testing.assert_array_equal(confs[name][:, i], scores[t, j], err_msg=bp)
    # the fallback is exercised: the cut keeps frames where a fly's point is missing
    if scores is None and path.suffix != ".slp":
        assert any((confs[n] == 0).any() and (confs[n] == 1).any() for n in names)


def nwb_series(path: Path) -> dict:
    """Every PoseEstimationSeries of an NWB file read with h5py: {name: (data, confidence)}."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and obj.attrs.get("neurodata_type") == "PoseEstimationSeries":
                conf = obj["confidence"][()] if "confidence" in obj else None
                out[name.rsplit("/", 1)[-1]] = (obj["data"][()], conf)
        f.visititems(visit)
    return out


@pytest.mark.parametrize("path", [
    local(NWB / "openfield_first300.nwb"),  # ndx-pose 0.1.1: bodyparts in PoseEstimation.nodes
    local(NWB / "openfield_first300_noskeleton.nwb"),  # no nodes, no Skeleton: keypoint-moseq raises
    local(NWB / "0.3.0_poseestimation_one_camera.nwb"),  # ndx-pose 0.3.0: a Skeletons container
    shared("ethome/sample_nwb_.nwb"),
    shared("VAME/tests_project_sample_nwb/cropped_video.nwb"),  # no Skeleton: keypoint-moseq raises
])
def test_nwb(adapter, path):
    coords, confs, bodyparts = adapter.load_file(str(path), "nwb", ["single"])
    series = nwb_series(path)
    assert sorted(bodyparts) == sorted(series) and len(coords) == 1
    xy, conf = coords[path.stem], confs[path.stem]
    for i, bp in enumerate(bodyparts):
        data, confidence = series[bp]
        np.testing.assert_array_equal(xy[:, i], data, err_msg=bp)
        np.testing.assert_array_equal(conf[:, i], np.ones(len(data)) if confidence is None else confidence,
                                      err_msg=bp)


def test_nwb_without_skeleton_reads_the_same_poses_as_with_one(adapter, caplog):
    """The fallback for a PoseEstimation with neither nodes nor a Skeleton: the same series, by name."""
    coords, confs, bodyparts = adapter.load_file(str(NWB / "openfield_first300.nwb"), "nwb", ["single"])
    assert bodyparts == ["ind1_snout", "ind1_leftear", "ind1_rightear", "ind1_tailbase"]  # the nodes' order
    with caplog.at_level("INFO", logger="kpms_job"):
        bare, bare_confs, bare_parts = adapter.load_file(str(NWB / "openfield_first300_noskeleton.nwb"), "nwb",
                                                         ["single"])
    assert "has no Skeleton" in caplog.text  # it went through the fallback, not keypoint-moseq's reader
    assert sorted(bare_parts) == sorted(bodyparts) and list(bare) == ["openfield_first300_noskeleton"]
    xy, conf = coords["openfield_first300"], confs["openfield_first300"]
    bare_xy, bare_conf = bare["openfield_first300_noskeleton"], bare_confs["openfield_first300_noskeleton"]
    assert bare_xy.shape == xy.shape == (300, 4, 2)
    for i, bp in enumerate(bare_parts):
        np.testing.assert_array_equal(bare_xy[:, i], xy[:, bodyparts.index(bp)], err_msg=bp)
        np.testing.assert_array_equal(bare_conf[:, i], conf[:, bodyparts.index(bp)], err_msg=bp)
    assert 0.5 < conf.min() and conf.max() <= 1  # real DeepLabCut likelihoods, not the default of 1
    assert np.isfinite(xy).all() and 0 < xy.min() and xy.max() < 640


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (a fresh clone)")
def test_nwb_without_skeleton_equals_the_same_poses_as_deeplabcut_csv(adapter):
    nwb = SHARED_DATA / "VAME" / "tests_project_sample_nwb" / "cropped_video.nwb"
    csv = SHARED_DATA / "VAME" / "tests_project_sample_data" / "cropped_video.csv"
    coords, _, bodyparts = adapter.load_file(str(nwb), "nwb", ["single"])
    df = read_dlc(csv)
    for i, bp in enumerate(bodyparts):
        np.testing.assert_array_equal(coords["cropped_video"][:, i, 0], dlc_values(df, bp, "x"), err_msg=bp)
        np.testing.assert_array_equal(coords["cropped_video"][:, i, 1], dlc_values(df, bp, "y"), err_msg=bp)


# ---------------------------------------------------------------- the ingest stage's loading
def _ingest_load(tmp_path, fmt, paths):
    from kpms_job.stages import ingest

    m = manifest.load(write_manifest(tmp_path, {"inputs": {"format": fmt, "paths": [str(p) for p in paths]}}))
    return ingest._load_all(m)


def test_ingest_puts_recordings_with_another_bodypart_order_into_the_first_files_order(adapter, tmp_path):
    """Two DeepLabCut exports of one project whose columns come in different orders."""
    df = read_dlc(EXAMPLE_CSV).iloc[:300]
    (tmp_path / "a.csv").write_text(df.to_csv())
    scorer = df.columns.get_level_values("scorer")[0]
    order = ["tailbase", "rightear", "snout", "leftear"]
    shuffled = df[[(scorer, bp, c) for bp in order for c in ("x", "y", "likelihood")]] * 2.0
    (tmp_path / "b.csv").write_text(shuffled.to_csv())
    coords, confs, bodyparts, origin = _ingest_load(tmp_path, "deeplabcut", [tmp_path / "*.csv"])
    assert bodyparts == ["snout", "leftear", "rightear", "tailbase"]
    assert origin == {"a": str(tmp_path / "a.csv"), "b": str(tmp_path / "b.csv")}
    for i, bp in enumerate(bodyparts):
        np.testing.assert_array_equal(coords["b"][:, i, 0], 2.0 * dlc_values(df, bp, "x"), err_msg=bp)
        np.testing.assert_array_equal(confs["b"][:, i], 2.0 * dlc_values(df, bp, "likelihood"), err_msg=bp)


def test_ingest_puts_nwb_files_with_and_without_a_skeleton_into_one_bodypart_order(adapter, tmp_path):
    coords, _, bodyparts, _ = _ingest_load(tmp_path, "nwb", [NWB / "openfield_first300*.nwb"])
    assert bodyparts == ["ind1_snout", "ind1_leftear", "ind1_rightear", "ind1_tailbase"]
    assert sorted(coords) == ["openfield_first300", "openfield_first300_noskeleton"]
    np.testing.assert_array_equal(coords["openfield_first300_noskeleton"], coords["openfield_first300"])


def test_ingest_reads_all_individuals_of_a_multi_animal_file(adapter, tmp_path):
    coords, _, bodyparts, _ = _ingest_load(tmp_path, "deeplabcut", [TEST_DATA / "e3v813a_madlc_first100.csv"])
    assert sorted(coords) == ["e3v813a_madlc_first100_adult", "e3v813a_madlc_first100_juvenile"]
    assert bodyparts == ["nose", "leftear", "rightear", "neck", "lefthip", "righthip", "tail"]


def test_ingest_reports_an_unreadable_file_as_an_input_error_naming_it(adapter, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(InputDataError) as exc:
        _ingest_load(tmp_path, "deeplabcut", [bad])
    assert exc.value.exit_code == 3
    assert str(bad) in str(exc.value) and "inputs.format 'deeplabcut'" in str(exc.value)

"""Groups and syllable names end to end: the bundled recording split into four recordings (ctrl1,
ctrl2, ko1, ko2; 582 frames each), a tiny fit, and the analysis stage's keypoint-moseq statistics.

One fitted project is shared by the module; the tests that edit the groups work on copies of it
(only the analysis stage and the summary rerun there)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from jobs import EXAMPLE_CSV, run_job, tiny_manifest

from kpms_job.errors import EXIT_INPUT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAMES = ("ctrl1", "ctrl2", "ko1", "ko2")
GROUPS = {"ctrl": ["ctrl*"], "ko": ["ko1", "ko2"]}
SYLLABLE_NAMES = {0: "rear", 1: "walk"}


def split_example(folder: Path) -> None:
    """The bundled DeepLabCut CSV cut into four files, frame numbers restarting in each."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = EXAMPLE_CSV.read_text().splitlines()
    head, rows = lines[:3], [ln.split(",", 1)[1] for ln in lines[3:] if ln.strip()]
    n = len(rows) // len(NAMES)
    for i, name in enumerate(NAMES):
        part = [f"{j},{r}" for j, r in enumerate(rows[i * n:(i + 1) * n])]
        (folder / f"{name}.csv").write_text("\n".join(head + part) + "\n")


def manifest(folder: Path, **fields) -> Path:
    split_example(folder / "data")
    path = tiny_manifest(folder, inputs={"format": "deeplabcut", "paths": ["data/*.csv"]}, **fields)
    return path


def analysis_info(project: Path, stage: str = "analysis") -> dict:
    return json.loads((project / ".kpms-job" / "state.json").read_text())["stages"][stage]["info"]


def edit(path: Path, **fields) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(fields)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """(manifest path, project dir, the run) of the four recordings in two groups, with names."""
    folder = tmp_path_factory.mktemp("groups")
    path = manifest(folder, groups=GROUPS, syllable_names=SYLLABLE_NAMES,
                    outputs={"grid_movies": False, "trajectory_plots": True})
    r = run_job("run", path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return path, folder / "project", r


@pytest.fixture
def copy(grouped, tmp_path):
    """A copy of the fitted study to edit: (manifest path, project dir)."""
    path, project, _ = grouped
    shutil.copytree(path.parent, tmp_path / "study")
    return tmp_path / "study" / path.name, tmp_path / "study" / "project"


def test_two_groups_give_stats_for_both_and_the_group_figures(grouped):
    _, project, _ = grouped
    info = analysis_info(project)
    assert info["groups"] == {"ctrl": ["ctrl1", "ctrl2"], "ko": ["ko1", "ko2"]}
    assert info["compared"] is True and info["failed"] == {}
    files = info["files"]
    stats = pd.read_csv(project / files["stats_df"])
    assert set(stats["group"]) == {"ctrl", "ko"}
    assert set(stats["name"]) == set(NAMES)
    moseq = pd.read_csv(project / files["moseq_df"])
    assert moseq.groupby("name")["group"].first().to_dict() == {"ctrl1": "ctrl", "ctrl2": "ctrl", "ko1": "ko",
                                                                "ko2": "ko"}
    assert files["syllable_stats"] == ["kpms_job/analysis/duration_stat_stats.png",
                                       "kpms_job/analysis/frequency_stat_stats.png"]
    assert files["transition_graphs"] == ["kpms_job/analysis/transition_graphs.png"]
    assert "kpms_job/analysis/transition_matrix_ctrl.csv" in files["transition_matrices"]
    assert "kpms_job/analysis/transition_matrix_ko.csv" in files["transition_matrices"]
    assert "kpms_job/analysis/kruskal_frequency.csv" in files["significance"]
    for f in [files["moseq_df"], files["stats_df"], *files["syllable_stats"], *files["transition_graphs"],
              *files["transition_matrices"], *files["significance"], *files["transition_heatmaps"]]:
        assert (project / f).stat().st_size > 0, f
    assert (project / "index.csv").read_text().splitlines()[0] == "name,group"


def test_trajectory_plots_are_listed_with_the_other_figures(grouped):
    _, project, _ = grouped
    files = analysis_info(project, "figures")["files"]
    assert "kpms_job/trajectory_plots/all_trajectories.png" in files["trajectory_plots"]
    assert any(Path(f).name.startswith("Syllable") for f in files["trajectory_plots"])
    assert files["syllable_frequencies"] == ["kpms_job/syllable_frequencies.png"]
    for f in [f for v in files.values() for f in v]:
        assert (project / f).exists(), f


def test_syllable_names_go_where_keypoint_moseq_reads_them(grouped):
    from keypoint_moseq import get_syllable_names

    _, project, _ = grouped
    info = analysis_info(project)
    assert info["syllable_names"] == {"0": "rear", "1": "walk"}
    syll_info = pd.read_csv(project / info["files"]["syll_info"]).fillna("")
    assert syll_info.set_index("syllable").loc[[0, 1, 2], "label"].tolist() == ["rear", "walk", ""]
    # keypoint-moseq's own labels for its figures (statistics, transitions) carry the names
    assert get_syllable_names(str(project), "kpms_job", [0, 1, 2]) == ["0 (rear)", "1 (walk)", "2"]
    # compute_moseq_df and compute_stats_df carry syllable numbers only; the names join them there
    stats = pd.read_csv(project / info["files"]["stats_df"])
    assert {0, 1} <= set(stats["syllable"])


def test_an_unknown_recording_stops_the_job_before_any_fit(tmp_path):
    path = manifest(tmp_path, groups={"ctrl": ["ctrl1", "ctrl9"], "ko": ["ko*"]})
    r = run_job("run", path)
    assert r.returncode == EXIT_INPUT, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "groups.ctrl" in out and "'ctrl9' matches no recording" in out
    assert "ctrl1, ctrl2, ko1, ko2" in out
    assert not (tmp_path / "project" / "kpms_job_arhmm").exists()
    assert not (tmp_path / "project" / "pca.p").exists()


def test_groups_edited_after_the_fit_are_checked_first_and_rerun_the_analysis_only(copy):
    path, project = copy
    edit(path, groups={"ctrl": ["ctrl1"], "ko": ["ctrl1", "ko*"]})
    r = run_job("run", path)
    assert r.returncode == EXIT_INPUT, r.stdout[-2000:] + r.stderr[-2000:]
    assert "'ctrl1' is in 'ctrl' and in 'ko'" in r.stdout + r.stderr
    assert " INFO run " not in r.stdout + r.stderr  # not one stage started

    edit(path, groups={"all": ["*"]})  # one group: nothing to compare, the rest as with two
    r = run_job("run", path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran = {ln.split()[3] for ln in (r.stdout + r.stderr).splitlines() if " INFO run " in ln}
    assert ran == {"analysis", "summary"}
    info = analysis_info(project)
    assert info["groups"] == {"all": list(NAMES)} and info["compared"] is False and info["failed"] == {}
    assert info["files"]["significance"] == []
    assert set(pd.read_csv(project / info["files"]["stats_df"])["group"]) == {"all"}
    assert info["files"]["transition_matrices"][0].endswith("transition_matrices.npz")
    assert (project / info["files"]["transition_graphs"][0]).exists()
    assert not list((project / "kpms_job" / "analysis").glob("transition_matrix_ctrl.csv"))  # none stale


def test_recordings_no_group_names_are_ungrouped(copy):
    path, project = copy
    edit(path, groups={"ctrl": ["ctrl1", "ctrl2"]})
    r = run_job("run", path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = analysis_info(project)
    assert info["groups"] == {"ctrl": ["ctrl1", "ctrl2"], "ungrouped": ["ko1", "ko2"]}
    assert set(pd.read_csv(project / info["files"]["stats_df"])["group"]) == {"ctrl", "ungrouped"}


def test_the_report_shows_the_groups_their_statistics_and_the_syllable_names(grouped):
    _, project, _ = grouped
    html = (project / "report.html").read_text()
    files = analysis_info(project)["files"]
    assert 'id="groups"' in html and "<td>ctrl</td><td>ctrl1, ctrl2</td>" in html
    for f in [*files["syllable_stats"], *files["transition_graphs"]]:
        assert f'src="{f}"' in html, f
    assert f'href="{files["stats_df"]}"' in html
    assert "<td>rear</td>" in html and "<td>walk</td>" in html

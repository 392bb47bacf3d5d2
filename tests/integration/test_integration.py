"""The real pipeline end to end on tiny data (keypoint-moseq on the CPU, ~2-3 minutes)."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from jobs import ROOT, run_job, tiny_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _labels(project, model="kpms_job"):
    import h5py

    with h5py.File(project / model / "results.h5", "r") as f:
        return {k: f[k]["syllable"][()] for k in f}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    manifest = tiny_manifest(tmp)
    t0 = time.monotonic()
    first = run_job("run", manifest)
    assert first.returncode == 0, first.stderr[-3000:]
    return tmp, manifest, first, time.monotonic() - t0


def test_outputs_exist_and_summary_is_complete(finished):
    tmp, _, first, _ = finished
    project = tmp / "project"
    for rel in ["config.yml", "pca.p", "pca_scree.pdf", "QA/plots", "kpms_job_arhmm/checkpoint.h5",
                "kpms_job/checkpoint.h5", "kpms_job/results.h5", "kpms_job/fitting_progress.pdf",
                "kpms_job/syllable_frequencies.png", "kpms_job/duration_distribution.png",
                "kpms_job/results/openfield_dlc_inference_example.csv", "summary.json", "summary.md"]:
        assert (project / rel).exists(), rel
    s = json.loads((project / "summary.json").read_text())
    assert s["frames"] == 2330 and list(s["recordings"]["used"]) == ["openfield_dlc_inference_example"]
    assert s["latent_dim"] >= 1 and 0 < s["variance_explained"] <= 1
    assert s["median_duration_ms"] > 0 and s["syllables_over_0_5pct"] >= 1
    assert set(s["versions"]) >= {"keypoint-moseq", "jax-moseq", "jax", "kpms-job"}
    assert set(s["seconds_per_stage"]) >= {"ingest", "pca", "arhmm", "full_model", "results"}
    assert s["manifest"]["fitting"]["full_iters"] == 6
    assert "done:" in first.stdout
    # 78 s of recordings: what ingest warned of is in summary.md too, not only in the log and the report
    md = (project / "summary.md").read_text()
    assert "## Warnings" in md and "the recordings hold 78 s in all" in md.split("## Warnings")[1]


def test_project_loads_in_keypoint_moseq(finished):
    tmp, _, _, _ = finished
    code = f"""
import keypoint_moseq as kpms
pd = {str(tmp / 'project')!r}
cfg = kpms.load_config(pd)
model, data, metadata, it = kpms.load_checkpoint(pd, 'kpms_job')
res = kpms.load_results(pd, 'kpms_job')
assert it == 6, it
assert cfg['use_bodyparts'] == ['snout', 'leftear', 'rightear', 'tailbase']
z = res['openfield_dlc_inference_example']['syllable']
assert len(z) == 2330, len(z)
assert z.min() == 0  # reindexed: syllable 0 is the most frequent
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_second_run_skips_everything_quickly(finished):
    tmp, manifest, _, _ = finished
    before = _labels(tmp / "project")
    t0 = time.monotonic()
    again = run_job("run", manifest)
    took = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert took < 10  # includes the interpreter start; the job itself reports its own time
    after = _labels(tmp / "project")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_changing_full_iters_reruns_only_the_full_fit_and_after(finished):
    tmp, manifest, _, _ = finished
    text = manifest.read_text().replace("full_iters: 6", "full_iters: 8")
    manifest.write_text(text)
    plan = run_job("plan", manifest)
    lines = {ln.split()[1]: ln.split()[0] for ln in plan.stdout.splitlines() if ln.startswith("  ")}
    assert [s for s, v in lines.items() if v == "RUN"] == ["full_model", "reindex", "results", "figures",
                                                           "analysis", "summary"], plan.stdout
    rerun = run_job("run", manifest)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    err = rerun.stderr
    for stage in ("ingest", "outliers", "pca", "arhmm"):
        assert f"skip  {stage}" in err, err[-2000:]
    assert "run   full_model" in err
    s = json.loads((tmp / "project" / "summary.json").read_text())
    assert s["iterations"]["full_model"] == 8


def test_kappa_tuning_through_the_real_pipeline(tmp_path):
    """Tuning on, tiny budgets, kappa started outside the window: both phases tune into the window
    (exit 0), and the summary and the trace figures show it.

    On this recording (2330 frames, 4 keypoints) the median duration answers kappa in jumps, and
    with these budgets some seeds end outside the window (exit 5; seeds 0 and 2 do). The chain of a
    seed is deterministic, so seed 1, which ends in the window, makes a test that fails when a
    change of the tuner or the pipeline loses this chain's way into the window."""
    iters = 12
    manifest = tiny_manifest(tmp_path, tuning={"check_every": 3}, model={"num_states": 20, "kappa": 1e6, "seed": 1},
                             fitting={"arhmm_iters": iters, "full_iters": iters, "save_every": 4})
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "project" / "summary.json").read_text())
    lo, hi = s["target_median_duration_ms"]
    assert s["in_target_window"] is True and lo <= s["median_duration_ms"] <= hi
    assert "kappa tuning did not reach" not in res.stderr
    for phase, key, limit in (("kpms_job_arhmm", "arhmm_tuning", 4 * iters), ("kpms_job", "tuning", int(1.3 * iters))):
        assert (tmp_path / "project" / phase / "kappa_trace.png").exists()
        t = s[key]
        assert t["attempts"], t
        assert t["iterations"] <= limit
        assert t["in_window"] is True and t["verdict"].startswith("in window:"), t["verdict"]
    # the AR-HMM moved kappa away from where the manifest started it
    assert s["arhmm_tuning"]["final_kappa"] >= 10 * 1e6
    assert s["kappa"]["full_model"] == s["tuning"]["final_kappa"]
    md = (tmp_path / "project" / "summary.md").read_text()
    assert "## Full-model kappa tuning" in md

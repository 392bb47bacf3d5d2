"""A tuned chain that delivers an earlier state ends its checkpoint there (``gibbs.end_chain_at``):
keypoint-moseq's ``load_checkpoint``, reindexing and the results read the last snapshot."""

from __future__ import annotations

import h5py
import numpy as np

from kpms_job.kpms import gibbs


def _checkpoint(project, name, iterations):
    path = gibbs.checkpoint_path(str(project), name)
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data/Y", data=np.zeros((2, 3)))
        for it in iterations:
            f.create_dataset(f"model_snapshots/{it}/states/z", data=np.full(4, it))
    return path


def test_the_delivered_snapshot_becomes_the_last_and_repeating_changes_nothing(tmp_path):
    path = _checkpoint(tmp_path, "m", [0, 25, 50, 60, 75, 100])
    gibbs.end_chain_at(str(tmp_path), "m", 60)
    assert gibbs.saved_iterations(path) == [0, 25, 50, 60]
    with h5py.File(path, "r") as f:  # the state kept is the one saved at that iteration, and the data stay
        assert f["model_snapshots/60/states/z"][()].tolist() == [60] * 4 and "data/Y" in f
    before = path.read_bytes()
    gibbs.end_chain_at(str(tmp_path), "m", 60)  # a rerun after a kill that came after the cut
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.tmp.h5"))


def test_the_delivered_snapshot_says_the_kappa_it_was_fitted_at(tmp_path):
    """A snapshot saved at a tuner's check holds the kappa the tuner moved on to; the delivered state
    must carry its own, which keypoint-moseq's load_checkpoint hands to whoever loads the model."""
    path = _checkpoint(tmp_path, "m", [0, 45, 60, 75])
    with h5py.File(path, "a") as f:
        for it, k in ((0, 1e6), (45, 1e15), (60, 1e18), (75, 1e16)):
            f.create_dataset(f"model_snapshots/{it}/hypparams/trans_hypparams/kappa", data=k)
    gibbs.end_chain_at(str(tmp_path), "m", 45, kappa=1e12)
    with h5py.File(path, "r") as f:
        assert sorted(map(int, f["model_snapshots"])) == [0, 45]
        assert f["model_snapshots/45/hypparams/trans_hypparams/kappa"][()] == 1e12
    before = path.read_bytes()
    gibbs.end_chain_at(str(tmp_path), "m", 45, kappa=1e12 * (1 + 1e-13))  # the same kappa, rounded
    assert path.read_bytes() == before


def test_a_rerun_after_a_kill_between_choosing_the_state_and_cutting_the_checkpoint_cuts_it_and_fits_nothing(
        tmp_path, monkeypatch):
    """The tuned chain records which state it delivers before it cuts the checkpoint there; a kill in
    between leaves the whole chain on disk. The rerun must cut it at that state and report it,
    without fitting again."""
    import math
    from types import SimpleNamespace

    from kpms_job.fitting import tuned
    from kpms_job.fitting.tuner import KappaTuner, TunerConfig

    cfg = TunerConfig(lo_ms=300, hi_ms=400, kappa0=4.7e13, min_iters=40, max_iters=52, fixed_iters=20,
                      start_ms=290.0, restart_probes=True, drift_horizon=20)
    t = KappaTuner(cfg)
    for it in range(1, cfg.max_iters + 1):  # holds in the window, then every syllable merges
        t.observe(it, 4667.0 if it > 30 else 345.0)
        if t.done(it):
            break
    delivered = t.delivery(4667.0)
    assert delivered is not None
    path = _checkpoint(tmp_path, "m", sorted({0, delivered[0], t.medians[-1][0]}))

    class State(dict):
        def put(self, k, v):
            self[k] = v

    state = State(tuning={"m": {"key": "K", "medians": t.medians, "start_ms": None,
                                "delivered": list(delivered), "ended_ms": 4667.0}})
    ctx = SimpleNamespace(state=state, project_dir=tmp_path, fps=30.0)
    monkeypatch.setattr(gibbs, "load_latest_snapshot",
                        lambda pd, name: ({"it": gibbs.saved_iterations(path)[-1]}, None, None, None))
    monkeypatch.setattr(gibbs, "median_duration_ms", lambda model, data, fps: 345.0)
    drawn = []  # the report's fitting_progress.png: drawn again for the state delivered, not the chain's end
    monkeypatch.setattr(gibbs, "plot_progress", lambda model, data, pd, name, it, fps: drawn.append(it))

    def no_fit():
        raise AssertionError("the rerun fitted again")

    model, report = tuned._tuned_chain(ctx, "m", "full model", "K", cfg, no_fit, ar_only=False)
    assert gibbs.saved_iterations(path)[-1] == delivered[0] and model == {"it": delivered[0]}
    assert report["in_window"] and report["delivered_iteration"] == delivered[0]
    assert math.isclose(report["final_kappa"], delivered[1])
    assert f"delivers the state of iteration {delivered[0]}" in report["verdict"]
    assert (tmp_path / "m" / "kappa_trace.png").exists()
    assert drawn == [delivered[0]]

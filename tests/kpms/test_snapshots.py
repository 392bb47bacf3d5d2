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

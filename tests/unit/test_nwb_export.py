"""NWB export: syllables as ndx-ethogram bouts that read back to the same labels, files that pass
nwbinspector, and a source NWB file's session metadata carried over (no keypoint-moseq needed)."""

from datetime import UTC, datetime

import numpy as np
import pytest

pytest.importorskip("ndx_ethogram")
from kpms_job import nwb_export as N  # noqa: E402

META = {"subject": {"species": "Mus musculus", "sex": "U", "age": "P90D"}, "experimenter": ["Doe, Jane"],
        "institution": "Example", "lab": "Example lab", "experiment_description": "open field",
        "keywords": ["behavior"]}
PROV = {"model": "m", "kappa": 1e4, "seed": 0, "versions": {"keypoint-moseq": "0.8.1", "jax-moseq": "0.3.7",
                                                            "kpms-job": "0"}}


def fake_result(frames=600, seed=0):
    rng = np.random.default_rng(seed)
    z = np.repeat(rng.integers(0, 12, frames // 10), 10)[:frames]
    return {"syllable": z, "centroid": rng.normal(size=(frames, 2)), "heading": rng.uniform(-3, 3, frames)}


def read(path):
    from pynwb import NWBHDF5IO

    io = NWBHDF5IO(str(path), "r", load_namespaces=True)
    return io, io.read()


def test_bouts_read_back_to_the_same_labels_and_the_file_passes_nwbinspector(tmp_path):
    from nwbinspector import Importance, inspect_all

    res = fake_result()
    N.write_recording(tmp_path / "rec.nwb", "rec", res, 30.0, 20, PROV, None, META)
    io, f = read(tmp_path / "rec.nwb")
    with io:
        df = f.processing["behavior"]["syllable_bouts"].to_dataframe()
        z = N.labels_from_bouts(df.start_time, df.stop_time, df.label, 30.0, 600)
        assert np.array_equal(z, res["syllable"])
        assert len(df) == len(N.bouts(res["syllable"])[0]) and (df.stop_time > df.start_time).all()
        assert len(f.processing["behavior"]["syllables"]) == 20  # the catalogue: every syllable of the model
        cen = f.processing["behavior"]["Position"]["centroid"]
        assert np.allclose(cen.data[:], res["centroid"]) and cen.rate == 30.0
        assert f.subject.subject_id == "rec" and f.subject.species == "Mus musculus"
        assert '"kappa": 10000.0' in f.processing["behavior"]["syllable_bouts"].parameters
    critical = [m for m in inspect_all(str(tmp_path)) if m.importance == Importance.CRITICAL]
    assert not critical, [m.message for m in critical]


def test_a_recording_from_nwb_keeps_its_session_metadata_in_a_new_file(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    when = datetime(2022, 10, 5, 17, 38, tzinfo=UTC)
    src = NWBFile(session_description="mouse in an open field", identifier="src", session_start_time=when,
                  lab="Their lab", subject=Subject(subject_id="m7", species="Mus musculus", sex="F", age="P60D"))
    with NWBHDF5IO(str(tmp_path / "source.nwb"), "w") as io:
        io.write(src)
    before = (tmp_path / "source.nwb").read_bytes()
    N.write_recording(tmp_path / "out" / "rec.nwb", "rec", fake_result(), 30.0, 20, PROV,
                      str(tmp_path / "source.nwb"), META)
    io, f = read(tmp_path / "out" / "rec.nwb")
    with io:
        assert f.session_start_time == when and f.lab == "Their lab"  # the source's values come first
        assert f.subject.subject_id == "m7" and f.subject.sex == "F"
        assert f.institution == "Example"  # the manifest fills what the source lacks
        assert "mouse in an open field" in f.session_description
    assert (tmp_path / "source.nwb").read_bytes() == before  # the user's file is untouched

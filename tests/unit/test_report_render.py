"""The report's rank-frequency check and rendering, without a run."""

from __future__ import annotations

import pytest

from kpms_job import report


def test_a_power_law_is_a_straight_line_in_log_log():
    fractions = [0.3 * r ** -1.5 for r in range(1, 21)]
    fit = report.rank_frequency_fit(fractions)
    assert fit["slope"] == pytest.approx(-1.5) and fit["r2"] == pytest.approx(1.0)
    assert fit["syllables"] == sum(f > 0.005 for f in fractions)


def test_a_cliff_is_not_a_power_law():
    # three dominant syllables then a long flat tail: far from a line in log-log
    fit = report.rank_frequency_fit([0.3, 0.3, 0.3] + [0.006] * 12)
    assert fit["r2"] < 0.8


def test_too_few_syllables_give_no_fit():
    assert report.rank_frequency_fit([0.9, 0.1, 0.001]) is None


def test_existing_splits_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    assert report.existing(tmp_path, ["a.png", "b.png"]) == (["a.png"], ["b.png"])

"""The README's memory figures for 10 million frames are what `kpms-job plan --frames` prints today."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from jobs import ROOT

CLAIM = re.compile(r"fit a 24 GiB\s+GPU at `mixed_map_iters=(\d+)` \(full model ([\d.]+) GiB\) and 24 GiB of a "
                   r"CPU's system memory at\s+`mixed_map_iters=(\d+)` \(([\d.]+) of")


def _plan(device: str) -> tuple[str, str]:
    res = subprocess.run([sys.executable, "-m", "kpms_job", "plan", "--frames", "10000000", "--keypoints", "8",
                          "--latent-dim", "10", "--num-states", "100", "--budget-gb", "24", "--device", device],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    chosen = re.search(r"chosen: parallel_message_passing=\w+, mixed_map_iters=(\d+)", res.stdout).group(1)
    full = re.search(r"full model\s+([\d.]+) GiB =", res.stdout).group(1)
    return chosen, full


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_the_readme_quotes_the_plan(device):
    claim = CLAIM.search((ROOT / "README.md").read_text())
    assert claim, "the README's 10-million-frame sentence changed: update CLAIM here too"
    gpu_iters, gpu_full, cpu_iters, cpu_full = claim.groups()
    expected = (gpu_iters, gpu_full) if device == "gpu" else (cpu_iters, cpu_full)
    assert _plan(device) == expected, f"README says {expected} for the {device}; plan prints {_plan(device)}"

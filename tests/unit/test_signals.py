"""kpms_job.signals: a TERM means "stop at the next safe point, exit 75", whichever thread the
kernel hands it to. The job is started here as a shell or slurmstepd starts it (TERM not blocked)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from jobs import ROOT, default_signals

# numpy imported first starts its BLAS threads before the watcher blocks TERM, as any import
# ahead of signals.install() would; the loop stands in for a fit that never reaches a safe point
SCRIPT = """
import os, sys, time
import numpy
from kpms_job import signals
signals.install()
print(len(os.listdir("/proc/self/task")), flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    numpy.linalg.svd(numpy.random.rand(200, 200))
sys.exit(0)
"""

ENV = {"KPMS_JOB_STOP_GRACE_S": "1", "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_a_process_with_threads_started_before_install_exits_75(sig):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=ENV,
                            preexec_fn=default_signals)
    threads = int(proc.stdout.readline())
    assert threads >= 2, "the check needs a thread started before install (numpy's BLAS pool)"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert f"{signal.Signals(sig).name} received" in err

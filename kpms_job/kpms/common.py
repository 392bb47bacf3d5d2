"""What every adapter module shares: keypoint-moseq imported quietly, its output routed to the log.

Importing this imports JAX and keypoint-moseq (about 6 s): the pipeline imports the adapter
modules only when a stage runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # our own progress replaces keypoint-moseq's bars
os.environ.setdefault("MPLBACKEND", "Agg")

import keypoint_moseq as kpms  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("kpms_job")

__all__ = ["kpms", "log", "quiet"]


@contextlib.contextmanager
def quiet():
    """Route keypoint-moseq's prints and warnings to the debug log."""
    buf = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buf):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            plt.close("all")
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("keypoint-moseq: %s", line.strip())
    for w in caught:
        log.debug("keypoint-moseq warning: %s", str(w.message).replace("\n", " "))

"""What the job tells a person: colour and progress bars on a terminal, plain
timestamped lines otherwise (container and Kubernetes logs). ``NO_COLOR`` is honoured.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("kpms_job")


def is_terminal() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def use_color() -> bool:
    return is_terminal() and "NO_COLOR" not in os.environ


def plain_formatter() -> logging.Formatter:
    """Timestamped lines: the console off a terminal, and each run's log file (:mod:`kpms_job.runlog`)."""
    return logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")


def setup_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger("kpms_job")
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    if is_terminal():
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(stderr=True, no_color=not use_color(), highlight=False)
        handler = RichHandler(console=console, show_path=False, markup=False,
                              log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(plain_formatter())
    handler.setLevel(level)
    root.addHandler(handler)


class IterationProgress:
    """Progress of a Gibbs fit: a rich bar on a terminal, a log line every ~10% otherwise.

    ``live``: where the fit's progress is also published for ``kpms-job status`` (a
    :class:`kpms_job.liveprogress.FitProgress`); it gets every iteration and decides itself how
    often to write.
    """

    def __init__(self, label: str, start: int, total: int, live=None):
        self.label, self.start, self.total = label, start, total
        self.t0 = time.monotonic()
        self.live = live
        # s/iteration for the live estimate is timed from the first iteration this process ran: that
        # one includes XLA's compile (tens of seconds), which would inflate the time left
        self.first: tuple[int, float] | None = None
        self.bar = None
        self.next_report = start
        if is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True, no_color=not use_color()),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=start)

    def update(self, it: int, note: str = "", **live) -> None:
        """Iteration ``it`` is done; ``live``: what else ``kpms-job status`` shows (kappa, median_ms)."""
        if self.live is not None:
            now = time.monotonic()
            if self.first is None:
                self.first = (it, now)
                rate = (now - self.t0) / max(1, it - self.start)
            else:
                rate = (now - self.first[1]) / max(1, it - self.first[0])
            self.live.update(it, self.total, rate, **live)
        if self.bar is not None:
            self.bar.update(self.task, completed=it, description=f"{self.label} {note}".strip())
            return
        step = max(1, self.total // 10)
        if it >= self.next_report or it == self.total:
            rate = (time.monotonic() - self.t0) / max(1, it - self.start)
            log.info("%s: iteration %d/%d (%.2f s/iter) %s", self.label, it, self.total, rate, note)
            self.next_report = it + step

    def close(self) -> None:
        if self.live is not None:
            self.live.flush()
        if self.bar is not None:
            self.bar.stop()

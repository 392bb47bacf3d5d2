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
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        handler.setFormatter(fmt)
    handler.setLevel(level)
    root.addHandler(handler)


class IterationProgress:
    """Progress of a Gibbs fit: a rich bar on a terminal, a log line every ~10% otherwise."""

    def __init__(self, label: str, start: int, total: int):
        self.label, self.start, self.total = label, start, total
        self.t0 = time.monotonic()
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

    def update(self, it: int, note: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=it, description=f"{self.label} {note}".strip())
            return
        step = max(1, self.total // 10)
        if it >= self.next_report or it == self.total:
            rate = (time.monotonic() - self.t0) / max(1, it - self.start)
            log.info("%s: iteration %d/%d (%.2f s/iter) %s", self.label, it, self.total, rate, note)
            self.next_report = it + step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

"""The kappa tuner's settings and records: TunerConfig, Check, and the least-squares slope.

Split from ``tuner`` (the search itself, whose docstring says how the settings are used);
``from kpms_job.fitting.tuner import TunerConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TunerConfig:
    lo_ms: float
    hi_ms: float
    kappa0: float
    min_iters: int  # the chain runs at least this long (the manifest's iterations)
    max_iters: int  # hard budget
    fixed_iters: int  # final stretch at one kappa
    check_every: int = 10
    settle: int = 5  # iterations after a kappa change before measuring
    max_step: float = 3.0  # decades per correction
    slope0: float = 0.25  # prior d log10(duration) / d log10(kappa)
    band: float = 0.6  # fraction of the accepted band (log scale, centred) that counts as "on target"
    aim: float = 0.5  # where in the window (log scale, 0 = its bottom, 1 = its top) the search aims
    min_bracket: float = 0.1  # decades: a narrower too-short/too-long bracket is noise, not signal
    max_nudges: int = 2  # corrections in a row from inside the window before it is accepted
    bracket_memory: int = 40  # iterations a too-short / too-long kappa keeps bounding the search
    # every correction, up too, restarts from the measured start (the full model from the tuned
    # AR-HMM): all measurements then share one start and one length, a response curve
    restart_probes: bool = False
    kappa_min: float = 1.0  # below this kappa adds no stickiness to speak of
    kappa_max: float = 1e25
    # median (ms) of the state the chain starts from, when it was measured (the full model starts
    # from the tuned AR-HMM's last state); a start not above the window is a clean base to probe from
    start_ms: float | None = None
    # iterations the final model must stay in the window after the chain ends: a duration that
    # drifts steadily at one kappa is judged where it is heading, not where it is (0: off)
    drift_horizon: int = 0
    drift_windows: int = 3  # check windows in a row, moving one way, that make a drift


def _ls_slope(points) -> float:
    """Least-squares slope of y on x for (x, y) points whose x are not all equal."""
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


@dataclass
class Check:
    iteration: int
    kappa: float
    median_ms: float | None
    in_window: bool
    action: str

    def as_dict(self):
        return {"iter": self.iteration, "kappa": self.kappa, "median_ms": self.median_ms,
                "in_window": self.in_window, "action": self.action}

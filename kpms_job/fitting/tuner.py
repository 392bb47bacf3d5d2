"""Kappa tuning: the search itself, pure and testable without keypoint-moseq.

The tuner steers ONE Gibbs chain instead of fitting separate attempts: every
``check_every`` iterations it measures the median syllable duration (the mean of log
per-iteration medians since the chain settled at the current kappa, which averages out
the iteration-to-iteration noise), and if that is away from the target it moves kappa
on the log scale.

What real chains do, and how the search copes:

- Hysteresis. Syllables lengthen within a few iterations when kappa rises but shorten
  only slowly when it falls: a continuing chain remembers its long syllables (real data:
  a full model stayed at 560-620 ms while kappa fell four decades, yet a clean start
  from the AR-HMM's state at kappa 7.5e4 measured 383 ms). So every correction DOWN is a
  probe from a clean start: the chain rolls back to its *base* (the last state measured
  below the aim, or the start when it was measured not too long: the full model starts
  from the tuned AR-HMM's state) and runs at the new kappa from there. Corrections up
  continue the chain (the too-short state becomes the new base), except with
  ``restart_probes`` (the full model): a settled full model may follow kappa in neither
  direction, so every correction restarts from the measured start, and the measurements,
  all from one start and of one length, form one response curve.
- A measured response curve. Steps are secant steps on log kappa from the measured
  points, kept inside the bracket of kappas known too short / too long (bisection when
  the secant leaves it), at most ``max_step`` decades. Going down from a clean start the
  slope comes from the clean probes alone, and a flat one means the largest step: the
  probe is cheap, and overshooting to too short is undone within a few iterations. A
  bracket narrower than ``min_bracket`` decades is the chain's own wandering: its older
  side is dropped.
- Drift. A chain's durations wander at a fixed kappa, so a side of the bracket measured more
  than ``bracket_memory`` iterations ago stops bounding the search, and a base from which a
  probe at no more than the base's own kappa came back too long (it was already lengthening)
  is dropped for the base before it.
- Ageing. A full model started from the AR-HMM's state lengthens its syllables as it ages, at
  every kappa probed (18 x 2,330 frames: 300 ms to 467 ms in 80 iterations, 500 ms 100 later),
  so a young probe in the window says little about the model delivered, which must stay in the
  window ``drift_horizon`` more iterations. A steady drift (``drift_windows`` check windows in a
  row moving one way) is extrapolated, never further than it was watched, and the duration is
  judged halfway to where it heads. A correction for a drift, of a chain that is in the window
  or has drifted (not jumped: within half the window's width) out of it after a hold, keeps the
  chain: a restart would be young and drift again, while the chain's own drift slows
  as it settles. A second such correction the same way restarts: the chain did not follow.
- Probes draw. Every full-model probe starts from one state with one random key, so what a
  young probe measures is fixed by its kappa but varies from kappa to kappa like a draw (real
  data: 231, 480 and 673 ms at kappas 0.005 decades apart). A probe that lands in the window
  therefore holds (a nudge would restart it and draw again); a bracket narrower than
  ``min_bracket`` whose both sides were set by probes at the probes' age is such a cliff of
  draws, not a response to bisect. Probing ends at the latest when there is just time left for
  the model delivered to run ``drift_horizon`` iterations at its kappa: then the probe whose
  latest check was nearest the window runs again from the start (the same draw) and on
  (``committed``), corrected in steps of at most half a decade, never restarted. Until the replay
  is older than its probe was when last checked it holds, as the probe did: what it measures then
  is known. A probe whose replay would reach that age only after the last correction allowed
  counts by the worse of where it was and where it was heading. Unlike a probe,
  it is nudged toward the aim when it sits in the window off the aim (a nudge draws nothing
  again), by the prior slope: the probes' slope is that of young chains.
- No give-up on a hunch. The search ends without the window only when kappa is pinned at
  ``kappa_min`` (1) or ``kappa_max`` (1e25) and the duration is still outside, measured
  from a clean start when it had to go down, or when the budget is spent. A duration that
  "stops responding" on a continuing chain is the chain's memory, not the data, so it is
  never a reason to stop.
- Noise and lag. Once the measurement is in the window and near the aim (or after
  ``max_nudges`` corrections made from inside it, where the response is flat), kappa is
  frozen and the chain must run ``fixed_iters`` more iterations at that one kappa, which
  lets a lagging response show itself: drift out of the window during that stretch is
  corrected (down: from the base again) while there is budget. After the stretch the
  chain ends at the first state whose own median is in the window, or when the budget is
  spent.

The whole tuner state is a function of the observations, so replaying the saved
per-iteration medians up to a snapshot rebuilds exactly the tuner that wrote it
(resume after a kill never refits an attempt and takes the same decisions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .tuner_config import Check, TunerConfig, _ls_slope  # TunerConfig is imported from here too
from .tuner_verdict import Verdict


@dataclass
class KappaTuner(Verdict):
    cfg: TunerConfig
    kappa: float = field(init=False)
    changed_at: int = field(default=0, init=False)
    changes: list = field(default_factory=list, init=False)  # every iteration kappa was set at, in order
    frozen: bool = field(default=False, init=False)
    gave_up: str | None = field(default=None, init=False)
    checks: list = field(default_factory=list, init=False)
    medians: list = field(default_factory=list, init=False)  # (iteration, median_ms or None)
    points: list = field(default_factory=list, init=False)  # (log10 kappa, log10 duration)
    # the states a downward correction may roll back to, newest last: (iteration, log10 kappa) of
    # each state measured below the aim, and the start when it was measured not too long
    bases: list = field(default_factory=list, init=False)
    nudges: int = field(default=0, init=False)  # corrections in a row made from inside the window
    low_k: float | None = field(default=None, init=False)  # highest log10 kappa known too short
    high_k: float | None = field(default=None, init=False)  # lowest log10 kappa known too long
    low_at: int = field(default=0, init=False)  # the iterations they were measured at
    high_at: int = field(default=0, init=False)
    low_lasts: bool = field(default=False, init=False)  # measured by a probe at the probes' one age
    high_lasts: bool = field(default=False, init=False)
    rollback: int | None = field(default=None, init=False)  # set when the last observe asks for one
    # the chain has run at the current kappa only since a clean start (the start, or a rollback to
    # a base), so its measurement is this kappa's own response, not the memory of another kappa
    clean: bool = field(default=True, init=False)
    clean_points: list = field(default_factory=list, init=False)  # (log10 kappa, log10 duration)
    settled: bool = field(default=False, init=False)  # some measurement was accepted and held
    kept: int = field(default=0, init=False)  # direction (+1 up, -1 down) of the last correction that kept the chain
    # restart_probes: probing is over and one chain now runs on (the probe that landed, or the
    # best one measured, run again from the start); it is never restarted again
    committed: bool = field(default=False, init=False)
    # restart_probes: [log10 kappa, log10 duration, age, log10 duration judged] of each probe, as its
    # LATEST check measured and judged it (the age: iterations it had run at its kappa then) while it
    # ran on at its kappa (a probe that landed may jump out later: its fate counts)
    probes: list = field(default_factory=list, init=False)
    # restart_probes: the committed chain replays its probe (the same start, key and kappa) until this
    # iteration, the age the probe was last checked at: what its checks measure until then is known
    replay_until: int | None = field(default=None, init=False)
    # (iteration, log10 kappa, ms, iteration its kappa was set) of the first check of each stretch at
    # one kappa at which the tuner held and the state's own median was in the window: its snapshot is
    # kept, and a chain that ends outside delivers the latest of them (real open field: probes
    # measured 364 ms, then the budget ran out with every syllable merged, 4,667 ms, and that state
    # was delivered)
    keepers: list = field(default_factory=list, init=False)
    # keeper iteration -> the iteration at which its own chain, still at its kappa, measured out of
    # the window: a state seen to leave the window on its own is no stable model
    left: dict = field(default_factory=dict, init=False)
    # keeper iteration -> the latest check at which its own chain, still at its kappa and not yet seen
    # out, measured in the window: watched there for ``drift_horizon`` iterations, it is stable
    held_to: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.kappa = float(self.cfg.kappa0)
        start = self.cfg.start_ms
        if start is not None and math.isfinite(start) and 0 < start <= self.cfg.hi_ms:
            self.bases.append((0, math.log10(self.kappa), start))  # probes at other kappas restart from here

    @property
    def base_iter(self) -> int | None:
        """The snapshot a downward correction rolls back to (None: there is none)."""
        return self.bases[-1][0] if self.bases else None

    def keep_snapshot(self, iteration: int) -> bool:
        """Whether the state after ``iteration`` must be saved: a base to roll back to, or a keeper."""
        return self.base_iter == iteration or bool(self.keepers and self.keepers[-1][0] == iteration)

    # ------------------------------------------------------------------ geometry
    @property
    def center(self) -> float:
        """log10 of the duration aimed at: ``aim`` of the way up the window (log scale)."""
        lo, hi = math.log10(self.cfg.lo_ms), math.log10(self.cfg.hi_ms)
        return lo + self.cfg.aim * (hi - lo)

    def _half_band(self) -> float:
        """Half-width (decades) of the accepted band: the widest band around the aim inside the window."""
        width = math.log10(self.cfg.hi_ms) - math.log10(self.cfg.lo_ms)
        return width * min(self.cfg.aim, 1.0 - self.cfg.aim)

    def accepted(self, ms: float | None) -> bool:
        """In the band around the aim (the whole window when aiming at its centre)."""
        return (ms is not None and self.in_window(ms)
                and abs(math.log10(ms) - self.center) <= self._half_band() + 1e-12)

    def _near_window(self, ms: float) -> bool:
        """Within half the window's width (log scale) of it: drifted out, not jumped out."""
        lo, hi = math.log10(self.cfg.lo_ms), math.log10(self.cfg.hi_ms)
        return lo - 0.5 * (hi - lo) <= math.log10(ms) <= hi + 0.5 * (hi - lo)

    def on_target(self, ms: float) -> bool:
        return abs(math.log10(ms) - self.center) <= self.cfg.band * self._half_band()

    def in_window(self, ms: float | None) -> bool:
        return ms is not None and self.cfg.lo_ms <= ms <= self.cfg.hi_ms

    # ------------------------------------------------------------------ schedule
    def _stretch(self) -> int:
        """Iterations the chain runs at its final kappa before it may end.

        A committed full model holds for ``drift_horizon`` too: the model delivered must stay in
        the window that long, so it should have been seen at its kappa for as long first.
        """
        if self.cfg.restart_probes and self.committed:
            return max(self.cfg.fixed_iters, self.cfg.drift_horizon)
        return self.cfg.fixed_iters

    def end_iteration(self) -> int:
        """The iteration the chain must reach under the current plan."""
        return min(self.cfg.max_iters, max(self.cfg.min_iters, self.changed_at + self._stretch()))

    def probe_end(self) -> int:
        """The last iteration a probe may end at (restart_probes): after it, one chain holds."""
        return self.cfg.max_iters - max(self.cfg.fixed_iters, self.cfg.drift_horizon) - self.cfg.check_every

    def last_change_allowed(self) -> int:
        return self.cfg.max_iters - self.cfg.fixed_iters

    def done(self, iteration: int) -> bool:
        """The chain may end here: long enough, and this very state is in the window.

        Past the planned end the chain runs on at the same kappa (the fixed stretch
        only gets longer) until a state's own median lands in the window or the budget
        is spent: the final model is one state, and one state's median varies by a
        frame or so from iteration to iteration even when the chain is on target.
        """
        if iteration >= self.cfg.max_iters:
            return True
        if iteration < self.end_iteration():
            return False
        last = self.medians[-1] if self.medians else None
        if last is None or last[0] != iteration or not self.accepted(last[1]):
            return False
        if self.cfg.restart_probes and not self.on_target(last[1]):
            # a state at the window's edge leaves it with one frame more; the full model lengthens
            # its syllables as it ages, so wait a while for a state nearer the aim
            end = self.end_iteration()
            return iteration >= end + (self.cfg.max_iters - end) // 2
        return True

    # ------------------------------------------------------------------ search
    def _measure(self, iteration: int) -> float | None:
        """Mean log median over the last check_every iterations (after settling at this kappa)."""
        start = max(self.changed_at + self.cfg.settle, iteration - self.cfg.check_every)
        vals = [m for i, m in self.medians if start < i <= iteration]
        if any(v is None for v in vals):
            return None
        vals = [v for v in vals if v > 0]
        if not vals:
            return None
        return 10 ** (sum(math.log10(v) for v in vals) / len(vals))

    def _window_means(self, iteration: int) -> list:
        """(centre iteration, mean log10 median) of each whole check window since this kappa settled."""
        first = self.changed_at + self.cfg.settle
        out = []
        end = iteration
        while end - self.cfg.check_every >= first:
            vals = [m for i, m in self.medians if end - self.cfg.check_every < i <= end]
            if not vals or any(v is None or v <= 0 for v in vals):
                break
            out.append((end - 0.5 * self.cfg.check_every, sum(math.log10(v) for v in vals) / len(vals)))
            end -= self.cfg.check_every
        return out[::-1]

    def _drift(self, iteration: int) -> float:
        """Decades the duration is heading to move within ``drift_horizon`` more iterations (0: none seen).

        A drift is ``drift_windows`` check windows in a row at this kappa, each mean further the
        same way (a wandering chain rarely does that; a young full model lengthening its syllables
        does it for a hundred iterations: 300 to 467 ms on 42k frames, at every kappa probed). It
        is extrapolated at its average rate, but never over more iterations than it was seen for:
        drifts slow down as the chain settles.
        """
        if self.cfg.drift_horizon <= 0:
            return 0.0
        means = self._window_means(iteration)[-self.cfg.drift_windows:]
        if len(means) < max(2, self.cfg.drift_windows):
            return 0.0
        steps = [b[1] - a[1] for a, b in zip(means, means[1:], strict=False)]
        if not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
            return 0.0
        rate = (means[-1][1] - means[0][1]) / (means[-1][0] - means[0][0])
        seen = iteration - self.changed_at
        return rate * min(self.cfg.drift_horizon, seen)

    def _slope(self, too_long: bool = False) -> float:
        """d log10 duration / d log10 kappa from the measured points, or the prior.

        A chain measured too long right after a clean start is probed again from a clean
        start, so its steps down can be bold: the slope then comes from the clean probes
        alone, and a flat response among them (seen on real data: 503 ms at kappa 1.2e11,
        383 ms at 7.5e4) means the largest step, not the prior's small one. Overshooting
        to too short is cheap: durations rise within a few iterations.
        """
        if ((self.cfg.restart_probes or (too_long and self.clean)) and len(self.clean_points) >= 2):
            pts = self.clean_points[-3:]
            xs = [p[0] for p in pts]
            if max(xs) - min(xs) > 0.05:
                return min(max(_ls_slope(pts), 0.05), 2.0)
        pts = self.points[-4:]
        xs = [p[0] for p in pts]
        if len(pts) >= 2 and max(xs) - min(xs) > 0.05:
            s = _ls_slope(pts)
            if s > 0.02:  # noise can make it flat or negative: then trust the prior more
                return min(max(s, 0.05), 2.0)
        return self.cfg.slope0

    def _set(self, kappa: float, iteration: int) -> None:
        self.kappa = float(kappa)
        self.changed_at = iteration
        self.changes.append(iteration)

    def observe(self, iteration: int, median_ms: float | None) -> float | None:
        """Record the median duration after ``iteration``; return a new kappa or None.

        When a new kappa is returned and ``self.rollback`` is not None, the chain must
        continue from the snapshot at iteration ``self.rollback`` (with the new kappa).
        """
        stretch = self.changed_at
        new = self._observe(iteration, median_ms)
        check = self.checks[-1] if self.checks and self.checks[-1].iteration == iteration else None
        if check is not None and self.keepers and self.keepers[-1][3] == stretch:
            if not self.in_window(check.median_ms):
                self.left.setdefault(self.keepers[-1][0], iteration)
            elif self.keepers[-1][0] not in self.left:
                self.held_to[self.keepers[-1][0]] = iteration
        # one keeper per stretch at one kappa: its first state held in the window (a snapshot of a
        # large study is hundreds of MB, and the states of one stretch differ only by its drift)
        if (new is None and check is not None and self.accepted(self.medians[-1][1])
                and not (self.keepers and self.keepers[-1][3] == self.changed_at)):
            self.keepers.append((iteration, math.log10(self.kappa), self.medians[-1][1], self.changed_at))
        return new

    def _observe(self, iteration: int, median_ms: float | None) -> float | None:
        self.rollback = None
        if median_ms is not None and not math.isfinite(median_ms):
            median_ms = None
        self.medians.append((iteration, median_ms))
        if median_ms is None:  # NaN fit: back to the base, kappa halfway toward what worked
            lk = math.log10(self.kappa)
            self.high_k = lk if self.high_k is None else min(self.high_k, lk)
            new = 0.5 * (lk + self.low_k) if self.low_k is not None else lk - 1.0
            self.checks.append(Check(iteration, self.kappa, None, False, f"NaN: back to base, kappa -> {10**new:.3g}"))
            return self._move(10 ** new, iteration, rollback=True)
        since = iteration - self.changed_at
        if since < self.cfg.settle + self.cfg.check_every or (since - self.cfg.settle) % self.cfg.check_every:
            return None
        if self.gave_up:
            return None
        measured = self._measure(iteration)
        if measured is None:
            return None
        lk = math.log10(self.kappa)
        self.points.append((lk, math.log10(measured)))
        if self.clean and since == self.cfg.settle + self.cfg.check_every:
            # the first check after a clean start: every probe measured at the same age, so the
            # curve is kappa's effect, not the chain's ageing (a young full model lengthens its
            # syllables at any kappa: 18 x 2,330 frames, 343 to 400 ms in 20 iterations)
            self.clean_points.append((lk, math.log10(measured)))
        drift = self._drift(iteration)
        heading = 10 ** (math.log10(measured) + drift)
        # judged halfway along where it is heading: the whole stretch, now to horizon, is what must fit
        judged = 10 ** (math.log10(measured) + 0.5 * drift)
        if self.clean and since == self.cfg.settle + self.cfg.check_every:
            self.probes.append([lk, math.log10(measured), since, math.log10(judged)])
        elif self.clean and self.probes and abs(self.probes[-1][0] - lk) < 1e-12:
            self.probes[-1][1:] = [math.log10(measured), since, math.log10(judged)]
        # a held probe in the window is corrected for a drift only when even halfway to where
        # it heads it is out: three window means in a row one way is also what noise often does,
        # and a correction of a settled chain is a jump of its own (across a cliff, real data)
        inside = self.accepted(measured) and self.in_window(
            judged if self.cfg.restart_probes and self.committed else heading)
        # inside the window, at most max_nudges corrections toward the aim: where the response is
        # flat (real full models: 0.02 decades of duration per decade of kappa) more only spend budget
        # probes (restart_probes) that land in the window hold at once: a nudge would start again
        # from the start, and a young probe's median is a draw, not a curve (real data, one start,
        # one seed: 231, 480 and 673 ms at kappas 0.005 decades apart). A committed chain is nudged
        # like any other: it goes on at the new kappa, nothing is drawn again (real data, 162 s: a
        # committed chain held at the window's edge, 400 ms, was at 433 ms 100 iterations later)
        probe = self.cfg.restart_probes and not self.committed
        if self.replay_until is not None and iteration < self.replay_until:
            # the committed chain replays its probe, which held at this age: acting on what is known
            # would undo what the probe showed later (real golden mouse, first 120 s: a replay measured
            # 310 ms at age 15 and was nudged up, though its probe had risen to 351 ms by age 35,
            # heading for 438; it left the window above)
            self.frozen = self.settled = True
            self._note(iteration, measured, "hold (the committed chain replays its probe)", drift)
            return None
        if inside and (self.frozen or self.on_target(judged) or self.nudges >= self.cfg.max_nudges
                       or not self._has_budget(iteration) or probe):
            self.frozen = self.settled = True
            self._note(iteration, measured, "hold", drift)
            return None
        self.nudges = self.nudges + 1 if inside else 0
        if not self._has_budget(iteration):
            self._note(iteration, measured, "hold (no budget left)", drift)
            return None
        too_short = math.log10(judged) < self.center
        # a chain drifts: what a kappa did bracket_memory iterations ago no longer bounds the search
        # (real data: a probe measured 384 ms at kappa 7.8e5; 35 iterations later the chain sat at
        # 245-271 ms at 2.5e5..6.7e5 and bisection toward that stale side used up the budget)
        # Probes that all restart from one start (restart_probes), measured at one age, do not
        # drift apart: a side they set stands (real open-field data, where the response is a cliff,
        # 275-302 ms below kappa 1.2e8 and 533-629 ms above: forgetting it sent kappa across three
        # decades and back)
        if (self.low_k is not None and not self.low_lasts
                and iteration - self.low_at > self.cfg.bracket_memory):
            self.low_k = None
        if (self.high_k is not None and not self.high_lasts
                and iteration - self.high_at > self.cfg.bracket_memory):
            self.high_k = None
        lasts = self.cfg.restart_probes and self.clean and since == self.cfg.settle + self.cfg.check_every
        if drift:  # young probes measured short (or long) say nothing about where this one heads
            if too_short:
                self.high_k = None
            else:
                self.low_k = None
        if too_short:
            if self.low_k is None or lk >= self.low_k:
                self.low_k, self.low_at, self.low_lasts = lk, iteration, lasts
            if not self.cfg.restart_probes:
                self.bases.append((iteration, lk, measured))  # progress kept: the chain goes on from here
        else:
            if self.high_k is None or lk <= self.high_k:
                self.high_k, self.high_at, self.high_lasts = lk, iteration, lasts
            if self.clean and len(self.bases) > 1 and lk <= self.bases[-1][1] + 1e-9:
                # a probe from this base at a kappa no higher than the base's own came back too long:
                # the base was already lengthening (measured short on average, long at its end)
                self.bases.pop()
        if (self.low_k is not None and self.high_k is not None
                and self.high_k - self.low_k < self.cfg.min_bracket):
            # the chain's own wandering is larger than kappa's effect at this scale (seen on real
            # data: ten rollbacks within 0.06 decades, each measuring the same): trust the newest side,
            # unless the older one was set by a probe from the one start at the probes' age: then the
            # response is a cliff there (real open-field: 302 ms at kappa 1.33e8, 629 ms at 1.64e8)
            if too_short and not self.high_lasts:
                self.high_k = None
            elif not too_short and not self.low_lasts:
                self.low_k = None
        if self.cfg.restart_probes and not self.committed:
            # both sides of a bracket narrower than min_bracket set by probes at the probes' one age:
            # at that age the median jumps across the window, and more probes would only draw again
            cliff = (self.low_k is not None and self.high_k is not None and self.low_lasts
                     and self.high_lasts and self.high_k - self.low_k < self.cfg.min_bracket)
            if cliff or iteration + self.cfg.settle + self.cfg.check_every > self.probe_end():
                # probing ends: from here one chain runs on, corrected in small steps, never restarted
                self.committed = True
                why = "a cliff at the probes' age" if cliff else "no time left for probes"
                best = self._best_probe(lk, measured, iteration)
                if best is not None:
                    self._note(iteration, measured, f"rollback, kappa -> {10 ** best[0]:.3g} ({why}: the "
                                                    f"best probe, {10 ** best[1]:.0f} ms, runs again and on)")
                    new = self._move(10 ** best[0], iteration, rollback=True)
                    self.replay_until = iteration + int(best[2])
                    return new
        committed = self.cfg.restart_probes and self.committed
        # a chain that must shorten its syllables goes back to the base (a state measured short,
        # or the start) when there is one: a continuing chain shortens them only slowly, so its
        # measurements would say more about its past than about the new kappa (hysteresis)
        # a correction for drift alone (the duration is in the window, heading out) keeps the chain:
        # a probe from the start would be young again and drift the same way, while the chain's
        # own drift slows as it settles
        direction = -1 if not too_short else 1
        keep = (drift != 0.0 and self.kept != direction
                and (self.accepted(measured) or (self.settled and self._near_window(measured))))
        # a nudge of a committed chain steps by the prior slope: the probes' slope is that of young
        # chains, and a flat one (clipped to 0.05) sent a settled chain half a decade down from
        # 395 ms to 300 ms, then 267 ms 100 iterations later (real golden mouse, seed 0)
        slope = self.cfg.slope0 if inside and committed else self._slope(too_long=not too_short)
        if too_short and (committed or (self.cfg.restart_probes and keep)):
            # a full model that goes on lengthens its syllables within tens of iterations of a rise
            # in kappa, and goes on lengthening after the check that sees it (real golden mouse cuts:
            # half a decade up took kept and committed chains from 310-340 ms to 393-433 ms): a
            # correction up that keeps the chain steps no further than the prior slope says
            slope = max(slope, self.cfg.slope0)
        step = (self.center - math.log10(judged)) / slope
        # inside the window: a nudge toward the centre; a committed chain: a small step, for it goes
        # on and a settled model follows kappa slowly if at all
        limit = 0.5 if (inside or committed) else self.cfg.max_step
        step = max(-limit, min(limit, step))
        new = lk + step
        if self.low_k is not None and self.high_k is not None and not (self.low_k < new < self.high_k):
            new = 0.5 * (self.low_k + self.high_k)
        floor, ceiling = math.log10(self.cfg.kappa_min), math.log10(self.cfg.kappa_max)
        new = min(max(new, floor), ceiling)
        if abs(new - lk) < 1e-9 and (new == floor or new == ceiling):
            self.gave_up = (f"kappa is at its {'lower' if new == floor else 'upper'} limit ({10 ** new:g}) "
                            f"and the median duration is still {measured:.0f} ms")
            self._note(iteration, measured, "give up")
            return None
        rollback = ((self.cfg.restart_probes or not too_short) and not keep and not committed
                    and self.base_iter is not None and self.base_iter != iteration)
        # a kept chain that needs a second correction the same way did not follow the first
        self.kept = direction if keep else 0
        what = "rollback, " if rollback else ""
        self._note(iteration, measured, f"{what}kappa -> {10**new:.3g}", drift)
        return self._move(10 ** new, iteration, rollback)

    def _best_probe(self, lk: float, measured: float, iteration: int) -> list | None:
        """The probe ([log10 kappa, log10 ms, age, log10 ms judged], by its latest check) nearer the
        window than the chain now (a chain in the window runs on).

        None when no probe was: then the chain as it is runs on. Probes from one start with one
        random key are replayable: rolling back to the start at a probe's kappa draws the same
        young chain again, which then ages at that kappa. A replay that reaches the age its probe was
        last checked at only after the last correction allowed runs its known course uncorrected, so
        that probe counts by the worse of where it was and where its latest check saw it heading
        (real golden mouse, first 140 s: a probe seen at 406 ms at age 75, heading for 564 ms, was
        replayed from iteration 145 and was at 500 ms at the end).
        """
        lo, hi = math.log10(self.cfg.lo_ms), math.log10(self.cfg.hi_ms)

        def off(p):  # decades outside the window (a chain in it runs on)
            where = (p[1], p[3]) if iteration + p[2] > self.last_change_allowed() else (p[1],)
            return max(max(lo - at, at - hi, 0.0) for at in where)

        now = (lk, math.log10(measured), 0, math.log10(measured))
        best = min(self.probes, key=off, default=now)
        if off(best) >= off(now) or self.base_iter is None:
            return None
        return best

    def _note(self, iteration: int, measured: float, action: str, drift: float = 0.0) -> None:
        if drift:
            action += f" (drifting toward {10 ** (math.log10(measured) + drift):.0f} ms)"
        self.checks.append(Check(iteration, self.kappa, measured, self.in_window(measured), action))

    def _has_budget(self, iteration: int) -> bool:
        return iteration <= self.last_change_allowed()

    def _move(self, kappa: float, iteration: int, rollback: bool) -> float:
        self.frozen = False
        self.replay_until = None
        self._set(kappa, iteration)
        self.rollback = self.base_iter if rollback else None
        self.clean = self.rollback is not None
        return self.kappa

    @classmethod
    def replay(cls, cfg: TunerConfig, medians: list, upto: int) -> KappaTuner:
        """Rebuild the tuner from saved observations up to iteration ``upto``."""
        t = cls(cfg)
        for it, med in medians:
            if it > upto:
                break
            t.observe(int(it), med)
        return t

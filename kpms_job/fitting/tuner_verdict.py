"""What a finished tuned chain reports: its verdict, and which state it delivers.

A mixin of :class:`.tuner.KappaTuner` (it reads the tuner's checks, bases and window).
"""

from __future__ import annotations

import math


class Verdict:
    def best(self) -> dict | None:
        """The check whose duration was closest to the window's centre (log scale)."""
        ok = [c for c in self.checks if c.median_ms is not None]
        if not ok:
            return None
        c = min(ok, key=lambda c: abs(math.log10(c.median_ms) - self.center))
        return c.as_dict()

    def delivery(self, final_ms: float | None) -> tuple[int, float] | None:
        """(iteration, kappa) of the state to deliver instead of the final one, or None.

        A chain that ends outside the window delivers the latest state it held in the window (a
        keeper, with its snapshot: the first of its stretch at one kappa) when there is one: the
        chain may have drifted or jumped out after it. Else the fitted state measured nearest to the
        window: the final state, or a base (a state measured short of the aim, with its snapshot)
        when that was nearer. Seen on real data (648 fps): the AR-HMM stayed near 120 ms from kappa
        1e12 to 1e17, then every syllable merged into one (8,253 ms, the whole recording) and the
        budget ran out there; the full model started from that state stayed merged.
        """
        if self.in_window(final_ms):
            return None
        if self.keepers:
            # the latest, the one watched longest: an earlier one not seen to leave was seen less (real
            # IBL pupil: one held 15 iterations at its kappa, delivered so, was at 575 ms 100 later)
            it, lk = self.keepers[-1][:2]
            return it, 10 ** lk
        lo, hi = math.log10(self.cfg.lo_ms), math.log10(self.cfg.hi_ms)

        def off(ms):
            return max(lo - math.log10(ms), math.log10(ms) - hi, 0.0) if ms and ms > 0 else math.inf

        fitted = [b for b in self.bases if b[0] > 0]  # the start is no fit of this chain
        if not fitted:
            return None
        it, lk, ms = min(fitted, key=lambda b: off(b[2]))
        if final_ms is not None and math.isfinite(final_ms) and off(final_ms) <= off(ms):
            return None
        return it, 10 ** lk

    def level(self, upto: int, since: int) -> tuple[float, int] | None:
        """(ms, n): where the chain sat at the end, the geometric mean of the medians of the last ``n``
        iterations up to ``upto`` (at most ``drift_windows`` check windows) that ran at the kappa set
        at iteration ``since``, after it settled. None when fewer than one check window ran so."""
        first = max(since + self.cfg.settle, upto - self.cfg.drift_windows * self.cfg.check_every)
        vals = [m for i, m in self.medians if first < i <= upto and m is not None and m > 0]
        if len(vals) < self.cfg.check_every:
            return None
        return 10 ** (sum(math.log10(v) for v in vals) / len(vals)), len(vals)

    def wander(self) -> tuple[float, int] | None:
        """(sd, n): how far one state's median strays from where its chain sits, in decades.

        The per-iteration log medians about the mean of their stretch at one kappa (after it
        settled), pooled over every stretch of at least one check window: n iterations in all. It
        includes a stretch's slow wander and ageing, which a continuation inherits. None when no
        stretch was that long."""
        ss, dof, n = 0.0, 0, 0
        for a, b in zip([0, *self.changes], [*self.changes, math.inf], strict=True):
            vals = [math.log10(m) for i, m in self.medians if a + self.cfg.settle < i <= b and m and m > 0]
            if len(vals) < self.cfg.check_every:
                continue
            mean = sum(vals) / len(vals)
            ss += sum((v - mean) ** 2 for v in vals)
            dof, n = dof + len(vals) - 1, n + len(vals)
        return (math.sqrt(ss / dof), n) if dof else None

    def _noise(self) -> tuple[dict, str]:
        """The chain's wander against the window: fields for the report, and a sentence for the verdict.

        With a normal draw of sd ``wander`` about a chain sitting at the window's centre, the share of
        states outside it is ``erfc(h / (sd * sqrt 2))``, h the window's half-width (decades): what
        even a perfectly tuned kappa would deliver out of the window. It is a floor: chains drawn
        from one state at one kappa sit apart too (by up to 0.25 decades on the short rows below).
        Replayed from the tuner records of every real_data.py and truncated.py row run so far: real
        recording sets of 8 to 78 s wandered 0.035-0.17 decades (all but one 0.04 or more; a set
        whose syllables all merged into one sat still), cuts of 100-140 s 0.010-0.048, sets of 162 s
        or more 0.010-0.025; the 300-400 ms window's half-width is 0.062."""
        w = self.wander()
        if w is None:
            return {"wander_decades": None, "wander_iterations": 0, "out_share_centred": None}, ""
        sd, n = w
        half = 0.5 * (math.log10(self.cfg.hi_ms) - math.log10(self.cfg.lo_ms))
        out = math.erfc(half / (sd * math.sqrt(2.0))) if sd > 0 else 0.0
        text = (f"; at one kappa a state's median strayed {sd:.3f} decades (sd, over {n} iterations) from "
                f"where its chain sat, against the window's half-width of {half:.3f}: even a chain centred "
                f"in the window would have {100 * out:.0f}% of its states outside it")
        return {"wander_decades": sd, "wander_iterations": n, "out_share_centred": out}, text

    def _edge(self, upto: int, since: int) -> tuple[float | None, str]:
        """The chain's level at the end (``level``), and a warning when a full model (one that must
        stay in the window ``drift_horizon`` iterations) sat above the band around the aim.

        One state's median is a draw about where its chain sits; the chain, not the state, is what
        goes on, and it wanders (real cuts of 100-140 s: by 0.04 decades, sd, in the 50 iterations
        after the last correction allowed, half the window's width in 100). A full model lengthens
        its syllables as it ages, so a chain high in the window is the one that leaves it: of the
        models delivered with exit 0 on real recordings of 100 s or more (benchmarks/truncated.py
        and real_data.py, 59 runs, 16 of them run after this rule was set), 5 of the 10 whose chain
        averaged above this band were out of the window 100 iterations later, 1 of the 49 below it."""
        lvl = self.level(upto, since)
        if lvl is None:
            return None, ""
        top = 10 ** (self.center + self.cfg.band * self._half_band())
        if self.cfg.drift_horizon <= 0 or lvl[0] <= top:
            return lvl[0], ""
        return lvl[0], (f"; near the window's upper edge: its last {lvl[1]} iterations averaged {lvl[0]:.0f} ms, "
                        f"above {top:.0f} ms, and a full model lengthens its syllables as it ages, so it may "
                        f"leave the window (another model.seed, or more recordings, give it room)")

    def _ended_out_from(self, keeper, ended_ms) -> bool:
        """The chain ended out of the window still in the keeper's stretch at its kappa: the mean of
        its last check window was out, as a check measures it (its last state alone, when none can).

        One state's median is a draw about its chain, as at every check. Real cuts of 120 and 140 s:
        of four chains that ended on a state out of the window (417, 433, 433 and 267 ms) with their
        last check window in it, three delivered a state that was in the window 100 iterations on."""
        if keeper[3] != self.changed_at or ended_ms is None:
            return False
        window = self._measure(self.medians[-1][0]) if self.medians else None
        return not self.in_window(ended_ms if window is None else window)

    def report(self, final_ms: float | None, delivered: tuple[int, float] | None = None,
               ended_ms: float | None = None) -> dict:
        """The verdict; ``delivered``: (iteration, kappa) of the state delivered instead of the last,
        whose median is ``final_ms``; ``ended_ms``: the last state's median then."""
        inside = self.in_window(final_ms)
        fixed_from = self.changed_at
        last = held = self.medians[-1][0] if self.medians else self.end_iteration()
        kept = next((k for k in self.keepers if delivered and k[0] == delivered[0]), None)
        stable = None  # unknown: no continuation of the delivered state at its kappa was watched
        if inside and kept is not None:
            ended = "NaN" if ended_ms is None else f"{ended_ms:.0f}"
            out_at = self.left.get(kept[0], last if self._ended_out_from(kept, ended_ms) else None)
            watched = self.held_to.get(kept[0], kept[0]) - kept[0]
            horizon = self.cfg.drift_horizon
            # what stable means: the state's own chain, at its kappa, still in the window that many
            # iterations on; a chain seen to leave only later does not undo that (real flies, first
            # 140 s: a state held 120 iterations, its chain out 130 iterations on, 100 on it was in)
            stable = True if horizon and watched >= horizon else (False if out_at is not None else None)
            if stable:
                what = (f"in window and stable (its own chain, still at its kappa, was in the window "
                        f"{watched} iterations on{f', out by iteration {out_at}' if out_at is not None else ''})")
            else:
                what = ("in window" if out_at is None else
                        f"in window but NOT stable (its own chain, still at its kappa, was out of the window "
                        f"by iteration {out_at})")
            verdict = (f"{what}: delivers the state of iteration {kept[0]} ({final_ms:.0f} ms at kappa "
                       f"{delivered[1]:.3g}, after {kept[0] - kept[3]} iterations at that kappa), the last "
                       f"state held in the window; the chain ran on to iteration {last} and ended at "
                       f"{ended} ms at kappa {self.kappa:.3g}")
            fixed_from, held = kept[3], kept[0]
        elif inside:
            verdict = (f"in window: final median {final_ms:.0f} ms at kappa {self.kappa:.3g}; "
                       f"the last {last - fixed_from} iterations ran at that fixed kappa")
        else:
            best = self.best()
            closest = f"{best['median_ms']:.0f} ms at kappa {best['kappa']:.3g}" if best else "none"
            why = self.gave_up or "the budget ran out before the duration settled in the window"
            ended = "NaN" if final_ms is None else f"{final_ms:.0f}"
            if delivered is None:
                ended = f"final median {ended} ms at kappa {self.kappa:.3g}"
            else:  # final_ms is the delivered state's median; the chain itself ended elsewhere
                ended = (f"the chain ended at kappa {self.kappa:.3g}, and delivers the state of iteration "
                         f"{delivered[0]} ({ended} ms at kappa {delivered[1]:.3g}), the nearest to the window")
            verdict = (f"NOT in window [{self.cfg.lo_ms:g}, {self.cfg.hi_ms:g}] ms: {ended}; "
                       f"{why}; closest measured: {closest}")
        # where the chain sat at its end: a delivered state's chain that ran on at its kappa sat
        # where it ended, and that is where the state's continuation goes on from
        upto = last if kept is not None and kept[3] == self.changed_at else held
        level, edge = self._edge(upto, fixed_from) if inside else (None, "")
        edge = edge if stable is None else ""  # a state seen to stay, or to leave, needs no forecast
        verdict += edge
        noise, said = self._noise()
        full = self.cfg.drift_horizon > 0  # a model that must stay in the window (the AR-HMM need not)
        failed = not inside or (full and stable is False)
        if said and (failed or (full and stable is None)):
            # advice only where the wander alone puts 1 state in 20 out (the two-sd convention)
            advice = (" (more or longer recordings steady it; a wider target window tolerates it)"
                      if failed and noise["out_share_centred"] >= 0.05 else "")
            verdict += said + advice
        kappa = self.kappa if delivered is None else delivered[1]
        return {**noise, "level_ms": level, "near_upper_edge": bool(edge),
                "attempts": [c.as_dict() for c in self.checks], "final_kappa": kappa,
                "final_median_ms": final_ms, "in_window": inside, "verdict": verdict,
                "fixed_kappa_iters": held - fixed_from, "iterations": last, "gave_up": self.gave_up,
                "delivered_iteration": delivered[0] if delivered else None, "stable": stable}

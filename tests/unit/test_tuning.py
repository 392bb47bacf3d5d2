"""The kappa search on its own, against simulated chains (no keypoint-moseq needed).

Each simulated chain maps (kappa, iterations run) to a per-iteration median syllable
duration in ms, quantised to whole frames at 30 fps like real data.
"""

import math
import random

import pytest

from kpms_job.fitting.tuner import KappaTuner, TunerConfig

FPS = 30.0


def quantise(ms):
    return round(ms * FPS / 1000.0) * 1000.0 / FPS


def make_cfg(kappa0=1e6, iters=200, budget=1.3, fixed_iters=None, **kw):
    return TunerConfig(lo_ms=300, hi_ms=400, kappa0=kappa0, min_iters=iters, max_iters=int(budget * iters),
                       fixed_iters=iters // 2 if fixed_iters is None else fixed_iters, **kw)


def drive(tuner, response, seed=0):
    """Run the tuner against ``response(kappa, it, rng)``; return (final ms, last iteration)."""
    rng = random.Random(seed)
    ms, it = None, 0
    for it in range(1, tuner.cfg.max_iters + 1):
        ms = response(tuner.kappa, it, rng)
        tuner.observe(it, ms)
        if tuner.done(it):
            break
    return (response(tuner.kappa, it, rng) if ms is None else ms), it


def drive_with_memory(tuner, target, start_ms, shrink, seed):
    """A chain with memory: its duration moves halfway to ``target`` per iteration when rising
    but only ``shrink`` of the way when falling (measured on real data); rollbacks restore the
    level of the snapshot rolled back to. Returns (final ms, last iteration)."""
    rng = random.Random(seed)
    level = {0: start_ms}
    final, it = None, 0
    for it in range(1, tuner.cfg.max_iters + 1):
        goal = target(tuner.kappa, it, rng)
        prev = level[it - 1]
        level[it] = prev + (goal - prev) * (0.5 if goal > prev else shrink)
        final = quantise(level[it])
        new = tuner.observe(it, final)
        if new is not None and tuner.rollback is not None:
            assert tuner.rollback > 0, "rolled back to the unmeasured start"
            level[it] = level[tuner.rollback]
        if tuner.done(it):
            break
    return final, it


def test_chain_with_memory_rolls_back_instead_of_waiting_for_long_syllables_to_shrink():
    """Real chains: durations rise fast with kappa but fall only slowly (measured on real data).
    The response is steeper than the tuner's prior, so its first step up overshoots above the
    window; a continuing chain would then need hundreds of iterations to shrink back."""
    t = KappaTuner(make_cfg(kappa0=1e6, iters=200, budget=1.3))
    final, last = drive_with_memory(t, power_law(1e8, slope=0.6), start_ms=100.0, shrink=0.002, seed=1)
    rollbacks = [c for c in t.checks if c.action.startswith("rollback")]
    assert rollbacks, [c.as_dict() for c in t.checks]
    assert t.in_window(final), t.report(final)["verdict"]
    # kappa's own response is in the window (7.7e7..1.25e8), not a kappa decades below it at which
    # the long syllables were still shrinking through the window (the model would go on shrinking)
    assert 5e7 <= t.kappa <= 2e8, t.kappa
    assert last <= 260


def power_law(k_target, slope=0.25, noise=0.0, drift=0.0, cap=None):
    """Duration 350 ms at k_target, times k^slope; lognormal noise; upward drift over iterations."""
    def f(kappa, it, rng):
        ms = 350.0 * (kappa / k_target) ** slope
        ms *= 1.0 + drift * (1 - math.exp(-it / 60.0))
        if cap is not None:
            ms = min(ms, cap)
        ms *= math.exp(rng.gauss(0, noise))
        return quantise(max(ms, 1000.0 / FPS))
    return f


@pytest.mark.parametrize("k_target", [1e3, 1e6, 1e9])
def test_monotone_response_lands_in_window_within_budget(k_target):
    t = KappaTuner(make_cfg(kappa0=1e6))
    final, last = drive(t, power_law(k_target))
    assert t.in_window(final), t.report(final)["verdict"]
    assert last <= 260
    assert t.report(final)["fixed_kappa_iters"] >= 100


@pytest.mark.parametrize("seed", range(5))
def test_noisy_response_still_lands(seed):
    t = KappaTuner(make_cfg(kappa0=1e5))
    final, last = drive(t, power_law(3e7, noise=0.15), seed=seed)
    # the measurement averages iterations: the chain's own mean is inside ...
    assert 300 <= 350.0 * (t.kappa / 3e7) ** 0.25 <= 400
    # ... and the chain ends on a state whose own median is inside too
    assert t.in_window(final), t.report(final)["verdict"]
    assert 200 <= last <= 260


def test_chain_ends_on_the_first_in_window_state_after_the_fixed_stretch():
    """One state's median wanders by a frame around an on-target mean: end on an inside one."""
    wobble = [433.3, 433.3, 400.0, 366.7]  # 13, 13, 12, 11 frames at 30 fps, repeating

    def f(kappa, it, rng):
        return wobble[it % 4]

    t = KappaTuner(make_cfg(kappa0=1e6))
    t.frozen = True  # already on target: only the ending is under test
    for it in range(1, 261):
        t.observe(it, f(t.kappa, it, None))
        if t.done(it):
            break
    assert it >= 200 and t.in_window(f(t.kappa, it, None))
    assert t.report(f(t.kappa, it, None))["iterations"] == it


def test_chain_that_starts_with_long_syllables_is_not_rolled_back_to_its_start():
    """The full model starts from the AR-HMM's state; if that is already too long, going back
    to it after every check undoes the shortening (seen on real data: ten rollbacks to
    iteration 0, kappa down six decades, no change). The chain must keep its progress."""
    t = KappaTuner(make_cfg(kappa0=1e6, iters=200, budget=1.3))  # one decade too sticky
    final, it = drive_with_memory(t, power_law(1e5, slope=0.2), start_ms=500.0, shrink=0.05, seed=2)
    assert t.in_window(final), t.report(final)["verdict"]
    assert it <= 260


@pytest.mark.parametrize("k_target", [1e0, 1e17])
def test_target_far_outside_any_fixed_bounds(k_target):
    # the baseline bisects log10 kappa in [3, 18]; 1e0 and 1e17 need no bounds at all here
    t = KappaTuner(make_cfg(kappa0=1e6, iters=200, budget=1.3))
    final, _ = drive(t, power_law(k_target, slope=0.4))
    assert t.in_window(final), t.report(final)["verdict"]


def test_drift_during_the_chain_is_corrected_and_final_stretch_is_fixed():
    t = KappaTuner(make_cfg(kappa0=1e6))
    final, last = drive(t, power_law(1e6, drift=0.6))
    rep = t.report(final)
    assert rep["in_window"], rep["verdict"]
    # the last fixed_kappa_iters iterations ran at one kappa: no change after that point
    changes = [a["iter"] for a in rep["attempts"] if a["action"].startswith("kappa")]
    assert not changes or last - max(changes) >= 100


def test_saturating_response_gives_up_with_a_plain_verdict():
    t = KappaTuner(make_cfg(kappa0=1e6))
    final, last = drive(t, power_law(1e6, cap=150.0))
    rep = t.report(final)
    assert not rep["in_window"]
    assert "NOT in window" in rep["verdict"] and "closest" in rep["verdict"]
    assert last <= 260


def test_nan_fits_step_back_toward_the_last_kappa_that_worked():
    """Above kappa 1e11 every fit is NaN; the chain starts there, must see NaN and step back."""
    base = power_law(1e9, slope=0.3)

    def f(kappa, it, rng):
        return None if kappa > 1e11 else base(kappa, it, rng)

    t = KappaTuner(make_cfg(kappa0=1e13))
    final, _ = drive(t, f)
    attempts = t.report(final)["attempts"]
    assert attempts[0]["median_ms"] is None and attempts[0]["kappa"] == 1e13
    assert t.kappa <= 1e11
    assert t.in_window(final), t.report(final)["verdict"]


def test_replay_rebuilds_the_same_tuner_at_any_iteration():
    cfg = make_cfg(kappa0=1e4)
    t = KappaTuner(cfg)
    drive(t, power_law(1e8, noise=0.1), seed=3)
    for upto in (0, 17, 55, 120, t.medians[-1][0]):
        r = KappaTuner.replay(cfg, t.medians, upto)
        ref = KappaTuner.replay(cfg, t.medians[: sum(1 for i, _ in t.medians if i <= upto)], 10**9)
        assert r.kappa == ref.kappa and r.changed_at == ref.changed_at
        assert [c.as_dict() for c in r.checks] == [c.as_dict() for c in ref.checks]


def test_duration_too_long_at_every_kappa_gives_up_only_at_the_limit_from_a_clean_start():
    """No kappa reaches the window: the verdict says so only after a clean probe at kappa_min."""
    t = KappaTuner(make_cfg(kappa0=5e12, start_ms=280.0))

    def f(kappa, it, rng):  # every probe jumps to 500 ms, whatever kappa
        return quantise(500.0 * math.exp(rng.gauss(0, 0.03)))

    final, last = drive(t, f)
    rep = t.report(final)
    assert not rep["in_window"] and "lower limit" in rep["verdict"], rep["verdict"]
    probes = [a for a in rep["attempts"] if a["action"].startswith("rollback")]
    assert probes and t.clean, "the last measurement was not from a clean start"
    assert last <= 260


def hysteresis_chain(k_ref, ms_ref, slope, up, down, noise=0.05, fps=60.0):
    """A chain like the real full models: its log duration moves toward an equilibrium
    ``ms_ref * (kappa / k_ref) ** slope`` by ``up`` of the way per iteration when rising and
    only ``down`` of the way when falling (hysteresis; ``up`` < 0.2 is a response that lags
    by tens of iterations), with lognormal noise, quantised to frames."""
    def equilibrium(kappa):
        return math.log(ms_ref * (kappa / k_ref) ** slope)

    def step(level, kappa):
        goal = equilibrium(kappa)
        return level + (goal - level) * (up if goal > level else down)

    def observe(level, rng):
        ms = math.exp(level + rng.gauss(0, noise))
        return max(round(ms * fps / 1000.0), 1) * 1000.0 / fps

    return step, observe


def drive_hysteresis(tuner, chain, start_ms, seed, stability_iters=100):
    """Run the tuner on ``chain``; rollbacks restore the snapshot's level. Returns (final ms,
    last iteration, ms after ``stability_iters`` more iterations at the final kappa)."""
    step, observe = chain
    rng = random.Random(seed)
    level = {0: math.log(start_ms)}
    final, it = None, 0
    for it in range(1, tuner.cfg.max_iters + 1):
        level[it] = step(level[it - 1], tuner.kappa)
        final = observe(level[it], rng)
        new = tuner.observe(it, final)
        if new is not None and tuner.rollback is not None:
            level[it] = level[tuner.rollback]
        if tuner.done(it):
            break
    later = level[it]
    for _ in range(stability_iters):
        later = step(later, tuner.kappa)
    return final, it, observe(later, rng)


@pytest.mark.parametrize("seed", range(3))
def test_full_model_that_starts_long_and_forgets_slowly_lands_and_stays(seed):
    """The case seen on real data (2 x 7,200 frames at 60 fps): the AR-HMM ended at 317 ms, the
    full model at kappa 1.2e11 measured 503 ms and a continuing chain stayed long while kappa
    fell four decades, but a clean start from the AR-HMM at kappa 7.5e4 measured 383 ms. The
    duration barely depends on kappa (0.02 decades per decade): the window spans 5 decades."""
    t = KappaTuner(make_cfg(kappa0=1.2e11, start_ms=317.0, fixed_iters=50))
    chain = hysteresis_chain(k_ref=7.5e4, ms_ref=383.0, slope=0.02, up=0.15, down=0.005)
    final, last, later = drive_hysteresis(t, chain, 317.0, seed)
    rep = t.report(final)
    assert rep["in_window"], rep["verdict"]
    assert 300 <= later <= 400, f"left the window 100 iterations later: {later:.0f} ms"
    assert last <= 260


@pytest.mark.parametrize("k_ref,slope,up,kappa0", [(1e6, 0.1, 0.07, 1e11), (1e3, 0.25, 0.07, 1e8),
                                                    (1e9, 0.1, 0.15, 1e7), (1e4, 0.3, 0.5, 1e10)])
@pytest.mark.parametrize("seed", range(2))
def test_lagging_response_with_hysteresis_lands_and_stays(k_ref, slope, up, kappa0, seed):
    """A response that lags by tens of iterations (``up`` 0.07: half-way after 10), durations
    that fall 20 times slower than they rise, noisy medians; start below the window."""
    t = KappaTuner(make_cfg(kappa0=kappa0, start_ms=290.0, fixed_iters=50))
    chain = hysteresis_chain(k_ref=k_ref, ms_ref=346.0, slope=slope, up=up, down=up / 20)
    final, last, later = drive_hysteresis(t, chain, 290.0, seed)
    rep = t.report(final)
    assert rep["in_window"], rep["verdict"]
    assert 300 <= later <= 400, f"left the window 100 iterations later: {later:.0f} ms"
    assert last <= 260


def test_replay_rebuilds_the_same_tuner_with_clean_probes():
    cfg = make_cfg(kappa0=1.2e11, start_ms=317.0, fixed_iters=50)
    t = KappaTuner(cfg)
    drive_hysteresis(t, hysteresis_chain(7.5e4, 383.0, 0.02, 0.15, 0.005), 317.0, seed=4)
    assert any(c.action.startswith("rollback") for c in t.checks)
    for upto in (0, 15, 16, 44, 100, t.medians[-1][0]):
        r = KappaTuner.replay(cfg, t.medians, upto)
        ref = KappaTuner.replay(cfg, [m for m in t.medians if m[0] <= upto], 10**9)
        assert (r.kappa, r.changed_at, r.base_iter, r.clean) == (ref.kappa, ref.changed_at, ref.base_iter, ref.clean)


@pytest.mark.parametrize("seed", range(3))
def test_aiming_low_ends_in_the_lower_half_of_the_window(seed):
    """The AR-HMM aims a quarter of the way up: its last state lies between 300 ms and the centre."""
    t = KappaTuner(make_cfg(kappa0=1e5, iters=50, budget=4.0, aim=0.25))
    final, last = drive(t, power_law(3e7, noise=0.1), seed=seed)
    assert 300 <= final <= 300 * (400 / 300) ** 0.5 + 1e-9, t.report(final)["verdict"]
    assert last <= 200


def test_a_kappa_measured_long_ago_stops_bounding_the_search():
    """Real chains drift: open-field's full model measured 384 ms at kappa 7.8e5, then sat at
    245-271 ms at lower kappas 35 iterations later, and bisecting toward the stale 'too long'
    side spent the budget. Here kappa 1e7 measures too long at first; 55 iterations later the
    chain is far too short at 9e5 and the secant step must be free to go past 1e7."""
    t = KappaTuner(make_cfg(kappa0=1e7, start_ms=250.0, fixed_iters=50))
    script = [633.3] * 15 + [333.3] * 45 + [150.0] * 10
    moves = []
    for it, ms in enumerate(script, start=1):
        new = t.observe(it, ms)
        if new is not None:
            moves.append((it, new))
    assert moves[0][0] == 15 and moves[0][1] < 1e7, moves  # too long: probe lower from the start
    assert moves[-1][0] == 70, moves
    assert moves[-1][1] > 1e7, f"stayed below the kappa measured too long 55 iterations before: {moves}"


def test_a_base_that_turns_long_at_its_own_kappa_is_dropped_for_the_one_before():
    """Real data: a full-model state measured 302 ms on average (its last iterations already
    longer); four probes from it, down to a kappa below its own, all came back at 419-425 ms.
    A probe from a base at no more than the base's own kappa that comes back too long shows the
    base was not short: the next probe starts from the base before it (here the start)."""
    t = KappaTuner(make_cfg(kappa0=1e8, start_ms=250.0, fixed_iters=50))
    rollbacks = []
    for it in range(1, 200):
        new = t.observe(it, 280.0 if it <= 15 else 500.0)
        if new is not None and t.rollback is not None:
            rollbacks.append((it, t.rollback, new))
    assert rollbacks and rollbacks[0][1] == 15, rollbacks  # the short state is the first base
    assert any(r[1] == 0 for r in rollbacks), f"never went back past the spoiled base: {rollbacks}"


def drive_settling(tuner, k_ref, slope, start_ms, seed, fast=0.3, slow=0.003, settle_iters=15):
    """A chain that follows kappa only while it is fresh: for ``settle_iters`` iterations after a
    (re)start its log duration moves ``fast`` of the way to the equilibrium per iteration, after
    that only ``slow`` of the way, up or down (open-field's full model, seed 0: a continuing chain
    stayed at 233-275 ms while kappa rose from 2.5e6 to 2e11). Rollbacks restart it."""
    rng = random.Random(seed)
    level, restarted, final, it = {0: math.log(start_ms)}, 0, None, 0
    for it in range(1, tuner.cfg.max_iters + 1):
        goal = math.log(346.0 * (tuner.kappa / k_ref) ** slope)
        rate = fast if it - restarted <= settle_iters else slow
        level[it] = level[it - 1] + (goal - level[it - 1]) * rate
        final = quantise(math.exp(level[it] + rng.gauss(0, 0.05)))
        new = tuner.observe(it, final)
        if new is not None and tuner.rollback is not None:
            level[it], restarted = level[tuner.rollback], it
        if tuner.done(it):
            break
    return final, it


@pytest.mark.parametrize("seed", range(3))
def test_full_model_probes_every_kappa_from_the_start_when_a_settled_chain_stops_following(seed):
    """With ``restart_probes`` every correction, up as well as down, starts again from the
    measured start, so each measurement is that kappa's own response from one common start."""
    t = KappaTuner(make_cfg(kappa0=1e5, start_ms=300.0, fixed_iters=50, restart_probes=True))
    final, last = drive_settling(t, k_ref=1e9, slope=0.1, start_ms=300.0, seed=seed)
    rep = t.report(final)
    assert rep["in_window"], rep["verdict"]
    assert last <= 260


def drive_ageing(tuner, slope, seed, horizon=100):
    """A full model whose syllables lengthen as it ages from the AR-HMM's state, at any kappa
    (real data, 18 x 2,330 frames: from 300 ms to 467 ms in 80 iterations, 500 ms 100 later,
    while kappa fell 1.2 decades): log duration = kappa's effect + a drift that slows with the
    chain's age. A rollback restarts the age; the noise repeats by age (the snapshot's random
    key). Returns (final ms, last iteration, ms ``horizon`` iterations later)."""
    rng = random.Random(seed)
    noise = [rng.gauss(0, 0.02) for _ in range(tuner.cfg.max_iters + horizon + 1)]

    def ms(kappa, age):
        lv = math.log10(330.0) + slope * math.log10(kappa / 1.78e5) + 0.23 * (1 - math.exp(-age / 80.0))
        return quantise(10 ** (lv + noise[age]))

    return drive_probes(tuner, ms, horizon)


def drive_probes(tuner, ms, horizon=100):
    """Run the tuner on ``ms(kappa, age)``, a chain whose every rollback restarts it from one start
    (age 0), as the full model's probes do. Returns (final ms, last iteration, ms ``horizon``
    iterations later at the final kappa)."""
    age, final, it = 0, None, 0
    for it in range(1, tuner.cfg.max_iters + 1):
        age += 1
        final = ms(tuner.kappa, age)
        tuner.observe(it, final)
        if tuner.rollback is not None:
            age = 0
        if tuner.done(it):
            break
    return final, it, ms(tuner.kappa, age + horizon)


def test_full_model_that_lengthens_as_it_ages_is_judged_where_it_is_heading():
    """Judged where it is (drift_horizon 0) this chain ends in the window and leaves it 100
    iterations later on all twelve runs (two slopes, six seeds); judged where it heads, it
    stays on half of them."""
    stays = 0
    for slope in (0.1, 0.25):
        for seed in range(6):
            t = KappaTuner(make_cfg(kappa0=1.78e5, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                    drift_horizon=100))
            final, last, later = drive_ageing(t, slope, seed)
            assert last <= 260
            stays += t.in_window(final) and 300 <= later <= 400
            assert any("drifting" in c.action for c in t.checks)
    assert stays >= 6, stays


@pytest.mark.parametrize("k_ref,slope,up,kappa0", [(7.5e4, 0.02, 0.15, 1.2e11), (1e6, 0.1, 0.07, 1e11),
                                                    (1e3, 0.25, 0.07, 1e8), (1e9, 0.1, 0.15, 1e7)])
def test_drift_judging_still_lands_chains_with_hysteresis(k_ref, slope, up, kappa0):
    """The full model's settings (probes from the start, drift judged) on the hysteresis chains.
    One state 100 iterations later is one noisy draw (5% noise: a chain centred at 385 ms reads
    417 ms now and then), so this counts seeds: 15 of 20 must land and stay."""
    stays = 0
    for seed in range(20):
        t = KappaTuner(make_cfg(kappa0=kappa0, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        chain = hysteresis_chain(k_ref=k_ref, ms_ref=350.0, slope=slope, up=up, down=up / 20)
        final, last, later = drive_hysteresis(t, chain, 300.0, seed)
        assert last <= 260
        stays += t.in_window(final) and 300 <= later <= 400
    assert stays >= 15, stays


def test_full_model_whose_ageing_grows_with_kappa_is_steered_by_probes_of_one_age():
    """Measured on 18 x 2,330 frames: every probe from the AR-HMM's state starts near 300 ms and
    lengthens as it ages, the more the higher kappa (kappas 1.8e5 to 192 reached 400-467 ms
    within 35-80 iterations; kappa 1 stayed at 300-333 ms for 100). Young probes all measure
    alike, so a response curve that mixes ages is the ageing and its steps stay small; probes
    compared at one age give a flat curve and bold steps down. Before, 2 of 12 seeds stayed."""
    stays = 0
    for seed in range(12):
        rng = random.Random(seed)
        noise = [rng.gauss(0, 0.02) for _ in range(400)]

        def ms(kappa, age, noise=noise):
            ageing = 0.04 * max(math.log10(kappa), 0.0) * (1 - math.exp(-age / 80.0))
            return quantise(10 ** (math.log10(300.0) + ageing + noise[age]))

        t = KappaTuner(make_cfg(kappa0=1.78e5, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        final, it, later = drive_probes(t, ms)
        assert it <= 260
        stays += t.in_window(final) and 300 <= later <= 400
    assert stays >= 9, stays


def test_a_chain_that_ends_outside_delivers_the_state_measured_nearest_the_window():
    """Measured on a 648 fps recording: the AR-HMM stayed near 120 ms from kappa 1e12 to 1e17,
    above that every syllable merged into one (8,253 ms, the whole recording), and the budget ran
    out in a merged state. The state to hand on is the fitted one nearest the window (a ~120 ms
    base, with its snapshot), not the merged one, whatever kappa the search stopped at."""
    def f(kappa, it, rng):
        return quantise(8253.0 if kappa > 1e17 else 120.0 * math.exp(rng.gauss(0, 0.02)))

    t = KappaTuner(make_cfg(kappa0=1e6, iters=50, budget=4.0, fixed_iters=13, aim=0.25))
    final, last = drive(t, f)
    assert last <= 200 and not t.in_window(final)
    it, kappa = t.delivery(8253.0)
    assert kappa <= 1e17 and it in {b[0] for b in t.bases} and it > 0
    rep = t.report(120.0, (it, kappa))
    assert rep["final_kappa"] == kappa and rep["delivered_iteration"] == it
    assert "delivers the state of iteration" in rep["verdict"] and "NOT in window" in rep["verdict"]
    assert f"({120.0:.0f} ms at kappa {kappa:.3g})" in rep["verdict"]
    assert t.delivery(350.0) is None  # a final state in the window is the one delivered


def test_a_cliff_in_the_response_is_bisected_not_jumped_across():
    """Real open-field full model: probes from the AR-HMM's state measured 275-302 ms below kappa
    1.2e8 and 533-629 ms above, with the window only in a narrow band between. Probes from one
    start at one age do not drift apart, so the bracket they set must stand: forgetting it after
    40 iterations sent kappa three decades down and back (ending at 7e5 or 2e9 on 3 of 12 seeds)."""
    for seed in range(12):
        rng = random.Random(seed)
        noise = [rng.gauss(0, 0.03) for _ in range(400)]

        def ms(kappa, age, noise=noise):
            base = 290.0 if kappa < 1.1e8 else (330.0 if kappa < 1.3e8 else 610.0)
            return quantise(base * 10 ** noise[age])

        t = KappaTuner(make_cfg(kappa0=7.63e8, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        drive_probes(t, ms)
        assert 1e8 <= t.kappa <= 1.5e8, (seed, t.kappa, [c.as_dict() for c in t.checks])


def drawn_probes(seed):
    """``ms(kappa, age)`` of full-model probes that draw rather than respond: every probe starts
    from one state with one random key, so what it becomes is fixed by its kappa but varies from
    kappa to kappa like a coin (real data, 250 fps: 231, 480 and 673 ms at kappas 0.005 decades
    apart; 150 fps: 312, 407, 533 and 573 ms within 0.1 decades). A probe settles short, in the
    window, or jumps long after 8 to 40 iterations."""
    def ms(kappa, age):
        r = random.Random(f"{seed}:{round(math.log10(kappa), 3)}")
        kind = r.choice(["short", "in", "long", "long"])
        jump = r.randint(8, 40)
        level = {"short": 255.0, "in": 345.0, "long": 345.0 if age < jump else 560.0}[kind]
        return quantise(level * 10 ** random.Random(f"{seed}:{age}").gauss(0, 0.02))
    return ms


def test_probes_that_draw_hold_the_first_that_lands_instead_of_bisecting_the_draws():
    """Nudging a probe that landed in the window restarts it, which draws again; bisecting a
    bracket of draws only draws more. The tuner before this test nudged and bisected, and 14 of
    24 seeds ended in the window and stayed there 100 iterations later (the IBL paw recording
    ended at 809 ms); holding the first probe that lands, and committing to one chain when
    probing time is over, keeps 18 or more."""
    stays = 0
    for seed in range(24):
        t = KappaTuner(make_cfg(kappa0=7.3e7, start_ms=330.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        final, last, later = drive_probes(t, drawn_probes(seed))
        assert last <= 260
        stays += t.in_window(final) and 300 <= later <= 400
    assert stays >= 18, stays


def test_when_probing_time_is_over_the_best_probe_runs_again_and_ages():
    """A chain whose probes never land (every draw short or long) ends probing in time for the
    model delivered to have run ``drift_horizon`` iterations at its kappa: the probe measured
    nearest the window runs again from the start (the same draw: one key) and is not restarted."""
    def ms(kappa, age):
        short = random.Random(round(math.log10(kappa), 3)).random() < 0.5
        return quantise(260.0 if short else 430.0)

    t = KappaTuner(make_cfg(kappa0=7.3e7, start_ms=330.0, fixed_iters=50, restart_probes=True,
                            drift_horizon=100))
    drive_probes(t, ms)
    commits = [c for c in t.checks if "runs again and on" in c.action]
    assert len(commits) == 1 and t.committed, [c.as_dict() for c in t.checks]
    assert commits[0].iteration <= t.cfg.max_iters - 100
    after = [c for c in t.checks if c.iteration > commits[0].iteration]
    assert not any("rollback" in c.action for c in after)


def test_a_chain_that_jumps_out_after_holding_in_the_window_delivers_the_state_it_held():
    """Real open field (2,330 frames, tuning on, 200 + 260 iterations): full-model probes measured
    293-424 ms, one held in the window, then every syllable merged into one (4,667 ms) and the
    budget ran out there. The job delivered the merged state (exit 5). The state held in the window
    was a fitted state of the same chain: its snapshot is kept, and it is what is delivered."""
    def ms(kappa, age):
        return quantise(4667.0 if age > 60 else 345.0)

    t = KappaTuner(make_cfg(kappa0=4.7e13, start_ms=290.0, fixed_iters=50, restart_probes=True,
                            drift_horizon=100))
    saved = set()
    age = 0
    for it in range(1, t.cfg.max_iters + 1):
        age += 1
        t.observe(it, ms(t.kappa, age))
        if t.keep_snapshot(it):
            saved.add(it)
        if t.rollback is not None:
            age = 0
        if t.done(it):
            break
    assert not t.in_window(ms(t.kappa, age)), "the chain should have ended merged"
    it, kappa = t.delivery(4667.0)
    assert it in saved and t.in_window(dict(t.medians)[it])
    assert it == max(k[0] for k in t.keepers)  # the latest state held in the window
    rep = t.report(345.0, (it, kappa), ended_ms=4667.0)
    assert rep["in_window"] and rep["delivered_iteration"] == it and rep["final_kappa"] == kappa
    # its own chain merged at its kappa: the state is delivered, but not as a stable model
    assert rep["stable"] is False and rep["verdict"].startswith("in window but NOT stable")
    assert f"delivers the state of iteration {it} (345 ms" in rep["verdict"]
    assert "ended at 4667 ms" in rep["verdict"] and rep["iterations"] == t.medians[-1][0]
    # replayed (a resumed job), the same states are kept and the same one delivered
    again = KappaTuner.replay(t.cfg, t.medians, t.medians[-1][0])
    assert again.keepers == t.keepers and again.delivery(4667.0) == (it, kappa)


def test_the_latest_state_held_in_the_window_is_delivered_and_said_unstable_when_its_chain_left():
    """An earlier state held in the window but watched only briefly is no safer than the latest, which
    was watched longest (real IBL pupil: a state held 15 iterations at its kappa, delivered as the
    one not seen to leave, measured 575 ms 100 iterations later). The latest is delivered, and said
    to be unstable when its own chain, still at its kappa, was measured out of the window."""
    t = KappaTuner(make_cfg(kappa0=1e6, restart_probes=True, start_ms=300.0))
    t.keepers = [(40, 6.0, 350.0, 20), (120, 6.5, 360.0, 100)]
    t.changed_at = 150  # the chain ended in a later stretch, out of the window
    assert t.delivery(700.0) == (120, 10 ** 6.5)
    rep = t.report(360.0, (120, 10 ** 6.5), ended_ms=700.0)
    assert rep["stable"] is None and rep["verdict"].startswith("in window: delivers the state of iteration 120")
    t.left = {120: 140}
    assert t.delivery(700.0) == (120, 10 ** 6.5)
    rep = t.report(360.0, (120, 10 ** 6.5), ended_ms=700.0)
    assert rep["stable"] is False and rep["verdict"].startswith(
        "in window but NOT stable (its own chain, still at its kappa, was out of the window by iteration 140)")


def test_a_state_whose_own_chain_held_the_window_past_the_horizon_is_stable_though_it_left_later():
    """Stable means: the state's own chain, still at its kappa, in the window ``drift_horizon``
    iterations on. Real flies, first 140 s (seed 0): a state held at iteration 75, its chain in the
    window at every check to 195 and out at 205; delivered, it was at 360 ms 100 iterations on (the
    benchmark's own continuation), yet the job said NOT stable and exited 5. Its chain watched in the
    window for the horizon makes it stable; leaving sooner than that does not."""
    def run(jump):
        def ms(kappa, age):  # every other kappa draws long
            return quantise(360.0 if abs(math.log10(kappa) - 6.0) < 1e-9 and age <= jump else 700.0)
        t = KappaTuner(make_cfg(kappa0=1e6, start_ms=300.0, fixed_iters=50, restart_probes=True, drift_horizon=100))
        drive_probes(t, ms)
        assert t.keepers[0][0] == 15 and t.left[15] == jump + 5, [c.as_dict() for c in t.checks]
        return t.report(360.0, (15, 1e6), ended_ms=700.0)  # as when that state is delivered

    held = run(jump=130)  # its chain in the window at every check to 125, out at 135
    assert held["stable"] is True and held["verdict"].startswith(
        "in window and stable (its own chain, still at its kappa, was in the window 110 iterations on, "
        "out by iteration 135)"), held["verdict"]
    left = run(jump=90)
    assert left["stable"] is False and "NOT stable" in left["verdict"], left["verdict"]


def test_a_committed_chain_held_at_the_windows_edge_is_nudged_toward_the_aim():
    """Real golden mouse (4,860 frames, seed 1): probing time ran out, the best probe ran again and
    on, was last corrected at iteration 185 and held where it then measured, 400 ms, the window's
    edge; 100 iterations later it was at 433 ms. A committed chain is never restarted, so a nudge
    toward the aim draws nothing again: it only moves the kappa the chain goes on at. Held at the
    edge, this chain (400 ms at its kappa, now and then a frame more or less, as there) ended out
    of the window on 2 of these 12 seeds; nudged, on none."""
    def ms(kappa, rng):  # the settled chain's median: its kappa's level and now and then a frame of wander
        return quantise(395.0 * (kappa / 1e6) ** 0.2 + rng.choice((-1, 0, 0, 0, 0, 1)) * 1000.0 / FPS)

    stays = []
    for seed in range(12):
        rng = random.Random(seed)
        t = KappaTuner(make_cfg(kappa0=1e6, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        t.committed = True  # probing is over: this chain runs on, never restarted
        t._set(1e6, 185)
        final = None
        for it in range(186, t.cfg.max_iters + 1):
            final = ms(t.kappa, rng)
            t.observe(it, final)
            assert t.rollback is None
            if t.done(it):
                break
        later = [ms(t.kappa, rng) for _ in range(100)][-1]
        stays.append(t.in_window(final) and t.in_window(later))
    assert all(stays), stays


def rising_probes(seed):
    """``ms(kappa, age)`` of probes that start low in the window and lengthen as they age, each kappa
    at its own pace (a draw): the shape of golden_mouse's first 120 s, where a probe measured 310 ms
    at age 15 and 351 ms at age 35, heading for 438 ms."""
    def ms(kappa, age):
        r = random.Random(f"{seed}:{round(math.log10(kappa), 3)}")
        base, rate = r.uniform(280, 330), r.uniform(0.5, 3.0)
        return quantise((base + rate * max(age - 15, 0)) * 10 ** random.Random(f"{seed}:{age}").gauss(0, 0.01))
    return ms


def test_a_committed_replay_holds_until_it_is_older_than_its_probe_was():
    """The committed chain replays a probe (the same start, key and kappa), so its checks up to the
    age the probe was last checked at measure what the probe measured: correcting on them undoes what
    the probe showed next. The tuner before this test corrected such replays on 4 of these 40 seeds
    (real data: a replay nudged up at age 15 left the window above)."""
    acted = []
    for seed in range(40):
        t = KappaTuner(make_cfg(kappa0=7.3e7, start_ms=320.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        drive_probes(t, rising_probes(seed))
        for i, c in enumerate(t.checks):
            if "runs again and on" not in c.action:
                continue
            kappa = c.action.split("kappa -> ")[1].split(" ")[0]
            began = [x for x in t.checks[:i] if f"kappa -> {kappa}" in x.action]
            if not began:
                continue  # the start kappa's probe
            ended = next(x for x in t.checks[t.checks.index(began[-1]) + 1:] if not x.action.startswith("hold"))
            age = ended.iteration - began[-1].iteration
            acted += [(seed, x.iteration) for x in t.checks[i + 1:]
                      if x.iteration - c.iteration < age and not x.action.startswith("hold")]
    assert not acted, acted


def test_a_probe_whose_replay_would_run_uncorrected_counts_where_it_was_heading():
    """The start kappa's probe holds in the window until it lengthens from age 60 and is corrected at
    age 75; every other kappa is short or long (a cliff). When probing ends at iteration 145, its replay
    would reach age 75 after the last correction allowed (210), so it would run its known course out
    of the window. The tuner before this test replayed it (403 ms then, 500 ms at the end, 767 ms 100
    iterations later); now it counts where it was heading, and another chain runs on."""
    k0 = 4.34e3

    def ms(kappa, age):
        noise = 10 ** random.Random(f"{age}").gauss(0, 0.005)
        if abs(math.log10(kappa / k0)) < 1e-6:
            return quantise((355 + max(age - 60, 0) * 2.5) * noise)
        return quantise((275 if kappa < k0 else 470) * noise)

    t = KappaTuner(make_cfg(kappa0=k0, start_ms=300.0, fixed_iters=50, restart_probes=True, drift_horizon=100))
    drive_probes(t, ms)
    commits = [c for c in t.checks if "runs again and on" in c.action]
    assert commits and commits[0].iteration + 75 > t.last_change_allowed(), [c.as_dict() for c in t.checks]
    assert f"kappa -> {k0:.3g}" not in commits[0].action, commits[0].action


def test_a_correction_up_that_keeps_the_chain_steps_no_further_than_the_prior_slope():
    """Young probes from the AR-HMM's state hardly respond to kappa, so their slope is flat (clipped to
    0.05) and says step far; a chain that goes on responds to a rise in kappa within tens of
    iterations and keeps lengthening after the check that sees it. Real golden mouse, first 140 s,
    seed 0: a kept chain at 310 ms heading for 261 ms was sent half a decade up, was at 393 ms 35
    iterations later and, after a correction down, left the window 100 iterations after the end;
    stepping by the prior slope (a third of a decade) it ended stable. Here every probe sits at
    330 ms and sinks from age 20, at any kappa: the kept chain's corrections up must not be larger
    than the prior slope's step. The tuner before this test stepped half a decade."""
    def ms(kappa, age):
        return quantise((330.0 - 0.8 * max(age - 20, 0)) * 10 ** random.Random(f"{age}").gauss(0, 0.005))

    t = KappaTuner(make_cfg(kappa0=7e2, start_ms=330.0, fixed_iters=50, restart_probes=True, drift_horizon=100))
    drive_probes(t, ms)
    ups = []
    for a, b in zip(t.checks, t.checks[1:], strict=False):
        if "kappa ->" in a.action and not a.action.startswith("rollback") and b.kappa > a.kappa:
            heading = a.median_ms
            if "drifting" in a.action:
                heading = float(a.action.split("drifting toward ")[1].split(" ")[0])
            judged = math.sqrt(a.median_ms * heading)
            prior = (math.log10(math.sqrt(300.0 * 400.0)) - math.log10(judged)) / t.cfg.slope0
            ups.append((a.iteration, math.log10(b.kappa / a.kappa), prior))
    assert ups, [c.as_dict() for c in t.checks]
    assert all(step <= prior + 0.01 for _, step, prior in ups), ups


def test_a_model_whose_chain_ends_high_in_the_window_is_said_to_sit_near_its_upper_edge():
    """One state's median is a draw about where its chain sits, and the chain is what goes on. Real
    two mice, first 2 x 60 s (seed 0): the job ended on a 367 ms state of a chain whose last 30
    iterations averaged 381 ms, and 100 iterations later it was at 433 ms. Of the models delivered
    with exit 0 on real recordings of 100 s or more, 4 of the 8 whose chain averaged above the band
    around the aim left the window so, none of the 34 below it: the verdict says where the chain sat
    and warns above the band. The AR-HMM, which need not stay in the window, is not warned so."""
    def ended(levels, horizon=100):
        t = KappaTuner(make_cfg(kappa0=1e6, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=horizon))
        t._set(1e6, 200)
        t.medians = [(200 + i, quantise(v)) for i, v in enumerate(levels, start=1)]
        return t.report(t.medians[-1][1])

    high = [400, 367, 400, 400, 367, 400, 400, 433, 400, 367] * 6
    rep = ended(high)
    assert rep["in_window"] and rep["stable"] is None and 380 < rep["level_ms"] < 400 and rep["near_upper_edge"]
    assert "near the window's upper edge: its last 30 iterations averaged 393 ms" in rep["verdict"], rep["verdict"]
    centred = ended([333, 367, 333, 333, 367] * 12)
    assert 330 < centred["level_ms"] < 360 and not centred["near_upper_edge"], centred["verdict"]
    assert "edge" not in centred["verdict"]
    assert "edge" not in ended(high, horizon=0)["verdict"]


def test_a_chain_is_said_to_have_left_the_window_by_its_last_check_window_not_its_last_state():
    """One state's median is a draw about its chain. Real two mice, first 2 x 70 s (seed 7): the
    chain ran on from the state it delivers (iteration 190, 333 ms) with every check in the window,
    369 ms at the last, but its very last state drew 417 ms; the job said NOT stable and exited 5,
    and 100 iterations on the delivered state was at 333 ms. Its chain left the window only when the
    mean of its last check window did."""
    def ended(last_window):
        t = KappaTuner(make_cfg(kappa0=596.0, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        t._set(596.0, 175)
        t.keepers = [(190, math.log10(596.0), 333.3, 175)]
        t.medians = [(i, quantise(350.0)) for i in range(176, 251)] + [(250 + i, v) for i, v in
                                                                       enumerate(last_window, start=1)]
        return t.report(333.3, (190, 596.0), ended_ms=last_window[-1])

    drew = ended([367, 367, 333, 367, 367, 367, 367, 367, 400, 417])
    assert drew["stable"] is None and drew["verdict"].startswith(
        "in window: delivers the state of iteration 190"), drew["verdict"]
    left = ended([433, 417, 433, 433, 400, 433, 450, 433, 433, 417])
    assert left["stable"] is False and "was out of the window by iteration 260" in left["verdict"], left["verdict"]


def test_the_verdict_says_how_far_one_states_median_strays_at_one_kappa_against_the_window():
    """On short recordings even the best kappa does not hold the window: real open field (78 s), the
    best kappa kept 3 of 12 draws in it 100 iterations on. What a user needs to know then is how far
    one state's median strays from where its chain sits, against the window's width, measured on
    their data: stretches at one kappa, each about its own level (a kappa change is no wander)."""
    def ended(stretches, final_in=True):
        t = KappaTuner(make_cfg(kappa0=1e6, start_ms=300.0, fixed_iters=50, restart_probes=True,
                                drift_horizon=100))
        it = 0
        for level, noise, seed in stretches:
            t._set(t.kappa * 10, it)
            rng = random.Random(seed)
            t.medians += [(it + i, level * 10 ** rng.gauss(0, noise)) for i in range(1, 61)]
            it += 60
        return t, t.report(346.0 if final_in else 500.0)

    t, noisy = ended([(346.0, 0.06, 1), (346.0, 0.06, 2)], final_in=False)
    assert 0.05 < noisy["wander_decades"] < 0.07 and noisy["wander_iterations"] == 110, noisy
    assert 0.2 < noisy["out_share_centred"] < 0.4, noisy
    assert f"strayed {noisy['wander_decades']:.3f} decades" in noisy["verdict"], noisy["verdict"]
    assert "a wider target window tolerates it" in noisy["verdict"], noisy["verdict"]
    # a state delivered in the window whose own chain then left it: not stable, and the same advice
    t.keepers, t.left = [(70, math.log10(t.kappa), 346.0, 60)], {70: 100}
    left = t.report(346.0, (70, t.kappa), ended_ms=500.0)
    assert left["stable"] is False and "a wider target window tolerates it" in left["verdict"], left["verdict"]
    # two steady stretches far apart: the jump between them is kappa's doing, not wander
    _, steady = ended([(250.0, 0.005, 3), (346.0, 0.005, 4)])
    assert steady["wander_decades"] < 0.01 and steady["out_share_centred"] < 1e-6, steady
    assert "strayed" in steady["verdict"] and "tolerates" not in steady["verdict"], steady["verdict"]

"""Kappa tuning wired into the AR-HMM and full-model fits (the search is in :mod:`.tuner`).

Each phase is one resumable chain (:mod:`.chain`). The per-iteration median
durations are saved in the job state as the chain runs; on resume the tuner is
rebuilt by replaying them up to the snapshot the chain resumes from.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from ..manifest import tuning_settings
from ..state import fingerprint
from .chain import fit_chain
from .tuner import KappaTuner, TunerConfig

log = logging.getLogger("kpms_job")


def _config(m: dict, kappa0: float, iters: int, budget: float, aim: float = 0.5,
            start_ms: float | None = None) -> TunerConfig:
    ts = tuning_settings(m)
    lo, hi = m["targets"]["median_duration_ms"]
    fixed = max(ts["check_every"], math.ceil(ts["fixed_fraction"] * iters))
    return TunerConfig(lo_ms=float(lo), hi_ms=float(hi), kappa0=float(kappa0), min_iters=iters,
                       max_iters=max(iters, int(budget * iters)), fixed_iters=fixed,
                       check_every=ts["check_every"], aim=float(aim), start_ms=start_ms)


def full_config(m: dict, kappa0: float, start_ms: float | None) -> TunerConfig:
    """The full model's tuner settings (the manifest ``m``, filled): ``kappa0`` its first kappa,
    ``start_ms`` the median of the AR-HMM state it starts from. Pure, so that a saved chain's
    observations can be replayed through another tuner (``benchmarks/tuner_replay.py``)."""
    ts = tuning_settings(m)
    # the full model starts from the AR-HMM's last state, whose median the AR-HMM tuner measured:
    # when that is not too long, every downward correction probes again from it (a clean start)
    # and every correction, up too, restarts from it: a settled full model may follow kappa in
    # neither direction (open-field: 233-275 ms while kappa rose from 2.5e6 to 2e11), while the
    # first iterations from the AR-HMM's state do; so the probes measure one response curve
    return dataclasses.replace(_config(m, kappa0, m["fitting"]["full_iters"], ts["full_budget"], start_ms=start_ms),
                               restart_probes=True, drift_horizon=int(ts["stability_iters"]))


def _tuned_chain(ctx, name: str, label: str, key: str, cfg: TunerConfig, make_model, ar_only: bool,
                 measure_start: bool = False):
    """One tuned chain. ``measure_start``: measure the initial model's median and give it to
    the tuner as ``start_ms`` (saved with the medians, so a resumed chain replays the same)."""
    from ..kpms import gibbs as A

    saved = ctx.state.get("tuning", {}).get(name, {})
    mine = saved.get("key") == key
    medians = saved.get("medians", []) if mine else []
    holder = {"cfg": dataclasses.replace(cfg, start_ms=saved.get("start_ms")) if mine and measure_start else cfg}

    def persist(**more):
        allt = ctx.state.get("tuning", {})
        allt[name] = {"key": key, "medians": holder["t"].medians, "start_ms": holder["cfg"].start_ms, **more}
        ctx.state.put("tuning", allt)

    if mine and saved.get("delivered") is not None:
        # the chain ended and delivers an earlier state: a kill came after that was recorded,
        # maybe before the checkpoint was cut there
        holder["t"] = KappaTuner.replay(holder["cfg"], medians, medians[-1][0] if medians else 0)
        return _deliver(ctx, name, label, cfg, holder["t"], tuple(saved["delivered"]), saved.get("ended_ms"))

    def on_start(start, model):
        t = KappaTuner.replay(holder["cfg"], medians, start)
        if start and abs(math.log10(t.kappa) - math.log10(A.model_kappa(model))) > 1e-9:
            log.warning("%s: tuner state does not match the snapshot's kappa; using the snapshot's", label)
            t.kappa = A.model_kappa(model)
        holder["t"] = t
        persist()

    def on_iteration(it, model, data):
        t = holder["t"]
        new = t.observe(it, A.median_duration_ms(model, data, ctx.fps))
        persist()
        if new is not None:
            c = t.checks[-1]
            log.info("%s: iteration %d, median %.0f ms at kappa %.3g: %s", label, it,
                     c.median_ms or float("nan"), c.kappa, c.action)
            if t.rollback is not None:
                model = A.load_snapshot(str(ctx.project_dir), name, t.rollback)
            return A.set_kappa(model, new)
        return None

    def on_nan(it, last_good, data):
        t = holder["t"]
        new = t.observe(it, None)
        persist()
        base = A.load_snapshot(str(ctx.project_dir), name, t.rollback) if t.rollback is not None else last_good
        return A.set_kappa(base, new)

    def make():
        model, data, metadata = make_model()
        if measure_start:
            start_ms = A.median_duration_ms(model, data, ctx.fps)
            holder["cfg"] = dataclasses.replace(cfg, start_ms=start_ms if math.isfinite(start_ms) else None)
        return A.set_kappa(model, cfg.kappa0), data, metadata

    model, data, _ = fit_chain(ctx, name, key, make, cfg.max_iters, ar_only=ar_only, label=label,
                               on_iteration=on_iteration, on_start=on_start,
                               finished=lambda it: holder["t"].done(it), on_nan=on_nan,
                               save_now=lambda it: holder["t"].keep_snapshot(it),
                               live_fields=lambda: {"median_ms": (holder["t"].medians or [(None, None)])[-1][1]})
    t = holder["t"]
    ended = A.median_duration_ms(model, data, ctx.fps)
    delivered = t.delivery(ended)
    if delivered is None:
        return _report(ctx, name, label, cfg, t, model, ended)
    persist(delivered=list(delivered), ended_ms=ended if math.isfinite(ended) else None)
    return _deliver(ctx, name, label, cfg, t, delivered, ended)


def _deliver(ctx, name, label, cfg, t, delivered, ended):
    """The chain ends at its delivered state: the checkpoint is cut there, so that keypoint-moseq's
    ``load_checkpoint`` (and every later stage) reads that state as the fit's last."""
    from ..kpms import gibbs as A

    A.end_chain_at(str(ctx.project_dir), name, delivered[0], kappa=delivered[1])
    model, data, _, _ = A.load_latest_snapshot(str(ctx.project_dir), name)
    A.plot_progress(model, data, str(ctx.project_dir), name, delivered[0], ctx.fps)  # the state delivered
    return _report(ctx, name, label, cfg, t, model, A.median_duration_ms(model, data, ctx.fps), delivered, ended)


def _report(ctx, name, label, cfg, t, model, final, delivered=None, ended=None):
    report = t.report(final, delivered, ended_ms=ended)
    # a model near the window's edge is a warning too: it lands in summary.md's warnings
    (log.info if report["in_window"] and not report["near_upper_edge"] else log.warning)(
        "%s tuning: %s", label, report["verdict"])
    plot_trace(report, cfg, ctx.project_dir / name / "kappa_trace", label)
    return model, report


def plot_trace(report: dict, cfg: TunerConfig, base, label: str) -> None:
    """log10 kappa against median duration for every check, the target band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [a for a in report["attempts"] if a["median_ms"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.axhspan(cfg.lo_ms, cfg.hi_ms, color="tab:green", alpha=0.2, label="target window")
    if pts:
        xs = [math.log10(a["kappa"]) for a in pts]
        ys = [a["median_ms"] for a in pts]
        ax.plot(xs, ys, "-", color="0.6", lw=1)
        sc = ax.scatter(xs, ys, c=[a["iter"] for a in pts], cmap="viridis", zorder=3)
        fig.colorbar(sc, ax=ax, label="iteration")
    if report["final_median_ms"] is not None:
        ax.scatter([math.log10(report["final_kappa"])], [report["final_median_ms"]], marker="*", s=160,
                   color="tab:red", zorder=4, label="final model")
    ax.set_xlabel("log10 kappa")
    ax.set_ylabel("median syllable duration (ms)")
    ax.set_title(f"{label}: kappa tuning")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(f"{base}.png", dpi=150)
    fig.savefig(f"{base}.pdf")
    plt.close(fig)


def run_arhmm(ctx, initial_model):
    """The tuned AR-HMM; ``initial_model(ctx, kappa)`` builds its first (model, data, metadata)."""
    ts = tuning_settings(ctx.m)
    iters = ctx.m["fitting"]["arhmm_iters"]
    # the full model keeps the syllables it starts from and shortens them only slowly (measured:
    # from an AR-HMM state at 400 ms it stayed at 480-520 ms while kappa fell eight decades; from
    # one at 280 ms it stayed at 280 ms), so the AR-HMM aims at the window's lower part and the
    # full model approaches the window from below, where kappa acts fast
    cfg = _config(ctx.m, ctx.m["model"]["kappa"], iters, ts["arhmm_budget"], aim=ts["arhmm_aim"])
    key = fingerprint(ctx.fingerprints["pca"], ctx.m["model"]["seed"], ctx.m["model"]["kappa"],
                      {k: ts[k] for k in ("check_every", "fixed_fraction", "arhmm_aim", "arhmm_budget")},
                      ctx.m["targets"]["median_duration_ms"], iters, "arhmm-tuned-4")
    model, report = _tuned_chain(ctx, ctx.arhmm_name, "AR-HMM", key, cfg,
                                 lambda: initial_model(ctx, cfg.kappa0), ar_only=True, measure_start=True)
    return {"kappa": report["final_kappa"], "iterations": report["iterations"],
            "delivered_iteration": report["delivered_iteration"],
            "median_duration_ms": report["final_median_ms"], "tuning": report,
            "model_name": ctx.arhmm_name,
            "outputs": [f"{ctx.arhmm_name}/checkpoint.h5", f"{ctx.arhmm_name}/kappa_trace.png"]}


def run_full(ctx, from_arhmm, arhmm_key: str):
    """The tuned full model; ``from_arhmm(ctx, kappa)`` builds its first (model, data, metadata)
    from the AR-HMM's last state, and ``arhmm_key`` names that state (the full chain's key)."""
    from ..kpms import project as A

    ts = tuning_settings(ctx.m)
    iters = ctx.m["fitting"]["full_iters"]
    arhmm = ctx.info("arhmm")
    start = ctx.m["model"]["full_kappa"] or arhmm["kappa"] * ts["full_kappa_ratio"]
    cfg = full_config(ctx.m, start, arhmm.get("median_duration_ms"))
    key = fingerprint(arhmm_key, {k: ts[k] for k in ("check_every", "fixed_fraction", "full_budget",
                                                               "stability_iters")},
                      ctx.m["targets"]["median_duration_ms"], iters, start, cfg.start_ms, "full-tuned-6")
    model, report = _tuned_chain(ctx, ctx.model_name, "full model", key, cfg,
                                 lambda: from_arhmm(ctx, start), ar_only=False)
    A.update_config(str(ctx.project_dir), kappa=float(report["final_kappa"]))
    return {"kappa": report["final_kappa"], "iterations": report["iterations"],
            "median_duration_ms": report["final_median_ms"], "tuning": report,
            "model_name": ctx.model_name,
            "outputs": [f"{ctx.model_name}/checkpoint.h5", f"{ctx.model_name}/kappa_trace.png"]}

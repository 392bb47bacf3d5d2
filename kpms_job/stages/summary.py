"""summary.json, a readable summary.md and report.html (kpms_job/report) in the project dir."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from ..state import atomic_write_text, now_iso

TITLE = "summary files and report.html"
DEPS = ("ingest", "pca", "arhmm", "full_model", "results", "figures", "analysis")  # with restarts: select for the fits
# targets: the summary judges the median against the window, tuned or not. The resolved manifest
# it embeds records the run that last wrote it: an edit that no stage reads does not rewrite it.
READS = ("model.name", "targets.median_duration_ms")
OUTPUTS = ("summary.json", "summary.md", "report.html")


def build(ctx) -> dict:
    ing, pca, res = ctx.info("ingest"), ctx.info("pca"), ctx.info("results")
    arhmm, full, figs = ctx.info("arhmm"), ctx.info("full_model"), ctx.info("figures")
    lo, hi = ctx.m["targets"]["median_duration_ms"]
    median = full.get("median_duration_ms", res.get("median_duration_ms"))
    return {
        "finished_at": now_iso(),
        "project_dir": str(ctx.project_dir),
        "model_name": ctx.model_name,
        "recordings": {
            "used": {n: ing["recordings"][n] for n in ing["used"]},
            "excluded": {n: {**ing["recordings"][n], "reason": why} for n, why in ing["excluded"].items()},
        },
        "frames": ing["frames"],
        "fps": ing["fps"], "fps_source": ing["fps_source"],
        "bodyparts": {"use": ing["use_bodyparts"], "anterior": ing["anterior"], "posterior": ing["posterior"]},
        "latent_dim": pca["latent_dim"], "variance_explained": pca["variance_explained"],
        "latent_dim_chosen_by": pca["chosen_by"],
        "kappa": {"arhmm": arhmm.get("kappa"), "full_model": full.get("kappa")},
        "iterations": {"arhmm": arhmm.get("iterations"), "full_model": full.get("iterations")},
        "median_duration_ms": median,
        "target_median_duration_ms": [lo, hi],
        "in_target_window": bool(median is not None and lo <= median <= hi),
        "syllables_over_0_5pct": res.get("syllables_over_0_5pct"),
        "tuning": full.get("tuning"),
        "arhmm_tuning": arhmm.get("tuning"),
        "fitting_settings": _fit_state(ctx).get("resources"),
        "restarts": _restarts(ctx),
        "warnings": _warnings(ctx),
        "figures": {"made": figs.get("made", []), "failed": figs.get("failed", {})},
        "versions": ctx.versions,
        "provenance": provenance(ctx),
        "seconds_per_stage": {name: (ctx.state.stage(name) or {}).get("seconds")
                              for name in ctx.stage_names if name != "summary"},
        "manifest": ctx.m,
    }


def _fit_state(ctx):
    """The state the fits were recorded in: the selected restart's, or the project's."""
    sel = ctx.info("select")
    return ctx.restart_states[sel["selected"]] if sel else ctx.state


def _restarts(ctx) -> dict | None:
    sel = ctx.info("select")
    if not sel:
        return None
    return {"selected": sel["model_name"], "selected_because": sel["selected_because"], "models": sel["restarts"],
            "figures": [f for f in sel["outputs"] if f.endswith(".png")]}


def _restart_lines(r: dict) -> list[str]:
    lines = ["", "## Restarts", "", f"Selected `{r['selected']}`: {r['selected_because']}.", "",
             "| model | seed | EML (± s.e.) | kappa | median ms | in window | NMI with selected | |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["models"]:
        kappa, med = x.get("kappa"), x.get("median_duration_ms")
        lines.append(f"| {x['name']} | {x['seed']} | {x['eml']:.4g} (± {x['eml_std_err']:.2g}) | "
                     f"{'' if kappa is None else f'{kappa:.3g}'} | {'' if med is None else f'{med:.0f}'} | "
                     f"{'yes' if x['in_target_window'] else 'no'} | {x['nmi_with_selected']:.2f} | "
                     f"{'selected' if x['selected'] else ''} |")
    lines += [""] + [f"![{Path(f).stem}]({f})" for f in r["figures"]]
    return lines


def markdown(s: dict) -> str:
    lo, hi = s["target_median_duration_ms"]
    lines = [
        "# kpms-job summary", "", "The full report, with every figure and grid movie: [report.html](report.html).", "",
        f"Project `{s['project_dir']}`, model `{s['model_name']}`, finished {s['finished_at']}.", "",
        "| | |", "|---|---|",
        f"| recordings used | {len(s['recordings']['used'])} |",
        f"| recordings excluded | {len(s['recordings']['excluded'])} |",
        f"| frames | {s['frames']:,} |",
        f"| fps | {s['fps']:g} ({s['fps_source']}) |",
        f"| latent_dim | {s['latent_dim']} ({s['variance_explained']:.1%} of variance; {s['latent_dim_chosen_by']}) |",
        f"| kappa (AR-HMM / full model) | {s['kappa']['arhmm']:.3g} / {s['kappa']['full_model']:.3g} |",
        f"| iterations (AR-HMM / full model) | {s['iterations']['arhmm']} / {s['iterations']['full_model']} |",
        f"| median syllable duration | {s['median_duration_ms']:.0f} ms (target {lo:g}-{hi:g} ms: "
        f"{'inside' if s['in_target_window'] else 'OUTSIDE'}) |",
        f"| syllables above 0.5% frequency | {s['syllables_over_0_5pct']} |",
    ]
    if s.get("fitting_settings"):
        fs = s["fitting_settings"]
        lines.append(f"| fitting settings | {fs.get('backend')}, parallel_message_passing="
                     f"{fs.get('parallel_message_passing')}, mixed_map_iters={fs.get('mixed_map_iters')} |")
    if s.get("warnings"):  # e.g. far less data than keypoint-moseq asks for: a model in the window may not stay
        lines += ["", "## Warnings", ""]
        lines += [f"- {stage}: {msg}" for stage, msgs in s["warnings"].items() for msg in msgs]
    if s.get("restarts"):
        lines += _restart_lines(s["restarts"])
    lines += ["", "## Recordings", "", "| recording | file | frames | missing | status |", "|---|---|---|---|---|"]
    for n, r in s["recordings"]["used"].items():
        lines.append(f"| {n} | {r['file']} | {r['frames']} | {r['nan_fraction']:.1%} | used |")
    for n, r in s["recordings"]["excluded"].items():
        lines.append(f"| {n} | {r['file']} | {r['frames']} | {r['nan_fraction']:.1%} | excluded: {r['reason']} |")
    for title, key in (("AR-HMM kappa tuning", "arhmm_tuning"), ("Full-model kappa tuning", "tuning")):
        t = s.get(key)
        if not t:
            continue
        lines += ["", f"## {title}", "", t.get("verdict", ""), "",
                  "| check | kappa | at iteration | median ms | in window |", "|---|---|---|---|---|"]
        for i, a in enumerate(t.get("attempts", []), 1):
            med = a.get("median_ms")
            lines.append(f"| {i} | {a['kappa']:.3g} | {a.get('iter', '')} | "
                         f"{'NaN' if med is None else f'{med:.0f}'} | {'yes' if a.get('in_window') else 'no'} |")
    lines += ["", "## Figures", ""]
    lines += [f"- {f}" for f in s["figures"]["made"]]
    lines += [f"- {f}: NOT made ({why})" for f, why in s["figures"]["failed"].items()]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["seconds_per_stage"].items()]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in s["versions"].items()]
    lines += ["", "## Resolved manifest", "", "```json", json.dumps(s["manifest"], indent=2), "```", ""]
    return "\n".join(lines)


def provenance(ctx) -> dict:
    """Where and how this run ran: the image (baked in at build time), the machine, the command."""
    from ..resources import machine as M

    image = None
    baked = Path(__file__).resolve().parents[2] / "image.json"  # /opt/kpms-job/image.json in the image
    if baked.is_file():
        image = json.loads(baked.read_text())
    found = M.detect()
    if found.gpus:
        where = "; ".join(f"{g.kind or g.name}, {g.total / 2**30:.0f} GiB" for g in found.gpus)
        driver = M.driver_version()
        where = f"{where} (NVIDIA driver {driver or 'unknown'})"
    else:
        where = f"CPU: {_cpu_name()}, {os.cpu_count()} cores"
    where += f"; {found.ram_total / 2**30:.0f} GiB memory ({found.ram_source}); JAX on the {found.backend.upper()}"
    seeds = {"model.seed": ctx.m["model"]["seed"]}
    sel = ctx.info("select")
    if sel:
        seeds["restarts"] = [r["seed"] for r in sel["restarts"]]
    return {"image": image, "machine": where, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "python": platform.python_version(), "seeds": seeds}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report_context(ctx, s: dict) -> dict:
    """What report.html shows: the summary, and the figure and movie files that exist."""
    from .. import report

    pd, name, arhmm = ctx.project_dir, ctx.model_name, ctx.arhmm_name
    made_files = ctx.info("figures").get("files", {})
    missing: list[str] = []

    def files(paths, expected=True):
        have, lost = report.existing(pd, paths)
        if expected:
            missing.extend(lost)
        return have

    def glob(pattern):
        from .figures import natural_order

        return [str(p.relative_to(pd)) for p in sorted(pd.glob(pattern), key=natural_order)]

    figures = {
        "pca": files(["pca_scree.png"]),
        "outliers": glob("QA/plots/**/*.png"),
        "kappa": files([f"{arhmm}/kappa_trace.png", f"{name}/kappa_trace.png"], expected=False),
        "progress": files([f"{arhmm}/fitting_progress.png", f"{name}/fitting_progress.png"]),
        "syllables": files([f for stem in ("syllable_frequencies", "duration_distribution", "similarity_dendrogram")
                            for f in made_files.get(stem, [])]),
        "restarts": files((s.get("restarts") or {}).get("figures", [])),
    }
    ratios = ctx.info("pca").get("variance_ratio") or []
    variance, total = [], 0.0
    for k, r in enumerate(ratios[:max(10, s["latent_dim"])], 1):
        total += r
        variance.append((k, total))
    names = ctx.info("analysis").get("syllable_names") or {}
    from .. import runlog

    log_file = runlog.latest(pd)  # this run's own log
    return {
        "s": s, "figures": figures, "missing": missing, "variance": variance,
        "interpolated": ctx.info("outliers").get("interpolated_keypoints", {}),
        "rank_fit": report.rank_frequency_fit(ctx.info("results").get("frame_fractions") or []),
        "trajectories": files(made_files.get("trajectory_plots", [])),
        "movies": files(made_files.get("grid_movies", [])),
        "groups": _groups(ctx, pd), "syllable_names": names,
        "warnings": s["warnings"], "provenance": s["provenance"],
        "log": os.path.relpath(log_file, pd) if log_file else None,
    }


def _groups(ctx, pd: Path) -> dict | None:
    """The analysis stage's group statistics, as files that exist (kpms_job/stages/analysis.py)."""
    from .. import report

    info = ctx.info("analysis")
    if not info.get("groups"):
        return None
    f = info.get("files", {})
    tables = [f[k] for k in ("index", "moseq_df", "stats_df") if f.get(k)]
    tables += list(f.get("significance", [])) + list(f.get("transition_matrices", []))
    return {"groups": info["groups"], "tables": report.existing(pd, tables)[0],
            "stats": report.existing(pd, f.get("syllable_stats", []))[0],
            "transitions": report.existing(pd, [*f.get("transition_heatmaps", []),
                                                *f.get("transition_graphs", [])])[0],
            "failed": info.get("failed", {})}


def _warnings(ctx) -> dict:
    """The warnings each stage logged when it last ran (kept in its state record), less those
    that say again why a figure listed as not made failed."""
    shown = [why for name in ("figures", "analysis") for why in ctx.info(name).get("failed", {}).values()]
    out = {}
    for name in ctx.stage_names:
        msgs = [m for m in (ctx.info(name).get("warnings") or []) if not any(why in m for why in shown)]
        if msgs and name != "summary":
            out[name] = msgs
    return out


def run(ctx):
    from .. import report

    s = build(ctx)
    atomic_write_text(ctx.project_dir / "summary.json", json.dumps(s, indent=2, default=str))
    atomic_write_text(ctx.project_dir / "summary.md", markdown(s))
    atomic_write_text(ctx.project_dir / "report.html", report.render(report_context(ctx, s)))
    return {"in_target_window": s["in_target_window"]}

"""summary.json and a readable summary.md in the project dir."""

from __future__ import annotations

import json
from pathlib import Path

from ..state import atomic_write_text, now_iso

TITLE = "summary.json and summary.md"
DEPS = ("ingest", "pca", "arhmm", "full_model", "results", "figures", "analysis")  # with restarts: select for the fits
# targets: the summary judges the median against the window, tuned or not. The resolved manifest
# it embeds records the run that last wrote it: an edit that no stage reads does not rewrite it.
READS = ("model.name", "targets.median_duration_ms")
OUTPUTS = ("summary.json", "summary.md")


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
        "figures": {"made": figs.get("made", []), "failed": figs.get("failed", {})},
        "versions": ctx.versions,
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
        "# kpms-job summary", "",
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


def run(ctx):
    s = build(ctx)
    atomic_write_text(ctx.project_dir / "summary.json", json.dumps(s, indent=2, default=str))
    atomic_write_text(ctx.project_dir / "summary.md", markdown(s))
    return {"in_target_window": s["in_target_window"]}

"""What an apply leaves beside its results.h5: CSVs, figures, the consistency report and its summary.

The consistency report answers keypoint-moseq's FAQ warning (labels of applied data differ from
those of training): for every recording that was in the fit and was applied too, the fraction of
frames whose applied label is the fitted one, and the normalized mutual information of the two
labelings (1: the same partition of the frames, whatever the numbering).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..state import atomic_write_text, now_iso
from . import trained

log = logging.getLogger("kpms_job")


def consistency(applied: dict, fitted: dict) -> dict:
    """Per recording in both: frames, fraction of frames with the same label, and NMI."""
    from sklearn.metrics import normalized_mutual_info_score

    out = {}
    for name in sorted(set(applied) & set(fitted)):
        a, f = np.asarray(applied[name]), np.asarray(fitted[name])
        if a.shape != f.shape:
            log.warning("consistency: %s has %d applied and %d fitted frames; left out", name, len(a), len(f))
            continue
        out[name] = {"frames": int(len(a)), "same_label_fraction": round(float(np.mean(a == f)), 4),
                     "nmi": round(float(normalized_mutual_info_score(f, a)), 4)}
    if out:
        frames = sum(v["frames"] for v in out.values())
        out["(all)"] = {"frames": frames,
                        "same_label_fraction": round(sum(v["same_label_fraction"] * v["frames"]
                                                         for v in out.values()) / frames, 4),
                        "nmi": round(float(normalized_mutual_info_score(
                            np.concatenate([np.asarray(fitted[n]) for n in out]),
                            np.concatenate([np.asarray(applied[n]) for n in out]))), 4)}
    return out


def write(m: dict, t: trained.Trained, out: Path, results: dict, st: dict, hashes: dict, excluded: dict,
          batches: int, seconds: float) -> None:
    from ..kpms import apply as K
    from ..kpms import results as R

    made, failed = [], {}
    if m["outputs"]["csv"] and results:
        K.save_csvs(results, out / "results")
        made.append("csv")
    if m["outputs"]["figures"] and results:
        for what, fn in (("syllable_frequencies", lambda: R.plot_frequencies(results, out.parent, out.name)),
                         ("duration_distribution", lambda: R.plot_durations(results, out.parent, out.name, t.fps))):
            try:
                fn()
                made.append(what)
            except Exception as exc:  # noqa: BLE001 - a figure that fails costs that figure only
                failed[what] = f"{type(exc).__name__}: {exc}"
                log.warning("figure %s failed: %s", what, failed[what])
    files = {f: st["files"][h] for f, h in hashes.items() if h in st["files"]}
    if m["outputs"].get("nwb") and results:
        from .. import nwb_export

        sources = {n: (f if f != trained.TRAINING else
                       ((t.summary.get("recordings") or {}).get("used", {}).get(n) or {}).get("file"))
                   for f, r in files.items() for n in r["recordings"]}
        provenance = {"model": t.model_name, "project_dir": str(t.project_dir), "kappa": t.summary.get("kappa"),
                      "seed": (t.manifest.get("model") or {}).get("seed"), "applied": True,
                      "num_iters": m["apply"]["num_iters"], "fps": t.fps,
                      "versions": {**t.summary.get("versions", {}), **trained.installed_versions()},
                      "apply_manifest": m, "fit_manifest": t.manifest}
        nwb_export.write_all(out / "nwb", results, sources, t.fps, t.num_states, provenance, m.get("nwb"))
        made.append("nwb")
    fitted = K.fitted_labels(str(t.project_dir), t.model_name) if t.results.exists() else {}
    cons = consistency({n: v["syllable"] for n, v in results.items()}, fitted)
    if cons and m["outputs"]["figures"]:
        from ..kpms.selection import plot_confusion

        both = [n for n in cons if n != "(all)"]
        try:  # keypoint-moseq's confusion matrix: fitted labels (rows) against applied ones
            plot_confusion({n: {"syllable": fitted[n]} for n in both},
                           {n: {"syllable": np.asarray(results[n]["syllable"])} for n in both},
                           out / "consistency_confusion")
            made.append("consistency_confusion")
        except Exception as exc:  # noqa: BLE001 - a figure that fails costs that figure only
            failed["consistency_confusion"] = f"{type(exc).__name__}: {exc}"
            log.warning("figure consistency_confusion failed: %s", failed["consistency_confusion"])
    stats = R.syllable_stats(results, t.fps) if results else {}
    summary = {
        "finished_at": now_iso(), "project_dir": str(t.project_dir), "model_name": t.model_name,
        "applied_dir": str(out), "fps": t.fps, "num_iters": m["apply"]["num_iters"],
        "recordings": {n: {"frames": int(len(v["syllable"])),
                           "file": next((f for f, r in files.items() if n in r["recordings"]), None)}
                       for n, v in sorted(results.items())},
        "excluded": {n: why for r in files.values() for n, why in (r.get("excluded") or {}).items()},
        "batches_this_run": batches, "seconds_this_run": round(seconds, 1), "stats": stats,
        "consistency": cons, "outputs": made, "figures_failed": failed,
        "versions": trained.installed_versions(), "fitted_with": t.versions, "manifest": m}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "summary.md", markdown(summary))


def markdown(s: dict) -> str:
    lines = [f"# Applied: {s['model_name']} -> {Path(s['applied_dir']).name}", "",
             f"Model `{s['model_name']}` of `{s['project_dir']}` ({s['fps']:g} fps), {s['num_iters']} "
             f"iterations per batch; finished {s['finished_at']}.", "",
             f"{len(s['recordings'])} recording(s), {sum(r['frames'] for r in s['recordings'].values())} frames; "
             f"median syllable duration {s['stats'].get('median_duration_ms', float('nan')):.0f} ms, "
             f"{s['stats'].get('syllables_over_0_5pct', 0)} syllables above 0.5% of frames.", "",
             "| recording | frames | file |", "|---|---|---|"]
    lines += [f"| {n} | {r['frames']} | {r['file']} |" for n, r in s["recordings"].items()]
    if s["excluded"]:
        lines += ["", "Excluded (the fit's own rules):", ""] + [f"- {n}: {why}" for n, why in s["excluded"].items()]
    lines += ["", "## Consistency with the fit", ""]
    if s["consistency"]:
        lines += ["Recordings that were in the fit, labelled again by applying the model: the fraction of "
                  "frames with the fitted label, and the normalized mutual information (NMI) of the two "
                  "labelings. keypoint-moseq's FAQ: applied labels differ from fitted ones; apply the model "
                  "to old and new data alike when comparing them.", "",
                  "| recording | frames | same label | NMI |", "|---|---|---|---|"]
        lines += [f"| {n} | {c['frames']} | {c['same_label_fraction']:.1%} | {c['nmi']:.3f} |"
                  for n, c in s["consistency"].items()]
        if "consistency_confusion" in s["outputs"]:
            lines += ["", "![fitted against applied labels](consistency_confusion.png)"]
    else:
        lines.append("No applied recording was in the fit (`apply.relabel_training: true` applies the model "
                     "to the fit's recordings too, and reports the agreement here).")
    lines += ["", f"Outputs: {', '.join(s['outputs']) or 'results.h5 only'}"
              + (f"; failed: {s['figures_failed']}" if s["figures_failed"] else ""), ""]
    return "\n".join(lines)

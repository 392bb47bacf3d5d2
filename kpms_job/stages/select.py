"""Select one restart (manifest ``restarts`` > 1): keypoint-moseq's expected marginal likelihood
over the restarts' full models, its figure, and how well the restarts agree on the labels.

With ``restart_selection: eml_in_window`` (the default) the restarts whose full model ended in the
target window compete (all of them when none did): a model outside the window is not what the
user asked for, however likely. ``eml`` compares them all. Reindex, results, figures and summary
then work on the selected restart's model folder, which is where ``kpms.load_checkpoint`` and
``kpms.load_results`` find it.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("kpms_job")

TITLE = "select the restart by expected marginal likelihood"
DEPS = ("pca",)  # and every restart's full model: pipeline.decide adds those
READS = ("model.name", "restarts", "restart_selection", "targets.median_duration_ms")
OUTPUTS = ("{model}_restarts/eml_scores.png", "{model}_restarts/eml_scores.pdf",
           "{model}_restarts/label_agreement.png", "{model}_restarts/label_agreement.pdf",
           "{model}_restarts/confusion_selected_vs_runner_up.png",
           "{model}_restarts/confusion_selected_vs_runner_up.pdf")


def _in_window(median, window) -> bool:
    return median is not None and window[0] <= median <= window[1]


def pick(scores: list[float], medians: list, window, rule: str) -> tuple[int, int | None, list[int]]:
    """(the selected restart, the runner-up or None, the restarts that competed) for EML ``scores``
    and final ``medians`` under ``restart_selection`` ``rule``."""
    n = len(scores)
    inside = [i for i in range(n) if _in_window(medians[i], window)]
    pool = (inside if rule == "eml_in_window" else []) or list(range(n))
    finite = [i for i in pool if math.isfinite(scores[i])]
    if not finite:
        raise RuntimeError(f"no restart has a finite expected marginal likelihood: {scores}")
    best = max(finite, key=lambda i: scores[i])
    runner_up = max((i for i in finite if i != best), key=lambda i: scores[i], default=None)
    return best, runner_up, pool


def run(ctx):
    from ..kpms import selection as S
    from ..restarts import restart_name

    pd, m = str(ctx.project_dir), ctx.m
    names = [restart_name(m, i) for i in range(m["restarts"])]
    fulls = [(st.stage("full_model") or {}).get("info", {}) for st in ctx.restart_states]
    window = m["targets"]["median_duration_ms"]
    scores, errs = S.expected_marginal_likelihoods(pd, names)
    medians = [f.get("median_duration_ms") for f in fulls]
    inside = [i for i, med in enumerate(medians) if _in_window(med, window)]
    best, runner_up, pool = pick(scores, medians, window, m["restart_selection"])
    if runner_up is None:
        runner_up = next(i for i in range(len(names)) if i != best)

    out_dir = ctx.project_dir / f"{m['model']['name']}_restarts"
    out_dir.mkdir(parents=True, exist_ok=True)
    made = S.plot_eml(scores, errs, names, out_dir / "eml_scores")
    results = {n: S.labels(pd, n) for n in names}
    nmi = S.agreement(results)
    made += S.plot_agreement(nmi, names, out_dir / "label_agreement")
    made += S.plot_confusion(results[names[best]], results[names[runner_up]],
                             out_dir / "confusion_selected_vs_runner_up")
    others = [nmi[best][j] for j in range(len(names)) if j != best]
    rows = [{"name": n, "seed": m["model"]["seed"] + i, "eml": scores[i], "eml_std_err": errs[i],
             "kappa": fulls[i].get("kappa"), "median_duration_ms": fulls[i].get("median_duration_ms"),
             "iterations": fulls[i].get("iterations"), "in_target_window": i in inside,
             "nmi_with_selected": nmi[best][i], "selected": i == best}
            for i, n in enumerate(names)]
    why = "the best expected marginal likelihood" + (" among the restarts in the target window"
                                                     if len(pool) < len(names) else "")
    if fulls[best].get("kappa") is not None:  # config.yml's kappa is the selected model's, as after one fit
        from ..kpms import project

        project.update_config(pd, kappa=float(fulls[best]["kappa"]))
    log.info("selected %s (%s: %.4g +/- %.2g); label agreement with the others (NMI) %.2f-%.2f",
             names[best], why, scores[best], errs[best], min(others), max(others))
    return {"model_name": names[best], "selected": best, "selected_because": why, "restarts": rows,
            "nmi": nmi, "outputs": [f"{out_dir.name}/{f}" for f in made]}

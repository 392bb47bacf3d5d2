"""Model selection among restarts: keypoint-moseq's expected marginal likelihood (EML), its EML
figure, and how well the restarts agree on the labels (normalized mutual information and
keypoint-moseq's confusion matrix of the selected restart against the runner-up)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import kpms, plt, quiet


def expected_marginal_likelihoods(project_dir: str, names: list[str]) -> tuple[list[float], list[float]]:
    """EML score and its standard error per model (keypoint-moseq's own), in the order of ``names``."""
    with quiet():
        scores, errs = kpms.expected_marginal_likelihoods(project_dir, list(names))
    return [float(s) for s in scores], [float(e) for e in errs]


def _save(fig, stem: Path) -> list[str]:
    fig.savefig(f"{stem}.pdf")
    fig.savefig(f"{stem}.png", dpi=150)
    plt.close(fig)
    return [f"{stem.name}.pdf", f"{stem.name}.png"]


def plot_eml(scores, errs, names, stem: Path) -> list[str]:
    """keypoint-moseq's EML figure (models sorted by score, with their standard errors)."""
    with quiet():
        fig, _ = kpms.plot_eml_scores(np.asarray(scores), np.asarray(errs), list(names))
        return _save(fig, stem)


def labels(project_dir: str, name: str) -> dict:
    """{recording: syllable per frame} of a fitted model, as keypoint-moseq extracts them (this
    writes the model's results.h5)."""
    path = Path(project_dir) / name / "results.h5"
    with quiet():
        if path.exists():
            results = kpms.load_results(project_dir, name)
        else:
            model, _, metadata, _ = kpms.load_checkpoint(project_dir, name)
            results = kpms.extract_results(model, metadata, project_dir, name)
    return results


def agreement(results: dict[str, dict]) -> list[list[float]]:
    """Normalized mutual information between every two models' labels over all frames (1: the
    same segmentation up to the syllables' numbering)."""
    from sklearn.metrics import normalized_mutual_info_score

    names = list(results)
    recs = sorted(results[names[0]])
    flat = {n: np.concatenate([np.asarray(results[n][r]["syllable"]) for r in recs]) for n in names}
    return [[float(normalized_mutual_info_score(flat[a], flat[b])) for b in names] for a in names]


def plot_agreement(nmi, names, stem: Path) -> list[str]:
    """A heat map of :func:`agreement`."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1 + 0.4 * n))
    im = ax.imshow(np.asarray(nmi), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="normalized mutual information")
    ax.set_title("label agreement between restarts", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def plot_confusion(results_a: dict, results_b: dict, stem: Path) -> list[str]:
    """keypoint-moseq's confusion matrix of two models' syllables."""
    with quiet():
        fig, _ = kpms.plot_confusion_matrix(results_a, results_b)
        return _save(fig, stem)

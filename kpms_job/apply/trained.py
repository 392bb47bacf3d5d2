"""The fitted model an apply manifest names, read from its project, and the checks new data must pass.

Everything here is read from what ``kpms-job run`` left: ``summary.json`` (the model it delivered,
the frame rate, the package versions, the resolved manifest), ``config.yml`` (the bodyparts and
their roles, as keypoint-moseq uses them) and the model's checkpoint. Nothing is computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from ..errors import InputDataError, ManifestError

#: The packages whose versions must be those the model was fitted with: they define the model.
MODEL_PACKAGES = ("keypoint-moseq", "jax-moseq")
#: What an apply's state and summary call the fit's own recordings (``apply.relabel_training``).
TRAINING = "(training recordings)"


@dataclass
class Trained:
    project_dir: Path
    model_name: str
    fps: float
    bodyparts: list
    use: list
    anterior: list
    posterior: list
    versions: dict
    manifest: dict  # the fit's resolved manifest
    dims: int  # 2 or 3: the keypoints the model was fitted on (0: not known)
    config: dict = field(repr=False, default_factory=dict)
    summary: dict = field(repr=False, default_factory=dict)  # the fit's summary.json

    @property
    def num_states(self) -> int:
        return int((self.manifest.get("model") or {}).get("num_states") or self.config.get("num_states") or 100)

    @property
    def checkpoint(self) -> Path:
        return self.project_dir / self.model_name / "checkpoint.h5"

    @property
    def results(self) -> Path:
        return self.project_dir / self.model_name / "results.h5"


def read(project_dir: str, model: str | None) -> Trained:
    project = Path(project_dir)
    summary = project / "summary.json"
    if not summary.is_file():
        raise ManifestError([
            f"apply.project_dir: expected a project dir that a finished `kpms-job run` left (with "
            f"summary.json), but {project} has {'no summary.json' if project.is_dir() else 'no such folder'}. "
            "Point it at the fitted project, or finish the fit first."])
    s = json.loads(summary.read_text())
    name = model or s["model_name"]
    if not (project / name / "checkpoint.h5").is_file():
        have = sorted(p.parent.name for p in project.glob("*/checkpoint.h5"))
        raise ManifestError([f"apply.model: expected a model folder of {project} with a checkpoint.h5, but "
                             f"found none named '{name}'; the project has {have}"])
    config = yaml.safe_load((project / "config.yml").read_text())
    return Trained(project_dir=project, model_name=name, fps=float(s["fps"]),
                   bodyparts=list(config["bodyparts"]), use=list(config["use_bodyparts"]),
                   anterior=list(config["anterior_bodyparts"]), posterior=list(config["posterior_bodyparts"]),
                   versions=dict(s.get("versions") or {}), manifest=dict(s.get("manifest") or {}),
                   dims=_dims_of_fit(project), config=config, summary=s)


def installed_versions() -> dict:
    out = {}
    for p in MODEL_PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def check_setup(t: Trained, fps: float | None) -> None:
    """What the apply manifest and this installation must share with the fit (exit 2)."""
    problems = []
    have = installed_versions()
    differ = [p for p in MODEL_PACKAGES if t.versions.get(p) and t.versions.get(p) != have.get(p)]
    if differ:
        problems.append(
            "apply.project_dir: the model was fitted with "
            + ", ".join(f"{p} {t.versions[p]}" for p in differ) + ", but this kpms-job has "
            + ", ".join(f"{p} {have[p]}" for p in differ)
            + "; apply it with the kpms-job (image) that fitted it, or refit with this one")
    if fps is not None and abs(float(fps) - t.fps) > 0.005 * t.fps:
        problems.append(
            f"apply.fps: the model was fitted at {t.fps:g} fps, but the new recordings are at {fps:g} fps; "
            "syllable durations are counted in frames, so a model applies only at its own frame rate: "
            "resample the recordings, or fit a model at their rate")
    if problems:
        raise ManifestError(problems)


def match_bodyparts(t: Trained, path: str, bodyparts: list, coords: dict) -> list[int]:
    """Indices that put one file's keypoints in the model's bodypart order (exit 3 if it cannot).

    A file may list the model's bodyparts in another order (they are reordered by name) or list
    more (those are left out); it must have every one the model has, in the model's dimensions.
    """
    missing = [b for b in t.bodyparts if b not in bodyparts]
    if missing:
        roles = [f"{b} ({_roles(t, b)})" for b in missing]
        raise InputDataError(
            f"{path}: the model has bodyparts {t.bodyparts}, but this file has {list(bodyparts)}: it lacks "
            f"{', '.join(roles)}. Apply the model only to recordings tracked with the same keypoints "
            "(same names), or fit a model on these")
    dims = {int(v.shape[-1]) for v in coords.values()}
    if t.dims and dims and dims != {t.dims}:
        raise InputDataError(
            f"{path}: the model was fitted on {t.dims}-D keypoints, but this file has {dims.pop()}-D ones; "
            "apply a model only to keypoints of its own dimensions")
    return [list(bodyparts).index(b) for b in t.bodyparts]


def _roles(t: Trained, bodypart: str) -> str:
    named = (("used", t.use), ("anterior", t.anterior), ("posterior", t.posterior))
    return ", ".join(role for role, names in named if bodypart in names) or "not used"


def _dims_of_fit(project: Path) -> int:
    """2 or 3: the dimensions of the keypoints the model was fitted on (from the fit's own arrays)."""
    import numpy as np

    path = project / ".kpms-job" / "keypoints.npz"
    if not path.exists():
        return 0
    with np.load(path) as z:
        return int(z["coords_0"].shape[-1]) if "coords_0" in z.files else 0

"""The ordered stages and the runner that skips what is done.

Each stage module in ``kpms_job/stages/`` (named as its stage) declares next to its code
``TITLE``, ``DEPS`` (the stages whose outputs it uses), ``READS`` (the manifest fields its
outputs depend on; ``READS_TUNED`` in their place when kappa tuning is on, for a stage that
reads other fields then) and ``OUTPUTS`` (paths in the project dir, ``{model}`` for the model
name). A stage's fingerprint is a hash of those fields, named and with their values, the
fingerprints of its dependencies, the package versions, and (for ingest) the input files'
content. Deciding what to run imports no keypoint-moseq or JAX: stage modules import them only
when they run.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

from . import __version__, faults, inputs, watchdog
from .manifest import tuning_settings
from .state import JobState, fingerprint, hash_file, output_error

log = logging.getLogger("kpms_job")

ORDER = ("ingest", "outliers", "pca", "arhmm", "full_model", "reindex", "results", "figures", "summary")


def package_versions() -> dict:
    out = {"kpms-job": __version__}
    for p in ("keypoint-moseq", "jax-moseq", "jax", "jaxlib"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


@dataclass(frozen=True)
class Stage:
    """A stage as its module declares it."""

    name: str
    module: ModuleType
    deps: tuple
    reads: tuple
    reads_tuned: tuple
    outputs: tuple
    title: str

    @classmethod
    def declared(cls, name: str) -> Stage:
        mod = importlib.import_module(f"{__package__}.stages.{name}")
        reads = tuple(mod.READS)
        return cls(name, mod, tuple(mod.DEPS), reads, tuple(getattr(mod, "READS_TUNED", reads)),
                   tuple(mod.OUTPUTS), mod.TITLE)

    def fields(self, m: dict) -> tuple:
        """The manifest fields this stage reads for manifest ``m``."""
        return self.reads_tuned if tuning_settings(m) is not None else self.reads

    def output_paths(self, m: dict) -> list:
        return [o.format(model=m["model"]["name"]) for o in self.outputs]


def manifest_field(m: dict, path: str):
    """The value of field ``path`` ("model.kappa") in a loaded manifest. ``tuning.*`` are the
    tuning settings with their defaults (None when tuning is off): ``tuning: {}`` and
    ``tuning: {check_every: 10}`` are one setting."""
    section, _, rest = path.partition(".")
    if section == "tuning":
        return (tuning_settings(m) or {}).get(rest)
    value = m[section]
    for part in rest.split(".") if rest else ():
        value = value[part]
    return value


def _declared_stages() -> list[Stage]:
    stages = [Stage.declared(n) for n in ORDER]
    for i, st in enumerate(stages):
        later = [d for d in st.deps if d not in ORDER[:i]]
        if later:
            raise ImportError(f"stage {st.name} depends on {later}, which do not run before it")
    return stages


STAGES = _declared_stages()
BY_NAME = {s.name: s for s in STAGES}


def input_hashes(m: dict) -> dict:
    """Input files by name and content, not by absolute path: a project whose data are mounted
    elsewhere (host path vs /data in a container) or that was moved is still up to date."""
    files = {}
    for f in inputs.expand(m):
        files.setdefault(Path(f).name, []).append(hash_file(f))
    for v in inputs.video_files(m["inputs"].get("videos")):
        files.setdefault(Path(v).name, []).append(Path(v).stat().st_size)  # videos: size for content
    return {k: sorted(map(str, v)) for k, v in sorted(files.items())}


@dataclass
class Decision:
    stage: Stage
    fingerprint: str
    run: bool
    reason: str
    parts: dict = field(default_factory=dict)


def decide(m: dict, state: JobState, files: dict | None = None) -> list[Decision]:
    """For each stage: run or skip, and why."""
    versions = package_versions()
    files = input_hashes(m) if files is None else files
    out: dict[str, Decision] = {}
    decisions = []
    for st in STAGES:
        parts = {
            "manifest": fingerprint({f: manifest_field(m, f) for f in st.fields(m)}),
            "upstream": fingerprint([out[d].fingerprint for d in st.deps]),
            "versions": fingerprint(versions),
        }
        if st.name == "ingest":
            parts["files"] = fingerprint(files)
        fp = fingerprint(st.name, parts)
        rec = state.stage(st.name)
        if rec is None:
            run, reason = True, "not done yet"
        elif rec["fingerprint"] != fp:
            old = rec.get("info", {}).get("_parts", {})
            changed = [k for k in parts if old.get(k) != parts[k]]
            labels = {"manifest": "its manifest settings changed", "upstream": "an earlier stage changed",
                      "versions": "package versions changed", "files": "input files changed"}
            reason = ", ".join(labels[c] for c in changed) or "fingerprint changed"
            run = True
        else:
            missing = [o for o in rec.get("info", {}).get("outputs", [])
                       if not (state.project_dir / o).exists()]
            run = bool(missing)
            reason = f"output missing: {missing[0]}" if missing else f"done at {rec['finished_at']}, unchanged"
        d = Decision(st, fp, run, reason, parts)
        out[st.name] = d
        decisions.append(d)
    # a stage whose upstream reruns must rerun as well, even when its fingerprint holds
    rerun = set()
    for d in decisions:
        if not d.run and any(dep in rerun for dep in d.stage.deps):
            d.run, d.reason = True, "an earlier stage reruns"
        if d.run:
            rerun.add(d.stage.name)
    return decisions


class Context:
    """What a stage gets: the manifest, the project dir, the state and shared helpers."""

    def __init__(self, m: dict, state: JobState, stop=None, prepared: dict | None = None):
        self.m = m
        self.project_dir = Path(m["project_dir"])
        self.state = state
        self.cache: dict = {}
        self.stop = stop  # callable -> bool: a graceful stop was requested
        self.fingerprints: dict = {}
        self.stage_names = list(ORDER)
        self.versions = package_versions()
        # what resources.machine.prepare_environment decided before JAX started (the budget and
        # JAX's memory settings); None where nothing was prepared (a stage run on its own)
        self.prepared = prepared

    @property
    def work_dir(self) -> Path:
        d = self.project_dir / ".kpms-job"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def info(self, stage: str) -> dict:
        rec = self.state.stage(stage)
        return rec["info"] if rec else {}

    @property
    def fps(self) -> float:
        return float(self.info("ingest")["fps"])

    @property
    def model_name(self) -> str:
        return self.m["model"]["name"]

    @property
    def arhmm_name(self) -> str:
        return self.m["model"]["name"] + "_arhmm"


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _as_output_error(exc: OSError, stage: str, project_dir: Path):
    """A write that failed for lack of space or permission is the user's to fix (exit 73)."""
    code = exc.errno
    if code is None:  # h5py puts the errno in its message only
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code not in _OUTPUT_ERRNOS:
        return None
    err = output_error(OSError(code, os.strerror(code)), exc.filename or project_dir)
    err.args = (f"{err.args[0]} (during stage {stage}; everything finished before it is kept)",)
    return err


def run(m: dict, state: JobState, stop=None, prepared: dict | None = None) -> dict:
    """Run every stage that is not done; return {stage: 'ran'|'skipped'}.

    A lock taken over by another job (``state.lock``) ends the run with LockLost at the next
    safe point: a stage start, a state write, or the stop poll after each Gibbs iteration
    (before that iteration's snapshot is written). ``prepared``: what
    :func:`resources.machine.prepare_environment` decided, for the planner.
    """

    def stop_or_lost() -> bool:
        state.check()
        return bool(stop is not None and stop())

    ctx = Context(m, state, stop_or_lost, prepared)
    # compiled XLA programs persist beside the state, so a resumed or rerun job skips the compile
    # (about 45 s for the full model on a CPU); read by JAX at import, which no stage has done yet
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ctx.work_dir / "jax-cache"))
    outcome = {}
    decisions = decide(m, state)
    ctx.fingerprints = {d.stage.name: d.fingerprint for d in decisions}
    for d in decisions:
        st = d.stage
        if not d.run:
            log.info("skip  %-10s %s", st.name, d.reason)
            outcome[st.name] = "skipped"
            continue
        log.info("run   %-10s %s (%s)", st.name, st.title, d.reason)
        if ctx.stop():
            break
        watchdog.progress(f"stage-start:{st.name}")
        faults.point(f"stage-start:{st.name}")
        t0 = time.monotonic()
        try:
            info = st.module.run(ctx) or {}
        except OSError as exc:
            out = _as_output_error(exc, st.name, ctx.project_dir)
            if out is None:
                raise
            raise out from exc
        declared = st.output_paths(m)
        undeclared = [o for o in info.setdefault("outputs", declared) if o not in declared]
        if undeclared:  # the declaration is what a rerun checks for: it must name them
            raise RuntimeError(f"stage {st.name} wrote {undeclared}, which kpms_job/stages/{st.name}.py "
                               "does not declare in OUTPUTS")
        info["_parts"] = d.parts
        faults.point(f"stage-end:{st.name}")
        seconds = time.monotonic() - t0
        state.record_stage(st.name, d.fingerprint, seconds, info)
        watchdog.progress(f"stage-end:{st.name}")
        log.info("done  %-10s in %.1f s", st.name, seconds)
        outcome[st.name] = "ran"
    return outcome

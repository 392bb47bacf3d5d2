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

from . import __version__, faults, groups, inputs, liveprogress, restarts, watchdog
from .manifest import tuning_settings
from .state import (
    ORDER,
    PER_RESTART,
    SHARED_STAGES,
    JobState,
    ProjectLock,
    fingerprint,
    hash_file,
    output_error,
    plan_keys,
)

log = logging.getLogger("kpms_job")



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

    def output_paths(self, m: dict, model_name: str | None = None) -> list:
        return [o.format(model=model_name or m["model"]["name"]) for o in self.outputs]


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
SELECT = Stage.declared("select")


def graph(m: dict) -> list[tuple[Stage, int | None]]:
    """The stages of manifest ``m`` in order, each with its restart (None: the project's own)."""
    by_name = {**{st.name: st for st in STAGES}, "select": SELECT}  # STAGES as it is now (tests swap it)
    return [(by_name[name], r) for name, r in plan_keys(restarts.count(m))]


def key(name: str, restart: int | None) -> str:
    """A stage's name in one run's graph: ``arhmm@r03`` for restart 3's AR-HMM."""
    return name if restart is None else f"{name}@r{restart:02d}"


def _upstream(st: Stage, restart: int | None, n: int) -> list[str]:
    """The graph keys whose fingerprints stage ``st`` (of ``restart``) depends on."""
    if st is SELECT:
        return [key(d, None) for d in st.deps] + [key("full_model", i) for i in range(n)]
    if n > 1 and restart is None:  # after select: its choice stands for the fits
        deps = ["select" if d in PER_RESTART else d for d in st.deps]
        return list(dict.fromkeys(deps))
    return [key(d, restart if d in PER_RESTART else None) for d in st.deps]


def restart_states(m: dict, state: JobState) -> list[JobState]:
    """Each restart's state, read-only (no lock), or [] without restarts."""
    n = restarts.count(m)
    return [JobState(state.project_dir, restart=i, parent=state) for i in range(n)] if n > 1 else []


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
    restart: int | None = None  # the restart whose state records this stage (None: the project's)
    upstream: tuple = ()  # the graph keys it depends on

    @property
    def key(self) -> str:
        return key(self.stage.name, self.restart)

    @property
    def label(self) -> str:
        return self.stage.name if self.restart is None else f"{self.stage.name} r{self.restart:02d}"


def decide(m: dict, state: JobState, files: dict | None = None,
           states: list[JobState] | None = None) -> list[Decision]:
    """For each stage (each restart's fits with restarts): run or skip, and why. ``states``: the
    restarts' states (default: read from disk)."""
    versions = package_versions()
    files = input_hashes(m) if files is None else files
    n = restarts.count(m)
    states = restart_states(m, state) if states is None else states
    out: dict[str, Decision] = {}
    decisions = []
    for st, restart in graph(m):
        mm = m if restart is None else restarts.manifest_for(m, restart)
        upstream = tuple(_upstream(st, restart, n))
        parts = {
            "manifest": fingerprint({f: manifest_field(mm, f) for f in st.fields(mm)}),
            "upstream": fingerprint([out[d].fingerprint for d in upstream]),
            "versions": fingerprint(versions),
        }
        if st.name == "ingest":
            parts["files"] = fingerprint(files)
        fp = fingerprint(st.name, parts)
        rec = (state if restart is None else states[restart]).stage(st.name)
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
        d = Decision(st, fp, run, reason, parts, restart, upstream)
        out[d.key] = d
        decisions.append(d)
    # a stage whose upstream reruns must rerun as well, even when its fingerprint holds
    rerun = set()
    for d in decisions:
        if not d.run and any(dep in rerun for dep in d.upstream):
            d.run, d.reason = True, "an earlier stage reruns"
        if d.run:
            rerun.add(d.key)
    return decisions


class Context:
    """What a stage gets: the manifest, the project dir, the state and shared helpers.

    A restart's fits get the restart's manifest (its seed and name) and state. With restarts, the
    project's own context reads the fits (``info("full_model")``) from the selected restart's state
    and names that restart's model folder (``model_name``) once ``select`` has run.
    """

    def __init__(self, m: dict, state: JobState, stop=None, prepared: dict | None = None,
                 states: list[JobState] | None = None):
        self.m = m
        self.project_dir = Path(m["project_dir"])
        self.state = state
        self.restart_states = states or []
        self.cache: dict = {}
        self.stop = stop  # callable -> bool: a graceful stop was requested
        self.fingerprints: dict = {}
        self.stage_names = [st.name for st, r in graph(m) if r is None]
        self.versions = package_versions()
        # what resources.machine.prepare_environment decided before JAX started (the budget and
        # JAX's memory settings); None where nothing was prepared (a stage run on its own)
        self.prepared = prepared

    @property
    def work_dir(self) -> Path:
        d = self.project_dir / ".kpms-job"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _selected(self) -> int | None:
        if not self.restart_states:
            return None
        rec = self.state.stage("select")
        return rec["info"]["selected"] if rec else None

    def info(self, stage: str) -> dict:
        state = self.state
        selected = self._selected() if stage in PER_RESTART else None
        if selected is not None:
            state = self.restart_states[selected]
        rec = state.stage(stage)
        return rec["info"] if rec else {}

    @property
    def fps(self) -> float:
        return float(self.info("ingest")["fps"])

    @property
    def model_name(self) -> str:
        selected = self._selected()
        if selected is not None:
            return restarts.restart_name(self.m, selected)
        return self.m["model"]["name"]

    @property
    def arhmm_name(self) -> str:
        return self.model_name + "_arhmm"


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


def in_part(d: Decision, part) -> bool:
    """Whether decision ``d`` belongs to ``part`` of the job (see :func:`run`)."""
    if part is None:
        return True
    if part == "shared":
        return d.restart is None and d.stage.name in SHARED_STAGES
    if part == "rest":
        return d.restart is None and d.stage.name not in SHARED_STAGES
    return d.restart == part


class _Warnings(logging.Handler):
    """The warnings a stage logs while it runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _run_stage(ctx: Context, d: Decision, state: JobState, outcome: dict) -> bool:
    """Run one stage and record it in ``state``; False when a stop was requested first."""
    st = d.stage
    log.info("run   %-10s %s (%s)", d.label, st.title, d.reason)
    if ctx.stop():
        return False
    watchdog.progress(f"stage-start:{st.name}")
    liveprogress.stage_started(state.dir, st.name, d.restart, st.title, restarts.count(ctx.m))
    faults.point(f"stage-start:{st.name}")
    t0 = time.monotonic()
    warned = _Warnings()
    log.addHandler(warned)
    try:
        info = st.module.run(ctx) or {}
    except OSError as exc:
        out = _as_output_error(exc, st.name, ctx.project_dir)
        if out is None:
            raise
        raise out from exc
    finally:
        log.removeHandler(warned)
    if warned.messages:  # kept with the stage's result: the report lists them after a rerun skips it
        info["warnings"] = warned.messages
    declared = st.output_paths(ctx.m, None if st is SELECT else ctx.model_name)
    undeclared = [o for o in info.setdefault("outputs", declared) if o not in declared]
    if undeclared:  # the declaration is what a rerun checks for: it must name them
        raise RuntimeError(f"stage {st.name} wrote {undeclared}, which kpms_job/stages/{st.name}.py "
                           "does not declare in OUTPUTS")
    info["_parts"] = d.parts
    faults.point(f"stage-end:{st.name}")
    seconds = time.monotonic() - t0
    state.record_stage(st.name, d.fingerprint, seconds, info)
    liveprogress.stage_ended()
    watchdog.progress(f"stage-end:{st.name}")
    log.info("done  %-10s in %.1f s", d.label, seconds)
    outcome[d.key] = "ran"
    return True


def _run_restart(m: dict, state: JobState, i: int, stop, prepared, wait: bool, outcome: dict,
                 leave_if_held: bool) -> bool:
    """Fit restart ``i`` under its own lock; False when a stop was requested, or when another job
    holds it and ``leave_if_held`` (it is left to that job; else LockHeld, exit 77)."""
    from .errors import FitOutOfMemory, LockHeld
    from .resources import planner

    lock = ProjectLock(state.project_dir, restart=i)
    try:
        lock.acquire(wait=wait)
    except LockHeld as exc:
        if not leave_if_held:
            raise
        log.info("restart r%02d: left to the job that holds it (%s)", i, exc)
        outcome[key("arhmm", i)] = outcome[key("full_model", i)] = "busy"
        return False
    try:
        mine = JobState(state.project_dir, lock=lock, restart=i, parent=state)
        states = restart_states(m, state)
        states[i] = mine
        decisions = decide(m, state, states=states)  # again, under the lock: another job may have fitted it
        ctx = Context(restarts.manifest_for(m, i), mine, lambda: stop() or lock.check() or False, prepared)
        ctx.fingerprints = {d.stage.name: d.fingerprint for d in decisions if d.restart in (None, i)}
        for d in decisions:
            if d.restart != i:
                continue
            if not d.run:
                log.info("skip  %-10s %s", d.label, d.reason)
                outcome[d.key] = "skipped"
                continue
            try:
                if not _run_stage(ctx, d, mine, outcome):
                    return False
            except FitOutOfMemory as exc:  # recorded in this restart's state, under its lock
                planner.after_out_of_memory(ctx.m, mine, str(exc), d.stage.name)  # raises OutOfMemory when none left
                exc.recorded = True
                raise
        return True
    finally:
        lock.release()


def pending_restarts(m: dict, state: JobState) -> list[tuple[int, bool]]:
    """The restarts whose fits are not done, each with whether a job holds it now."""
    out = []
    for d in decide(m, state):
        if d.restart is not None and d.stage.name == "full_model" and d.run:
            out.append((d.restart, ProjectLock(state.project_dir, restart=d.restart).held()))
    return out


def check_groups(m: dict, state: JobState, decisions: list[Decision]) -> None:
    """Check the manifest's groups against the recordings of a finished ingest that stays: an edit of
    the groups reruns the analysis stage only, after the fits, and must fail before them. (When
    ingest runs, it checks them itself on the recordings it loads.)"""
    rec = state.stage("ingest")
    stays = any(d.stage.name == "ingest" and not d.run for d in decisions)
    if m.get("groups") and rec and stays:
        groups.assign(m["groups"], list(rec["info"]["recordings"]))


def run(m: dict, state: JobState, stop=None, prepared: dict | None = None, part=None, wait: bool = False) -> dict:
    """Run every stage of ``part`` that is not done; return {graph key: 'ran'|'skipped'|'busy'}.

    ``part``: None, everything; "shared", ingest, outliers and PCA; an index, that restart's fits;
    "rest", select and the stages after it (with restarts). Restarts run one after another, each
    under its own lock (``wait``: queue behind a job that holds it, else leave it to that job).
    The stages after the fits need every restart finished: when one is held by another job they are
    left to the job that finishes last (:class:`~kpms_job.errors.RestartsPending`).

    A lock taken over by another job (``state.lock``) ends the run with LockLost at the next
    safe point: a stage start, a state write, or the stop poll after each Gibbs iteration
    (before that iteration's snapshot is written). ``prepared``: what
    :func:`resources.machine.prepare_environment` decided, for the planner.
    """
    from .errors import RestartsPending

    def stop_or_lost() -> bool:
        state.check()
        return bool(stop is not None and stop())

    ctx = Context(m, state, stop_or_lost, prepared, restart_states(m, state))
    # compiled XLA programs persist beside the state, so a resumed or rerun job skips the compile
    # (about 45 s for the full model on a CPU); read by JAX at import, which no stage has done yet
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ctx.work_dir / "jax-cache"))
    # JAX keeps only programs that took over a second to compile; the many quicker ones (the model's
    # initialisation) still cost a resumed job about 10 s on a CPU, and take a few MB to keep
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    outcome: dict = {}
    decisions = decide(m, state, states=ctx.restart_states)
    check_groups(m, state, decisions)
    ctx.fingerprints = {d.key: d.fingerprint for d in decisions}
    current = {d.key: d for d in decisions}  # re-decided once the restarts are fitted
    done_restarts: set = set()
    for k in list(current):
        d = current[k]
        if not in_part(d, part):
            continue
        if d.restart is not None:
            if d.restart in done_restarts:
                continue
            done_restarts.add(d.restart)
            if not _run_restart(m, state, d.restart, stop_or_lost, prepared, wait, outcome,
                                leave_if_held=part is None) and stop_or_lost():
                break
            continue
        if d.stage is SELECT:
            pending = pending_restarts(m, state)
            if pending:
                raise RestartsPending(m["project_dir"], pending)
            # the fits as they are now on disk, and the fingerprints they give
            ctx.restart_states = restart_states(m, state)
            current = {x.key: x for x in decide(m, state, states=ctx.restart_states)}
            ctx.fingerprints = {x.key: x.fingerprint for x in current.values()}
            d = current[k]
        if not d.run:
            log.info("skip  %-10s %s", d.label, d.reason)
            outcome[d.key] = "skipped"
            continue
        if not _run_stage(ctx, d, state, outcome):
            break
    return outcome

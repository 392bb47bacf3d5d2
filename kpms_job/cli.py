"""Command line: ``kpms-job [run] MANIFEST``, validate, plan, apply, init, status, selftest; exit codes in errors.py."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import EXIT_OK, EXIT_TUNING_MISSED, EXIT_UNEXPECTED, JobError, UsageError

log = logging.getLogger("kpms_job")

COMMANDS = ("run", "validate", "plan", "apply", "init", "status", "selftest")

EPILOG = """exit codes: 0 done (or nothing to do), 1 unexpected error, 2 manifest or usage error,
3 input data error, 4 out of memory after every fallback, 5 kappa tuning missed the target
window (results are written), 73 project dir not writable or full, 75 interrupted (a signal, or
the project dir taken over by another job): rerun to continue,
76 stalled (no progress within KPMS_JOB_WATCHDOG_S, default 600; stacks logged): rerun to continue,
77 busy: another job holds the project dir, nothing was done (retry later, or --wait),
78 selftest failed (the GPU is missing or unusable, or the test fit failed)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with one line, like manifest errors
        raise UsageError(f"command line: {message} (see kpms-job --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kpms-job", description="Run the whole Keypoint-MoSeq pipeline from one manifest.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kpms-job {__version__}")
    sub = p.add_subparsers(dest="command")
    for name, text in (("run", "run every stage that is not done yet"),
                       ("validate", "check the manifest and exit"),
                       ("plan", "dry run: each stage, whether it would run or be skipped, and why"),
                       ("apply", "label new recordings with a fitted model (an apply manifest: "
                                 "apply: {project_dir, inputs, ...})"),
                       ("status", "what a job did and is doing in a project dir: each stage done, running "
                                  "(the fit's iteration, kappa, time left), waiting or failed, and the "
                                  "verdict; reads files only, works while the job runs and from another "
                                  "machine")):
        sp = sub.add_parser(name, help=text, description=text)
        if name == "status":
            sp.add_argument("target", metavar="PROJECT_DIR_OR_MANIFEST",
                            help="a project dir, or the manifest that names it")
            sp.add_argument("--json", action="store_true", help="print one JSON object (keys: see README)")
        else:
            sp.add_argument("manifest", nargs="?" if name == "plan" else None, help="manifest .yml/.yaml/.json")
        sp.add_argument("--debug", action="store_true", help="show tracebacks and keypoint-moseq's output")
        if name in ("run", "apply"):
            sp.add_argument("--wait", action="store_true",
                            help="if another job holds the project dir, wait for it instead of exiting")
        if name == "run":
            sp.add_argument("--task", metavar="I|select|auto",
                            help="with restarts: fit restart I only (after the shared stages), select among "
                                 "the fitted restarts, or take I from JOB_COMPLETION_INDEX (Kubernetes "
                                 "Indexed Job) or SLURM_ARRAY_TASK_ID (auto); the task that finishes the "
                                 "last restart selects")
            sp.add_argument("--workers", default="auto", metavar="K|auto",
                            help="with restarts, without --task: fit this many restarts at once in worker "
                                 "processes (auto: one per visible GPU; on a CPU as many as memory and "
                                 "cores allow)")
            # how many times this job has restarted itself after running out of memory: the count
            # crosses into the fresh process (exec or child) on its command line
            sp.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
        if name == "plan":
            sp.add_argument("--frames", type=int, help="plan memory for this many frames (no manifest needed)")
            sp.add_argument("--keypoints", type=int, default=8, help="with --frames: keypoints (default 8)")
            sp.add_argument("--latent-dim", type=int, default=10, help="with --frames: latent_dim (default 10)")
            sp.add_argument("--num-states", type=int, default=100, help="with --frames: num_states")
            sp.add_argument("--budget-gb", type=float, help="with --frames: memory budget in GiB")
            sp.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                            help="with --frames: plan for a GPU or a CPU (default: this machine); "
                                 "--device gpu without a GPU here needs --budget-gb, the GPU's memory")
    text = "write a commented manifest for your data (a folder of tracking files, one file, a DLC config.yaml)"
    sp = sub.add_parser("init", help=text, description=text)
    sp.add_argument("source", metavar="DATA_DIR_OR_FILE",
                    help="a folder of tracking files, one tracking file, or a DeepLabCut config.yaml")
    sp.add_argument("-o", "--output", default="manifest.yml", help="the manifest to write (default: manifest.yml)")
    sp.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    sp.add_argument("--debug", action="store_true", help="show tracebacks")
    text = ("check this machine or image: versions, the GPU and driver, the devices JAX sees, and a "
            "few-iteration fit on bundled data (exit 78 when something fails)")
    sp = sub.add_parser("selftest", help=text, description=text)
    sp.add_argument("--require-gpu", action="store_true",
                    help="fail without a usable GPU (the default where JAX has its CUDA plugin)")
    sp.add_argument("--cpu", action="store_true", help="test on the CPU even where JAX has its CUDA plugin")
    return p


def _argv(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    # `kpms-job manifest.yml` (and `docker run IMAGE manifest.yml`) means `run`
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS:
        argv.insert(argv.index(first), "run")
    return argv


def cmd_validate(args) -> int:
    from . import manifest
    from .manifest_file import read_manifest_file

    data = read_manifest_file(args.manifest)
    if isinstance(data, dict) and "apply" in data:  # an apply manifest (kpms-job apply)
        from .apply import manifest as apply_manifest

        a = apply_manifest.load(args.manifest)["apply"]
        print(f"{args.manifest}: valid apply manifest. project_dir {a['project_dir']}, format "
              f"{a['inputs']['format']}, {len(a['inputs']['paths'])} input pattern(s), results in applied/{a['name']}/")
        return EXIT_OK
    m = manifest.load(args.manifest)
    print(f"{args.manifest}: valid. project_dir {m['project_dir']}, format {m['inputs']['format']}, "
          f"{len(m['inputs']['paths'])} input pattern(s)")
    return EXIT_OK


def cmd_status(args) -> int:
    from . import status

    return status.main(args.target, as_json=args.json)


def cmd_plan(args) -> int:
    from . import manifest, pipeline
    from .state import JobState

    if args.manifest is None:
        if args.frames is None:
            raise UsageError("command line: plan needs a manifest, or --frames N (see kpms-job --help)")
        try:
            from .resources import report
        except ImportError as exc:
            raise UsageError("command line: plan --frames needs the memory planner, which this version "
                             "of kpms-job does not include; plan a manifest instead") from exc
        return report.plan_frames(args)
    m = manifest.load(args.manifest)
    state = JobState(m["project_dir"])
    decisions = pipeline.decide(m, state)
    print(f"plan for {args.manifest} (project {m['project_dir']}):")
    for d in decisions:
        print(f"  {'RUN ' if d.run else 'skip'}  {d.label:<14} {d.stage.title:<36} {d.reason}")
    n = sum(d.run for d in decisions)
    print(f"{n} of {len(decisions)} stages would run" if n else "nothing to do: every stage is done and unchanged")
    ingest = (state.stage("ingest") or {}).get("info") or {}
    counted = None
    if not ingest:  # nothing ingested yet: count from the files
        from . import tracking_files

        counted = tracking_files.count(m)
    _plan_data_note(m, ingest, counted)
    try:
        from .resources import report
    except ImportError:
        return EXIT_OK
    report.plan_manifest(m, state, counted)
    return EXIT_OK


def _plan_data_note(m, ingest: dict, counted) -> None:
    """Before any fit: say so when the recordings are far shorter than keypoint-moseq asks for."""
    from .manifest import tuning_settings
    from .stages.ingest import too_little_data

    frames = ingest.get("frames") or (sum(counted[0]) if counted else 0)
    fps = ingest.get("fps") or (m.get("fps") if isinstance(m.get("fps"), (int, float)) else None)
    little = too_little_data(frames, float(fps)) if frames and fps and tuning_settings(m) is not None else None
    if little:
        print(f"data: {little}")


def _tuning_verdict(state, m) -> int:
    from .manifest import tuning_settings
    from .pipeline import Context, restart_states

    info = (state.stage("summary") or {}).get("info", {})
    if tuning_settings(m) is None:
        return EXIT_OK
    ctx = Context(m, state, states=restart_states(m, state))
    tuning = ctx.info("full_model").get("tuning") or {}  # the selected restart's
    # a state delivered in the window whose own chain then left it, still at its kappa, is no stable model
    if info.get("in_target_window") is False or tuning.get("stable") is False:
        from .stages.ingest import too_little_data

        ingest = ctx.info("ingest")
        little = too_little_data(ingest["frames"], ingest["fps"]) if ingest.get("frames") else None
        log.error("kappa tuning did not reach a model that stays in the target window: %s%s",
                  tuning.get("verdict", "see summary.md"), f". Note: {little}" if little else "")
        return EXIT_TUNING_MISSED
    return EXIT_OK


def _fit_out_of_memory(exc) -> bool:
    from .errors import FitOutOfMemory

    return isinstance(exc, FitOutOfMemory)


def _same_invocation(args) -> bool:
    """Whether this process was started with ``args`` (so it can re-exec itself)."""
    try:
        again = build_parser().parse_args(_argv(sys.argv[1:]))
    except (JobError, SystemExit):
        return False
    return vars(again) == vars(args)


def _restart(args) -> int:
    """Start this job afresh: settings are read when JAX traces, so they need a new process.

    ``os.execv`` keeps the pid (PID 1 in a container stays PID 1) and gives the memory
    of this process back. A fault that fired (tests: KPMS_JOB_FAULT) does not fire again.
    """
    import os

    from . import faults

    if os.environ.get("KPMS_JOB_FAULT"):
        left = faults._parse()
        os.environ["KPMS_JOB_FAULT"] = ",".join(f"{action}@{where}" for where, action in left.items())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for handler in logging.getLogger("kpms_job").handlers:
        handler.flush()
    again = f"--restarts={args.restarts + 1}"
    if _same_invocation(args):
        # the interpreter, its options and the program (``-m kpms_job``, a script) as they were
        program = sys.orig_argv[:len(sys.orig_argv) - (len(sys.argv) - 1)]
        os.execv(sys.executable, [sys.executable, *program[1:], *_without_restarts(sys.argv[1:]), again])
    import subprocess  # called in-process (tests, notebooks): run the restart as a child

    cmd = [sys.executable, "-m", "kpms_job", "run", args.manifest, again]
    cmd += ["--wait"] * bool(args.wait) + ["--debug"] * bool(args.debug)
    return subprocess.call(cmd)


def _without_restarts(argv: list[str]) -> list[str]:
    """``argv`` less its ``--restarts N`` / ``--restarts=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--restarts":
            skip = True
        elif not a.startswith("--restarts="):
            out.append(a)
    return out


def _run_part(args, m: dict, part, wait: bool, t0: float) -> tuple[dict | None, bool]:
    """Run ``part`` of the job (pipeline.run) under the lock it needs: (outcome, restart), where
    outcome is None when nothing was left to do and restart says the process must start afresh
    (out of memory: the next setting needs a new process).

    The project's own stages run under the project lock; a restart's fits under the restart's
    lock alone (pipeline takes it), so that tasks on one project dir fit side by side.
    """
    import contextlib

    from . import pipeline, signals, watchdog
    from .errors import Interrupted, OutOfMemory
    from .resources import machine, planner
    from .state import JobState, ProjectLock

    restart = False
    with contextlib.ExitStack() as stack:
        lock = None
        if not isinstance(part, int):
            lock = stack.enter_context(ProjectLock(m["project_dir"]))
            lock.acquire(wait=wait)
        state = JobState(m["project_dir"], lock=lock)
        if state.recovered and lock is not None:  # a rerun with nothing to do would otherwise leave it damaged
            state.save()
        if not any(d.run for d in pipeline.decide(m, state) if pipeline.in_part(d, part)):
            return None, False
        # JAX reads its GPU memory fraction when it starts: set it from the budget now
        prepared = machine.prepare_environment(m)
        # a hang (e.g. an XLA:CPU deadlock) ends in exit 76, not silence; a restart's task records it
        # in no state (the project's is not its to write)
        watchdog.start(state=state if lock is not None else None, lock=lock)
        try:
            outcome = pipeline.run(m, state, stop=signals.requested, prepared=prepared, part=part, wait=wait)
        except JobError as exc:
            if not _fit_out_of_memory(exc):
                raise
            if not getattr(exc, "recorded", False):  # a restart's fit records it under its own lock
                stage = next((d.stage.name for d in pipeline.decide(m, state) if d.run), None)
                planner.after_out_of_memory(m, state, str(exc), stage)  # raises OutOfMemory when nothing is left
            if args.restarts >= 64:
                raise OutOfMemory(f"out of memory, and 64 restarts did not get past it: {exc}") from exc
            restart = True
        else:
            if lock is not None:
                planner.record_peak(state)
        finally:
            watchdog.stop()
        if signals.requested():
            raise Interrupted("stopped on request; rerun the same command to continue")
    return (None if restart else outcome), restart


def _fit_restarts(args, m: dict, t0: float, outcome: dict) -> int | None:
    """Fit every restart not fitted and not held by another job: in this process one after another,
    or in worker processes (:mod:`kpms_job.fanout`). An exit code to end with, or None to go on."""
    from . import fanout, pipeline, signals
    from .errors import Interrupted
    from .state import JobState

    state = JobState(m["project_dir"])
    todo = [i for i, held in pipeline.pending_restarts(m, state) if not held]
    if not todo:
        return None
    k, gpus, why = fanout.worker_count(m, state, args.workers)
    if k <= 1:
        for i in todo:
            ran, restart = _run_part(args, m, i, False, t0)
            if restart:
                return _restart(args)
            outcome.update(ran or {})
        return None
    log.info("fitting %d restart(s) in %d worker processes (%s)", len(todo), k, why)
    codes = fanout.run_workers(args.manifest, todo, k, gpus, debug=args.debug)
    failed = {i: c for i, c in codes.items() if c != 0}
    outcome.update({pipeline.key("full_model", i): "ran" for i, c in codes.items() if c == 0})
    if signals.requested():
        raise Interrupted("stopped on request (the workers saved their snapshots); rerun the same command to continue")
    if failed:
        which = ", ".join(f"r{i:02d} (exit {failed[i]})" for i in sorted(failed))
        log.error("restart(s) %s failed; the others are kept: rerun to fit the failed ones", which)
        return failed[min(failed)]
    return None


def cmd_init(args) -> int:
    from .init_manifest import write

    out, checks = write(args.source, args.output, force=args.force)
    print(f"wrote {out}" + (f"; check {len(checks)} item(s) marked CHECK/FIXME in it:" if checks else ""))
    for item in checks:
        print(f"  - {item}")
    print(f"next: kpms-job validate {out}, then kpms-job run {out}")
    return EXIT_OK


def cmd_apply(args) -> int:
    from . import signals

    signals.install()  # first: numpy starts its BLAS threads at import (see cmd_run)
    from .apply import manifest as apply_manifest
    from .apply import run as apply_run
    from .resources.machine import prepare_environment

    m = apply_manifest.load(args.manifest)
    prepare_environment({"resources": {}})  # JAX's GPU memory, before anything imports JAX
    return apply_run.run(m, wait=args.wait)


def cmd_run(args) -> int:
    import time

    from . import signals

    signals.install()  # before the imports below: numpy starts its BLAS threads at import (signals.install)
    from . import inputs, manifest, pipeline, restarts, runlog
    from .state import JobState, state_dir

    t0 = time.monotonic()
    m = manifest.load(args.manifest)
    # a pattern that matches no file is reported now, before the project dir is created
    inputs.expand(m)
    inputs.video_files(m["inputs"].get("videos"))
    task = restarts.parse_task(args.task, m)
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        raise UsageError(f"command line: --workers: expected a number of at least 1 or auto, got {args.workers!r}")
    # from here on the job creates the project dir: its log starts there now; a restart's task
    # records how it ended in its restart's state dir, beside the fits it ran
    runlog.start(m["project_dir"], "run", task=task, manifest=str(Path(args.manifest).resolve()),
                 state_folder=state_dir(m["project_dir"], task) if isinstance(task, int) else None,
                 restarts=restarts.count(m))
    if task is None and restarts.count(m) > 1:
        parts = [("shared", args.wait), ("fits", args.wait), ("rest", True)]
    elif task is None:
        parts = [(None, args.wait)]
    elif task == "select":
        parts = [("shared", True), ("rest", args.wait)]
    else:
        # every task runs (or waits for) the shared stages, then its restart; the one that finds
        # every restart fitted runs select and what follows
        parts = [("shared", True), (task, args.wait), ("rest", True)]
    outcome: dict = {}
    for part, wait in parts:
        if part == "fits":
            code = _fit_restarts(args, m, t0, outcome)
            if code is not None:
                return code
            continue
        # decided once: pending_restarts hashes every input file
        if part == "rest" and task not in (None, "select") and (
                left := len(pipeline.pending_restarts(m, JobState(m["project_dir"])))):
            print(f"restart {task} done; {left} of {m['restarts']} restarts not finished yet: the task that "
                  f"finishes the last one selects ({time.monotonic() - t0:.0f} s)")
            return EXIT_OK
        ran, restart = _run_part(args, m, part, wait, t0)
        if restart:  # the lock is released: the fresh process takes it again
            return _restart(args)
        outcome.update(ran or {})
    state = JobState(m["project_dir"])
    ran = [k for k, v in outcome.items() if v == "ran"]
    if not ran:
        log.info("nothing to do: every stage is done and unchanged (%s)", m["project_dir"])
        print(f"nothing to do: {m['project_dir']} is complete and up to date "
              f"({time.monotonic() - t0:.1f} s)")
        return _tuning_verdict(state, m)
    print(f"done: {len(ran)} stage(s) ran, {len(outcome) - len(ran)} skipped, "
          f"{time.monotonic() - t0:.0f} s. Results: {m['project_dir']}/summary.md")
    return _tuning_verdict(state, m)


def main(argv=None) -> int:
    code = _main(argv)
    from . import signals

    if signals.requested():
        # stopped on a signal: snapshot and state are saved; skip the interpreter's teardown,
        # which with JAX loaded can take longer than a pod's grace period
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv=None) -> int:
    from . import runlog

    code, message = _command(argv)
    runlog.finish(code, message)  # the run's log and last_run.json, where the run started them
    return code


def _command(argv=None) -> tuple[int, str | None]:
    """Run the command: (exit code, what went wrong or None)."""
    from .console import setup_logging

    argv = _argv(argv)
    debug = "--debug" in argv
    setup_logging(debug)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_OK, None
        if args.command == "selftest":
            from . import selftest

            return selftest.run(require_gpu=args.require_gpu, cpu=args.cpu), None
        return {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "apply": cmd_apply,
                "init": cmd_init, "status": cmd_status}[args.command](args), None
    except JobError as exc:
        if debug:
            traceback.print_exc()
        print(f"kpms-job: error: {exc}", file=sys.stderr)
        return exc.exit_code, str(exc)
    except KeyboardInterrupt:
        print("kpms-job: interrupted; rerun the same command to continue", file=sys.stderr)
        return 75, "interrupted (Ctrl-C)"
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one message, exit 1
        if debug:
            traceback.print_exc()
        print(f"kpms-job: unexpected error: {type(exc).__name__}: {exc}\n"
              "Rerun with --debug for the traceback, and report it if it persists.", file=sys.stderr)
        return EXIT_UNEXPECTED, f"unexpected error: {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())

"""Exception types, each carrying the exit code the CLI returns for it.

Exit codes (documented in the README; the Kubernetes and Slurm examples rely on them):

====  ==========================================================
0     done, or nothing left to do
1     anything unexpected (a bug: rerun with ``--debug``)
2     manifest or usage error
3     input data error
4     out of memory after every fallback
5     finished, but kappa tuning could not reach the target window, or its model left it (not stable)
73    output problem: project dir not writable or disk full
75    interrupted (signal, or the project dir's lock taken over by another
      job, which goes on with the work): safe to rerun
76    stalled: no progress within the watchdog's limit (a hang, e.g. an
      XLA:CPU deadlock); stacks logged, last snapshot kept: safe to rerun
77    busy: another job holds the project dir; nothing was done. Not a
      failure: retry later, or run with ``--wait`` to queue behind it
78    ``kpms-job selftest`` failed: the GPU is missing or unusable, or its
      tiny fit failed (the machine's setup, not the data)
====  ==========================================================
"""

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_MANIFEST = 2
EXIT_INPUT = 3
EXIT_OOM = 4
EXIT_TUNING_MISSED = 5
EXIT_OUTPUT = 73
EXIT_INTERRUPTED = 75
EXIT_STALLED = 76  # kpms_job.watchdog: the job made no progress within its limit and exited itself
EXIT_BUSY = 77
EXIT_SELFTEST = 78  # sysexits EX_CONFIG: kpms_job.selftest found the machine unable to run the job


class JobError(Exception):
    """An error the user can act on; printed as one message, never a traceback."""

    exit_code = EXIT_UNEXPECTED


class ManifestError(JobError):
    """The manifest or the command line is wrong.

    Parameters
    ----------
    problems : list of str
        One message per problem, each naming its field path.
    """

    exit_code = EXIT_MANIFEST

    def __init__(self, problems, source=None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        n = len(self.problems)
        title = f"{head}{n} problem{'s' if n != 1 else ''} in the manifest"
        super().__init__(title + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class UsageError(JobError):
    """A wrong command line: one line, exit 2 (like a manifest error)."""

    exit_code = EXIT_MANIFEST


class InputDataError(JobError):
    """The tracking data cannot be used as it is."""

    exit_code = EXIT_INPUT


class OutOfMemory(JobError):
    """Even the most frugal fitting setting ran out of memory."""

    exit_code = EXIT_OOM


class OutputError(JobError):
    """The project dir cannot be written (read-only, full, ...)."""

    exit_code = EXIT_OUTPUT


class Interrupted(JobError):
    """The job stopped at a safe point; rerunning continues where it stopped."""

    exit_code = EXIT_INTERRUPTED


class LockHeld(JobError):
    """Another job holds the project dir: this one did nothing. Its own code, not 75, so that a
    scheduler waits and retries instead of counting it as an interrupted attempt."""

    exit_code = EXIT_BUSY


class RestartsPending(JobError):
    """Select (and what follows) needs every restart fitted, and some are not.

    Exit 77 (busy) when other jobs are fitting them: the last of them to finish runs select.
    Exit 2 when nobody is: they must be fitted first (``--task I``, or ``run`` without ``--task``).
    """

    def __init__(self, project_dir, pending: list[tuple[int, bool]]):
        held = [f"r{i:02d}" for i, h in pending if h]
        idle = [f"r{i:02d}" for i, h in pending if not h]
        self.exit_code = EXIT_BUSY if held and not idle else EXIT_MANIFEST
        parts = []
        if held:
            parts.append(f"restart(s) {', '.join(held)} are being fitted by other jobs, and the last of them "
                         "to finish runs select")
        if idle:
            parts.append(f"restart(s) {', '.join(idle)} are not fitted yet and no job holds them: run "
                         f"`kpms-job run MANIFEST --task {idle[0][1:].lstrip('0') or '0'}` for each, or `kpms-job run "
                         "MANIFEST` to fit every missing one")
        super().__init__(f"cannot select a restart in {project_dir} yet: " + "; ".join(parts))


class LockLost(Interrupted):
    """Another job took the project dir's lock over (this one was judged stale): this job
    stopped at its next safe point without writing the project again."""


class FitOutOfMemory(JobError):
    """XLA could not allocate memory during a fit; ``kpms-job run`` records it and restarts with the
    next memory setting (:func:`kpms_job.resources.planner.after_out_of_memory`)."""


class FitNaN(JobError):
    """The sampler produced NaNs; the fit stopped at the last good iteration."""

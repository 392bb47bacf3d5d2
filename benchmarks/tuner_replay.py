"""Tuner replay: would another revision's kappa tuner have steered a finished full model the same way?

The tuner is a pure function of the medians it observed, and the job saves them (the job state's
``tuning`` entry of each chain). This replays one kept project's full-model medians through this
tree's tuner and through the tuner of ``--against REV`` (its ``kpms_job/fitting/tuner*.py``, read
with ``git show``), side by side, and says where their decisions (the next kappa, and whether the
chain rolls back) first differ. Up to that iteration the two tuners would have run the same chain
(the same seed, the same kappas), so a project whose decisions never differ would end the same
under both; one that differs must be rerun to know how it ends. Nothing is fitted.

    .venv/bin/python benchmarks/real_data.py /tmp/rd --datasets golden_mouse --keep
    .venv/bin/python benchmarks/tuner_replay.py /tmp/rd/projects/golden_mouse/project --against HEAD~3
    .venv/bin/python benchmarks/tuner_replay.py --rows /tmp/rd/real_data.json --against HEAD~3

``--rows`` replays real_data.py rows from the tuner record each row keeps (no project needed), and
prints the exit code and verdict each tuner would end with beside what the row measured: a change
to the verdict alone (the decisions the same) is judged on the rows already run. It also prints this
tree's measure of the chain's wander at one kappa (the verdict's ``wander_decades``).

The tuner's settings come from the manifest the project ran with (``.kpms-job/last_run.json``), its
first kappa from the full model's checkpoint (snapshot 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks import kappa_sweep  # noqa: E402

TUNER_FILES = ("tuner.py", "tuner_config.py", "tuner_verdict.py")


def tuner_at(rev: str, folder: Path):
    """The KappaTuner and TunerConfig classes of revision ``rev``, as a package written under ``folder``."""
    pkg = folder / "tuner_at_rev"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in TUNER_FILES:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:kpms_job/fitting/{name}"],
                               capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"--against {rev}: expected kpms_job/fitting/{name} in that revision, "
                             f"git says: {shown.stderr.strip()}")
        (pkg / name).write_text(shown.stdout)
    sys.path.insert(0, str(folder))
    mod = importlib.import_module("tuner_at_rev.tuner")
    return mod.KappaTuner, importlib.import_module("tuner_at_rev.tuner_config").TunerConfig


def records(project: Path) -> dict:
    """Model name -> what the tuner of each full-model chain of ``project`` saw and was set with: the
    manifest the job ran with (filled with its defaults), the first kappa (the checkpoint's snapshot
    0), the start's median and every iteration's median. Empty when the job did not run there or ran
    without tuning. ``real_data.py`` keeps this in each row, so that a row replays without its project."""
    from kpms_job.manifest import load
    from kpms_job.state import JobState

    run = project / ".kpms-job" / "last_run.json"
    if not run.exists():
        return {}
    m = load(json.loads(run.read_text())["manifest"])
    return {name: {"manifest": m, "kappa0": kappa_sweep.checkpoint_kappa(project / name / "checkpoint.h5", 0),
                   "start_ms": saved.get("start_ms"), "medians": saved["medians"]}
            for name, saved in JobState(project).get("tuning", {}).items()
            if not name.endswith("_arhmm") and (project / name / "checkpoint.h5").exists()}


def _said(tuner, iteration: int) -> str:
    c = tuner.checks[-1] if tuner.checks and tuner.checks[-1].iteration == iteration else None
    return f"{c.median_ms:.0f} ms at kappa {c.kappa:.3g}: {c.action}" if c else "no check"


def _verdict(tuner) -> dict:
    """The report the job writes when a chain that saw these medians ends (``_tuned_chain``): the
    last median is the final state's; a chain ending outside may deliver an earlier state."""
    ended = tuner.medians[-1][1] if tuner.medians else None
    delivered = tuner.delivery(ended)
    final = ended if delivered is None else next(ms for it, ms in tuner.medians if it == delivered[0])
    rep = tuner.report(final, delivered, ended_ms=ended if delivered is not None else None)
    rep["exit"] = 5 if (not rep["in_window"] or rep["stable"] is False) else 0  # as kpms_job.cli's exit code
    return rep


def compare_chain(label: str, rec: dict, theirs, their_config) -> tuple[str, dict, dict]:
    """Where the two tuners' decisions on one chain's record (``records``) first differ (a line), and
    the report each would end with (meaningful for both only when they never differ)."""
    from kpms_job.fitting.tuned import full_config
    from kpms_job.fitting.tuner import KappaTuner

    cfg = full_config(rec["manifest"], rec["kappa0"], rec.get("start_ms"))
    fields = {f.name for f in dataclasses.fields(their_config)}
    ours, other = KappaTuner(cfg), theirs(their_config(**{k: v for k, v in vars(cfg).items() if k in fields}))
    differs = None
    for it, ms in rec["medians"]:
        a, b = ours.observe(int(it), ms), other.observe(int(it), ms)
        same = (a is None) == (b is None) and (a is None or abs(a / b - 1) < 1e-9)
        if not same or ours.rollback != other.rollback:
            differs = it
            break
    if differs is None:
        line = f"{label}: the same decisions at all {len(rec['medians'])} iterations"
    else:
        line = (f"{label}: first differs at iteration {differs}\n"
                f"    against: {_said(other, differs)}\n    this tree: {_said(ours, differs)}")
    return line, _verdict(other), _verdict(ours) if differs is None else None


def compare(project: Path, theirs, their_config) -> list:
    """One line per full-model chain of ``project``: where the two tuners' decisions first differ."""
    chains = records(project)
    if not chains:
        raise SystemExit(f"{project}: expected a project the job ran with tuning on (.kpms-job/last_run.json "
                         "and a tuned full-model chain in its job state), found none")
    return [compare_chain(f"{project} {name}", rec, theirs, their_config)[0] for name, rec in chains.items()]


def compare_rows(path: Path, theirs, their_config) -> list:
    """real_data.py rows (its JSON, whose rows record their tuner's inputs): per row, whether the two
    tuners decide the same, the exit code and verdict each ends with, and what the row measured 100
    iterations on (the stability check of the state the job delivered)."""
    lines = []
    for row in json.loads(path.read_text())["rows"]:
        rec = row.get("full_tuning")
        if not rec:
            lines.append(f"{path} {row['dataset']}: no tuner record (a row of an older real_data.py, or no fit)")
            continue
        label = f"{path} {row['dataset']}"
        line, theirs_rep, ours_rep = compare_chain(label, rec, theirs, their_config)
        st = row.get("stability", {})
        lines.append(line)
        lines.append(f"    measured: job exit {row.get('exit')}, {st.get('median_before_ms', float('nan')):.0f} ms, "
                     f"{st.get('median_after_ms', float('nan')):.0f} ms 100 iterations on")
        lines.append(f"    against:   exit {theirs_rep['exit']}: {theirs_rep['verdict'][:160]}")
        if ours_rep is not None:
            lines.append(f"    this tree: exit {ours_rep['exit']}: {ours_rep['verdict'][:160]}")
            if ours_rep.get("wander_decades") is not None:
                lines.append(f"    this tree: wander {ours_rep['wander_decades']:.3f} decades (sd, "
                             f"{ours_rep['wander_iterations']} iterations), out if centred "
                             f"{ours_rep['out_share_centred']:.0%}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("projects", nargs="*", type=Path, help="projects the job left (real_data.py --keep)")
    ap.add_argument("--rows", nargs="+", type=Path, default=[], metavar="JSON",
                    help="real_data.py (or truncated.py) real_data.json files: replay their rows' records")
    ap.add_argument("--against", required=True, metavar="REV", help="the git revision whose tuner to compare")
    args = ap.parse_args(argv)
    if not args.projects and not args.rows:
        ap.error("give kept projects, or --rows real_data.json")
    with tempfile.TemporaryDirectory() as tmp:
        theirs, their_config = tuner_at(args.against, Path(tmp))
        for project in args.projects:
            print("\n".join(compare(project, theirs, their_config)))
        for rows in args.rows:
            print("\n".join(compare_rows(rows, theirs, their_config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

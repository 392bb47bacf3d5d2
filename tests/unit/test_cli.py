"""The command line: usage errors, exit codes, and ``run`` up to the point where a stage would start."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import EXAMPLE, ROOT, record_all, run_cli, write_manifest

from kpms_job import manifest
from kpms_job.cli import main


def test_help_lists_the_subcommands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for word in ("run", "validate", "plan", "exit codes", "75 interrupted", "2 manifest or usage error"):
        assert word in out


def test_no_arguments_prints_help_and_exits_0(cli):
    code, out, _ = cli()
    assert code == 0 and "usage: kpms-job" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("kpms-job ")


@pytest.mark.parametrize("args,expected", [
    (["validate"], "command line:"),
    (["validate", "m.yml", "--frobnicate"], "--frobnicate"),
    (["run", "m.yml", "extra.yml"], "command line:"),
    (["plan"], "plan needs a manifest"),
    (["plan", "--frames", "many"], "--frames"),
])
def test_usage_errors_exit_2_with_one_line(cli, args, expected):
    code, out, err = cli(*args)
    assert code == 2
    assert expected in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1 and "manifest:" not in err  # not called a manifest problem


def test_plan_frames_without_a_manifest_prints_a_memory_plan(cli):
    code, out, err = cli("plan", "--frames", "100000", "--budget-gb", "16", "--device", "cpu")
    assert code == 0, err
    assert "Traceback" not in out + err and err == ""
    assert "100,000 frames in 10 recording(s)" in out and "16.0 GiB on the CPU" in out
    assert "chosen: parallel_message_passing=False, mixed_map_iters=" in out


@pytest.mark.parametrize("command", ["validate", "run", "plan"])
def test_a_manifest_that_is_not_there_exits_2(cli, tmp_path, command):
    code, _, err = cli(command, tmp_path / "nope.yml")
    assert code == 2 and "manifest file not found" in err and "nope.yml" in err
    code, _, err = cli(command, tmp_path)
    assert code == 2 and "is a folder" in err


def test_the_container_entrypoint_and_module_entry_validate_the_example():
    for cmd in ([sys.executable, "entrypoint.py", "validate", str(EXAMPLE)],
                [sys.executable, "-m", "kpms_job.cli", "validate", str(EXAMPLE)]):
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "valid" in res.stdout


# ---------------------------------------------------------------- run, in a fresh process
NO_HEAVY = textwrap.dedent("""
    import sys
    from kpms_job.cli import main
    code = main(sys.argv[1:])
    heavy = [m for m in ("jax", "keypoint_moseq", "jax_moseq", "h5py") if m in sys.modules]
    print("HEAVY", heavy, file=sys.stderr)
    sys.exit(code)
""")


def test_run_with_a_pattern_that_matches_nothing_exits_3_before_any_heavy_import(tmp_path):
    path = write_manifest(tmp_path, "project_dir: ./project\ninputs: {format: sleap, paths: [tracking/**/*.slp]}\n")
    res = subprocess.run([sys.executable, "-c", NO_HEAVY, "run", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 3, res.stderr
    assert str(tmp_path / "tracking" / "**" / "*.slp") in res.stderr and "matches no file" in res.stderr
    assert "HEAVY []" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "project").exists()  # a typo in a path leaves no empty project behind


def test_run_with_a_videos_folder_that_is_not_there_exits_3(job):
    text = job.read_text().replace("inputs:\n", "inputs:\n  videos: ./no_videos_here\n")
    job.write_text(text)
    res = run_cli("run", job)
    assert res.returncode == 3
    assert "inputs.videos" in res.stderr and "Traceback" not in res.stderr
    assert not (job.parent / "project").exists()


def test_second_run_on_a_finished_project_says_nothing_to_do(job):
    record_all(manifest.load(job))
    t0 = time.monotonic()
    res = run_cli("run", job)
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout
    assert time.monotonic() - t0 < 15
    res = run_cli(job)  # the bare form, as a container runs it
    assert res.returncode == 0 and "nothing to do" in res.stdout


HOLD = textwrap.dedent("""
    import sys, time
    from kpms_job.state import ProjectLock
    lock = ProjectLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")


def test_run_on_a_project_another_job_holds_exits_77_busy_or_waits_with_wait(job):
    record_all(manifest.load(job))
    project = job.parent / "project"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_cli("run", job)
        assert res.returncode == 77  # busy, not interrupted: a scheduler must not count it as an attempt
        assert f"host {socket.gethostname()}, pid {holder.pid}, since" in res.stderr
        assert "--wait" in res.stderr and "Traceback" not in res.stderr
        res = run_cli("run", "--wait", job)  # queues behind the holder, then finds nothing to do
        assert holder.poll() is not None  # it got the project only once the holder was gone
        assert res.returncode == 0, res.stderr
        assert "nothing to do" in res.stdout
    finally:
        holder.kill()
        holder.wait()
    assert not (project / ".kpms-job" / "lock").exists()


def test_errors_are_plain_text_when_there_is_no_terminal(tmp_path):
    """Under ``docker run`` (no terminal) the error is plain text on stderr, stdout stays empty."""
    path = write_manifest(tmp_path, {"inputs": {"format": "deeplabcut", "paths": ["a.csv"]}, "fps": "x"},
                          "m.json")
    res = run_cli("validate", path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("kpms-job: error:") and "fps:" in res.stderr
    assert "\x1b[" not in res.stderr  # no colour codes in logs


def test_the_restart_count_crosses_to_the_fresh_process_on_its_command_line(capsys):
    """After an out-of-memory error the job execs itself with ``--restarts=N+1`` (hidden from --help),
    replacing the count it was started with, whichever way that was written."""
    from kpms_job.cli import _without_restarts, build_parser

    assert build_parser().parse_args(["run", "m.yml"]).restarts == 0
    assert build_parser().parse_args(["run", "m.yml", "--restarts=3"]).restarts == 3
    assert _without_restarts(["run", "m.yml", "--restarts", "3", "--wait"]) == ["run", "m.yml", "--wait"]
    assert _without_restarts(["m.yml", "--restarts=2", "--debug"]) == ["m.yml", "--debug"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "--restarts" not in capsys.readouterr().out


@pytest.mark.parametrize("median_in_window, stable, code", [(True, None, 0), (True, False, 5), (False, None, 5)])
def test_a_tuned_model_that_left_the_window_on_its_own_chain_exits_5(tmp_path, median_in_window, stable, code):
    """The exit code a finished tuned run ends with: 5 when the median is outside the window, and
    also when the state delivered in it was seen to leave it (the tuner's ``stable`` False)."""
    from kpms_job.cli import _tuning_verdict

    class State:
        project_dir = tmp_path

        def stage(self, name):
            info = {"summary": {"in_target_window": median_in_window},
                    "full_model": {"tuning": {"stable": stable, "verdict": "in window but NOT stable (...)"}}}
            return {"info": info[name]} if name in info else None

    m = {"project_dir": str(tmp_path), "tuning": {}, "restarts": 1}
    assert _tuning_verdict(State(), m) == code
    m["tuning"] = {"enabled": False}
    assert _tuning_verdict(State(), m) == 0  # tuning off: the window is the user's business


def test_a_missed_window_on_minutes_of_data_says_the_data_is_short(tmp_path, caplog):
    """Exit 5 on recordings far shorter than keypoint-moseq asks for names that as the likely cause,
    with the recordings' length; hours of recordings get no such note."""
    import logging

    from kpms_job.cli import _tuning_verdict

    def state(frames):
        class State:
            project_dir = tmp_path

            def stage(self, name):
                info = {"summary": {"in_target_window": False}, "ingest": {"frames": frames, "fps": 30.0},
                        "full_model": {"tuning": {"stable": None, "verdict": "NOT in window"}}}
                return {"info": info[name]} if name in info else None
        return State()

    m = {"project_dir": str(tmp_path), "tuning": {}, "restarts": 1}
    with caplog.at_level(logging.ERROR, logger="kpms_job"):
        assert _tuning_verdict(state(2330), m) == 5
    said = caplog.text
    assert "78 s in all (2330 frames at 30 fps)" in said and "a few hours" in said
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="kpms_job"):
        assert _tuning_verdict(state(3 * 3600 * 30), m) == 5
    assert "NOT in window" in caplog.text and "a few hours" not in caplog.text


@pytest.mark.parametrize("tuning, said", [({}, True), ("off", False)])
def test_plan_says_before_any_fit_when_the_recordings_are_too_short_to_tune_on(tmp_path, cli, tuning, said):
    """The 78-second bundled recording is far below keypoint-moseq's "a few hours": a tuned plan says
    so, with its length, before anything runs; with tuning off kappa is the user's own."""
    from jobs import tiny_manifest

    code, out, _ = cli("plan", tiny_manifest(tmp_path, tuning=tuning))
    assert code == 0 and "ingest" in out
    assert ("data: the recordings hold 78 s in all (2330 frames at 30 fps)" in out) is said

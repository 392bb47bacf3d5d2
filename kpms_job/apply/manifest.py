"""The apply manifest: read, validated against ``apply.schema.json``, defaults filled, paths resolved.

Its ``apply.inputs`` and ``outputs`` are the fitting manifest's own sections (inserted from
``manifest.schema.json`` when the schema is loaded), so the two manifests cannot drift apart.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .. import manifest
from ..errors import ManifestError
from ..manifest_file import read_manifest_file

SCHEMA_PATH = manifest.SCHEMA_PATH.with_name("apply.schema.json")


def load_schema() -> dict:
    schema = json.loads(SCHEMA_PATH.read_text())
    fitting = manifest.load_schema()["properties"]
    props = schema["properties"]
    props["apply"]["properties"]["inputs"] = {**copy.deepcopy(fitting["inputs"]),
                                              "description": props["apply"]["properties"]["inputs"]["description"]}
    props["outputs"] = {**copy.deepcopy(fitting["outputs"]), "description": props["outputs"]["description"]}
    props["nwb"] = copy.deepcopy(fitting["nwb"])
    return schema


def load(path: str | Path) -> dict:
    """Read, validate, fill defaults and resolve the paths of the apply manifest at ``path``."""
    path = Path(path)
    data = read_manifest_file(path)
    if isinstance(data, dict) and "apply" not in data and "inputs" in data:
        raise ManifestError(["(top level): this is a fitting manifest (it has inputs but no apply "
                             "section); fit with `kpms-job run`, or write an apply manifest: "
                             "apply: {project_dir: ..., inputs: {format: ..., paths: [...]}}"], str(path))
    m = validate(data, str(path))
    base = path.resolve().parent
    a = m["apply"]
    a["project_dir"] = str(_resolve(a["project_dir"], base, "apply.project_dir").resolve())
    paths = a["inputs"]["paths"]
    paths = [paths] if isinstance(paths, str) else paths
    a["inputs"]["paths"] = [str(_resolve(p, base, f"apply.inputs.paths[{i}]")) for i, p in enumerate(paths)]
    if a["inputs"].get("videos"):
        a["inputs"]["videos"] = str(_resolve(a["inputs"]["videos"], base, "apply.inputs.videos"))
    if a["name"] is None:
        a["name"] = path.stem
    m["source"] = str(path.resolve())
    return m


def validate(data, source: str | None = None) -> dict:
    return manifest.validate(data, source, schema=load_schema())


def _resolve(p: str, base: Path, field: str) -> Path:
    try:
        q = Path(p).expanduser()
    except RuntimeError as exc:  # ~name of an unknown user
        raise ManifestError([f"{field}: cannot expand '~' in {p} ({exc}); write the full path"]) from exc
    return q if q.is_absolute() else base / q

"""Load a manifest (YAML or JSON), validate it against the schema, fill defaults.

Every problem is collected before anything is reported, so a user fixes a manifest
in one round: each message names the field path, what was expected, what was found
and how to fix it. Unknown keys get a "did you mean".
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path

import re

import yaml

from .errors import ManifestError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e6 and 1.0e4 as strings; users mean numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"""),
    list("-+0123456789."),
)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifest.schema.json"
if not SCHEMA_PATH.exists():  # installed as a package: the schema ships inside it
    SCHEMA_PATH = Path(__file__).resolve().parent / "manifest.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _field(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _subschema(schema: dict, path) -> dict:
    """The schema node that describes ``path`` (best effort, for messages)."""
    node = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            props = node.get("properties")
            if props is None:
                for alt in node.get("oneOf", []):
                    if "properties" in alt:
                        props = alt["properties"]
                        break
            node = (props or {}).get(part, {})
    return node


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error, schema) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        msgs = []
        for key in extra:
            field = _field(path + [key])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(known)}"
            msgs.append(f"{field}: unknown key '{key}'; {hint}")
        return "\n  - ".join(msgs)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        node = _subschema(schema, path + [missing])
        expected = node.get("errorMessage") or node.get("description", "a value")
        return f"{_field(path + [missing])}: required but missing; expected {expected}"
    node = _subschema(schema, path)
    expected = node.get("errorMessage") or error.schema.get("errorMessage") or error.message
    return f"{_field(path)}: expected {expected}, but found {_show(error.instance)}"


def read_manifest_file(path: str | Path) -> dict:
    """Parse a YAML or JSON manifest; problems raise ManifestError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            [f"manifest file not found: {path} (check the path; relative paths resolve "
             f"against the current folder {Path.cwd()})"])
    if path.is_dir():
        raise ManifestError([f"{path} is a folder; expected a manifest file (.yml, .yaml or .json)"])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"cannot read {path}: {exc}"]) from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ManifestError([f"{path} is not valid YAML/JSON: {exc}".replace("\n", " ")]) from exc
    if data is None:
        raise ManifestError([f"{path} is empty; expected at least an 'inputs' section"])
    if not isinstance(data, dict):
        raise ManifestError(
            [f"(top level): expected a mapping of sections such as 'inputs:', but found {_show(data)}"])
    return data


def _fill_defaults(schema: dict, data):
    """Insert schema defaults, recursively, into a copy of ``data``."""
    if not isinstance(data, dict):
        return data
    props = schema.get("properties")
    if props is None:
        for alt in schema.get("oneOf", []):
            if alt.get("type") == "object":
                props = alt.get("properties", {})
    out = dict(data)
    for key, sub in (props or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _fill_defaults(sub, out[key])
    return out


def _semantic_problems(m: dict) -> list[str]:
    """Checks JSON Schema cannot express."""
    problems = []
    lo, hi = m["targets"]["median_duration_ms"]
    if lo >= hi:
        problems.append(
            f"targets.median_duration_ms: expected [min, max] with min < max, but found [{lo}, {hi}]; "
            "swap or widen the window")
    bp = m["bodyparts"]
    use = bp.get("use")
    for key in ("anterior", "posterior"):
        for name in bp.get(key) or []:
            if use is not None and name not in use:
                problems.append(
                    f"bodyparts.{key}: '{name}' is not in bodyparts.use {use}; add it to use or pick one of them")
    if bp.get("anterior") and bp.get("posterior"):
        both = set(bp["anterior"]) & set(bp["posterior"])
        if both:
            problems.append(
                f"bodyparts: {sorted(both)} is both anterior and posterior; a bodypart can be only one")
    for i, pair in enumerate(bp.get("skeleton") or []):
        for name in pair:
            if use is not None and name not in use:
                problems.append(
                    f"bodyparts.skeleton[{i}]: '{name}' is not in bodyparts.use; add it to use or drop the pair")
    return problems


def validate(data: dict, source: str | None = None) -> dict:
    """Validate a parsed manifest and return it with defaults filled in.

    Raises
    ------
    ManifestError
        With every problem found, each naming its field path.
    """
    from jsonschema import Draft202012Validator

    schema = load_schema()
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    problems = []
    for error in errors:
        # oneOf failures carry the per-branch errors; one message for the field is enough
        msg = _message(error, schema)
        if msg not in problems:
            problems.append(msg)
    if problems:
        raise ManifestError(problems, source)
    filled = _fill_defaults(schema, data)
    problems = _semantic_problems(filled)
    if problems:
        raise ManifestError(problems, source)
    return filled


def resolve_paths(m: dict, base: Path) -> dict:
    """Make every path in the manifest absolute, relative to ``base`` (the manifest's folder)."""
    m = copy.deepcopy(m)

    def res(p):
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q))

    m["project_dir"] = str(Path(res(m["project_dir"])).resolve())
    paths = m["inputs"]["paths"]
    m["inputs"]["paths"] = [res(p) for p in ([paths] if isinstance(paths, str) else paths)]
    if m["inputs"].get("videos"):
        m["inputs"]["videos"] = res(m["inputs"]["videos"])
    return m


def tuning_settings(m: dict) -> dict | None:
    """The tuning settings with defaults, or None when tuning is off."""
    t = m.get("tuning", {})
    if t in ("off", False):
        return None
    schema = load_schema()["properties"]["tuning"]["oneOf"][1]
    t = _fill_defaults(schema, t)
    return t if t.get("enabled", True) else None


def load(path: str | Path) -> dict:
    """Read, validate, fill defaults and resolve paths of the manifest at ``path``."""
    path = Path(path)
    data = read_manifest_file(path)
    m = validate(data, source=str(path))
    return resolve_paths(m, path.resolve().parent)

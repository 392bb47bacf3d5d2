"""Load a manifest (YAML or JSON), validate it against the schema, fill defaults.

Every problem is collected before anything is reported, so a user fixes a manifest
in one round: each message names the field path, what was expected, what was found
and how to fix it. Unknown keys get a "did you mean".

Reading the file is in ``manifest_file`` (``read_manifest_file`` is importable from
here too), wording jsonschema's errors in ``manifest_messages``; this module holds the
schema, the checks it cannot express, defaults, paths and ``load``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from . import groups
from .errors import ManifestError
from .manifest_file import read_manifest_file
from .manifest_messages import _field, _key, _messages

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifest.schema.json"
if not SCHEMA_PATH.exists():  # installed as a package: the schema ships inside it
    SCHEMA_PATH = Path(__file__).resolve().parent / "manifest.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


class _TooLarge(Exception):
    pass


def _value_problems(data) -> tuple[list[tuple[tuple, str]], bool]:
    """Problems JSON Schema does not see: NaN or infinite numbers, NUL characters.

    Also refuses a YAML alias inside its own anchor (a value that contains itself)
    and manifests with absurdly many values (aliases can multiply them): those are
    fatal (second item True), as the schema validator would not return on them.
    """
    out: list[tuple[tuple, str]] = []
    fatal = [False]
    on_path: set[int] = set()
    budget = [100_000]

    def walk(value, path):
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLarge
        if isinstance(value, (dict, list)):
            if id(value) in on_path:
                fatal[0] = True
                out.append((path, f"{_field(path)}: a YAML alias refers to the value that contains it; "
                            "write the value out instead"))
                return
            on_path.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                walk(v, path + ((k if isinstance(value, list) else str(k)),))
            on_path.discard(id(value))
        elif isinstance(value, float) and not math.isfinite(value):
            out.append((path, f"{_field(path)}: expected a finite number, but found {value}"))
        elif isinstance(value, str) and "\x00" in value:
            out.append((path, f"{_field(path)}: contains a NUL character; remove it"))

    try:
        walk(data, ())
    except (_TooLarge, RecursionError):
        fatal[0] = True
        out.append(((), "(top level): the manifest has too many values or is nested too deeply "
                        "(YAML aliases can multiply them); write a plain manifest"))
    return out, fatal[0]


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


def _integers(schema: dict, data):
    """Integer fields as ``int``: JSON Schema accepts 1e3 and 50.0 as integers, range() does not."""
    alts = [schema] + [a for a in schema.get("oneOf", []) if isinstance(a, dict)]
    if isinstance(data, float) and data.is_integer():
        kinds = [a.get("type") for a in alts]
        if any(k == "integer" or (isinstance(k, list) and "integer" in k) for k in kinds):
            return int(data)
        return data
    if isinstance(data, dict):
        props = {}
        for a in alts:
            props.update(a.get("properties", {}))
        return {k: _integers(props.get(k, {}), v) for k, v in data.items()}
    if isinstance(data, list):
        items = next((a["items"] for a in alts if isinstance(a.get("items"), dict)), {})
        return [_integers(items, v) for v in data]
    return data


def _names(section: dict, key: str) -> list:
    value = section.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _syllable_name_problems(m: dict) -> list[tuple[tuple, str]]:
    """Syllable indices beyond the model's, and names keypoint-moseq's syll_info.csv would read back
    as numbers (its label lookup then fails on them)."""
    names = m.get("syllable_names")
    model = m.get("model")
    num_states = model.get("num_states") if isinstance(model, dict) else None
    problems = []
    for key, name in (names.items() if isinstance(names, dict) else ()):
        if not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            continue  # the schema reports it
        if _is_number(num_states) and int(key) >= num_states:
            problems.append((("syllable_names", str(key)),
                             f"syllable_names.{key}: expected a syllable index below model.num_states "
                             f"({num_states}), but got {key}; syllables are numbered 0 to {num_states - 1}"))
        if isinstance(name, str):
            try:
                float(name)
            except ValueError:
                continue
            problems.append((("syllable_names", str(key)),
                             f"syllable_names.{key}: expected a name with letters, but got '{name}'; keypoint-moseq "
                             "reads a label that is a number back from syll_info.csv as a number and its "
                             "figures then fail: add a letter"))
    return problems


def _semantic_problems(m: dict) -> list[tuple[tuple, str]]:
    """Checks JSON Schema cannot express.

    They run on the manifest even when the schema found problems (each check looks
    only at values of the right type), so every mistake is reported in one round.
    """
    problems = []
    targets = m.get("targets")
    window = targets.get("median_duration_ms") if isinstance(targets, dict) else None
    if isinstance(window, list) and len(window) == 2 and all(_is_number(x) for x in window):
        lo, hi = window
        if lo >= hi:
            problems.append((
                ("targets", "median_duration_ms"),
                f"targets.median_duration_ms: expected [min, max] with min < max, but found [{lo}, {hi}]; "
                "swap or widen the window"))
    problems += _syllable_name_problems(m)
    bp = m.get("bodyparts")
    if not isinstance(bp, dict):
        return problems
    use = _names(bp, "use") if isinstance(bp.get("use"), list) else None
    for key in ("use", "anterior", "posterior"):
        twice = sorted({n for n in _names(bp, key) if _names(bp, key).count(n) > 1})
        if twice:
            problems.append((("bodyparts", key), f"bodyparts.{key}: {twice} listed twice; list each bodypart once"))
    for key in ("anterior", "posterior"):
        for name in _names(bp, key):
            if use is not None and name not in use:
                problems.append((
                    ("bodyparts", key),
                    f"bodyparts.{key}: '{_key(name)}' is not in bodyparts.use {use}; "
                    "add it to use or pick one of them"))
    both = [n for n in _names(bp, "posterior") if n in _names(bp, "anterior")]
    if both:
        problems.append((
            ("bodyparts", "posterior"),
            f"bodyparts.posterior: {both} also in bodyparts.anterior; a bodypart is either at the front "
            "or at the back of the body, not both"))
    skeleton = bp.get("skeleton")
    for i, pair in enumerate(skeleton if isinstance(skeleton, list) else []):
        for name in pair if isinstance(pair, list) else []:
            if isinstance(name, str) and use is not None and name not in use:
                problems.append((
                    ("bodyparts", "skeleton", i),
                    f"bodyparts.skeleton[{i}]: '{_key(name)}' is not in bodyparts.use; "
                    "add it to use or drop the pair"))
    return problems


def validate(data: dict, source: str | None = None, schema: dict | None = None) -> dict:
    """Validate a parsed manifest and return it with defaults filled in.

    ``schema``: another manifest's schema (the apply manifest's); the checks JSON Schema cannot
    express are the fitting manifest's and run only without it.

    Raises
    ------
    ManifestError
        With every problem found, each naming its field path.
    """
    from jsonschema import Draft202012Validator

    semantic = schema is None
    schema = load_schema() if schema is None else schema
    values, fatal = _value_problems(data)
    if fatal:  # a value that contains itself, or too many: the schema validator would not return
        raise ManifestError([m for _, m in values], source)
    validator = Draft202012Validator(schema)
    found = [pm for error in validator.iter_errors(data) for pm in _messages(error, schema)]
    # a value the schema already rejects (fitting.full_iters: 1e400) is reported once
    rejected = {p for p, _ in found}
    found += [(p, m) for p, m in values if p not in rejected]
    if semantic:
        found += _semantic_problems(_fill_defaults(schema, data))
    problems = []
    for _, msg in sorted(found, key=lambda pm: [str(x) for x in pm[0]]):
        if msg not in problems:
            problems.append(msg)
    if problems:
        raise ManifestError(problems, source)
    return _integers(schema, _fill_defaults(schema, data))


def resolve_paths(m: dict, base: Path) -> dict:
    """Make every path in the manifest absolute, relative to ``base`` (the manifest's folder)."""
    m = copy.deepcopy(m)

    def res(p, field):
        try:
            q = Path(p).expanduser()
        except RuntimeError as exc:  # ~name of an unknown user
            raise ManifestError([f"{field}: cannot expand '~' in {p} ({exc}); write the full path"]) from exc
        return str(q if q.is_absolute() else (base / q))

    m["project_dir"] = str(Path(res(m["project_dir"], "project_dir")).resolve())
    paths = m["inputs"]["paths"]
    paths = [paths] if isinstance(paths, str) else paths
    m["inputs"]["paths"] = [res(p, f"inputs.paths[{i}]") for i, p in enumerate(paths)]
    if m["inputs"].get("videos"):
        m["inputs"]["videos"] = res(m["inputs"]["videos"], "inputs.videos")
    return groups.read_files(m, res)


def tuning_settings(m: dict) -> dict | None:
    """The tuning settings with defaults, or None when tuning is off."""
    t = m.get("tuning", {})
    if t in ("off", False):
        return None
    if t in ("on", True):  # YAML reads a bare `on` as true
        t = {}
    schema = load_schema()["properties"]["tuning"]["oneOf"][1]
    t = _fill_defaults(schema, t)
    return t if t.get("enabled", True) else None


def load(path: str | Path) -> dict:
    """Read, validate, fill defaults and resolve paths of the manifest at ``path``."""
    path = Path(path)
    data = read_manifest_file(path)
    m = validate(data, source=str(path))
    return resolve_paths(m, path.resolve().parent)

"""Load a manifest (YAML or JSON), validate it against the schema, fill defaults.

Every problem is collected before anything is reported, so a user fixes a manifest
in one round: each message names the field path, what was expected, what was found
and how to fix it. Unknown keys get a "did you mean".
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from pathlib import Path

import yaml

from .errors import ManifestError


class _Loader(yaml.SafeLoader):
    """A SafeLoader that reads 1e6 as a number and refuses duplicate keys.

    YAML 1.1 reads 1e6 and 1.0e4 as strings; users mean numbers. A key given twice
    would silently replace the first value; users mean one of them, so it is an error.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key '{key}' appears twice (also on line {first}); keep one of them",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"""),
    list("-+0123456789."),
)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifest.schema.json"
if not SCHEMA_PATH.exists():  # installed as a package: the schema ships inside it
    SCHEMA_PATH = Path(__file__).resolve().parent / "manifest.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _key(key) -> str:
    """A key as a message shows it: quoted when empty or not printable (a newline in a key)."""
    text = str(key)
    return text if text.isprintable() and text.strip() else json.dumps(text)


def _field(path) -> str:
    parts = [f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else _key(p) for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _subschema(schema: dict, path) -> dict:
    """The schema node that describes ``path`` (best effort, for messages)."""
    node = schema
    for part in path:
        alts = [node] + [a for a in node.get("oneOf", []) if isinstance(a, dict)]
        if isinstance(part, int) and not isinstance(part, bool):
            node = next((a["items"] for a in alts if isinstance(a.get("items"), dict)), {})
        else:
            node = next((a["properties"][part] for a in alts if part in a.get("properties", {})), {})
    return node


def _expected(schema: dict, path) -> str | None:
    """What the field at ``path`` expects, in words.

    Its own ``errorMessage``; for a section, the keys it takes; else the nearest
    enclosing field's ``errorMessage`` (the items of a list share the list's).
    """
    node = _subschema(schema, path)
    if node.get("errorMessage"):
        return node["errorMessage"]
    if node.get("type") == "object" and node.get("properties"):
        return f"a section of settings ({', '.join(node['properties'])})"
    for n in range(len(path) - 1, 0, -1):
        text = _subschema(schema, path[:n]).get("errorMessage")
        if text:
            return text
    return _describe(node)


def _describe(node: dict) -> str | None:
    """A schema node's type and bounds in words: "an integer of at least 5"."""
    kind = node.get("type")
    if kind == "boolean":
        return "true or false"
    if kind not in ("integer", "number"):
        return None
    text = "an integer" if kind == "integer" else "a number"
    bounds = []
    for key, words in (("minimum", "at least"), ("exclusiveMinimum", "above"),
                       ("maximum", "at most"), ("exclusiveMaximum", "below")):
        if key in node:
            bounds.append(f"{words} {node[key]:g}")
    return f"{text} {' and '.join(bounds)}" if bounds else text


def _show(value) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):  # keys json cannot write, circular values
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _branch_errors(error) -> list | None:
    """For a oneOf whose value has the shape of one branch (a mapping, a list): that branch's errors.

    ``tuning: {arhm_attempt_iters: 20}`` then reports the misspelt key inside the
    mapping instead of "expected off, or an object".
    """
    if error.validator != "oneOf" or not error.context:
        return None
    inst = error.instance
    kind = "object" if isinstance(inst, dict) else "array" if isinstance(inst, list) else None
    if kind is None:
        return None
    for i, alt in enumerate(error.validator_value):
        if isinstance(alt, dict) and alt.get("type") == kind:
            errs = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == i]
            return errs or None
    return None


def _messages(error, schema) -> list[tuple[tuple, str]]:
    """(field path, message) for one validation error."""
    branch = _branch_errors(error)
    if branch:
        return [pm for e in branch for pm in _messages(e, schema)]
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        out = []
        for key in sorted((k for k in error.instance if k not in known), key=str):
            name = str(key)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(known)}"
            out.append((tuple(path + [name]), f"{_field(path + [name])}: unknown key '{_key(name)}'; {hint}"))
        return out
    if error.validator == "required":
        found = re.match(r"'(.*)' is a required property", error.message)
        missing = found.group(1) if found else str(error.validator_value)
        expected = _expected(schema, path + [missing]) or "a value"
        field = _field(path + [missing])
        return [(tuple(path + [missing]), f"{field}: required but missing; expected {expected}")]
    expected = _expected(schema, path) or error.schema.get("errorMessage") or error.message
    return [(tuple(path), f"{_field(path)}: expected {expected}, but found {_show(error.instance)}")]


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


def _parse_error(path: Path, exc: Exception) -> str:
    """One line that says where a YAML/JSON file stops parsing and why."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"
    if isinstance(exc, RecursionError):
        return f"{path}: nested too deeply to read; write a plain manifest"
    if not isinstance(exc, yaml.YAMLError):
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        return f"{path}: not valid {kind}: {exc}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = f"{path}{where}: not valid YAML: {problem}"
    context = getattr(exc, "context", None)
    if context:
        text += f" ({context})"
    if "'\\t'" in problem:
        text += "; YAML indents with spaces, not tabs"
    return " ".join(text.split())


def _json_pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice; keep one of them")
        out[key] = value
    return out


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
            data = json.loads(text, object_pairs_hook=_json_pairs)
        else:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ManifestError([_parse_error(path, exc)]) from exc
    if data is None:
        raise ManifestError([f"{path} is empty; expected at least an 'inputs' section"])
    if not isinstance(data, dict):
        raise ManifestError(
            [f"(top level): expected a mapping of sections such as 'inputs:', but found {_show(data)}"],
            str(path))
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


def validate(data: dict, source: str | None = None) -> dict:
    """Validate a parsed manifest and return it with defaults filled in.

    Raises
    ------
    ManifestError
        With every problem found, each naming its field path.
    """
    from jsonschema import Draft202012Validator

    schema = load_schema()
    values, fatal = _value_problems(data)
    if fatal:  # a value that contains itself, or too many: the schema validator would not return
        raise ManifestError([m for _, m in values], source)
    validator = Draft202012Validator(schema)
    found = [pm for error in validator.iter_errors(data) for pm in _messages(error, schema)]
    # a value the schema already rejects (fitting.full_iters: 1e400) is reported once
    rejected = {p for p, _ in found}
    found += [(p, m) for p, m in values if p not in rejected]
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

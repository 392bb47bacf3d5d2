"""Turn jsonschema errors into messages a user can act on.

Each message names the field path, what was expected (the schema's ``errorMessage``,
or its type and bounds in words) and what was found; an unknown key gets a "did you
mean". These helpers only format: validation itself is in ``kpms_job.manifest``.
"""

from __future__ import annotations

import difflib
import json
import re


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

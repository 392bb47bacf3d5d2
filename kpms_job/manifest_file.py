"""Read a manifest file (YAML or JSON) into a mapping, with parse errors a user can act on.

YAML is read with a loader that takes 1e6 as a number and refuses duplicate keys (JSON
refuses them too); a file that does not parse is reported with its line and column.
Validation against the schema is in ``kpms_job.manifest``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .errors import ManifestError
from .manifest_messages import _show


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

"""The schemas' own messages name only settings that exist."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from jobs import ROOT

from kpms_job import manifest as M

KEY = re.compile(r"\{(\w+):")


def _messages(node, path=""):
    """(path, schema node, errorMessage) for every node that has one."""
    if isinstance(node, dict):
        if "errorMessage" in node:
            yield path, node, node["errorMessage"]
        for k, v in node.items():
            yield from _messages(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _messages(v, f"{path}/{i}")


def _keys(node) -> set | None:
    """The keys ``node`` allows, or None where its keys are the user's own (a mapping such as groups)."""
    if node.get("type") == "object" and node.get("additionalProperties", True) is not False:
        return None
    out = set(node.get("properties", {}))
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        keys = _keys(branch)
        if keys is None:
            return None
        out |= keys
    return out


@pytest.mark.parametrize("schema", ["manifest.schema.json", "apply.schema.json"])
def test_every_key_an_error_message_suggests_exists(schema):
    doc = json.loads((ROOT / schema).read_text())
    checked = 0
    for path, node, message in _messages(doc):
        allowed = _keys(node)
        for key in KEY.findall(message) if allowed is not None else []:
            assert key in allowed, f"{schema}{path}: its message suggests '{key}', which is not a setting there"
            checked += 1
    assert checked or schema == "apply.schema.json"


@pytest.mark.parametrize("text, on", [("on", True), ("true", True), ("{}", True), ("{check_every: 5}", True),
                                      ("off", False), ("false", False), ("{enabled: false}", False)])
def test_tuning_on_and_off(tmp_path, text, on):
    m = yaml.safe_load((ROOT / "examples" / "manifest.yml").read_text())
    m["tuning"] = yaml.safe_load(text)
    (tmp_path / "m.yml").write_text(yaml.safe_dump(m))
    loaded = M.load(tmp_path / "m.yml")
    assert (M.tuning_settings(loaded) is not None) == on
    if text in ("on", "true"):
        assert M.tuning_settings(loaded) == M.tuning_settings({"tuning": {}})

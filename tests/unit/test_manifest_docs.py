"""docs/manifest.md is what tools/manifest_docs.py writes from the schemas today."""

from __future__ import annotations

import importlib.util
import json

from jobs import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("manifest_docs", ROOT / "tools" / "manifest_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_manifest_reference_matches_the_schemas():
    assert (ROOT / "docs" / "manifest.md").read_text() == _tool().render(), (
        "docs/manifest.md is stale: run make docs (tools/manifest_docs.py) and commit it")


def test_every_setting_is_in_the_reference():
    text = (ROOT / "docs" / "manifest.md").read_text()

    def keys(node, prefix=""):
        for k, sub in node.get("properties", {}).items():
            yield prefix + k
            for b in [sub, *sub.get("oneOf", [])]:
                yield from keys(b, f"{prefix}{k}.")

    for schema in ("manifest.schema.json", "apply.schema.json"):
        for k in keys(json.loads((ROOT / schema).read_text())):
            assert f"| `{k}` |" in text, f"{k} ({schema}) is not in docs/manifest.md"

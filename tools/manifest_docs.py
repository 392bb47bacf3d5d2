#!/usr/bin/env python3
"""Write docs/manifest.md, the manifest reference, from manifest.schema.json and apply.schema.json.

    .venv/bin/python tools/manifest_docs.py          # make docs
    .venv/bin/python tools/manifest_docs.py --check  # exit 1 if docs/manifest.md is stale

The schemas are the one source: their descriptions, types, allowed values and defaults.
tests/unit/test_manifest_docs.py fails when docs/manifest.md differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "manifest.md"

INTRO = """# Manifest reference

Generated from `manifest.schema.json` and `apply.schema.json` by `tools/manifest_docs.py`
(`make docs`); do not edit by hand. `kpms-job validate manifest.yml` checks a manifest against
the same schema. Relative paths resolve against the manifest's own folder. A key left out takes
its default; `null` means "not set" (the description says what the job does then).
"""


def _type(node: dict) -> str:
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_type(b) for b in node.get("oneOf", node.get("anyOf", [])))
    t = node.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array" and isinstance(node.get("items"), dict) and node["items"].get("type"):
        return f"list of {node['items']['type']}"
    return t or "object"


def _default(node: dict) -> str:
    if "default" not in node:
        return ""
    d = node["default"]
    if d == {}:
        return ""
    return f"`{json.dumps(d)}`"


def _rows(node: dict, prefix: str, required: set) -> list[str]:
    rows = []
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        desc = sub.get("description", "").replace("|", "\\|").replace("\n", " ")
        if key in required:
            desc = f"**Required.** {desc}"
        rows.append(f"| `{path}` | {_type(sub)} | {_default(sub)} | {desc} |")
        branches = [sub] + [b for b in sub.get("oneOf", []) if "properties" in b]
        for b in branches:
            if "properties" in b:
                rows += _rows(b, f"{path}.", set(b.get("required", [])))
    return rows


def _section(title: str, schema: dict) -> list[str]:
    lines = [f"## {title}", "", schema.get("description", ""), "",
             "| key | type or values | default | what it does |", "|---|---|---|---|"]
    return lines + _rows(schema, "", set(schema.get("required", []))) + [""]


def render() -> str:
    fit = json.loads((ROOT / "manifest.schema.json").read_text())
    apply = json.loads((ROOT / "apply.schema.json").read_text())
    lines = [INTRO]
    lines += _section("Fitting manifest (`kpms-job run`)", fit)
    lines += _section("Apply manifest (`kpms-job apply`)", apply)
    lines.append("In an apply manifest, `apply.inputs`, `outputs` and `nwb` are the fitting manifest's own "
                 "sections (above).")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/manifest.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

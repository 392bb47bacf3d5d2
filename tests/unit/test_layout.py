"""The test tree's own rule: pytest imports test modules by basename (no __init__.py), so two
test files of one name in different folders stop the whole suite at collection."""

from __future__ import annotations

from collections import Counter

from jobs import ROOT


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], "rename one of each: " + ", ".join(
        sorted(n for n, k in names.items() if k > 1))

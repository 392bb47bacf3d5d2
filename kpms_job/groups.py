"""Groups of recordings and syllable names from the manifest (no keypoint-moseq import).

``groups`` is a mapping group -> recording names or fnmatch patterns, or the path of an index CSV
in keypoint-moseq's layout (columns ``name`` and ``group``). ``syllable_names`` is a mapping
syllable index -> name, or the path of keypoint-moseq's ``syll_info.csv`` (columns ``syllable``
and ``label``). :func:`read_files` replaces the paths by the mappings they hold when the manifest
is loaded, so the stages' fingerprints follow the files' content and not where they lie;
:func:`assign` checks the groups against the recordings, which only the loaded files name.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
from pathlib import Path

from .errors import InputDataError

#: The group of the recordings that no group names, when the manifest gives groups at all.
UNGROUPED = "ungrouped"


def _rows(path: Path, field: str, columns: tuple[str, ...], example: str) -> list[dict]:
    """The rows of CSV ``path`` (values stripped, blank rows dropped); errors name ``field``."""
    if not path.is_file():
        raise InputDataError(
            f"{field}: expected a CSV file, but {path} does not exist. Fix the path (relative paths "
            f"resolve against the manifest's folder), or give {field} as a mapping in the manifest.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [str(c).strip() for c in reader.fieldnames or []]
            rows = [{str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputDataError(f"{field}: {path} could not be read as a CSV file ({exc}); write it as "
                             f"plain comma-separated text like {example}") from exc
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputDataError(
            f"{field}: expected the columns {', '.join(columns)} in {path}, but got "
            f"{', '.join(header) or 'no header'}; add a header line like {example}")
    return [r for r in rows if any(r.values())]


def read_index_csv(path: Path) -> dict[str, list[str]]:
    """{group: [recording names]} from an index CSV (keypoint-moseq's ``index.csv``)."""
    groups: dict[str, list[str]] = {}
    line_of: dict[str, int] = {}
    for line, row in enumerate(_rows(path, "groups", ("name", "group"), '"name,group"'), start=2):
        name, group = row["name"], row["group"]
        if not name or not group:
            raise InputDataError(
                f"groups: expected a name and a group on every row of {path}, but got "
                f"name '{name}', group '{group}'; fill in the row or delete it")
        if name in line_of:
            raise InputDataError(
                f"groups: expected each recording once in {path}, but '{name}' is listed again "
                f"(group '{group}'); keep one row per recording")
        line_of[name] = line
        groups.setdefault(group, []).append(name)
    if not groups:
        raise InputDataError(f"groups: expected at least one row in {path}, but got none; add a row "
                             "per recording (name,group)")
    return groups


def read_syll_info(path: Path) -> dict[str, str]:
    """{syllable index: label} from keypoint-moseq's ``syll_info.csv`` (empty labels left out)."""
    names = {}
    for row in _rows(path, "syllable_names", ("syllable", "label"), '"syllable,label"'):
        ix = row["syllable"]
        try:
            ix = str(int(float(ix)))
        except ValueError as exc:
            raise InputDataError(f"syllable_names: expected syllable indices (0, 1, ...) in {path}, "
                                 f"but got '{ix}'; fix the syllable column") from exc
        if row["label"]:
            names[ix] = row["label"]
    return names


def read_files(m: dict, resolve) -> dict:
    """``m`` with ``groups`` and ``syllable_names`` given as CSV paths read into mappings.

    ``resolve(path, field)``: the path made absolute (against the manifest's folder). Syllable
    indices become strings ("3"), as JSON writes them.
    """
    groups = m.get("groups")
    if isinstance(groups, str):
        m["groups"] = read_index_csv(Path(resolve(groups, "groups")))
    names = m.get("syllable_names")
    if isinstance(names, str):
        m["syllable_names"] = read_syll_info(Path(resolve(names, "syllable_names")))
    elif isinstance(names, dict):
        m["syllable_names"] = {str(int(k)): v for k, v in names.items()}
    return m


def _matches(entry: str, recordings: list[str]) -> list[str]:
    """The recordings an entry names: itself when a recording has that name, else its fnmatch matches."""
    if entry in recordings:
        return [entry]
    if glob.has_magic(entry):
        return [r for r in recordings if fnmatch.fnmatchcase(r, entry)]
    return []


def assign(groups: dict | None, recordings: list[str]) -> dict[str, list[str]]:
    """{group: [recordings]} for manifest ``groups`` over ``recordings`` (names from the tracking files).

    Recordings no group names go to :data:`UNGROUPED`. No groups (None or {}): {}.

    Raises
    ------
    InputDataError
        An entry that names no recording (a pattern matching none), or a recording in two groups.
    """
    if not groups:
        return {}
    recordings = sorted(recordings)
    out: dict[str, list[str]] = {}
    group_of: dict[str, str] = {}
    problems = []
    for group, entries in groups.items():
        out[group] = []
        for entry in entries:
            found = _matches(entry, recordings)
            if not found:
                kind = "pattern" if glob.has_magic(entry) else "recording"
                problems.append(f"groups.{group}: expected recording names or fnmatch patterns, but the "
                                f"{kind} '{entry}' matches no recording")
            for rec in found:
                if rec in group_of and group_of[rec] != group:
                    problems.append(f"groups: expected each recording in one group, but '{rec}' is in "
                                    f"'{group_of[rec]}' and in '{group}'")
                elif rec not in out[group]:
                    group_of[rec] = group
                    out[group].append(rec)
    if problems:
        known = ", ".join(recordings)
        raise InputDataError(
            "; ".join(dict.fromkeys(problems)) + f". The recordings are: {known} (recording names come "
            "from the tracking files' names). Fix groups in the manifest or its index CSV.")
    rest = [r for r in recordings if r not in group_of]
    if rest:
        out.setdefault(UNGROUPED, []).extend(rest)
    return {g: sorted(v) for g, v in out.items()}

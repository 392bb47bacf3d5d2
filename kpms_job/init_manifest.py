"""``kpms-job init DATA``: write a commented manifest for a folder of tracking files, one tracking
file, or a DeepLabCut ``config.yaml`` (the sources keypoint-moseq's ``setup_project`` takes).

Files are read with the light readers of kpms_job/tracking_files.py (no keypoint-moseq, hence no
JAX: init takes about a second). What init cannot decide is written into the manifest as a
``# CHECK:`` or ``# FIXME:`` comment.
"""

from __future__ import annotations

import collections
import datetime
import glob
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import InputDataError, UsageError
from .manifest import load_schema, validate
from .manifest_file import read_manifest_file
from .tracking_files import NotTracking, Tracking, classify, first_line, read, video_fps

# keypoint-moseq's check_nan_proportions warns about a bodypart missing in more than half of the
# frames; such a bodypart is mostly interpolation in the model, so init leaves it out of `use`
MAX_BODYPART_NAN = 0.5
# keypoint-moseq's generate_config writes fps 30 when it is not given: the fallback when no video,
# NWB timing or SLEAP metadata gives the rate (marked FIXME, as durations in ms depend on it)
DEFAULT_FPS = 30.0
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
TRACKING_EXTENSIONS = (".csv", ".h5", ".hdf5", ".slp", ".nwb", ".mat", ".json")
# on a tie in file count, the format listed first wins (the most common trackers first)
PREFERENCE = ("deeplabcut", "sleap", "nwb", "anipose", "sleap-anipose", "facemap", "dannce", "freipose")

# names compared lowercased without separators ("Tail_Base" -> "tailbase"); earlier is better
ANTERIOR_NAMES = ("nose", "snout", "nosetip", "head", "headcenter", "headcentre", "headtip", "forehead",
                  "headtop", "snoutbase")
POSTERIOR_NAMES = ("tailbase", "tailroot", "basetail", "baseoftail", "tailstart", "tail0", "tailbeginning",
                   "butt", "rump", "pelvis", "abdomen", "tail", "tail1")
ANTERIOR_PARTS = ("nose", "snout")  # a name containing one: "nose_tip", "SnoutL"
POSTERIOR_PARTS = ("tailbase", "tailroot", "basetail")


# --------------------------------------------------------------------------- decisions
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def propose_axis(use: list[str], exact: tuple, parts: tuple) -> str | None:
    """The bodypart whose name best says anterior (or posterior): an exact name, else one containing a part."""
    normed = {_norm(b): b for b in reversed(use)}  # the first of equal names wins
    for name in exact:
        if name in normed:
            return normed[name]
    for part in parts:
        for b in use:
            if part in _norm(b):
                return b
    return None


def nan_fractions(trackings: list[Tracking], bodyparts: list[str]) -> tuple[dict[str, float], int]:
    """Per bodypart, the fraction of frames (all recordings) where its position is missing."""
    missing = np.zeros(len(bodyparts))
    frames = 0
    for t in trackings:
        idx = [t.bodyparts.index(b) for b in bodyparts] if t.bodyparts else list(range(len(bodyparts)))
        for arr in t.recordings.values():
            missing += np.isnan(arr[:, idx]).any(axis=-1).sum(axis=0)
            frames += arr.shape[0]
    return {b: float(missing[i] / frames) if frames else 1.0 for i, b in enumerate(bodyparts)}, frames


def match_videos(trackings: list[Tracking], tracking_files: list[Path]) -> dict[Path, Path]:
    """Tracking file -> its video in the same folder: the video the file names (SLEAP), one whose name
    starts the file's (DeepLabCut's <video>DLC_... naming; the longest wins), or the folder's only video
    when the folder holds one tracking file (of any format: ``tracking_files``)."""
    out = {}
    by_folder = collections.Counter(p.parent for p in tracking_files)
    for t in trackings:
        videos = sorted(p for p in t.path.parent.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        hit = next((v for v in videos if t.video_hint and v.name == t.video_hint), None)
        if hit is None:
            prefixed = [v for v in videos if t.path.name.startswith(v.stem)]
            hit = max(prefixed, key=lambda v: len(v.stem)) if prefixed else None
        if hit is None and len(videos) == 1 and by_folder[t.path.parent] == 1:
            hit = videos[0]
        if hit is not None:
            out[t.path] = hit
    return out


def timestamps_fps(t: Tracking) -> tuple[float, Path] | None:
    """The rate from a timestamps array saved beside the file (IBL / Lightning Pose:
    ``<session>.timestamps.<camera>.npy`` for ``<session>.<camera>.rng=0.csv``): a .npy named
    "timestamps" whose other name parts are all in the file's name and whose length is its frames."""
    parts = set(t.path.name.split("."))
    frames = {a.shape[0] for a in t.recordings.values()}
    for f in sorted(t.path.parent.glob("*timestamps*.npy")):
        if not set(f.name.split(".")) - {"timestamps", "npy"} <= parts:
            continue
        try:
            ts = np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            continue
        if ts.ndim != 1 or ts.shape[0] not in frames or ts.shape[0] < 2:
            continue
        step = float(np.median(np.diff(ts)))
        if step > 0 and 1.0 < 1.0 / step < 2000.0:  # seconds; frame numbers would give 1
            return 1.0 / step, f
    return None


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to the manifest's folder when they share a folder below the root and it is at
    most two levels up (``../data/x.h5`` reads well, ``../../../work/data/x.h5`` does not), else absolute."""
    path = path.resolve()
    rel = os.path.relpath(path, base)
    shared = Path(os.path.commonpath([str(path), str(base)]))
    ups = rel.split(os.sep).count("..")
    return rel if shared != Path(shared.anchor) and ups <= 2 else str(path)


def path_patterns(files: list[Path], base: Path) -> list[str]:
    """Glob patterns, relative to ``base``, that match exactly ``files``; else the files themselves."""
    files = sorted(f.resolve() for f in files)
    if len(files) == 1:
        return [_rel(files[0], base)]
    top = Path(os.path.commonpath([str(f.parent) for f in files]))
    names = [f.name for f in files]
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    suffix = suffix[suffix.find("."):] if "." in suffix else ""
    if suffix:
        nested = any(f.parent != top for f in files)
        rel_top = _rel(top, base)
        pattern = os.path.join(glob.escape(rel_top) if rel_top != "." else "", "**" if nested else "", "*" + suffix)
        # as the job will expand it (kpms_job.inputs.expand: relative to the manifest's folder)
        full = pattern if os.path.isabs(pattern) else os.path.join(glob.escape(str(base)), pattern)
        if {Path(p).resolve() for p in glob.glob(full, recursive=True)} == set(files):
            return [pattern]
    return [_rel(f, base) for f in files]


# --------------------------------------------------------------------------- the scan
@dataclass
class Scan:
    source: Path
    fmt: str
    trackings: list[Tracking]
    counts: dict[str, int]
    left_out: list[str]  # "path: why" for files that are not (or not these) recordings
    bodyparts: list[str] | None
    skeleton: list[list[str]]
    tracking_files: list[Path]  # every tracking file found, of any format (one per SLEAP .slp/.h5 pair)
    unreadable: list[str] = field(default_factory=list)  # "path: why" of files that failed to read
    config_note: str | None = None


def _candidates(source: Path) -> list[Path]:
    """Files with a tracking extension under ``source``; hidden folders (.ipynb_checkpoints) and
    kpms-job project dirs (their results CSVs are no input) are skipped."""
    projects = {p.parent for p in source.rglob(".kpms-job")}
    return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in TRACKING_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(source).parts)
                  and not any(p.is_relative_to(d) for d in projects))


def _dlc_config(path: Path) -> dict | None:
    if path.suffix.lower() not in (".yaml", ".yml"):
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputDataError(
            f"{path}: expected a DeepLabCut config.yaml, but it does not parse as YAML ({exc})") from exc
    if not isinstance(cfg, dict) or not ("bodyparts" in cfg or "multianimalbodyparts" in cfg):
        raise InputDataError(f"{path}: expected a DeepLabCut config.yaml (with bodyparts), got a YAML file "
                             f"with {sorted(cfg)[:8] if isinstance(cfg, dict) else type(cfg).__name__}")
    return cfg


def scan(source: Path) -> Scan:
    """Find, classify and read the tracking files of ``source`` (a folder, a file, a DLC config)."""
    if not source.exists():
        raise InputDataError(f"{source}: no such file or folder. Expected a folder of tracking files, "
                             "one tracking file, or a DeepLabCut config.yaml.")
    cfg = _dlc_config(source) if source.is_file() else None
    config_bodyparts, config_skeleton, config_note = None, [], None
    if cfg is not None:
        multi = bool(cfg.get("multianimalproject"))
        config_bodyparts = list(cfg["multianimalbodyparts"] if multi else cfg["bodyparts"])
        config_skeleton = [list(p) for p in (cfg.get("skeleton") or []) if len(p) == 2]
        # DeepLabCut writes its predictions next to the videos: <project>/videos; a moved project's
        # project_path is stale, so the config's own folder is searched too
        folders = [source.parent / "videos", source.parent]
        folder = next((f for f in folders if f.is_dir() and any(
            p.suffix.lower() in (".h5", ".csv") for p in f.rglob("*"))), source.parent)
        paths = [p for p in _candidates(folder) if p.suffix.lower() in (".h5", ".csv")]
        config_note = f"bodyparts and skeleton from the DeepLabCut config {source.name}; files from {folder}"
    elif source.is_file():
        paths = [source]
    else:
        paths = _candidates(source)
    kinds: dict[str, list[Path]] = collections.defaultdict(list)
    left_out: list[str] = []
    # a folder's unreadable file is left out and named in a CHECK (the others still make a manifest);
    # a file named on the command line, or a folder with nothing else, is an error
    unreadable: list[str] = []
    for p in paths:
        try:
            fmt = classify(p)
        except NotTracking as exc:
            left_out.append(f"{p}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a tracking file that does not even open
            err = InputDataError(
                f"{p}: could not be opened ({type(exc).__name__}: {first_line(exc)}). Expected a tracking "
                f"file of one of the formats {', '.join(PREFERENCE)}; remove or re-export it.")
            if source.is_file():
                raise err from exc
            unreadable.append(str(err))
            continue
        if cfg is not None and fmt != "deeplabcut":
            left_out.append(f"{p}: {fmt}, not DeepLabCut output")
            continue
        kinds[fmt].append(p)
    _drop_sleap_duplicates(kinds, left_out)
    if not kinds and unreadable:
        raise InputDataError(f"{source}: no tracking file could be read: " + "; ".join(unreadable[:5]))
    if not kinds:
        what = "; ".join(left_out[:5]) if left_out else "no file with extension " + ", ".join(TRACKING_EXTENSIONS)
        raise InputDataError(
            f"{source}: holds no tracking files keypoint-moseq reads. Expected DeepLabCut (.h5/.csv), SLEAP "
            f"(.slp/.h5), NWB (.nwb), Anipose (.csv), sleap-anipose (.h5), Facemap (.h5), DANNCE (.mat) or "
            f"FreiPose (.json) files; found {what}")
    counts = {f: len(v) for f, v in kinds.items()}
    # a file is counted by its format's signature, but only reading it shows that it holds recordings
    # (a DeepLabCut 3D or labels table looks like predictions): read the leading format, count what
    # it really has, and move on to the next format when that one now has more files
    read_so_far: dict[str, tuple[list[Tracking], list[str], list[str]]] = {}
    while True:
        fmt = max(counts, key=lambda f: (counts[f], -PREFERENCE.index(f)))
        if fmt in read_so_far:
            break
        got, skipped, bad = [], [], []
        for p in kinds[fmt]:
            try:
                got.append(read(p, fmt))
            except NotTracking as exc:
                skipped.append(f"{p}: {exc}")
            except InputDataError as exc:
                if source.is_file():
                    raise
                bad.append(str(exc))
        read_so_far[fmt] = got, skipped, bad
        counts[fmt] = len(got)
    trackings = read_so_far[fmt][0]
    for _, skipped, bad in read_so_far.values():  # named once, with why
        left_out += skipped
        unreadable += bad
    for other, files in kinds.items():
        if other != fmt:
            named = {Path(x.split(": ")[0]) for x in read_so_far.get(other, ([], [], []))[1]}
            left_out += [f"{p}: {other} (the folder's most common format is {fmt})" for p in files
                         if p not in named]
    if not trackings:
        raise InputDataError(f"{source}: none of its {fmt} files holds recordings keypoint-moseq reads: "
                             + "; ".join((unreadable + left_out)[:5]))
    trackings = _one_bodypart_set(trackings, left_out, config_bodyparts)
    if not trackings:
        raise InputDataError(f"{source}: no {fmt} file has the bodyparts of the DeepLabCut config "
                             f"{config_bodyparts}: " + "; ".join(left_out[:5]))
    bodyparts = trackings[0].bodyparts
    skeleton = config_skeleton or trackings[0].skeleton
    every = [p for files in kinds.values() for p in files]
    return Scan(source, fmt, trackings, counts, left_out, bodyparts, skeleton, every, unreadable, config_note)


def _drop_sleap_duplicates(kinds, left_out):
    """A SLEAP .slp and its exported X.analysis.h5 are one recording: keep the analysis file (h5py
    reads it in any environment), so that the recording is not modelled twice."""
    sleap = kinds.get("sleap", [])
    h5_stems = {(p.parent, p.name.split(".")[0]) for p in sleap if p.suffix.lower() != ".slp"}
    for p in list(sleap):
        if p.suffix.lower() == ".slp" and (p.parent, p.name.split(".")[0]) in h5_stems:
            sleap.remove(p)
            left_out.append(f"{p}: the same predictions as its .analysis.h5 export, which is used")


def _one_bodypart_set(trackings, left_out, wanted=None):
    """The files with the most common set of bodyparts (ingest needs one set across recordings)."""
    def key(t):
        return frozenset(t.bodyparts) if t.bodyparts else ("dims", next(iter(t.recordings.values())).shape[1:])

    if wanted is not None:
        keep = [t for t in trackings if t.bodyparts and set(t.bodyparts) == set(wanted)]
    else:
        groups = collections.Counter(key(t) for t in trackings)
        best = max(groups, key=lambda k: (groups[k], sum(
            a.shape[0] for t in trackings if key(t) == k for a in t.recordings.values())))
        keep = [t for t in trackings if key(t) == best]
    for t in trackings:
        if t not in keep:
            what = f"{len(t.bodyparts)} bodyparts" if t.bodyparts else "other dimensions"
            left_out.append(f"{t.path}: other bodyparts ({what}) than the files used; one job models one set")
    return keep


# --------------------------------------------------------------------------- writing
def _y(value) -> str:
    """A YAML flow value whose strings always read back as strings (a bodypart '1' or 'no')."""
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./*=+\-]*", value) and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_y(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_y(k)}: {_y(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:.1e}".replace("e+0", "e").replace("e+", "e")  # 1.0e6: the manifest reader takes it as a number
    return repr(value) if isinstance(value, float) else str(value)


def _flow(head: str, items: list) -> list[str]:
    """``head`` and a YAML flow list, wrapped at 100 characters (a flow list may span lines)."""
    lines = textwrap.wrap(", ".join(_y(i) for i in items), width=100 - len(head) - 1, break_long_words=False,
                          break_on_hyphens=False)
    out = [head + "[" + lines[0]] + [" " * (len(head) + 1) + line for line in lines[1:]]
    out[-1] += "]"
    return out


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent + "# ", subsequent_indent=indent + "#   ",
                         break_on_hyphens=False, break_long_words=False)


def _defaults_block(schema: dict, sections: tuple[str, ...]) -> list[str]:
    """The other sections with their defaults and descriptions, commented out (from the schema)."""
    lines = []
    for name in sections:
        spec = schema["properties"][name]
        desc = spec.get("description", "")
        props = spec.get("properties")
        if name == "tuning":
            props = next(s["properties"] for s in spec["oneOf"] if "properties" in s)
        if props is None:
            lines += _wrap(desc, "")
            lines.append(f"# {name}: {_y(spec.get('default'))}")
            continue
        lines += _wrap(desc, "") if desc else []
        lines.append(f"# {name}:")
        for key, sub in props.items():
            if "default" not in sub:
                continue
            lines += _wrap(sub.get("description", ""), "#   ") if sub.get("description") else []
            lines.append(f"#   {key}: {_y(sub['default'])}")
    return lines


def build(sc: Scan, out: Path) -> tuple[str, list[str]]:
    """The manifest text for ``sc`` written at ``out``, and the CHECK / FIXME items (for the terminal)."""
    base = out.resolve().parent
    checks: list[str] = []
    files = [t.path for t in sc.trackings]
    recs = sum(len(t.recordings) for t in sc.trackings)
    L = [f"# kpms-job manifest written by `kpms-job init {sc.source}` on {datetime.date.today()}.",
         "# Read every CHECK and FIXME below, then: kpms-job validate <this file>; kpms-job run <this file>.",
         "# Relative paths resolve against this file's folder. Every field is described in manifest.schema.json.",
         "project_dir: ./project"]

    # inputs
    L.append("inputs:")
    counts = {f: n for f, n in sc.counts.items() if n}
    found = ", ".join(f"{n} {f}" for f, n in sorted(counts.items(), key=lambda x: -x[1]))
    if len(counts) > 1:
        checks.append(f"the folder mixes formats ({found}); {sc.fmt}, the one with the most files, is used")
        L += _wrap(f"CHECK: the folder mixes formats ({found} files); this uses {sc.fmt}, the format with "
                   "the most files (ties go to the more common tracker). Change format and paths for another.", "  ")
    L.append(f"  format: {sc.fmt}    # detected from the files' extensions and content")
    patterns = path_patterns(files, base)
    L += _wrap(f"{len(files)} file(s), {recs} recording(s)"
               + (f"; {sc.config_note}" if sc.config_note else ""), "  ")
    L.append("  paths:")
    L += [f"    - {_y(p)}" for p in patterns]
    for item in sc.unreadable:
        checks.append(item)
        L += _wrap(f"CHECK: left out, unreadable: {item}", "  ")
    names = collections.Counter(n for t in sc.trackings for n in t.recordings)
    clash = sorted(n for n, k in names.items() if k > 1)
    if clash:  # recordings are named by file name (keypoint-moseq): ingest refuses two of one name
        checks.append(f"recording names occur twice: {', '.join(clash[:5])}; run stops at ingest until one is renamed")
        L += _wrap(f"FIXME: files in different folders give the same recording name ({', '.join(clash[:5])}); "
                   "recordings are named by file name and ingest refuses a name twice: rename or leave out one.", "  ")
    if sc.left_out:
        L.append("  # left out (not used as recordings):")
        # a folder of many other files would bury the manifest: the first 20 are named
        shown = sc.left_out if len(sc.left_out) <= 21 else sc.left_out[:20]
        for item in shown:
            L += textwrap.wrap(_rel_note(item, base), width=100, initial_indent="  #   - ",
                               subsequent_indent="  #     ")
        if len(shown) < len(sc.left_out):
            L.append(f"  #   - ... and {len(sc.left_out) - len(shown)} more")
    multi = [t for t in sc.trackings if any("individuals" in n for n in t.notes)]
    if multi:
        L.append("  # multi-animal DeepLabCut: each individual is a recording; 'single' (unique bodyparts) is left out")
        L.append("  # exclude_individuals: [single]")

    # fps (and videos)
    fps, fps_lines, videos_dir = _fps(sc, base, checks)
    if videos_dir is not None:
        L.append(f"  videos: {_y(videos_dir)}    # the recordings' videos (grid movies)")
    else:
        L.append("  # videos: null    # folder of the recordings' videos, for grid movies drawn on the video")

    # bodyparts
    L += _bodyparts(sc, checks)
    L += fps_lines
    L.append(f"fps: {int(fps) if float(fps).is_integer() else round(fps, 3)}")

    L.append("")
    L.append("# Everything below is the default (manifest.schema.json); uncomment a line to change it.")
    L += _defaults_block(load_schema(), ("preprocessing", "pca", "model", "restarts", "restart_selection",
                                         "targets", "tuning", "fitting", "resources", "outputs"))
    L.append("# nwb: {subject: {species: Mus musculus, sex: M, age: P90D}, ...}   metadata for outputs.nwb")
    return "\n".join(L) + "\n", checks


def _rel_note(item: str, base: Path) -> str:
    path, _, why = item.partition(": ")
    return f"{_rel(Path(path), base)}: {why}"


def _fps(sc: Scan, base: Path, checks: list[str]):
    """(fps, comment lines, inputs.videos or None): from videos, then the files, else the default."""
    videos = match_videos(sc.trackings, sc.tracking_files)
    found: dict[str, tuple[float, str]] = {}
    for t in sc.trackings:
        v = videos.get(t.path)
        rate = video_fps(v) if v is not None else None
        if rate:
            found[str(t.path)] = (rate, f"the video {_rel(v, base)} (OpenCV)")
        elif t.fps:
            found[str(t.path)] = (t.fps, t.fps_source)
        elif (ts := timestamps_fps(t)) is not None:
            found[str(t.path)] = (ts[0], f"the timestamps {_rel(ts[1], base)}")
    lines: list[str] = []
    videos_dir = None
    used = {videos[t.path].parent for t in sc.trackings if t.path in videos}
    names = [n for t in sc.trackings for n in t.recordings]
    vids = [videos[t.path] for t in sc.trackings if t.path in videos]
    # the job matches videos to recordings as keypoint-moseq does: the video's name starts the recording's
    if len(used) == 1 and len(vids) == len(sc.trackings) and all(
            any(n.startswith(v.stem) for v in vids) for n in names):
        videos_dir = _rel(next(iter(used)), base)
    if not found:
        notes = [t.fps_note for t in sc.trackings if t.fps_note]
        checks.append(f"fps: no video, NWB timing or SLEAP metadata gives the frame rate; {DEFAULT_FPS:g} written")
        lines += _wrap(f"FIXME: no frame rate found (no video next to the files{', ' + notes[0] if notes else ''}"
                       f"). {DEFAULT_FPS:g} is keypoint-moseq's own default (generate_config), a guess: set the "
                       "recordings' real rate, as targets.median_duration_ms is converted to frames with it.", "")
        return DEFAULT_FPS, lines, videos_dir
    rates = collections.Counter(round(r, 3) for r, _ in found.values())
    fps = rates.most_common(1)[0][0]
    source = next(s for r, s in found.values() if round(r, 3) == fps)
    lines += _wrap(f"from {source}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""), "")
    if len(rates) > 1:
        checks.append(f"fps: the recordings have different frame rates {sorted(rates)}; "
                      f"{fps:g} (the most common) written")
        lines += _wrap(f"CHECK: frame rates differ {dict(rates)}; one job models recordings of one rate. "
                       "This is the most common one (on a tie, the first file's).", "")
    missing = len(sc.trackings) - len(found)
    if missing:
        checks.append(f"fps: {missing} file(s) have no video or timing; assumed {fps:g} like the others")
        lines += _wrap(f"CHECK: {missing} of {len(sc.trackings)} files have no video or timing of their own; "
                       "they are assumed to share this rate.", "")
    return fps, lines, videos_dir


def _bodyparts(sc: Scan, checks: list[str]) -> list[str]:
    L = ["bodyparts:"]
    if sc.bodyparts is None:  # DANNCE and FreiPose: keypoint-moseq's loaders return no names
        names = next((n for t in sc.trackings for n in t.notes if n.startswith("bodypart names")), None)
        checks.append(f"bodyparts: {sc.fmt} files carry no bodypart names, and kpms-job's ingest needs them: "
                      "run stops at ingest (exit 3) for these files")
        L += _wrap(f"FIXME: {sc.fmt} files carry no bodypart names (keypoint-moseq's {sc.fmt} loader returns "
                   "none), and kpms-job's ingest needs them: `kpms-job run` stops at ingest with a data error "
                   "(exit 3) on these files. Convert them (to an Anipose CSV, say) to use them. "
                   + (names + "." if names else ""), "  ")
        k = next(iter(sc.trackings[0].recordings.values())).shape[1]
        frac, frames = nan_fractions(sc.trackings, [str(i) for i in range(k)])
        L += _wrap("missing (NaN) fraction per keypoint, in file order, over "
                   f"{frames} frames: " + ", ".join(f"{v:.1%}" for v in frac.values()), "  ")
        L.append("  # use: null")
        L[0] = "bodyparts: {}    # see below"
        return L
    bps = sc.bodyparts
    frac, frames = nan_fractions(sc.trackings, bps)
    L += _wrap(f"{len(bps)} bodyparts, in the files' order. Missing (NaN) fraction over {frames} frames: "
               + ", ".join(f"{b} {frac[b]:.1%}" for b in bps), "  ")
    for t in sc.trackings[:1]:
        L += [line for n in t.notes if "no bodypart names" in n for line in _wrap(n, "  ")]
    use = [b for b in bps if frac[b] <= MAX_BODYPART_NAN]
    dropped = [b for b in bps if b not in use]
    if len(use) < 2:
        checks.append("bodyparts.use: fewer than 2 bodyparts are present in over half the frames; all kept")
        L += _wrap("CHECK: fewer than 2 bodyparts are present in more than half of the frames; all are kept. "
                   "Such data may be excluded by preprocessing.max_nan_fraction.", "  ")
        use, dropped = list(bps), []
    L += _wrap(f"use: every bodypart missing in at most {MAX_BODYPART_NAN:.0%} of the frames (keypoint-moseq's "
               "own warning threshold, check_nan_proportions): one missing more often is mostly interpolated "
               "and adds noise, not pose." + (f" Left out: {', '.join(dropped)}." if dropped else ""), "  ")
    L += _flow("  use: ", use)
    for side, exact, parts, default in (("anterior", ANTERIOR_NAMES, ANTERIOR_PARTS, use[0]),
                                        ("posterior", POSTERIOR_NAMES, POSTERIOR_PARTS, use[-1])):
        best = propose_axis(use, exact, parts)
        if best is not None and side == "posterior" and _norm(best) in ("tail", "tail1"):
            checks.append(f"bodyparts.posterior: '{best}' proposed; keypoint-moseq wants the tail base, not the tip")
            L += _wrap(f"CHECK: '{best}' may be the tail tip; keypoint-moseq wants the tail base here.", "  ")
        if best is None:
            checks.append(f"bodyparts.{side}: no bodypart name says {side}; the default ({default}) applies")
            examples, which = ("nose, snout, head", "first") if side == "anterior" else ("tail base, butt", "last")
            L += _wrap(f"CHECK: no bodypart name says {side} ({examples}...); the default applies (the {which} "
                       f"used bodypart, {default}). Name the {side} end of the body.", "  ")
            L.append(f"  # {side}: null")
        else:
            L.append(f"  {side}: {_y([best])}    # from the name")
    if sc.skeleton:
        pairs = [p for p in sc.skeleton if p[0] in bps and p[1] in bps]
        L += _flow("  skeleton: ", pairs) if pairs else ["  # skeleton: []"]
    else:
        L.append("  # skeleton: []    # the files carry none: pairs of bodyparts drawn as bones, e.g. [[nose, neck]]")
    return L


def write(source: str, output: str, force: bool = False) -> tuple[Path, list[str]]:
    """Scan ``source``, write the manifest to ``output`` (refusing to overwrite unless ``force``)."""
    out = Path(output)
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists; expected a new file name for the manifest "
                         "(-o PATH), or --force to overwrite it")
    if not out.parent.resolve().is_dir():
        raise UsageError(f"{out}: expected the manifest's folder {out.parent} to exist, got no such folder")
    sc = scan(Path(source))
    text, checks = build(sc, out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    try:
        # read back as `validate` and `run` read it: a manifest init wrote must validate (a failure
        # here is a bug in init, not the user's: it is reported as an unexpected error, exit 1)
        validate(read_manifest_file(tmp), str(out))
    except Exception as exc:
        tmp.unlink()
        raise RuntimeError(f"init wrote a manifest that does not validate: {exc}") from exc
    os.replace(tmp, out)
    return out, checks

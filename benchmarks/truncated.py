"""real_data.py rows on the FIRST N frames of a one-file DeepLabCut set: between short and long data.

Every ``real_data.py`` row of 162 s or more holds the window and every miss is 78 s or less, while
the recordings the issue was written on start at 120 s. This cuts a DeepLabCut set of one file
(golden_mouse by default: 4,860 frames at 30 fps) to its first N frames and runs real_data.py's own
row on each cut, so the rows are judged exactly as there (exit code, final median, in window, stable
after 100 more iterations, memory). A cut is labelled TRUNC: it is part of a recording, not a new one.

    .venv/bin/python benchmarks/truncated.py OUT --frames 3000 3600 --seed 0

Writes the cut files under OUT/data/ and real_data.py's OUT/real_data.json / .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks import real_data  # noqa: E402


def cut(src: Path, frames: int, dest: Path) -> Path:
    """The first ``frames`` rows of a DeepLabCut h5 or csv, under the same file name in ``dest``."""
    import pandas as pd

    dest.mkdir(parents=True, exist_ok=True)
    out = dest / src.name
    if src.suffix == ".h5":
        table = pd.read_hdf(src)
        if len(table) < frames:
            raise SystemExit(f"{src}: expected at least {frames} frames to cut, found {len(table)}")
        table.iloc[:frames].to_hdf(out, key="df_with_missing", mode="w")
    else:  # csv: three header rows (scorer, bodyparts, coords), then one row per frame
        lines = src.read_text().splitlines()
        if len(lines) - 3 < frames:
            raise SystemExit(f"{src}: expected at least {frames} frames to cut, found {len(lines) - 3}")
        out.write_text("\n".join(lines[:3 + frames]) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dataset", default="golden_mouse", help="a real_data.py set of one DeepLabCut file")
    ap.add_argument("--frames", nargs="+", type=int, required=True, help="the cuts: first N frames each")
    ap.add_argument("--seed", type=int, help="model.seed for every row (as real_data.py --seed)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    fmt, paths, fps, _ = real_data.DATASETS[args.dataset]
    files = sorted(f for p in paths for f in Path(p).parent.glob(Path(p).name)) if fmt == "deeplabcut" else []
    if len(files) != 1:
        raise SystemExit(f"{args.dataset}: expected a DeepLabCut set of one file, found {fmt} with {len(files)}")
    names = []
    for n in args.frames:
        name = f"TRUNC_{args.dataset}_first{n}"
        path = cut(files[0], n, args.out / "data" / name)
        real_data.DATASETS[name] = (fmt, [path], fps, f"the first {n} frames of {args.dataset}, not a new recording")
        names.append(name)
    rest = ["--datasets", *names] + (["--seed", str(args.seed)] if args.seed is not None else [])
    return real_data.main([str(args.out), *rest, *(["--keep"] if args.keep else [])])


if __name__ == "__main__":
    sys.exit(main())

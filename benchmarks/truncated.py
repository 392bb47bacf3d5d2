"""real_data.py rows on the FIRST N frames of a one-file set: between short and long data.

Every ``real_data.py`` row of 162 s or more holds the window and every miss is 78 s or less, while
the recordings the issue was written on start at 120 s. This cuts a set of one file (a DeepLabCut
h5 or csv, or a SLEAP .slp; golden_mouse by default: 4,860 frames at 30 fps) to its first N frames
and runs real_data.py's own row on each cut, so the rows are judged exactly as there (exit code,
final median, in window, stable after 100 more iterations, memory). A cut is labelled TRUNC: it is
part of a recording, not a new one. A file of several animals (two_mice, flies) keeps all of them:
its cut holds N frames of each.

    .venv/bin/python benchmarks/truncated.py OUT --frames 3000 3600 --seed 0
    .venv/bin/python benchmarks/truncated.py OUT --dataset flies --frames 1500 --seed 0

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
    elif src.suffix == ".slp":
        import sleap_io as sio

        labels = sio.load_slp(str(src))
        kept = [lf for lf in labels.labeled_frames if lf.frame_idx < frames]
        if max((lf.frame_idx for lf in labels.labeled_frames), default=-1) + 1 < frames:
            raise SystemExit(f"{src}: expected at least {frames} frames to cut, found {len(labels.labeled_frames)}")
        labels.labeled_frames = kept
        # sleap-io sizes the keypoint array by the video's length when it can open the video: the cut
        # names a video that does not exist, so its length is that of the frames kept
        labels.replace_videos(new_videos=[sio.Video(filename=str(out.with_suffix(".not-cut.mp4")),
                                                    open_backend=False)])
        sio.save_slp(labels, str(out))
    else:  # csv: header rows (scorer, [individuals,] bodyparts, coords), then one row per frame
        lines = src.read_text().splitlines()
        head = next(i for i, line in enumerate(lines) if line.split(",", 1)[0].strip().isdigit())
        if len(lines) - head < frames:
            raise SystemExit(f"{src}: expected at least {frames} frames to cut, found {len(lines) - head}")
        out.write_text("\n".join(lines[:head + frames]) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dataset", default="golden_mouse", help="a real_data.py set of one DeepLabCut or SLEAP file")
    ap.add_argument("--frames", nargs="+", type=int, required=True, help="the cuts: first N frames each")
    ap.add_argument("--seed", type=int, help="model.seed for every row (as real_data.py --seed)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    fmt, paths, fps, _ = real_data.DATASETS[args.dataset]
    one_file = fmt in ("deeplabcut", "sleap")
    files = sorted(f for p in paths for f in Path(p).parent.glob(Path(p).name)) if one_file else []
    if len(files) != 1:
        raise SystemExit(f"{args.dataset}: expected a DeepLabCut or SLEAP set of one file, found {fmt} "
                         f"with {len(files)}")
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

"""Rebuild the cut-down NWB and SLEAP analysis files of tests/data from ../shared/data.

    .venv/bin/python tests/data/cut_tracking_files.py

The originals are too large to commit whole. Each cut keeps the file's own layout, names,
attributes, compression and cached specifications (h5py copies every object as it is) and
only shortens the frame axis, so the loaders see the same format as in the original.
"""

from __future__ import annotations

from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent.parent / "shared" / "data"
NWB_FRAMES = 300
SLEAP_FRAMES = 200


def _copy_attrs(src, dst):
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def _cut_tree(src: h5py.Group, dst: h5py.Group, cut, skip=()):
    """Copy ``src`` into ``dst``; a dataset for which ``cut(path, dataset)`` returns an array is written
    as that array (same dtype, compression and attributes), every other object is copied unchanged."""
    for name, obj in src.items():
        if name in skip:
            continue
        link = src.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink):
            dst[name] = h5py.SoftLink(link.path)
            continue
        if isinstance(obj, h5py.Group):
            sub = dst.create_group(name)
            _copy_attrs(obj, sub)
            _cut_tree(obj, sub, cut, skip)
            continue
        values = cut(obj.name, obj)
        if values is None:
            src.copy(obj, dst, name)
            continue
        ds = dst.create_dataset(name, data=values, dtype=obj.dtype, compression=obj.compression,
                                compression_opts=obj.compression_opts)
        _copy_attrs(obj, ds)


def cut_nwb(src_path: Path, dst_path: Path, frames: int, skip=()):
    """The first ``frames`` frames of every PoseEstimationSeries; ``skip`` drops datasets by name."""
    def cut(path, ds):
        parent = ds.parent
        if parent.attrs.get("neurodata_type") == "PoseEstimationSeries" and ds.shape and ds.shape[0] > frames:
            return ds[:frames]
        return None

    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w") as dst:
        _copy_attrs(src, dst)
        _cut_tree(src, dst, cut, skip)
        dst.attrs[".specloc"] = dst["specifications"].ref  # a reference into the new file, not the old one


def cut_sleap_analysis(src_path: Path, dst_path: Path, frames: int):
    """The first ``frames`` frames: the last axis of tracks/point_scores/..., the first of track_occupancy."""
    with h5py.File(src_path, "r") as src:
        n = src["tracks"].shape[-1]

    def cut(path, ds):
        if ds.ndim and ds.shape[-1] == n and path != "/track_occupancy":
            return ds[..., :frames]
        if path == "/track_occupancy":
            return ds[:frames]
        return None

    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w") as dst:
        _copy_attrs(src, dst)
        _cut_tree(src, dst, cut)


def main():
    nwb = HERE / "nwb"
    nwb.mkdir(exist_ok=True)
    cut_nwb(SHARED / "ethome" / "sample_nwb_.nwb", nwb / "openfield_first300.nwb", NWB_FRAMES)
    cut_nwb(SHARED / "ethome" / "sample_nwb_.nwb", nwb / "openfield_first300_noskeleton.nwb", NWB_FRAMES,
            skip=("nodes",))
    sleap = HERE / "sleap_analysis"
    sleap.mkdir(exist_ok=True)
    cut_sleap_analysis(SHARED / "sleap" / "predictions.analysis.h5", sleap / "flies_first200.analysis.h5",
                       SLEAP_FRAMES)
    for path in [nwb / "openfield_first300.nwb", nwb / "openfield_first300_noskeleton.nwb",
                 sleap / "flies_first200.analysis.h5"]:
        print(path.relative_to(HERE), path.stat().st_size, "bytes")

if __name__ == "__main__":
    main()

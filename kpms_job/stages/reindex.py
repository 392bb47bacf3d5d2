"""Relabel syllables by frequency (0 = most frequent), on a copy swapped in atomically.

keypoint-moseq reindexes the checkpoint in place, snapshot by snapshot; a kill in the
middle would leave some snapshots relabelled and some not, and a rerun would permute
them twice. Working on a copy makes the step all-or-nothing.
"""

from __future__ import annotations

import os
import shutil


def run(ctx):
    from .. import kpms_adapter as A

    path = A.checkpoint_path(str(ctx.project_dir), ctx.model_name)
    tmp = path.with_name("checkpoint.reindex.tmp.h5")
    shutil.copyfile(path, tmp)
    A.reindex_at(str(tmp))
    os.replace(tmp, path)
    return {"outputs": [f"{ctx.model_name}/checkpoint.h5"]}

"""Relabel syllables by frequency (0 = most frequent), on a copy swapped in atomically.

keypoint-moseq reindexes the checkpoint in place, snapshot by snapshot; a kill in the
middle would leave some snapshots relabelled and some not. Working on a copy makes the
step all-or-nothing, and a marker in the file makes it idempotent: a rerun after a kill
between the swap and the state write must not permute the labels a second time
(syllables of equal frequency could swap).
"""

from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger("kpms_job")

TITLE = "reindex syllables by frequency"
DEPS = ("full_model",)
READS = ("model.name",)
OUTPUTS = ("{model}/checkpoint.h5",)


def run(ctx):
    from ..kpms import gibbs, results

    path = gibbs.checkpoint_path(str(ctx.project_dir), ctx.model_name)
    if results.is_reindexed(str(path)):
        log.info("checkpoint already reindexed (a previous run stopped right after); keeping it")
    else:
        tmp = path.with_name("checkpoint.reindex.tmp.h5")
        shutil.copyfile(path, tmp)
        results.reindex_at(str(tmp))
        os.replace(tmp, path)
    return {}

"""Accelerator detection and the fitting settings chosen from it."""

from __future__ import annotations

import logging

log = logging.getLogger("kpms_job")


def plan_for_context(ctx) -> dict:
    """Choose parallel_message_passing and mixed_map_iters for this process."""
    import jax

    res = ctx.m["resources"]
    on_gpu = jax.default_backend() == "gpu"
    pmp = res["parallel_message_passing"]
    pmp = on_gpu if pmp == "auto" else bool(pmp)
    mmi = res["mixed_map_iters"]
    mmi = 1 if mmi == "auto" else int(mmi)
    plan = {"backend": jax.default_backend(), "parallel_message_passing": pmp,
            "mixed_map_iters": mmi}
    log.info("fitting on %s: parallel_message_passing=%s, mixed_map_iters=%d",
             plan["backend"], pmp, mmi)
    ctx.state.put("resources", plan)
    return plan

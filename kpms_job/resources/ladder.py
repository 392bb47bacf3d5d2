"""The settings a fit can run with, from the fastest to the most frugal, and the choice among them.

Pure arithmetic on the memory model (:mod:`.model`), no JAX import: :func:`ladder` orders
the settings, :func:`choose` takes the fastest whose estimates fit the budget, and
:func:`max_frames` / :func:`max_states` say what would fit when nothing does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import MAX_SEG_LENGTH, Estimate, Setting, Shape, estimate, gib, kalman_scan_allowed

#: Fraction of the budget a plan may fill (the rest is headroom for fragmentation
#: and what the model leaves out).
FILL = 0.9


def mmi_values(segments: int) -> list[int]:
    """1, 2, 4, ... up to the number of segments (more batches than segments change nothing)."""
    out, v = [1], 2
    while v < segments:
        out.append(v)
        v *= 2
    if segments > 1 and out[-1] != segments:
        out.append(segments)
    return out


def ladder(backend: str, segments: int, parallel="auto", mixed_map_iters="auto") -> list[Setting]:
    """Settings from the fastest to the most frugal.

    Parallel message passing on (GPU only: on a CPU it is slower and bigger, and its batched LU
    calls can deadlock XLA:CPU, so a CPU never gets it, even when pinned) with 1, 2, 4, ...
    batches, then off with 1, 2, 4, ... batches. A value pinned in the manifest keeps that
    value on every rung.
    """
    if not kalman_scan_allowed(backend):
        pmps = [False]  # the scan's batched LU deadlocks XLA:CPU (kalman_scan_allowed), pinned or not
    elif parallel == "auto":
        pmps = [True, False] if backend == "gpu" else [False]
    else:
        pmps = [bool(parallel)]
    mmis = mmi_values(segments) if mixed_map_iters == "auto" else [int(mixed_map_iters)]
    return [Setting(p, i) for p in pmps for i in mmis]


@dataclass
class Choice:
    """The setting a plan picks, and why."""

    setting: Setting
    fits: bool
    budget: float
    arhmm: Estimate
    full: Estimate
    tried: list  # (Setting, full-model Estimate) of every rung considered, in order
    skipped: list  # settings excluded because they already ran out of memory
    reason: str
    tried_arhmm: list = field(default_factory=list)  # the AR-HMM Estimate of each rung in ``tried``

    def as_dict(self) -> dict:
        return {**self.setting.as_dict(), "fits": self.fits, "budget_bytes": int(self.budget),
                "estimate_bytes": {"arhmm": int(self.arhmm.total), "full_model": int(self.full.total)},
                "reason": self.reason}


def need(arhmm: Estimate, full: Estimate) -> Estimate:
    """The bigger of a setting's two fits: what the budget has to hold."""
    return arhmm if arhmm.total > full.total else full


def choose(shape: Shape, budget: float, backend: str = "cpu", parallel="auto", mixed_map_iters="auto",
           failed=(), patched=None) -> Choice:
    """The fastest setting whose estimates (AR-HMM and full model) fit ``FILL`` x ``budget``.

    ``failed`` are settings that already ran out of memory: the plan goes on from the
    rung after the last of them. When no rung fits, the fastest of the most frugal ones
    left is chosen (``fits=False``; more batches that save nothing only cost time): an
    estimate is not a measurement, and the job tries it.
    """
    rungs = ladder(backend, shape.segments, parallel, mixed_map_iters)
    failed = [Setting(bool(f["parallel_message_passing"]), int(f["mixed_map_iters"])) if isinstance(f, dict)
              else f for f in failed]
    start = 0
    for f in failed:
        if f in rungs:
            start = max(start, rungs.index(f) + 1)
    skipped, rungs = rungs[:start], rungs[start:]
    limit = FILL * budget
    if not rungs:
        last = skipped[-1] if skipped else Setting(False, 1)
        return Choice(last, False, budget, estimate(shape, last, "arhmm", backend, patched=patched),
                      estimate(shape, last, "full_model", backend, patched=patched), [], skipped,
                      "every setting has run out of memory already")
    tried, ars = [], []
    for s in rungs:
        ar = estimate(shape, s, "arhmm", backend, patched=patched)
        full = estimate(shape, s, "full_model", backend, patched=patched)
        tried.append((s, full))
        ars.append(ar)
        if need(ar, full).total <= limit:
            break
    fits = need(ars[-1], tried[-1][1]).total <= limit
    if not fits:  # the fastest of the most frugal: more batches that save nothing only cost time
        totals = [need(a, f).total for a, (_, f) in zip(ars, tried, strict=True)]
        n = next(i for i, t in enumerate(totals) if t <= min(totals) * 1.001) + 1
        tried, ars = tried[:n], ars[:n]
    (s, full), arhmm = tried[-1], ars[-1]
    why = []
    if skipped:
        why.append(f"{len(skipped)} faster setting(s) ran out of memory before")
    if len(tried) > 1:
        why.append(f"{len(tried) - 1} faster setting(s) need more")
    if fits:
        why.append(f"the fastest that fits {gib(limit)} ({FILL:.0%} of the {gib(budget)} budget): "
                   f"full model {full.describe()}; AR-HMM {gib(arhmm.total)}")
    else:
        big = need(arhmm, full)
        what = "the AR-HMM" if big is arhmm else "the full model"
        why.append(f"nothing fits {gib(limit)} ({FILL:.0%} of the budget): at best {what} needs {big.describe()}")
    return Choice(s, fits, budget, arhmm, full, tried, skipped, "; ".join(why), ars)


def max_frames(shape: Shape, budget: float, backend: str = "cpu", parallel="auto", mixed_map_iters="auto",
               patched=None) -> int:
    """The most frames (recordings of 10,000) whose plan fits ``budget``; 0 if none."""
    def fits(n):
        return n > 0 and choose(_with(shape, frames=n), budget, backend, parallel, mixed_map_iters,
                                patched=patched).fits
    lo, hi = 0, MAX_SEG_LENGTH
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 10**10:
            return lo
    while hi - lo > max(1000, lo // 200):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_states(shape: Shape, budget: float, backend: str = "cpu", parallel="auto", mixed_map_iters="auto",
               patched=None) -> int:
    """The most num_states whose plan fits ``budget`` at these frames; 0 if none."""
    lo, hi = 0, max(shape.num_states, 2)
    if choose(_with(shape, num_states=hi), budget, backend, parallel, mixed_map_iters, patched=patched).fits:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = mid > 0 and choose(_with(shape, num_states=mid), budget, backend, parallel, mixed_map_iters,
                                patched=patched).fits
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def _with(shape: Shape, **changes) -> Shape:
    d = {k: getattr(shape, k) for k in ("frames", "keypoints", "latent_dim", "num_states", "nlags", "dims")}
    if "frames" not in changes:
        d["recordings"] = shape.recordings
    d.update(changes)
    return Shape(**d)

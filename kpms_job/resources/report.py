"""``kpms-job plan``'s memory part: the estimate per fit, the chosen settings and why.

No JAX import: the machine is found with :func:`.machine.detect` and the estimates
come from the memory model in :mod:`.model`.
"""

from __future__ import annotations

from ..errors import EXIT_OK, ManifestError
from . import ladder, machine, model, planner
from .model import gib


def _machine_budget(budget_gb, vram_budget_gb="auto", device="auto"):
    """(machine, budget bytes, its source, backend to plan for).

    ``device`` ``gpu`` / ``cpu`` plans for that kind of machine whatever this one is
    (a laptop planning for the GPU node a job will get); ``auto``: this machine.
    """
    found = machine.detect()
    backend = found.backend if device in (None, "auto") else device
    if backend != found.backend:
        found.notes = [n for n in found.notes if "planning for the CPU" not in n]
        here = "a GPU" if found.backend == "gpu" else "no GPU JAX can use"
        found.notes.append(f"planning for a {backend.upper()} (--device {backend}); this machine has {here}")
    if budget_gb is not None:
        if budget_gb <= 0:
            raise ManifestError(["command line: --budget-gb must be a positive number of GiB"])
        what = "the GPU's memory" if backend == "gpu" else "system memory"
        return found, budget_gb * model.GiB, f"--budget-gb, {what}", backend
    if backend == "gpu" and found.backend != "gpu":
        raise ManifestError(["command line: --device gpu on a machine without a usable GPU needs --budget-gb "
                             "(the memory of the GPU the job will get, e.g. 24 or 80)"])
    if backend == "cpu" and found.backend == "gpu":
        found = machine.Machine("cpu", ram_total=found.ram_total, ram_available=found.ram_available,
                                ram_source=found.ram_source, notes=found.notes)
    b, source = machine.budget(found, vram_budget_gb)
    return found, b, source, backend


def report(shape: model.Shape, budget: float, source: str, backend: str, parallel="auto",
           mixed_map_iters="auto", failed=(), notes=(), patched=None) -> list[str]:
    """The lines ``plan`` prints for one fit shape and budget.

    ``patched``: the steps whose jax-moseq patch is installed (None: all, as the lock's
    jax-moseq gets them; ``plan`` imports no JAX, so it takes what the last fit recorded).
    """
    choice = ladder.choose(shape, budget, backend, parallel, mixed_map_iters, failed=failed, patched=patched)
    where = "GPU" if backend == "gpu" else "CPU (system memory)"
    lines = [
        "memory plan:",
        f"  data       {shape.frames:,} frames in {len(shape.recordings)} recording(s) -> {shape.segments} "
        f"segment(s) of {shape.seg_length:,} (+30 overlap) = {shape.padded_frames:,} padded frames; "
        f"{shape.keypoints} keypoints, latent_dim {shape.latent_dim}, num_states {shape.num_states}",
        f"  budget     {gib(budget)} on the {where} ({source}); plans fill at most {ladder.FILL:.0%}",
    ]
    lines += [f"  note       {n}" for n in notes]
    if parallel is True and not model.kalman_scan_allowed(backend):
        lines.append("  note       resources.parallel_message_passing: true is not used on a CPU: the associative "
                     "scan's batched LU calls can deadlock XLA:CPU, so every Kalman step runs sequentially")
    lines.append("  settings, from the fastest to the most frugal (peak of the AR-HMM and of the full model):")
    for (s, full), ar in zip(choice.tried, choice.tried_arhmm, strict=True):
        big = ladder.need(ar, full)
        mark = "fits" if big.total <= ladder.FILL * budget else "too big"
        lines.append(f"    {s.label():<54} AR-HMM {gib(ar.total):>9}, full {gib(full.total):>9}  {mark:<7}  "
                     f"(largest step: {big.peak_step}{' in the AR-HMM' if big is ar else ''})")
    rest = ladder.ladder(backend, shape.segments, parallel, mixed_map_iters)[len(choice.skipped) + len(choice.tried):]
    if rest:
        why = "not needed" if choice.fits else "save nothing more, by the model"
        lines.append(f"    ({len(rest)} more frugal setting(s) {why}: up to "
                     f"mixed_map_iters={rest[-1].mixed_map_iters})")
    verdict = "chosen" if choice.fits else "DOES NOT FIT; would try"
    lines.append(f"  {verdict}: {choice.setting.label()}")
    lines.append(f"  AR-HMM     {choice.arhmm.describe()}")
    lines.append(f"  full model {choice.full.describe()}")
    lines.append(f"  why        {choice.reason}")
    if not choice.fits:
        n = ladder.max_frames(shape, budget, backend, parallel, mixed_map_iters, patched=patched)
        s = ladder.max_states(shape, budget, backend, parallel, mixed_map_iters, patched=patched)
        hints = []
        if n:
            hints.append(f"about {n:,} frames fit this budget with these sizes")
        if 0 < s < shape.num_states:
            hints.append(f"at {shape.frames:,} frames, num_states up to about {s} fits")
        need = max(choice.arhmm.total, choice.full.total) / ladder.FILL
        hints.append(f"this job needs a budget of about {gib(need)}")
        lines.append("  to fit     " + "; ".join(hints))
    return lines


def plan_frames(args) -> int:
    """``kpms-job plan --frames N [--keypoints K --latent-dim L --num-states S --budget-gb G]``."""
    for name in ("frames", "keypoints", "latent_dim", "num_states"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ManifestError([f"command line: --{name.replace('_', '-')} must be at least 1"])
    if args.keypoints < 3:
        raise ManifestError(["command line: --keypoints must be at least 3 (keypoint-moseq aligns on 2)"])
    found, budget, source, backend = _machine_budget(args.budget_gb, device=getattr(args, "device", "auto"))
    shape = model.Shape(frames=args.frames, keypoints=args.keypoints, latent_dim=args.latent_dim,
                        num_states=args.num_states)
    print("\n".join(report(shape, budget, source, backend, notes=found.notes)))
    return EXIT_OK


def plan_manifest(m: dict, state, counted: tuple[list[int], int] | None = None) -> None:
    """The memory part of ``kpms-job plan MANIFEST`` (after the stage plan). Before ingest has run,
    ``counted`` (frames per recording, keypoints: kpms_job.tracking_files.count) gives the sizes."""
    res = m.get("resources") or {}
    found, budget, source, _ = _machine_budget(None, res.get("vram_budget_gb", "auto"))
    shape = planner.shape_from_state(m, state)
    before_ingest = shape is None
    if before_ingest:
        if not counted or not counted[0] or counted[1] < 1:
            print("memory plan: after ingest has run (no frames found in the inputs); "
                  "`kpms-job plan --frames N` estimates any size now")
            return
        shape = planner.shape_from_counts(m, *counted)
    old = state.get("resources") or {}
    sig = planner.signature(shape, found.backend, planner.device_name(found), res)
    failed = planner.failed_settings(old, sig)
    other = sum(a.get("outcome") == "out of memory" for a in old.get("attempts", [])) - len(failed)
    notes = list(found.notes)
    if failed:
        notes.append(f"{len(failed)} setting(s) ran out of memory before and are skipped")
    if other:
        notes.append(f"{other} out-of-memory attempt(s) under other sizes, device or resources settings "
                     "do not count: their settings are tried again")
    patched = old.get("patched")
    if patched is not None and set(patched) != model.PATCHED_STEPS:
        notes.append("planned without the jax-moseq patches the last fit could not install: "
                     + ", ".join(sorted(model.PATCHED_STEPS - set(patched))) + " (unbatched)")
    if before_ingest:
        notes.append(f"sizes counted from the input files before ingest: {len(shape.recordings)} recording(s); "
                     "recordings ingest excludes are still in")
    if not (state.stage("pca") or {}).get("info"):
        notes.append(f"latent_dim {shape.latent_dim} assumed until PCA has run")
    print("\n".join(report(shape, budget, source, found.backend, res.get("parallel_message_passing", "auto"),
                           res.get("mixed_map_iters", "auto"), failed, notes, patched)))
    if old.get("peak_bytes"):
        used = model.Setting(bool(old["parallel_message_passing"]), int(old["mixed_map_iters"]))
        print(f"  last run   {old.get('backend')}, {used.label()}: peak {gib(old['peak_bytes'])} "
              f"({old.get('peak_source')}), estimate {gib(old['estimate_bytes']['full_model'])}")

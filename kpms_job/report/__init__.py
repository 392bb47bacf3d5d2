"""report.html: the project's results in one self-contained page (kpms_job/report/report.html.j2).

The page references its figures and movies by paths relative to the project dir, so the folder
opens from a file system or an object store with no server. Only files that exist are linked:
a figure the job could not make is named as missing, never shown as a broken image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TEMPLATE = "report.html.j2"


def rank_frequency_fit(fractions: list[float], floor: float = 0.005) -> dict | None:
    """Least-squares line through log(fraction) against log(rank) for the syllables above ``floor``
    (keypoint-moseq's 0.5% usage floor): a power law is a straight line there. Slope and R²."""
    ys = sorted((f for f in fractions if f > floor), reverse=True)
    if len(ys) < 3:
        return None
    xs = [math.log(i) for i in range(1, len(ys) + 1)]
    ys = [math.log(y) for y in ys]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    ss_res = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "syllables": len(ys)}


def existing(project_dir: Path, paths) -> tuple[list[str], list[str]]:
    """``paths`` (relative to the project dir) split into those that exist and those that do not."""
    have, missing = [], []
    for p in paths or []:
        (have if (project_dir / p).is_file() else missing).append(str(p))
    return have, missing


def render(context: dict) -> str:
    """The HTML page for ``context`` (built by the summary stage: kpms_job/stages/summary.py)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader(__name__, "."), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    env.filters["seconds"] = _seconds
    return env.get_template(TEMPLATE).render(**context)


def _num(v, fmt: str = ".3g") -> str:
    if v is None:
        return "–"
    try:
        return format(v, fmt)
    except (TypeError, ValueError):
        return str(v)


def _seconds(v) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"

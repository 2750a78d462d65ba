"""The report as one self-contained HTML file: inline CSS and SVG, no script, no link out.

Every value is put in through Jinja2 with autoescaping on: ids, messages and rows are server
and input text (hostile). Only the SVG drawn by ``plots`` goes in unescaped.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2
from markupsafe import Markup

from ..__about__ import __version__
from .data import RunData
from .plots import draw_all

TEMPLATE = Path(__file__).with_name("templates") / "report.html"


def _span(data: RunData) -> str:
    if data.first_time is None or data.last_time is None:
        return "unknown (no timestamps)"
    start = dt.datetime.fromtimestamp(data.first_time, dt.timezone.utc)
    seconds = data.last_time - data.first_time
    rate = data.rows / seconds if seconds > 0 else 0.0
    return (
        f"{start:%Y-%m-%d %H:%M:%S} UTC, {seconds:,.1f} s from the first call to the last row "
        f"({rate:,.1f} rows/s, gaps between runs included)"
    )


def render(data: RunData, name: str) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    plots = {k: Markup(v) for k, v in draw_all(data).items()}  # our own SVG: not escaped
    refs = {r.line: r for r in [*data.slowest.rows(), *data.costliest.rows(), *data.failed]}
    manifest = data.manifest if isinstance(data.manifest, dict) else {}
    runs = manifest.get("runs")
    runs = runs if isinstance(runs, list) else []
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        name=name,
        output=str(data.output),
        made=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=__version__,
        d=data,
        errors=data.errors_by_type.most_common(),
        pct=list(data.percentiles().items()),
        span=_span(data),
        manifest=manifest,
        plots=plots,
        batches=data.batches,
        rows=[refs[k] for k in sorted(refs)],
        runs=[r for r in runs if isinstance(r, dict)],
    )


def write_report(data: RunData, name: str, target: Path) -> Path:
    from ..job.store import atomic_write

    atomic_write(target, render(data, name))
    return target

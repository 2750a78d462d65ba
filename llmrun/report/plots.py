"""The report's plots, drawn with matplotlib as inline SVG (no script, no network; prints well).

matplotlib is the ``report`` extra: it is imported here only, when a report is made.
Labels that come from rows (error types) are reduced to a safe alphabet before they reach
matplotlib: its mathtext would read ``$...$``, and the SVG it writes carries text in comments.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

from ..errors import LlmrunError
from .data import RunData

WIDTH, HEIGHT = 7.5, 2.8  # inches: fits an A4 page in print
KEY_LINES = 8  # keys drawn as their own line; the rest as one
COLORS = ["#4e79a7", "#e15759", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise LlmrunError(
            "`llmrun report` draws its plots with matplotlib: pip install 'llmrun[report]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "llmrun",  # ids in the SVG repeat from one report to the next
            "svg.fonttype": "path",  # the glyphs travel with the file: no font needed
            "font.size": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def safe_label(text: str) -> str:
    """A label matplotlib shows as is: letters, digits and ``_.-`` only."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "?", text)[:40] or "?"


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    # Inline in HTML: drop the XML prolog and doctype, keep the <svg> element.
    return text[text.index("<svg") :]


def _time_axis(seconds: list[float]) -> tuple[list[float], str]:
    span = seconds[-1] if seconds else 0.0
    if span >= 2 * 3600:
        return [s / 3600 for s in seconds], "hours since the first call"
    if span >= 120:
        return [s / 60 for s in seconds], "minutes since the first call"
    return seconds, "seconds since the first call"


def _empty(ax: Any, what: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no {what} in the output",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="#888",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _gids(patches: Any, prefix: str) -> None:
    """Ids on the drawn data (``prefix-N``): the SVG says which shapes are data, not axes."""
    for i, patch in enumerate(patches):
        patch.set_gid(f"{prefix}-{i}")


def draw_all(data: RunData) -> dict[str, str]:
    """Every plot, by name, as an SVG string."""
    plt = _pyplot()
    width, series = data.timeline.series()
    times, xlabel = _time_axis([t for t, _ in series])
    out: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    if series:
        rate = [b.finished / width for _, b in series]
        flight, running = [], 0
        for _, b in series:
            running += b.started - b.finished
            flight.append(max(0, running))
        ax.step(
            times,
            rate,
            where="post",
            color=COLORS[0],
            label="rows finished / s",
            gid="data-throughput",
        )
        ax.set_ylabel("rows / s")
        ax2 = ax.twinx()
        ax2.step(
            times, flight, where="post", color=COLORS[2], label="in flight", gid="data-inflight"
        )
        ax2.set_ylabel("in flight")
        ax2.grid(False)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper right")
        ax.set_xlabel(xlabel)
    else:
        _empty(ax, "timed rows")
    ax.set_title("throughput and calls in flight")
    out["throughput"] = _svg(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    latencies = data.latencies.values
    if latencies:
        _gids(ax.hist(latencies, bins=50, color=COLORS[0])[2], "data-latency")
        for (name, value), color in zip(
            ((k, v) for k, v in data.percentiles().items() if k in ("p50", "p90", "p99")),
            COLORS[1:],
            strict=False,
        ):
            ax.axvline(value, color=color, linestyle="--", label=f"{name} {value:.3g}s")
        ax.legend(loc="upper right")
        ax.set_xlabel("latency of the successful call (s)")
        ax.set_ylabel("rows")
    else:
        _empty(ax, "latencies")
    ax.set_title("latency")
    out["latency"] = _svg(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    if series and (data.input_tokens or data.output_tokens):
        ax.step(
            times,
            [b.input_tokens / width for _, b in series],
            where="post",
            color=COLORS[0],
            label="input tokens / s",
            gid="data-tokens-in",
        )
        ax.step(
            times,
            [b.output_tokens / width for _, b in series],
            where="post",
            color=COLORS[4],
            label="output tokens / s",
            gid="data-tokens-out",
        )
        ax.legend(loc="upper right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens / s")
    else:
        _empty(ax, "token counts")
    ax.set_title(f"tokens: {data.input_tokens:,} in, {data.output_tokens:,} out")
    out["tokens"] = _svg(fig)
    plt.close(fig)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(WIDTH, HEIGHT))
    if series and data.costs.values:
        total, cumulative = 0.0, []
        for _, b in series:
            total += b.cost
            cumulative.append(total)
        ax.plot(times, cumulative, color=COLORS[4], gid="data-cost")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("USD spent")
        ax.set_title("cost over time")
        _gids(bx.hist(data.costs.values, bins=40, color=COLORS[4])[2], "data-cost-row")
        bx.set_xlabel("USD per row")
        bx.set_ylabel("rows")
        bx.set_title("cost per row")
    else:
        _empty(ax, "costs")
        _empty(bx, "costs")
    out["cost"] = _svg(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    kinds = [k for k, _ in Counter(data.errors_by_type).most_common(6)]
    if series and (data.retries or kinds):
        bottom = [0.0] * len(series)
        bar = width / (3600 if xlabel.startswith("hours") else 60 if "minutes" in xlabel else 1)
        for n, (kind, color) in enumerate(zip(kinds, COLORS[1:], strict=False)):
            heights = [float(b.errors.get(kind, 0)) for _, b in series]
            bars = ax.bar(
                times,
                heights,
                width=bar,
                bottom=bottom,
                align="edge",
                color=color,
                label=f"error rows: {safe_label(kind)}",
            )
            _gids(bars, f"data-errors-{n}")
            bottom = [x + h for x, h in zip(bottom, heights, strict=True)]
        others = [
            float(sum(b.errors.values()) - sum(b.errors.get(k, 0) for k in kinds))
            for _, b in series
        ]
        if any(others):
            ax.bar(
                times,
                others,
                width=bar,
                bottom=bottom,
                align="edge",
                color="#999",
                label="error rows: other types",
            )
        ax.step(
            times,
            [float(b.retries) for _, b in series],
            where="post",
            color=COLORS[0],
            label="retries (calls made again)",
            gid="data-retries",
        )
        ax.legend(loc="upper right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"per {width:g} s")
    else:
        _empty(ax, "retries or errors")
    ax.set_title("retries and errors by type")
    out["errors"] = _svg(fig)
    plt.close(fig)

    out["pace"] = _pace_per_key(plt, data, series, times, xlabel, width)
    return out


def _pace_per_key(
    plt: Any,
    data: RunData,
    series: list[tuple[float, Any]],
    times: list[float],
    xlabel: str,
    width: float,
) -> str:
    """Calls answered per minute by each key over time: a key held back by its limit, paused
    by a Retry-After or retired shows as its own line falling away from the others."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    shown = [k for k, _ in data.keys.most_common(KEY_LINES)]
    if series and shown:
        for n, (key, color) in enumerate(zip(shown, COLORS * 2, strict=False)):
            ax.step(
                times,
                [b.keys.get(key, 0) / width * 60 for _, b in series],
                where="post",
                color=color,
                label=f"{safe_label(key)} ({data.keys[key]:,} calls)",
                gid=f"data-key-{n}",
            )
        _pace_events(ax, data, shown, xlabel)
        rest = [k for k in data.keys if k not in shown]
        if rest:
            ax.step(
                times,
                [sum(b.keys.get(k, 0) for k in rest) / width * 60 for _, b in series],
                where="post",
                color="#999",
                label=f"{len(rest)} other keys",
            )
        ax.legend(loc="upper right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("calls answered / min")
    else:
        _empty(ax, "keys (rows made before llmrun recorded them, or all from the cache)")
    ax.set_title(f"pace per API key ({len(data.keys)} key(s))")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _pace_events(ax: Any, data: RunData, shown: list[str], xlabel: str) -> None:
    """What run.log says of each drawn key: its learnt pace (dashed), pauses and retirement."""
    origin = data.timeline.origin
    if origin is None or not data.pace_events:
        return
    scale = 3600 if xlabel.startswith("hours") else 60 if xlabel.startswith("minutes") else 1
    colors = dict(zip(shown, COLORS * 2, strict=False))
    for n, key in enumerate(shown):
        mine = [e for e in data.pace_events if e.key == key]
        paces = [e for e in mine if e.kind == "pace" and e.value is not None]
        if paces:
            ax.step(
                [(e.when - origin) / scale for e in paces],
                [e.value for e in paces],
                where="post",
                color=colors[key],
                linestyle="--",
                linewidth=1,
                gid=f"data-key-pace-{n}",
            )
        for kind, marker in (("paused", "|"), ("retired", "x")):
            marks = [(e.when - origin) / scale for e in mine if e.kind == kind]
            if marks:
                ax.plot(
                    marks,
                    [0.0] * len(marks),
                    linestyle="none",
                    marker=marker,
                    markersize=9,
                    color=colors[key],
                    gid=f"data-key-{kind}-{n}",
                )

"""Showing a run's progress: a rich live display on a terminal, plain periodic lines otherwise
(logs, CI), or nothing. ``make_progress`` picks; the engine only calls the ``Progress``
protocol, once per tick (never per record)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal, Protocol

from rich.console import Console, RenderableType
from rich.progress import BarColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgressBar
from rich.table import Table
from rich.text import Text

from ..job.stats import BatchProgress, RunStats
from ..redaction import endpoint_name, printable
from ..terminal import SafeConsole

Mode = Literal["auto", "rich", "plain", "none"]


class Progress(Protocol):
    def start(self, title: str, stats: RunStats) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def log(self, message: str) -> None: ...

    def stop(self, stats: RunStats) -> None: ...


def make_progress(mode: Mode, console: Console | None = None) -> Progress:
    console = console or SafeConsole(stderr=True)
    if mode == "auto":
        mode = "rich" if console.is_terminal else "plain"
    if mode == "rich":
        return RichProgress(console)
    if mode == "plain":
        return PlainProgress(console)
    return NoProgress(console)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds + 0.5)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def error_kinds(stats: RunStats) -> str:
    """Failures by kind: retried ones (by code) and error rows (by type) of this run."""
    parts = []
    if stats.retries:
        codes = ", ".join(f"{c} {n:,}" for c, n in stats.retries_by_code.most_common(3))
        parts.append(f"retries {stats.retries:,} ({codes})")
    if stats.errors_by_code:
        codes = ", ".join(f"{c} {n:,}" for c, n in stats.errors_by_code.most_common(3))
        parts.append(f"error rows: {codes}")
    return "; ".join(parts)


SHOW_PARTS = 4  # batches named on the progress line; the rest are counted by state


def batch_states(batch: BatchProgress) -> str:
    """Each batch's state and counts (``p0001 in_progress 120/250 failed 2``), then records
    submitted, in batches and merged; without the time to the next poll."""
    shown = []
    for part in [p for p in batch.parts if p.state != "merged"][:SHOW_PARTS]:
        counts = dict(part.counts)
        total = counts.pop("total", None) or part.requests
        done = counts.pop("completed", None)
        text = f"{part.name} {part.state}"
        if done is not None:
            text += f" {done:,}/{total:,}"
        text += "".join(f" {k} {v:,}" for k, v in counts.items() if v)
        shown.append(text)
    merged = sum(p.state == "merged" for p in batch.parts)
    hidden = len(batch.parts) - merged - len(shown)
    if hidden > 0:
        shown.append(f"{hidden} more")
    if merged:
        shown.append(f"{merged} merged")
    return (
        f"batches: {', '.join(shown) or 'none yet'} | records submitted {batch.submitted:,}, "
        f"in batches {batch.in_batches:,}, merged {batch.merged:,}"
    )


def batch_line(batch: BatchProgress) -> str:
    line = batch_states(batch)
    if batch.next_poll_at is not None:
        line += f" | next poll in {fmt_duration(max(0.0, batch.next_poll_at - time.time()))}"
    return line


def status_line(stats: RunStats) -> str:
    total = "?" if stats.total is None else f"{stats.total:,}"
    pct = f" ({100 * stats.done / stats.total:.0f}%)" if stats.total else ""
    kinds = error_kinds(stats)
    return (
        (
            f"{stats.done:,}/{total}{pct} ok {stats.ok + stats.resumed_ok:,} "
            f"errors {stats.error + stats.resumed_error:,}{f' ({kinds})' if kinds else ''} | "
            f"{stats.rate():,.1f} req/s {stats.token_rate():,.0f} tok/s | "
            f"${stats.cost_usd + stats.resumed_cost_usd:,.4f} | in flight {stats.in_flight} | "
            f"elapsed {fmt_duration(stats.elapsed)} ETA {fmt_duration(stats.eta_s())}"
        )
        + ("" if stats.batch is None else " | " + batch_line(stats.batch))
        + (" | " + endpoints_line(stats) if len(stats.endpoints) > 1 else "")
    )


def endpoints_line(stats: RunStats) -> str:
    """Each endpoint of ``provider.base_urls`` with its answered and failed attempts so far."""
    return "endpoints: " + ", ".join(
        f"{endpoint_name(url)} {ok:,} ok {failed:,} failed"
        for url, (ok, failed) in stats.endpoints.items()
    )


class NoProgress:
    """Quiet: only warnings reach the console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def start(self, title: str, stats: RunStats) -> None:
        pass

    def update(self, stats: RunStats) -> None:
        pass

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def stop(self, stats: RunStats) -> None:
        pass


class PlainProgress(NoProgress):
    """One line every ``interval`` seconds: readable in a log file, easy to grep."""

    def __init__(self, console: Console, interval: float = 10.0) -> None:
        super().__init__(console)
        self.interval = interval
        self._last = 0.0
        self._title = ""
        self._batches = ""  # the batch states last printed

    def start(self, title: str, stats: RunStats) -> None:
        self._title = title
        self._last = time.monotonic()
        self.log(f"llmrun: {title}: started")

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        # A batch changing state is news now: batch runs wait minutes between events.
        batches = "" if stats.batch is None else batch_states(stats.batch)
        if now - self._last >= self.interval or batches != self._batches:
            self._batches = batches
            self._last = now
            self.log(f"llmrun: {self._title}: {status_line(stats)}")

    def stop(self, stats: RunStats) -> None:
        self.log(f"llmrun: {self._title}: {status_line(stats)}")


class _Bar(RichProgressBar):
    """The bar, and under it a line of its own (batch mode: the batches), never cut short."""

    extra: Text | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.extra is not None:
            yield self.extra


class RichProgress:
    """A live bar with counts, rates, tokens, errors and ETA; messages print above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar = _Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("[cyan]{task.fields[rates]}"),
            TextColumn("{task.fields[errors]}"),
            TextColumn("[green]{task.fields[cost]}"),
            TextColumn("[dim]{task.fields[eta]}"),
            console=console,
            refresh_per_second=8,
        )
        self._task: TaskID | None = None

    def start(self, title: str, stats: RunStats) -> None:
        self._task = self._bar.add_task(
            title, total=stats.total, counts="", rates="", errors="", cost="", eta=""
        )
        self._bar.start()
        self.update(stats)

    def update(self, stats: RunStats) -> None:
        if self._task is None:
            return
        total = "?" if stats.total is None else f"{stats.total:,}"
        errors = stats.error + stats.resumed_error
        kinds = error_kinds(stats)
        error_text = f"[red]{errors:,} errors" if errors else "0 errors"
        self._bar.update(
            self._task,
            total=stats.total,
            completed=stats.done,
            counts=f"{stats.done:,}/{total}",
            rates=f"{stats.rate():,.1f} req/s {stats.token_rate():,.0f} tok/s",
            errors=f"{error_text} ({kinds})" if kinds else error_text,
            cost=f"${stats.cost_usd + stats.resumed_cost_usd:,.4f}",
            eta=f"in flight {stats.in_flight} ETA {fmt_duration(stats.eta_s())}",
        )
        extra = [] if stats.batch is None else [batch_line(stats.batch)]
        if len(stats.endpoints) > 1:  # a pool of endpoints: how each is doing, live
            extra.append(endpoints_line(stats))
        if extra:  # provider states: plain Text, no markup, no control
            self._bar.extra = Text("\n").join(Text(printable(line)) for line in extra)

    def log(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)

    def stop(self, stats: RunStats) -> None:
        self.update(stats)
        self._bar.stop()


def summary_table(title: str, stats: RunStats, status: str, output: str) -> Table:
    """The table printed when a run ends."""
    table = Table(title=f"llmrun: {title} ({status})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    total = "?" if stats.total is None else f"{stats.total:,}"
    table.add_row("records", f"{stats.done:,} of {total} done")
    table.add_row("this run", f"{stats.ok:,} ok, {stats.error:,} errors, {stats.retries:,} retries")
    if stats.resumed_ok or stats.resumed_error:
        table.add_row(
            "resumed",
            f"{stats.resumed_ok:,} ok and {stats.resumed_error:,} errors "
            "were already in the output",
        )
    if stats.cached:
        table.add_row("cached", f"{stats.cached:,} from the call cache (not sent, not paid)")
    for code, n in stats.errors_by_code.most_common():
        table.add_row(f"  {code}", f"{n:,}")
    if stats.retries_by_code:
        retried = ", ".join(f"{c} {n:,}" for c, n in stats.retries_by_code.most_common())
        table.add_row("retried", retried)
    for url, (ok, failed) in stats.endpoints.items():
        table.add_row("endpoint", f"{endpoint_name(url)}: {ok:,} ok, {failed:,} failed attempts")
    spend = f"${stats.cost_usd:,.4f} this run"
    if stats.resumed_cost_usd:
        spend += f", ${stats.cost_usd + stats.resumed_cost_usd:,.4f} in all"
    table.add_row("spend", spend)
    table.add_row("tokens", f"{stats.input_tokens:,} in, {stats.output_tokens:,} out")
    table.add_row("time", f"{fmt_duration(stats.elapsed)} ({stats.rate():,.1f} req/s)")
    table.add_row("output", output)
    return table

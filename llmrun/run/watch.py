"""How a run is ending, and the tasks that run beside any mode's work (direct calls, batches):
counting the records for the progress, the progress and manifest tick, and the signal handler.

The handler's first SIGINT/SIGTERM stops reading and lets calls in flight finish for up to
``run.drain_s`` seconds; a second one cancels them (the next run sends them again).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import anyio

from ..components import Loader, Writer
from ..errors import RunAborted
from ..job.manifest import Manifest, update_manifest
from ..job.stats import RunStats
from ..job.store import RunState
from ..recipe.selection import Selection
from .progress import Progress

TICK_S = 0.25
SYNC_EVERY_S = 5.0


class RunFlags:
    """How the run is ending, read by every mode's loop."""

    def __init__(self) -> None:
        self.stopping = False  # no new records
        self.abort: RunAborted | None = None
        self.budget = False  # the next call could have exceeded run.budget_usd
        self.signals = 0


async def count_total(loader: Loader, selection: Selection, stats: RunStats) -> None:
    """The number of records the run takes, when the loader can count cheaply and the
    selection allows knowing it (a filter, shard or fractional sample makes it unknown)."""
    count: Callable[[], int] | None = getattr(loader, "count", None)
    if count is None or not selection.needs_count():
        return
    total = await anyio.to_thread.run_sync(count, abandon_on_cancel=True)
    stats.total = selection.total(total)


async def tick(
    progress: Progress, stats: RunStats, writer: Writer, state: RunState, manifest: Manifest
) -> None:
    """The progress every TICK_S; the output handed to the disk and the manifest rewritten
    every SYNC_EVERY_S, and at the next tick after the batches' state changes (a batch created,
    polled or merged), so `llmrun status` shows a waiting run's batches as the display does.
    Batch state changes at most once a poll (seconds to minutes apart), so this adds few writes."""
    last_sync = anyio.current_time()
    last_batch = stats.batch
    while True:
        await anyio.sleep(TICK_S)
        progress.update(stats)
        if anyio.current_time() - last_sync >= SYNC_EVERY_S or stats.batch is not last_batch:
            last_sync = anyio.current_time()
            last_batch = stats.batch
            writer.sync()
            update_manifest(state, stats, manifest)


async def watch_signals(
    flags: RunFlags,
    progress: Progress,
    stats: RunStats,
    drain_s: float,
    stop: Callable[[], Any],
    stop_now: Callable[[], Any],
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            flags.signals += 1
            if flags.signals == 1:
                name = signal.Signals(signum).name
                progress.log(
                    f"{name}: finishing {stats.in_flight} call(s) in flight "
                    f"(up to {drain_s:g} s); press Ctrl-C again to stop now"
                )
                stop()
            else:
                progress.log("stopping now; calls in flight will be sent again next run")
                stop_now()

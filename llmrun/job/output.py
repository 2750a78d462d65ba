"""Where finished rows go: the writer plugin, the run's counts and the observers, in one step.

Every mode writes through one ``RowSink`` (direct mode from its writer task, batch mode when it
merges a batch's results), so a row is always counted and shown to observers exactly when it
reaches the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..components import Writer
from ..plugins import Observers
from .stats import RunStats


class RowSink:
    def __init__(self, writer: Writer, stats: RunStats, observers: Observers) -> None:
        self.writer = writer
        self.stats = stats
        self.observers = observers

    def write(self, rows: Sequence[dict[str, Any]], *, durable: bool = False) -> None:
        """Append rows (handed to the OS); ``durable`` also fsyncs them, for a caller that
        records elsewhere that they are written (the batch journal)."""
        self.writer.write(rows)
        if durable:
            self.writer.sync()
        wants_rows = self.observers.wants_records
        for row in rows:
            self.stats.count_row(row)
            if wants_rows:
                self.observers.call("record_done", row=row)

    def sync(self) -> None:
        self.writer.sync()

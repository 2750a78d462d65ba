"""``run.log`` in the state folder (``<output>.llmrun/run.log``): what happened in a run, one
plain line each, for the person who looks afterwards (the terminal's display is gone by then).

It sits in front of the run's progress display: every message the engine shows (warnings, key
retirements, ``--fresh``, signals, budget, batch steps) goes to both; the engine adds the error
rows, the pace changes and how the run ended. Lines are appended across runs, each stamped with
UTC time and a level. The file is written only once the run holds the output's lock (a refused
second run writes nothing); messages before that wait in a short buffer.

Text a server or the data controls reaches these lines (error messages): control characters are
escaped, so ``cat run.log`` cannot move a terminal's cursor or colour it; keys are redacted
before messages get here. Error rows are logged up to ``MAX_ERRORS`` a run (``llmrun status``
counts them all), so a run of 10^8 failures does not make a 10^8-line log.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..job.stats import RunStats
from .progress import Progress, status_line

MAX_ERRORS = 1000
MAX_EARLY = 100  # messages kept before the run starts
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _stamp() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def one_line(text: str) -> str:
    """``text`` on one line with every control character escaped (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class RunLog:
    """A ``Progress`` that also appends what it shows to ``path``."""

    def __init__(self, inner: Progress, path: Path) -> None:
        self.inner = inner
        self.path = path
        self._fh: IO[str] | None = None
        self._early: list[str] = []
        self._errors = 0

    # -- the Progress protocol ------------------------------------------------------------

    def start(self, title: str, stats: RunStats) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole run (closed in stop): lines come one at a time from many places.
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        resumed = stats.resumed_ok + stats.resumed_error
        self._write(
            "INFO", f"run of {title} started" + (f" ({resumed:,} rows kept)" if resumed else "")
        )
        for line in self._early:
            self._fh.write(line)
        self._early.clear()
        self.inner.start(title, stats)

    def update(self, stats: RunStats) -> None:
        self.inner.update(stats)

    def log(self, message: str) -> None:
        level, text = (
            ("WARNING", message[9:]) if message.startswith("warning: ") else ("INFO", message)
        )
        self._write(level, text)
        self.inner.log(message)

    def stop(self, stats: RunStats) -> None:
        self.inner.stop(stats)
        self._write("INFO", f"counts: {status_line(stats)}")
        if self._errors > MAX_ERRORS:
            self._write("INFO", f"{self._errors - MAX_ERRORS:,} more error row(s) not logged")
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- lines only the log gets ----------------------------------------------------------

    def note(self, message: str) -> None:
        """A line for the log alone (pace changes: too frequent for the terminal)."""
        self._write("INFO", message)

    def row(self, row: Mapping[str, Any]) -> None:
        """An error row, as ``id: type: message``."""
        if row.get("status") != "error":
            return
        self._errors += 1
        if self._errors > MAX_ERRORS:
            return
        error = row.get("error") or {}
        where = f" ({error['where']})" if error.get("where") else ""
        self._write(
            "ERROR",
            f"{row.get('id')}{where}: {error.get('type')}: {error.get('message')}"
            + (" (retryable)" if error.get("retryable") else ""),
        )

    def ended(self, status: str, reason: str | None) -> None:
        self._write("INFO", f"run ended: {status}" + (f": {reason}" if reason else ""))

    def _write(self, level: str, text: str) -> None:
        line = f"{_stamp()} {level} {one_line(text)}\n"
        if self._fh is not None:
            self._fh.write(line)
        elif len(self._early) < MAX_EARLY:
            self._early.append(line)

"""Counters of a run, kept by the engine's writer task and read by the progress display."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..redaction import endpoint_name


@dataclass
class BatchPart:
    """One batch as the display shows it: llmrun's part name, the provider's id and state."""

    name: str
    batch_id: str | None
    state: str  # the provider's state ("validating", "in_progress", ...), or llmrun's step
    requests: int
    counts: dict[str, int] = field(default_factory=dict)  # the provider's request counts


@dataclass
class BatchProgress:
    """Where batch mode stands: its batches, and its records submitted (in a batch created at
    the provider), in batches not merged yet, and merged into the output."""

    parts: list[BatchPart] = field(default_factory=list)
    submitted: int = 0
    in_batches: int = 0
    merged: int = 0
    next_poll_at: float | None = None  # unix time of the next poll, while waiting

    def to_json(self) -> dict[str, Any]:
        return {
            "parts": [vars(p) for p in self.parts],
            "submitted": self.submitted,
            "in_batches": self.in_batches,
            "merged": self.merged,
            "next_poll_at": self.next_poll_at,
        }


@dataclass
class RunStats:
    """What has happened so far. ``resumed_*`` count rows already in the output at start."""

    total: int | None = None  # records in the input (None until counted)
    resumed_ok: int = 0
    resumed_error: int = 0
    ok: int = 0
    error: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    cached: int = 0  # rows of this run answered from the call cache
    in_flight: int = 0
    cost_usd: float = 0.0  # this run's rows' cost_usd
    resumed_cost_usd: float = 0.0  # the cost of the rows already in the output
    errors_by_code: Counter[str] = field(default_factory=Counter)  # error rows by type
    retries_by_code: Counter[str] = field(default_factory=Counter)  # retried failures by code
    # provider.base_urls: endpoint -> [attempts answered ok, attempts failed] (live, the Caller's)
    endpoints: dict[str, list[int]] = field(default_factory=dict)
    batch: BatchProgress | None = None  # batch mode: fed by the batch runner
    started: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # tests fake it

    @property
    def written(self) -> int:
        return self.ok + self.error

    @property
    def done(self) -> int:
        return self.written + self.resumed_ok + self.resumed_error

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self) -> float:
        elapsed = self.elapsed
        return self.written / elapsed if elapsed > 0 else 0.0

    def token_rate(self) -> float:
        elapsed = self.elapsed
        return (self.input_tokens + self.output_tokens) / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def endpoint_counts(self) -> dict[str, dict[str, int]]:
        """By endpoint (shown without a password its URL may hold): answered, failed."""
        return {
            endpoint_name(url): {"ok": ok, "failed": failed}
            for url, (ok, failed) in self.endpoints.items()
        }

    def count_row(self, row: Mapping[str, Any]) -> None:
        if row["status"] == "ok":
            self.ok += 1
        else:
            self.error += 1
            self.errors_by_code[row["error"]["type"]] += 1
        cost = row.get("cost_usd")
        if cost:
            self.cost_usd += cost
        if row.get("cached"):
            self.cached += 1
            return  # its tokens were spent by an earlier run, not this one
        response = row.get("response")
        if response:
            usage = response.get("usage") or {}
            self.input_tokens += usage.get("input_tokens") or 0
            self.output_tokens += usage.get("output_tokens") or 0

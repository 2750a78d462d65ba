"""What a report shows, gathered from the output in one streaming pass with bounded memory.

Rows are read line by line; what is kept does not grow with the number of rows: time buckets
(coarsened when a run spans too long), reservoir samples of latencies and costs, the top few
slowest and most expensive rows, and the first failed ones. Every text here came from a server
or the input: it is kept as data and escaped where it is shown.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_BUCKETS = 4096  # time buckets kept before they are merged two by two
POINTS = 80  # time slots drawn: buckets are merged in groups to about this many
SAMPLE = 100_000  # latencies and costs kept for the distributions (a uniform sample)
TOP = 15  # rows in each "slowest" / "most expensive" / "failed" table
MAX_KEYS = 64  # keys told apart in the pace per key; the rest count as one
OTHER_KEYS = "other keys"
TEXT_CAP = 300  # characters of an id or message shown in a table
ROW_CAP = 8_000  # characters of a row's JSON kept for the report's row section


def parse_time(text: object) -> float | None:
    """Unix time of an ISO 8601 UTC stamp as rows hold them (None when it is not one)."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def clip(text: object, cap: int = TEXT_CAP) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= cap else text[: cap - 1] + "…"


@dataclass
class Bucket:
    """What happened within one time slot (rows by the time they finished)."""

    started: int = 0
    finished: int = 0
    ok: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)  # calls answered, by key fingerprint

    def add(self, other: Bucket) -> None:
        self.started += other.started
        self.finished += other.finished
        self.ok += other.ok
        self.retries += other.retries
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost
        self.errors.update(other.errors)
        self.keys.update(other.keys)


class Timeline:
    """Buckets of ``width`` seconds from the first time seen; the width doubles (and buckets
    merge) whenever more than MAX_BUCKETS would be needed, so a month-long run stays small."""

    def __init__(self, width: float = 0.01) -> None:
        self.width = width
        self.origin: float | None = None
        self.buckets: dict[int, Bucket] = {}

    def at(self, when: float) -> Bucket:
        if self.origin is None:
            self.origin = when
        if when < self.origin:  # rows are written in finish order; a start can be earlier
            shift = int((self.origin - when) // self.width) + 1
            self.origin -= shift * self.width
            self.buckets = {k + shift: b for k, b in self.buckets.items()}
        slot = int((when - self.origin) // self.width)
        while slot >= MAX_BUCKETS:
            self._coarsen()
            slot = int((when - self.origin) // self.width)
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = Bucket()
        return bucket

    def _coarsen(self) -> None:
        merged: dict[int, Bucket] = {}
        for slot, bucket in self.buckets.items():
            target = merged.setdefault(slot // 2, Bucket())
            target.add(bucket)
        self.buckets = merged
        self.width *= 2

    def series(self, points: int = POINTS) -> tuple[float, list[tuple[float, Bucket]]]:
        """The width of a drawn slot and (seconds since the first time, bucket) for every
        slot, empty ones included: about ``points`` of them, whatever the run's length."""
        if not self.buckets:
            return self.width, []
        slots = max(self.buckets) + 1
        group = max(1, -(-slots // points))
        out: list[tuple[float, Bucket]] = []
        for first in range(0, slots, group):
            merged = Bucket()
            for slot in range(first, min(slots, first + group)):
                bucket = self.buckets.get(slot)
                if bucket is not None:
                    merged.add(bucket)
            out.append((first * self.width, merged))
        return self.width * group, out


class Reservoir:
    """A uniform sample of at most ``size`` values from a stream (seeded: reports repeat)."""

    def __init__(self, size: int = SAMPLE) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.values[j] = value


@dataclass(order=True)
class RowRef:
    """A row shown in a table: where it is in the output (1-based line) and what to show."""

    key: float
    line: int
    id: str = field(compare=False)
    status: str = field(compare=False)
    error_type: str = field(compare=False)
    message: str = field(compare=False)
    latency_s: float | None = field(compare=False)
    cost_usd: float | None = field(compare=False)
    attempts: int = field(compare=False)
    json: str = field(compare=False)


class TopN:
    def __init__(self, n: int = TOP) -> None:
        self.n = n
        self.heap: list[RowRef] = []

    def offer(self, key: float, make: Any) -> None:
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, make(key))
        elif key > self.heap[0].key:
            heapq.heapreplace(self.heap, make(key))

    def rows(self) -> list[RowRef]:
        return sorted(self.heap, reverse=True)


@dataclass
class RunData:
    """Everything the report draws and lists."""

    output: Path
    rows: int = 0
    ok: int = 0
    error: int = 0
    damaged_lines: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # rows with a reply but no cost_usd
    errors_by_type: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)  # rows by the key that answered
    first_time: float | None = None
    last_time: float | None = None
    timeline: Timeline = field(default_factory=Timeline)
    latencies: Reservoir = field(default_factory=Reservoir)
    costs: Reservoir = field(default_factory=Reservoir)
    slowest: TopN = field(default_factory=TopN)
    costliest: TopN = field(default_factory=TopN)
    failed: list[RowRef] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    batches: list[dict[str, Any]] = field(default_factory=list)
    pace_events: list[PaceEvent] = field(default_factory=list)  # from run.log

    def percentiles(self) -> dict[str, float]:
        values = sorted(self.latencies.values)
        if not values:
            return {}
        out = {}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
            out[name] = values[min(len(values) - 1, int(q * len(values)))]
        out["max"] = values[-1]
        out["mean"] = sum(values) / len(values)
        return out


@dataclass(frozen=True)
class PaceEvent:
    """A change of a key's pace the run logged: its learnt limit, a pause or its retirement."""

    when: float
    key: str
    kind: str  # "pace" (value: requests/min, None for unpaced), "paused" (seconds), "retired"
    value: float | None


_STAMP = r"(?P<when>\d{4}-\d\d-\d\dT[\d:.]+Z) \w+ "
_KEY = r"(?P<key>key#[0-9a-f]{8}|no key)(?: at \S+)?"
_PACE_LINES = (
    ("pace", re.compile(_STAMP + r"pace of " + _KEY + r": \S+ -> (?P<value>[\d,.]+|unpaced) ")),
    ("paused", re.compile(_STAMP + _KEY + r" paused (?P<value>[\d.]+) s")),
    ("retired", re.compile(_STAMP + r"(?:warning: )?retired " + _KEY + r":")),
)
MAX_PACE_EVENTS = 100_000  # a run.log of 10^8 lines still makes a bounded report


def read_pace_events(log: Path) -> list[PaceEvent]:
    """The pace changes, pauses and retirements ``run.log`` holds (run/runlog.py), in order.
    The log is read line by line (a line is capped); what does not parse is passed over."""
    events: list[PaceEvent] = []
    if not log.is_file():
        return events
    with open(log, "rb") as fh:
        while len(events) < MAX_PACE_EVENTS:
            raw = fh.readline(4096)
            if not raw:
                break
            line = raw.decode("utf-8", "replace")
            for kind, pattern in _PACE_LINES:
                found = pattern.match(line)
                if found is None:
                    continue
                when = parse_time(found["when"])
                value = found.groupdict().get("value")
                number = None if value in (None, "unpaced") else float(value.replace(",", ""))
                if when is not None:
                    events.append(PaceEvent(when, found["key"], kind, number))
                break
    return events


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row) for every line; None for a line that is not a JSON object."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:
                yield number, None
                continue
            yield number, row if isinstance(row, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> int:
    number = _number(value)
    return int(number) if number is not None and number > 0 else 0


def gather(output: Path) -> RunData:
    """Read the output once and gather what the report shows."""
    data = RunData(output)
    for line, row in _rows(output):
        if row is None:
            data.damaged_lines += 1
            continue
        _add(data, line, row)
    return data


def _add(data: RunData, line: int, row: dict[str, Any]) -> None:
    data.rows += 1
    status = "ok" if row.get("status") == "ok" else "error"
    error = row.get("error") if isinstance(row.get("error"), dict) else {}
    assert isinstance(error, dict)
    error_type = clip(error.get("type") or "unknown", 60) if status == "error" else ""
    response = row.get("response") if isinstance(row.get("response"), dict) else None
    usage = (response or {}).get("usage")
    usage = usage if isinstance(usage, dict) else {}
    tokens_in, tokens_out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    cost = _number(row.get("cost_usd"))
    latency = _number(row.get("latency_s"))
    attempts = _count(row.get("attempts"))
    retries = max(0, attempts - 1)

    if status == "ok":
        data.ok += 1
    else:
        data.error += 1
        data.errors_by_type[error_type] += 1
    data.retries += retries
    data.input_tokens += tokens_in
    data.output_tokens += tokens_out
    if cost is not None:
        data.cost_usd += cost
        data.costs.add(cost)
    elif response is not None:
        data.unpriced += 1
    if latency is not None and latency >= 0:
        data.latencies.add(latency)

    finished = parse_time(row.get("finished_at"))
    started = parse_time(row.get("started_at"))
    if finished is not None:
        if started is not None and started <= finished:
            data.timeline.at(started).started += 1
        else:
            data.timeline.at(finished).started += 1  # no start known: count it as instant
        bucket = data.timeline.at(finished)
        bucket.finished += 1
        bucket.ok += status == "ok"
        bucket.retries += retries
        bucket.input_tokens += tokens_in
        bucket.output_tokens += tokens_out
        bucket.cost += cost or 0.0
        if status == "error":
            bucket.errors[error_type] += 1
        key = row.get("key")
        if isinstance(key, str) and key and not row.get("cached"):
            key = clip(key, 60)
            if key in data.keys or len(data.keys) < MAX_KEYS:
                data.keys[key] += 1
                bucket.keys[key] += 1
            else:  # a pool of thousands of keys (or a hostile file) stays a bounded report
                data.keys[OTHER_KEYS] += 1
                bucket.keys[OTHER_KEYS] += 1
        first = started if started is not None and started <= finished else finished
        data.first_time = first if data.first_time is None else min(data.first_time, first)
        data.last_time = finished if data.last_time is None else max(data.last_time, finished)

    def ref(key: float) -> RowRef:
        text = json.dumps(row, ensure_ascii=False, indent=1, default=str)
        return RowRef(
            key=key,
            line=line,
            id=clip(row.get("id")),
            status=status,
            error_type=error_type,
            message=clip(error.get("message")),
            latency_s=latency,
            cost_usd=cost,
            attempts=attempts,
            json=clip(text, ROW_CAP),
        )

    if latency is not None:
        data.slowest.offer(latency, ref)
    if cost is not None:
        data.costliest.offer(cost, ref)
    if status == "error" and len(data.failed) < TOP:
        data.failed.append(ref(0.0))

"""Adaptive mode's trade-offs, simulated in virtual time: minutes of traffic in seconds.

The real ``llmrun.run.limits.KeyPool`` paces ``concurrency`` workers, each taking records one at a
time, against a simulated server, under trio's ``MockClock`` (time jumps whenever every task
waits, so nothing here depends on this machine's speed). A request's answer comes after the
server's latency; a 429 at once; a refused request waits llmrun's own backoff (``backoff_s``)
and is sent again. What is left out is everything but the pace: no HTTP, no engine, no CPU.

Two kinds of server:
- *limited*: a token bucket of R requests/min that starts full and holds one second of it
  (as ``llmrun.testing.limits.ServerLimit``), unannounced (bare 429s, or 429s with a
  ``Retry-After`` of whole seconds), 50 ms latency, 64 workers. Measured: requests admitted
  over the first 60 s against R, and the share of requests answered 429 (the targets of
  ``rate_limits.py``: >= 90%, < 1%).
- *unlimited*: no limit at all, latency L, concurrency C, rounds x C records. Measured: the
  ideal time (rounds x L) over the time taken: what the slow start costs a remote endpoint
  without a limit (a local one skips it; see ``llmrun/run/limits.py``).

Usage: ``python benchmarks/adaptive_sim.py [--set NAME=VALUE ...]``; ``--set`` overrides a
constant of ``llmrun.run.limits`` (``SLOW_START_GAIN=2``) to compare designs. Needs trio (the
``bench`` or ``test`` extra). Prints one JSON line per scenario.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass

import anyio
import trio.testing

from llmrun.run import limits
from llmrun.run.calls import backoff_s

REFUSAL_S = 0.0005  # a 429's round trip: the server answers it at once


@dataclass
class Bucket:
    """R requests/min, holding ``burst_s`` of it, full at the start, refilled continuously."""

    per_minute: float
    burst_s: float = 1.0
    level: float = -1.0
    at: float = 0.0

    def wait_s(self) -> float:
        """Seconds until the next request would be admitted (``Retry-After``, rounded up)."""
        return float(max(1, math.ceil((1.0 - self.level) * 60.0 / self.per_minute)))

    def admit(self, now: float) -> bool:
        rate = self.per_minute / 60.0
        capacity = max(1.0, rate * self.burst_s)
        if self.level < 0:
            self.level = capacity
        self.level = min(capacity, self.level + (now - self.at) * rate)
        self.at = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False


@dataclass
class Outcome:
    admitted: list[float]  # when each admitted request arrived, from the start
    refused: int
    took_s: float


async def job(
    bucket: Bucket | None, latency_s: float, concurrency: int, n: int, retry_after: bool
) -> Outcome:
    pool = limits.KeyPool(("key",), adaptive=True)
    admitted: list[float] = []
    refused = 0
    records = iter(range(n))
    t0 = anyio.current_time()

    async def worker() -> None:
        nonlocal refused
        for _ in records:
            attempts = 0
            while True:
                lease = await pool.acquire(0)
                attempts += 1
                now = anyio.current_time()
                if bucket is None or bucket.admit(now - t0):
                    await anyio.sleep(latency_s)
                    admitted.append(now - t0)
                    pool.on_success(lease, {})
                    pool.release(lease, trusted=True)
                    break
                refused += 1
                wait = bucket.wait_s() if retry_after else None
                await anyio.sleep(REFUSAL_S)
                pool.release(lease, trusted=True)
                pool.on_rate_limited(lease, wait)
                await anyio.sleep(backoff_s(attempts, wait))

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return Outcome(admitted, refused, anyio.current_time() - t0)


def simulate(
    bucket: Bucket | None, latency_s: float, concurrency: int, n: int, retry_after: bool = False
) -> Outcome:
    random.seed(0)  # the backoff's jitter: the same figures on every run
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(
        job,
        bucket,
        latency_s,
        concurrency,
        n,
        retry_after,
        backend="trio",
        backend_options={"clock": clock},
    )


def limited(
    per_minute: float, retry_after: bool = False, window_s: float = 60.0
) -> dict[str, object]:
    n = int(per_minute * (window_s + 10) / 60)
    got = simulate(Bucket(per_minute), 0.05, 64, n, retry_after)
    first = min(got.admitted)
    in_window = sum(1 for t in got.admitted if first <= t < first + window_s)
    ratio = in_window * 60.0 / window_s / per_minute
    share = got.refused / (len(got.admitted) + got.refused)
    return {
        "server": f"limited {per_minute:g}/min" + (", Retry-After" if retry_after else ""),
        "achieved": round(ratio, 4),
        "answered_429": got.refused,
        "share_429": round(share, 5),
        "met": ratio >= 0.9 and share < 0.01,
    }


def unlimited(latency_s: float, concurrency: int, rounds: int) -> dict[str, object]:
    got = simulate(None, latency_s, concurrency, concurrency * rounds)
    return {
        "server": f"unlimited L={latency_s:g}s C={concurrency}",
        "records": concurrency * rounds,
        "of_ideal": round(rounds * latency_s / got.took_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(limits, name):
            parser.error(f"llmrun.run.limits has no {name}")
        setattr(limits, name, float(value))
    for retry_after in (False, True):
        for per_minute in (60, 300, 1200, 6000, 30000):
            print(json.dumps(limited(per_minute, retry_after)), flush=True)
    for latency_s, concurrency, rounds in ((0.2, 256, 100), (0.2, 512, 100), (2.0, 128, 20)):
        print(json.dumps(unlimited(latency_s, concurrency, rounds)), flush=True)


if __name__ == "__main__":
    main()

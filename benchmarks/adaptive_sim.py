"""Adaptive mode's trade-offs, simulated in virtual time: minutes of traffic in seconds.

The real ``llmrun.run.limits.KeyPool`` paces ``concurrency`` workers, each taking records one at a
time, against a simulated server, under trio's ``MockClock`` (time jumps whenever every task
waits, so nothing here depends on this machine's speed). A request's answer comes after the
server's latency; a 429 at once; a refused request waits llmrun's own backoff (``backoff_s``)
and is sent again. What is left out is everything but the pace: no HTTP, no engine, no CPU.

Three kinds of server:
- *limited*: a token bucket of R requests/min that starts full and holds one second of it
  (as ``llmrun.testing.limits.ServerLimit``), unannounced (bare 429s, or 429s with a
  ``Retry-After`` of whole seconds), 50 ms latency, 64 workers. Measured: requests admitted
  over the first 60 s against R, and the share of requests answered 429 (the targets of
  ``rate_limits.py``: >= 90%, < 1%).
- *unlimited*: no limit at all, latency L, concurrency C, rounds x C records. Measured: the
  ideal time (rounds x L) over the time taken: what the slow start costs a remote endpoint
  without a limit (a local one skips it; see ``llmrun/run/adaptive.py``).
- *noisy*: no limit, but a random share of requests (1%, 7.5%) refused with ``Retry-After: 1``
  whatever the pace (an overloaded provider, a gateway), 3,000 records, C=64, 20 ms. Measured:
  the time against the same job without faults and against ``run.adaptive: false`` (no pace).

*edge*: tests/test_limits.py's unannounced limit (1,800/min holding half a second, C=32, 300
records, 20 ms), passed by a small margin once the budget has drained. Measured: refusals.

A refused record waits its backoff without holding one of the ``concurrency`` slots (as the
Caller does: ``WAITING_PER_SLOT``).

Usage: ``python benchmarks/adaptive_sim.py [--set NAME=VALUE ...]``; ``--set`` overrides a
constant of ``llmrun.run.adaptive`` (``SLOW_START_GAIN=2``) to compare designs. Needs trio (the
``bench`` or ``test`` extra). Prints one JSON line per scenario.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass, field

import anyio
import trio.testing

from llmrun.run import adaptive, limits
from llmrun.run.calls import WAITING_PER_SLOT
from llmrun.wire.retry import backoff_s

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


@dataclass
class Noise:
    """Refuses ``share`` of the requests at random, whatever the pace (an overloaded provider
    or a gateway), with ``Retry-After: retry_after_s`` when set."""

    share: float
    retry_after_s: float | None = 1.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def refuses(self) -> bool:
        return self.rng.random() < self.share


async def job(
    bucket: Bucket | None,
    latency_s: float,
    concurrency: int,
    n: int,
    retry_after: bool,
    noise: Noise | None = None,
    local: bool = False,
    adaptive: bool = True,
) -> Outcome:
    pool = limits.KeyPool(("key",), adaptive=adaptive)
    # As the Caller: ``concurrency`` requests in flight; a refused record waits its backoff
    # without holding a slot (up to WAITING_PER_SLOT x concurrency of them).
    slots = anyio.CapacityLimiter(concurrency)
    admitted: list[float] = []
    refused = 0
    records = iter(range(n))
    t0 = anyio.current_time()

    async def worker() -> None:
        nonlocal refused
        for _ in records:
            attempts = 0
            while True:
                async with slots:
                    lease = await pool.acquire(0)
                    if lease.probe and local:
                        pool.local_endpoint(lease)
                    attempts += 1
                    now = anyio.current_time()
                    wait: float | None = None
                    if noise is not None and noise.refuses():
                        ok = False
                        wait = noise.retry_after_s
                    elif bucket is None or bucket.admit(now - t0):
                        ok = True
                    else:
                        ok = False
                        wait = bucket.wait_s() if retry_after else None
                    if ok:
                        await anyio.sleep(latency_s)
                        admitted.append(now - t0)
                        pool.on_success(lease, {})
                        pool.release(lease, trusted=True)
                        break
                    refused += 1
                    await anyio.sleep(REFUSAL_S)
                    pool.release(lease, trusted=True)
                    pool.on_rate_limited(lease, wait)
                await anyio.sleep(backoff_s(attempts, wait))

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency * (1 + WAITING_PER_SLOT)):
            tg.start_soon(worker)
    return Outcome(admitted, refused, anyio.current_time() - t0)


def simulate(
    bucket: Bucket | None,
    latency_s: float,
    concurrency: int,
    n: int,
    retry_after: bool = False,
    noise: Noise | None = None,
    local: bool = False,
    adaptive: bool = True,
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
        noise,
        local,
        adaptive,
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


def noisy(share: float, local: bool) -> dict[str, object]:
    """Random 429s (Retry-After: 1) at ``share``, no limit, 3,000 records, C=64, 20 ms, the
    default settings; against the same job without faults (records / time from the first
    request to the last answer), and against the unpaced job (``run.adaptive: false``) with
    the same faults, the best a pace can do: a record refused near the end waits its second
    whatever the pace, so with no CPU cost here the ratio to fault-free cannot pass 0.5 at 1%."""
    n, latency = 3000, 0.02
    clean = simulate(None, latency, 64, n, local=local)
    got = simulate(None, latency, 64, n, noise=Noise(share), local=local)
    unpaced = simulate(None, latency, 64, n, noise=Noise(share), adaptive=False)
    return {
        "server": f"random 429s {100 * share:g}%, Retry-After 1, no limit, "
        + ("local (default: no slow start)" if local else "remote (slow start)"),
        "took_s": round(got.took_s, 3),
        "fault_free_s": round(clean.took_s, 3),
        "of_fault_free": round(clean.took_s / got.took_s, 4),
        "of_unpaced": round(unpaced.took_s / got.took_s, 4),
        "answered_429": got.refused,
    }


def edge(retry_after: bool) -> dict[str, object]:
    """tests/test_limits.py's unannounced limit: 1,800/min holding half a second, 20 ms, C=32,
    300 records, passed by a small margin once the budget has drained (the trial's hard case:
    refused at a share like noise's)."""
    got = simulate(Bucket(1800, burst_s=0.5), 0.02, 32, 300, retry_after)
    return {
        "server": "limited 1800/min, half a second held, C=32, 300 records"
        + (", Retry-After" if retry_after else ""),
        "answered_429": got.refused,
        "took_s": round(got.took_s, 3),
        "ideal_s": round((300 - 15) / 30, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(adaptive, name):
            parser.error(f"llmrun.run.adaptive has no {name}")
        setattr(adaptive, name, float(value))
    for retry_after in (False, True):
        for per_minute in (60, 300, 1200, 6000, 30000):
            print(json.dumps(limited(per_minute, retry_after)), flush=True)
    for retry_after in (False, True):
        print(json.dumps(edge(retry_after)), flush=True)
    for latency_s, concurrency, rounds in ((0.2, 256, 100), (0.2, 512, 100), (2.0, 128, 20)):
        print(json.dumps(unlimited(latency_s, concurrency, rounds)), flush=True)
    for local in (True, False):
        for share in (0.01, 0.075):
            print(json.dumps(noisy(share, local)), flush=True)


if __name__ == "__main__":
    main()

"""Server-side rate limits and fault mixes for the fake OpenAI server.

``ServerLimit`` is a provider's rate limit: token buckets for requests and tokens per minute
that start full, hold ``burst_s`` seconds' worth and refill continuously (the way providers
describe theirs). A request over the limit gets a 429. Announced (the default), every answer
carries ``x-ratelimit-limit|remaining|reset-requests|tokens`` and a 429 carries
``retry-after-ms``; unannounced, nothing says what the limit is: a bare 429, or with
``retry_after`` one carrying ``Retry-After`` in whole seconds (as gateways without
rate-limit headers do).

A request's tokens are what the answer will report as usage (prompt words plus completion
words times ``n``), charged when the request arrives.

``fault_mix(rate, seed)`` returns a ``fault`` callback that misbehaves on about ``rate`` of the
requests, picked at random from every kind of transient failure a client must survive.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .openai_bodies import count_prompt_tokens, echo_reply

if TYPE_CHECKING:
    from .fake_openai import Fault, RecordedRequest


@dataclass
class _Bucket:
    per_minute: float
    capacity: float
    level: float
    at: float

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) * 60.0 / self.per_minute)


@dataclass
class ServerLimit:
    """Requests and/or tokens per minute, enforced per API key (or for all when no key)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_s: float = 1.0
    announce: bool = True
    retry_after: bool = False  # unannounced: a 429 still says when to come back
    latency_s: float = 0.0  # before an answer within the limit (a 429 is sent at once)
    clock: Callable[[], float] = time.monotonic
    allowed: int = 0
    limited: int = 0
    admitted: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens) let in
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _bucket(self, key: str, kind: str, per_minute: float, now: float) -> _Bucket:
        found = self._buckets.get((key, kind))
        if found is None:
            capacity = max(1.0, per_minute * self.burst_s / 60.0)
            found = self._buckets[(key, kind)] = _Bucket(per_minute, capacity, capacity, now)
        return found

    def check(self, request: RecordedRequest) -> Fault | None:
        """A 429 for a request over the limit; for one within it, the headers to add."""
        from .fake_openai import Fault

        if request.path != "/v1/chat/completions" or not isinstance(request.body, dict):
            return None
        key = request.headers.get("authorization", "")
        tokens = request_tokens(request.body)
        now = self.clock()
        headers: dict[str, str] = {}
        with self._lock:
            ok = True
            buckets: list[tuple[str, _Bucket, float]] = []
            if self.requests_per_minute:
                bucket = self._bucket(key, "requests", self.requests_per_minute, now)
                buckets.append(("requests", bucket, 1.0))
            if self.tokens_per_minute:
                bucket = self._bucket(key, "tokens", self.tokens_per_minute, now)
                buckets.append(("tokens", bucket, float(tokens)))
            # Take from every bucket or from none.
            for _, bucket, amount in buckets:
                bucket.level = min(
                    bucket.capacity, bucket.level + (now - bucket.at) * bucket.per_minute / 60.0
                )
                bucket.at = now
                ok = ok and amount <= bucket.level
            if ok:
                for _, bucket, amount in buckets:
                    bucket.level -= amount
                self.allowed += 1
                self.admitted.append((request.received_at, tokens))
            else:
                self.limited += 1
            wait = 0.0
            for kind, bucket, amount in buckets:
                headers[f"x-ratelimit-limit-{kind}"] = f"{bucket.per_minute:g}"
                headers[f"x-ratelimit-remaining-{kind}"] = str(int(bucket.level))
                headers[f"x-ratelimit-reset-{kind}"] = f"{bucket.reset_s():.3f}s"
                if amount > bucket.level:
                    wait = max(wait, (amount - bucket.level) * 60.0 / bucket.per_minute)
        if ok:
            return Fault(200, headers if self.announce else {}, delay_s=self.latency_s)
        if not self.announce:
            if self.retry_after:
                return Fault(429, {"retry-after": str(max(1, math.ceil(wait)))})
            return Fault(429)
        headers["retry-after-ms"] = str(max(1, round(wait * 1000)))
        return Fault(429, headers)


def request_tokens(body: dict[str, Any]) -> int:
    """The usage the fake server will report for this request."""
    messages = body.get("messages")
    prompt = count_prompt_tokens(messages) if isinstance(messages, list) else 0
    words = len(echo_reply(body).split())
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(limit, int) and limit < words:
        words = limit
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    return prompt + words * int(n or 1)


FAULT_KINDS = (
    "429",
    "429_retry_after",
    "429_retry_after_ms",
    "500",
    "503",
    "reset",
    "stall",
    "non_json",
    "truncated",
)


def fault_mix(
    rate: float, seed: int, *, stall_s: float = 5.0, kinds: tuple[str, ...] = FAULT_KINDS
) -> Callable[[RecordedRequest], Fault | None]:
    """A ``fault`` callback failing about ``rate`` of requests, each kind equally often.

    ``stall`` answers after ``stall_s`` (set the client's timeout below it); ``reset`` closes
    the connection after half the answer; ``truncated`` sends half the body with the full
    Content-Length; ``non_json`` is a 200 whose body is not JSON. ``chosen`` counts the kinds.
    """
    from .fake_openai import Fault

    rng = random.Random(seed)
    lock = threading.Lock()
    chosen: dict[str, int] = {}

    def fault(request: RecordedRequest) -> Fault | None:
        with lock:
            if rng.random() >= rate:
                return None
            kind = rng.choice(kinds)
            chosen[kind] = chosen.get(kind, 0) + 1
        if kind == "429":
            return Fault(429)
        if kind == "429_retry_after":
            return Fault(429, {"retry-after": "1"})
        if kind == "429_retry_after_ms":
            return Fault(429, {"retry-after-ms": "150"})
        if kind == "500":
            return Fault(500)
        if kind == "503":
            return Fault(503, {"retry-after": "0"})
        if kind == "reset":
            return Fault(200, truncate_body=True)
        if kind == "stall":
            return Fault(200, delay_s=stall_s)
        if kind == "non_json":
            return Fault(200, {"content-type": "application/json"}, b"<html>bad gateway</html>")
        return Fault(200, {"content-type": "application/json"}, b'{"id": "chatcmpl-x", "cho')

    fault.chosen = chosen  # type: ignore[attr-defined]
    return fault

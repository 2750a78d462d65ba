"""Retries, in one place: the failure taxonomy every provider shares (HTTP status and transport
faults -> CallError), how long the server asked us to wait, and the backoff between tries.

retryable  429, 408, 409, 5xx, timeouts, connection resets, truncated or non-JSON bodies
record     400/413/422 (invalid request, context length, content filter), an answer over the size
           caps, a request header holding CR/LF: an error row, no retry
key        401/403 and exhausted quota: this key is retired (the run stops when none is left)
run        404 (unknown model or endpoint): nothing will succeed, stop at once
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

import anyio
import httpx

from ..errors import CallError
from .bounds import AnswerTooLarge
from .ratelimit import bounded_wait


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``Retry-After`` given as
    seconds or as an HTTP date; bounded (``ratelimit.bounded_wait``): a hostile value never
    holds a record for ever."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return bounded_wait(float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return bounded_wait(float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return bounded_wait(email.utils.mktime_tz(parsed) - time.time())


def classify_http(
    status: int, message: str, headers: Mapping[str, str], *, code: str | None = None
) -> CallError:
    """The CallError for a non-2xx response. ``code`` is the provider's own error code, used to
    tell quota exhaustion (a key problem) from a plain rate limit."""
    wait = retry_after_s(headers)
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 429:
        if code in ("insufficient_quota", "billing_hard_limit_reached"):
            return CallError(text, kind="key", code="quota", status=status)
        return CallError(text, kind="retryable", code="rate_limit", status=status, retry_after=wait)
    if status in (401, 403):
        return CallError(text, kind="key", code="auth", status=status)
    if status == 404:
        return CallError(text, kind="run", code="not_found", status=status)
    if status in (408, 409, 425) or status >= 500:
        return CallError(
            text,
            kind="retryable",
            code="server_error" if status >= 500 else "transient",
            status=status,
            retry_after=wait,
        )
    lowered = message.lower()
    if "context" in lowered and ("length" in lowered or "window" in lowered):
        reason = "context_length"
    elif "content" in lowered and ("filter" in lowered or "policy" in lowered):
        reason = "content_filter"
    else:
        reason = "invalid_request"
    return CallError(text, kind="record", code=reason, status=status)


def classify_transport(exc: httpx.TransportError) -> CallError:
    """Timeouts, refused and reset connections: all retryable (the engine decides when a
    connection that never succeeds means the endpoint is wrong)."""
    if isinstance(exc, httpx.TimeoutException):
        return CallError(f"timed out ({type(exc).__name__})", kind="retryable", code="timeout")
    if isinstance(exc, httpx.ConnectError):
        return CallError(f"cannot connect: {exc}", kind="retryable", code="connect")
    if isinstance(exc, AnswerTooLarge):  # the same oversized answer would be paid again
        return CallError(f"answer refused: {exc}", kind="record", code="too_large")
    if isinstance(exc, httpx.LocalProtocolError):  # our request is malformed: it stays so
        return CallError(f"request refused: {exc}", kind="record", code="bad_request")
    return CallError(
        f"connection failed: {type(exc).__name__}: {exc}", kind="retryable", code="connection"
    )


def bad_body(detail: str, status: int) -> CallError:
    """A 2xx response whose body is not what the API documents (truncated, not JSON)."""
    return CallError(
        f"unreadable response body: {detail}", kind="retryable", code="bad_response", status=status
    )


BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


def backoff_s(attempt: int, retry_after: float | None) -> float:
    """How long a failed call waits before its next try: direct calls (run/calls.py) and batch
    API calls (batch/runner.py) both wait this long.

    The server's ``Retry-After`` when it sent one, exactly: it said when to come back, and the
    pace (run/adaptive.py) is what answers a real limit. Exponential backoff on top cost a
    record refused three times at random a quarter of a second more on average, and one
    refused four times a whole second: the end of a run waits for its unluckiest record
    (benchmarks/adaptive_sim.py's noisy servers). The OpenAI and Anthropic SDKs do the same
    (for waits up to a minute; a longer one is honoured here too).
    Without it, full-jitter exponential backoff."""
    if retry_after:
        return retry_after
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


# uvloop's timers count whole milliseconds on a clock it truncates to the millisecond and reads
# once a loop iteration, so a sleep may end up to about 1 ms early (measured: 19.19 ms for 20).
TIMER_TICK_S = 0.001


async def sleep_at_least(seconds: float) -> None:
    """Sleep until ``seconds`` have passed by ``time.monotonic``, whatever the loop's timers.
    A server that said "come back in 0.6 s" must not see the retry at 0.5999 s."""
    until = time.monotonic() + seconds
    await anyio.sleep(seconds)
    # A wait on the clock, not polling for another task's doing (what ASYNC110 is about).
    while (left := until - time.monotonic()) > 0:  # noqa: ASYNC110
        await anyio.sleep(max(left, TIMER_TICK_S))

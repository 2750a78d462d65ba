"""One record's call: pick a key, respect the pace, send, classify, retry with backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import anyio
import httpx

from .components import Provider, Transport
from .errors import CallError, RunAborted
from .failures import classify_transport
from .limits import KeyPool, RateLimiter
from .recipe import RunSettings
from .redaction import fingerprint
from .values import Prompt, Reply

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


@dataclass(slots=True)
class Outcome:
    reply: Reply
    attempts: int
    latency_s: float  # of the successful attempt


class NotSent(Exception):
    """The call was dropped before its first attempt went out: the run is stopping."""


class CallFailed(Exception):
    """The record's final failure, with how many attempts it took."""

    def __init__(self, error: CallError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


def backoff_s(attempt: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, never shorter than what the server asked for."""
    jitter = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
    return max(jitter, retry_after or 0.0)


class Caller:
    """Calls a provider for one prompt at a time, shared by every worker of a run."""

    def __init__(
        self,
        provider: Provider,
        transport: Transport,
        keys: KeyPool,
        limiter: RateLimiter,
        settings: RunSettings,
        *,
        warn: Callable[[str], None],
        on_retry: Callable[[CallError], None],
    ) -> None:
        self._provider = provider
        self._transport = transport
        self._keys = keys
        self._limiter = limiter
        self._settings = settings
        self._warn = warn
        self._on_retry = on_retry
        self._reached = False  # any HTTP answer at all: the endpoint exists
        # Until a key has had one answer, one request at a time uses it (the probe): a rejected
        # key, an unknown model or a wrong base_url then costs one call, not one per worker.
        self._trusted: set[str | None] = set()
        self._probes: dict[str | None, anyio.Event] = {}
        self._stopped: str | None = None  # set once a call raised RunAborted
        self._closing = False  # stopping: calls not sent yet never will be

    async def call(self, prompt: Prompt) -> Outcome:
        """The reply; CallFailed when the record must become an error row; RunAborted when
        nothing can succeed; NotSent when the run stops before the call went out."""
        attempts = 0
        probing = False  # this call holds its key's probe
        key: str | None = None
        try:
            while True:
                if self._stopped is not None:
                    raise RunAborted(self._stopped)
                if not probing:
                    key = self._keys.pick()
                    if key not in self._trusted:
                        waiting = self._probes.get(key)
                        if waiting is not None:
                            await waiting.wait()
                            continue  # the key may be retired by now: pick again
                        self._probes[key] = anyio.Event()
                        probing = True
                await self._limiter.acquire()
                if self._closing and attempts == 0:
                    raise NotSent  # it waited (key probe, pace) past the first Ctrl-C
                attempts += 1
                request = self._provider.build_request(prompt, key)
                started = time.monotonic()
                try:
                    response = await self._transport.send(request, self._settings.timeout_s)
                    self._reached = True
                    reply = self._provider.parse_response(response)
                except httpx.TransportError as exc:
                    error = classify_transport(exc)
                except CallError as exc:
                    error = exc
                else:
                    if probing:
                        probing = self._end_probe(key, trusted=True)
                    return Outcome(reply, attempts, time.monotonic() - started)
                if probing and error.kind != "key" and error.status is not None:
                    probing = self._end_probe(key, trusted=True)  # answered: the key works
                if error.kind == "key":
                    if probing:
                        probing = self._end_probe(key, trusted=False)
                    if not self._keys.retire(key, f"{error.message}"):
                        self._stop(self._keys.exhausted_message())
                    self._warn(f"retired {fingerprint(key or '')}: {error.message}")
                    attempts -= 1  # the record is not to blame for a bad key
                    continue
                if error.kind == "run":
                    self._stop(
                        f"{error.message} ({_where(request)}, model {self._provider.model!r}): "
                        "check provider.base_url and provider.model"
                    )
                if error.kind == "record":
                    raise CallFailed(error, attempts)
                if attempts > self._settings.max_retries:
                    if error.code == "connect" and not self._reached:
                        self._stop(
                            f"cannot reach the provider at {_where(request)} after {attempts} "
                            f"attempts: {error.message}; check provider.base_url"
                        )
                    raise CallFailed(error, attempts)
                self._on_retry(error)
                await anyio.sleep(backoff_s(attempts, error.retry_after))
        finally:
            if probing:
                self._end_probe(key, trusted=False)

    def close(self) -> None:
        """Send no more first attempts: calls not sent yet raise NotSent; calls already sent
        go on (retries included) so that they finish."""
        self._closing = True

    def _end_probe(self, key: str | None, *, trusted: bool) -> bool:
        """Release the key's probe (waiting calls go on); False, for ``probing = ...``."""
        if trusted:
            self._trusted.add(key)
        event = self._probes.pop(key, None)
        if event is not None:
            event.set()
        return False

    def _stop(self, message: str) -> NoReturn:
        """Raise RunAborted, and make every later call raise it too (before it sends)."""
        if self._stopped is None:
            self._stopped = message
        raise RunAborted(message)


def _where(request: httpx.Request) -> str:
    """The request's method and URL without the query (which might hold a key)."""
    return f"{request.method} {request.url.copy_with(query=None)}"

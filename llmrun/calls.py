"""One record's call: pick a key, respect the pace, send, classify, retry with backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

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

    async def call(self, prompt: Prompt) -> Outcome:
        """The reply; CallFailed when the record must become an error row; RunAborted when
        nothing can succeed."""
        attempts = 0
        while True:
            key = self._keys.pick()
            await self._limiter.acquire()
            attempts += 1
            request = self._provider.build_request(prompt, key)
            started = time.monotonic()
            try:
                response = await self._transport.send(request, self._settings.timeout_s)
                self._reached = True
                reply = self._provider.parse_response(response)
                return Outcome(reply, attempts, time.monotonic() - started)
            except httpx.TransportError as exc:
                error = classify_transport(exc)
            except CallError as exc:
                error = exc
            if error.kind == "key":
                if not self._keys.retire(key, f"{error.message}"):
                    raise RunAborted(self._keys.exhausted_message()) from None
                self._warn(f"retired {fingerprint(key or '')}: {error.message}")
                attempts -= 1  # the record is not to blame for a bad key
                continue
            if error.kind == "run":
                raise RunAborted(f"{error.message} (check provider.base_url and model)") from None
            if error.kind == "record":
                raise CallFailed(error, attempts)
            if attempts > self._settings.max_retries:
                if error.code == "connect" and not self._reached:
                    raise RunAborted(
                        f"cannot reach the provider after {attempts} attempts: "
                        f"{error.message}; check provider.base_url"
                    ) from None
                raise CallFailed(error, attempts)
            self._on_retry(error)
            await anyio.sleep(backoff_s(attempts, error.retry_after))

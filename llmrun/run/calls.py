"""One record's call: reserve budget, pick a key and wait for its pace, send, classify, retry.

The steps of ``Caller.call``, each attempt:

1. ``KeyPool.acquire``: the live key that can start soonest, its slot reserved and waited for
   (a key that has not answered yet is used by one request at a time: see ``limits``);
2. send; the answer (or the transport's failure) becomes a ``Reply`` or a ``CallError``;
3. by the error's kind: ``key`` retires the key and tries another (the record is not to blame),
   ``run`` stops the run, ``record`` makes an error row, ``retryable`` backs off (full jitter,
   never sooner than the server's Retry-After) and tries again up to ``run.max_retries``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import anyio
import httpx

from ..components import Provider, Transport
from ..errors import CallError, RunAborted
from ..recipe.model import RunSettings
from ..recipe.tokens import estimate
from ..values import Prompt, Reply
from ..wire.retry import classify_transport
from .budget import Budget
from .limits import KeyPool, Lease, local_host

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


@dataclass(slots=True)
class Outcome:
    reply: Reply
    attempts: int
    latency_s: float  # of the successful attempt


class NotSent(Exception):
    """The call was dropped before its first attempt went out: the run is stopping (a signal,
    or the budget would be exceeded)."""


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
        settings: RunSettings,
        *,
        warn: Callable[[str], None],
        on_retry: Callable[[CallError], None],
        budget: Budget | None = None,
        cost_of: Callable[[Reply], float | None] = lambda reply: None,
        on_budget: Callable[[], None] = lambda: None,
        count_tokens: bool = False,
    ) -> None:
        self._provider = provider
        self._transport = transport
        self._keys = keys
        self._settings = settings
        self._warn = warn
        self._on_retry = on_retry
        self._budget = budget
        self._cost_of = cost_of
        self._on_budget = on_budget
        self._count_tokens = count_tokens  # a token limit is set: estimate each request
        # The provider's rate-limit headers in the x-ratelimit-* names (see Provider).
        self._limit_headers: Callable[[httpx.Headers], Mapping[str, str]] | None = getattr(
            provider, "rate_limit_headers", None
        )
        self._reached = False  # any HTTP answer at all: the endpoint exists
        self._stopped: str | None = None  # set once a call raised RunAborted
        self._closing = False  # stopping: calls not sent yet never will be

    async def call(self, prompt: Prompt) -> Outcome:
        """The reply; CallFailed when the record must become an error row; RunAborted when
        nothing can succeed; NotSent when the run stops before the call went out."""
        reserved = 0.0
        if self._budget is not None:
            if self._closing:
                raise NotSent  # stopping (a signal, or the budget already reached)
            reserved = self._budget.worst_case(prompt)
            if not self._budget.reserve(reserved):
                self._on_budget()
                raise NotSent
        cost: float | None = None
        try:
            outcome = await self._attempts(prompt)
            cost = self._cost_of(outcome.reply)
            if cost is None:
                cost = reserved  # no usage reported: count the worst case
            return outcome
        finally:
            if self._budget is not None:
                self._budget.settle(reserved, cost)

    async def _attempts(self, prompt: Prompt) -> Outcome:
        attempts = 0
        tokens = sum(estimate(prompt)) if self._count_tokens else 0
        while True:
            if self._stopped is not None:
                raise RunAborted(self._stopped)
            lease = await self._keys.acquire(tokens)
            if self._closing and attempts == 0:
                self._keys.release(lease, trusted=False)
                raise NotSent  # it waited (key probe, pace) past the first Ctrl-C
            attempts += 1
            error: CallError | None = None
            answered = False  # the server answered (any status): the key reached it
            try:
                request = self._provider.build_request(prompt, lease.key)
                if lease.probe and local_host(request.url.host):
                    self._keys.local_endpoint(lease)
                started = time.monotonic()
                try:
                    response = await self._transport.send(request, self._settings.timeout_s)
                    self._reached = answered = True
                    reply = self._provider.parse_response(response)
                except httpx.TransportError as exc:
                    error = classify_transport(exc)
                except CallError as exc:
                    error = exc
                else:
                    headers: Mapping[str, str] = response.headers
                    if self._limit_headers is not None:
                        headers = self._limit_headers(response.headers)
                    self._keys.on_success(lease, headers)
                    self._keys.settle_tokens(lease, reply.usage.total_tokens or None)
                    return Outcome(reply, attempts, time.monotonic() - started)
            finally:
                # Any answer but a rejection of the key shows that the key works.
                rejected = error is not None and error.kind == "key"
                self._keys.release(lease, trusted=answered and not rejected)
            if error.kind == "key":
                self._retire(error, lease)
                attempts -= 1  # the record is not to blame for a bad key: try another now
                continue
            self._handle(error, request, lease, attempts)
            self._on_retry(error)
            await anyio.sleep(backoff_s(attempts, error.retry_after))

    def _retire(self, error: CallError, lease: Lease) -> None:
        if not self._keys.retire(lease, error.message):
            self._stop(self._keys.exhausted_message())
        self._warn(f"retired {lease.state.name}: {error.message}")

    def _handle(
        self, error: CallError, request: httpx.Request, lease: Lease, attempts: int
    ) -> None:
        """Act on a failed attempt: return when it is to be retried, else raise."""
        if error.kind == "run":
            self._stop(
                f"{error.message} ({_where(request)}, model {self._provider.model!r}): "
                "check provider.base_url and provider.model"
            )
        if error.kind == "record":
            raise CallFailed(error, attempts)
        if error.code == "rate_limit":
            self._keys.on_rate_limited(lease, error.retry_after)
        if attempts > self._settings.max_retries:
            if error.code == "connect" and not self._reached:
                self._stop(
                    f"cannot reach the provider at {_where(request)} after {attempts} "
                    f"attempts: {error.message}; check provider.base_url"
                )
            raise CallFailed(error, attempts)

    def close(self) -> None:
        """Send no more first attempts: calls not sent yet raise NotSent; calls already sent
        go on (retries included) so that they finish."""
        self._closing = True

    def _stop(self, message: str) -> NoReturn:
        """Raise RunAborted, and make every later call raise it too (before it sends)."""
        if self._stopped is None:
            self._stopped = message
        raise RunAborted(message)


def _where(request: httpx.Request) -> str:
    """The request's method and URL without the query (which might hold a key)."""
    return f"{request.method} {request.url.copy_with(query=None)}"

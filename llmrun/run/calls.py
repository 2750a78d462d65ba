"""One record's call: reserve budget, pick a key and wait for its pace, send, classify, retry.

With a call cache (``cache.py``), ``Caller.call`` first looks the request up: a reply found is
returned at once (``Outcome.cached``), with no budget reserved, no key drawn and no pace waited
for; a reply received is stored. The steps of ``Caller.call`` otherwise, each attempt:

1. ``KeyPool.acquire``: the live key that can start soonest, its slot reserved and waited for
   (a key that has not answered yet is used by one request at a time: see ``limits``);
2. send; the answer (or the transport's failure) becomes a ``Reply`` or a ``CallError``;
3. by the error's kind: ``key`` retires the key and tries another (the record is not to blame),
   ``run`` stops the run, ``record`` makes an error row, ``retryable`` backs off (full jitter,
   never sooner than the server's Retry-After) and tries again up to ``run.max_retries``.
"""

from __future__ import annotations

import hashlib
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
from ..redaction import endpoint_name
from ..values import Prompt, Reply
from ..wire.retry import backoff_s, classify_transport, sleep_at_least
from .budget import Budget
from .cache import STAND_IN_KEY, CallCache
from .keystate import Lease
from .limits import KeyPool, local_host
from .slots import Slots

# A record waiting out its backoff (a Retry-After of a second, say) holds no slot of
# run.concurrency, so the engine runs this many more workers per slot for such records: at
# 7.5% of requests refused for a second, 64 slots see about 190 records waiting at once.
WAITING_PER_SLOT = 4


@dataclass(slots=True)
class Outcome:
    reply: Reply
    attempts: int
    latency_s: float  # of the successful attempt (of the lookup, for a cached reply)
    cached: bool = False  # the reply came from the call cache: nothing was sent or paid
    key: str | None = None  # the fingerprint of the key that made the call (redaction.py)


@dataclass(frozen=True)
class SharedCalls:
    """What several runs in one process share so that together they keep one recipe's limits
    (``llmrun serve``): the transport, the keys with their pace, and the budget."""

    transport: Transport
    keys: KeyPool
    budget: Budget | None = None


class NotSent(Exception):
    """The call was dropped before its first attempt went out: the run is stopping (a signal,
    or the budget would be exceeded)."""


class CallFailed(Exception):
    """The record's final failure, with how many attempts it took."""

    def __init__(self, error: CallError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


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
        note: Callable[[str], None] = lambda message: None,
        budget: Budget | None = None,
        cost_of: Callable[[Reply], float | None] = lambda reply: None,
        on_budget: Callable[[], None] = lambda: None,
        count_tokens: bool = False,
        cache: CallCache | None = None,
        on_waiting: Callable[[int], None] = lambda change: None,
    ) -> None:
        self._provider = provider
        self._transport = transport
        self._keys = keys
        self._settings = settings
        self._warn = warn
        self._note = note  # the run log's lines (pace changes)
        self._on_retry = on_retry
        self._budget = budget
        self._cost_of = cost_of
        self._on_budget = on_budget
        self._count_tokens = count_tokens  # a token limit is set: estimate each request
        self._cache = cache
        # +1 when a call starts waiting without a slot (a backoff, an identical request's
        # reply), -1 when it stops: the engine lets another record in meanwhile.
        self._on_waiting = on_waiting
        # Cache keys of requests being sent: an identical one waits for that reply.
        self._sending: dict[bytes, anyio.Event] = {}
        # The provider's rate-limit headers in the x-ratelimit-* names (see Provider).
        self._limit_headers: Callable[[httpx.Headers], Mapping[str, str]] | None = getattr(
            provider, "rate_limit_headers", None
        )
        self._reached = False  # any HTTP answer at all: the endpoint exists
        self._first_sent: float | None = None  # when the first request went out
        # provider.base_urls: requests built for the provider's base_url go to each in turn.
        self._base_url = str(getattr(provider, "base_url", "") or "").rstrip("/")
        self.endpoint_counts: dict[str, list[int]] = {}  # endpoint -> [ok, failed attempts]
        self._slots: Slots | None = None  # calls in flight: run.concurrency
        self._stopped: str | None = None  # set once a call raised RunAborted
        self._closing = False  # stopping: calls not sent yet never will be

    @property
    def workers(self) -> int:
        """How many records may be under way at once: ``run.concurrency`` in flight, and
        WAITING_PER_SLOT times that waiting to retry."""
        return self._settings.concurrency * (1 + WAITING_PER_SLOT)

    async def call(
        self, prompt: Prompt, *, provider: Provider | None = None, sample: int = 0
    ) -> Outcome:
        """The reply; CallFailed when the record must become an error row; RunAborted when
        nothing can succeed; NotSent when the run stops before the call went out.

        ``provider``: a step's own (the recipe's provider with other options, the model say),
        sent with this run's keys, pace and budget. ``sample``: the how-many-th of several
        samples of one request (a step's ``n``), each its own entry in the call cache."""
        provider = provider or self._provider
        key: bytes | None = None
        if self._cache is not None:
            started = time.monotonic()
            # Built with a stand-in key: the lookup needs no lease, and no key reaches the cache.
            key = self._cache.key(provider.build_request(prompt, STAND_IN_KEY))
            if key is not None and sample:
                key = hashlib.sha256(b"sample %d " % sample + key).digest()
            if key is not None:
                found = await self._cache.get(key)
                if found is None and key in self._sending:
                    # The same request is on its way for another record: its reply, once in
                    # the cache, answers this one too (two identical records, one call).
                    self._on_waiting(1)
                    try:
                        await self._sending[key].wait()
                    finally:
                        self._on_waiting(-1)
                    found = await self._cache.get(key)
                if found is not None:
                    return Outcome(found, 0, time.monotonic() - started, cached=True)
        if key is None or self._cache is None or key in self._sending:
            # No cache, or the first one sent failed (an error is not cached): send it here.
            if self._budget is None:  # nothing to reserve: one coroutine fewer a call
                outcome = await self._attempts(prompt, provider)
                self._cost_of(outcome.reply)  # sees every reply (llmrun serve counts them)
                return outcome
            return await self._paid(prompt, provider)
        self._sending[key] = sent = anyio.Event()
        try:
            outcome = await self._paid(prompt, provider)
            await self._cache.put(key, outcome.reply)
            return outcome
        finally:
            del self._sending[key]
            sent.set()

    async def _paid(self, prompt: Prompt, provider: Provider) -> Outcome:
        """The call sent, within the budget."""
        budget = self._budget
        reserved = 0.0

        def reserve() -> None:
            """Hold the call's worst case: once it has a slot (records waiting for one
            reserve nothing), before it is sent."""
            nonlocal reserved
            assert budget is not None
            if self._closing:
                raise NotSent  # stopping (a signal, or the budget already reached)
            amount = budget.worst_case(prompt)
            if not budget.reserve(amount):
                self._on_budget()
                raise NotSent
            reserved = amount

        cost: float | None = None
        try:
            outcome = await self._attempts(prompt, provider, None if budget is None else reserve)
            cost = self._cost_of(outcome.reply)
            if cost is None:
                cost = reserved  # no usage reported: count the worst case
            return outcome
        finally:
            if budget is not None:
                budget.settle(reserved, cost)

    async def _attempts(
        self, prompt: Prompt, provider: Provider, reserve: Callable[[], None] | None = None
    ) -> Outcome:
        attempts = 0
        tokens = sum(estimate(prompt)) if self._count_tokens else 0
        if self._slots is None:
            self._slots = Slots(self._settings.concurrency)
        while True:
            if self._stopped is not None:
                raise RunAborted(self._stopped)
            async with self._slots:  # a slot while sending, not while backing off
                if reserve is not None:
                    reserve()
                    reserve = None
                lease = await self._keys.acquire(tokens)
                if self._closing and attempts == 0:
                    self._keys.release(lease, trusted=False)
                    raise NotSent  # it waited (key probe, pace) past the first Ctrl-C
                attempts += 1
                error: CallError | None = None
                answered = False  # the server answered (any status): the key reached it
                spent = False  # the answer says the key's budget is used up
                headers: Mapping[str, str] = {}
                try:
                    request = provider.build_request(prompt, lease.key)
                    if lease.state.endpoint is not None:
                        request = _retarget(request, self._base_url, lease.state.endpoint)
                    if lease.probe and local_host(request.url.host):
                        self._keys.local_endpoint(lease)
                    started = time.monotonic()
                    if self._first_sent is None:
                        self._first_sent = started
                    try:
                        response = await self._transport.send(request, self._timeout(started))
                        self._reached = answered = True
                        headers = response.headers
                        if self._limit_headers is not None:
                            headers = self._limit_headers(response.headers)
                        reply = provider.parse_response(response)
                    except httpx.TransportError as exc:
                        error = classify_transport(exc)
                    except CallError as exc:
                        error = exc
                        spent = answered and _spent(headers)
                    else:
                        self._count_endpoint(lease, 0)
                        self._keys.on_success(lease, headers)
                        if self._keys.pooled and self._keys.answers_again(lease):
                            self._warn(f"endpoint {_shown(lease)} answers again")
                        self._keys.settle_tokens(lease, reply.usage.total_tokens or None)
                        return Outcome(
                            reply,
                            attempts,
                            time.monotonic() - started,
                            key=lease.state.fingerprint,
                        )
                finally:
                    # Any answer but a rejection of the key shows that the key works.
                    rejected = error is not None and error.kind == "key"
                    self._keys.release(lease, trusted=answered and not rejected)
            if error.kind == "key":
                self._retire(error, lease)
                attempts -= 1  # the record is not to blame for a bad key: try another now
                continue
            self._count_endpoint(lease, 1)
            if error.code in ("connect", "connection", "timeout") and self._keys.endpoint_failed(
                lease
            ):
                self._warn(
                    f"endpoint {_shown(lease)} set aside: {error.message}; tried again in a while"
                )
            if self._silent(error, request):
                continue  # a first timeout with nothing answered yet: once more, at once
            self._handle(error, request, lease, attempts, spent)
            self._on_retry(error)
            self._on_waiting(1)
            try:
                await sleep_at_least(backoff_s(attempts, error.retry_after))
            finally:
                self._on_waiting(-1)

    def _count_endpoint(self, lease: Lease, which: int) -> None:
        endpoint = lease.state.endpoint
        if endpoint is not None:
            counts = self.endpoint_counts.get(endpoint)
            if counts is None:
                counts = self.endpoint_counts[endpoint] = [0, 0]
            counts[which] += 1

    def _timeout(self, started: float) -> float:
        """The read timeout: ``run.timeout_s``, or until 2 x that after the first request went
        out while nothing has answered yet (a server that never answers stops the run then)."""
        timeout = self._settings.timeout_s
        if self._reached or self._first_sent is None:
            return timeout
        return max(0.0, min(timeout, self._first_sent + 2 * timeout - started))

    def _silent(self, error: CallError, request: httpx.Request) -> bool:
        """True to retry a timeout at once while nothing has answered; stop the run once
        2 x run.timeout_s have passed since the first request without any answer."""
        if error.code != "timeout" or self._reached or self._first_sent is None:
            return False
        waited = time.monotonic() - self._first_sent
        if waited < 2 * self._settings.timeout_s * 0.99:
            return True
        endpoints = self._keys.endpoints if self._keys.pooled else ()
        if endpoints:  # each was tried (a key owing its probe goes first): name them all
            where = f"any of the {len(endpoints)} endpoints ({', '.join(endpoints)})"
            check = "provider.base_urls (or provider.endpoints) and that the servers are up"
        else:
            where, check = _where(request), "provider.base_url and that the server is up"
        self._stop(
            f"no answer from {where} in {waited:.3g} s (run.timeout_s is "
            f"{self._settings.timeout_s:g}): the server accepts connections but never "
            f"answers; check {check}"
        )

    def _retire(self, error: CallError, lease: Lease) -> None:
        if not self._keys.retire(lease, error.message):
            self._stop(self._keys.exhausted_message())
        self._warn(f"retired {lease.state.name}: {error.message}")

    def _handle(
        self, error: CallError, request: httpx.Request, lease: Lease, attempts: int, spent: bool
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
            state = lease.state
            before, held = state.learnt.per_minute, state.paused_until
            self._keys.on_rate_limited(lease, error.retry_after, spent=spent)
            after = state.learnt.per_minute
            if after != before:
                self._note(
                    f"pace of {state.name}: {_per_min(before)} -> {_per_min(after)} "
                    "requests/min after a 429"
                )
            if error.retry_after and state.paused_until > held:
                # Only a key shown spent is held (limits.py); a lone 429's Retry-After delays
                # its own request, which is no pause of the key for the log and the report.
                self._note(f"{state.name} paused {error.retry_after:g} s (Retry-After)")
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


def _spent(headers: Mapping[str, str]) -> bool:
    """``x-ratelimit-remaining-requests|tokens`` at 0: the key's budget is used up."""
    for kind in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-remaining-{kind}")
        if value is not None:
            try:
                if float(value) < 1:
                    return True
            except ValueError:
                continue
    return False


def _retarget(request: httpx.Request, base: str, endpoint: str) -> httpx.Request:
    """The request sent to ``endpoint`` instead of the provider's ``base`` URL."""
    url = str(request.url)
    endpoint = endpoint.rstrip("/")
    if endpoint == base or not base or not url.startswith(base):
        return request
    target = httpx.URL(endpoint + url[len(base) :])
    headers = httpx.Headers(request.headers)
    if "host" in headers:
        headers["host"] = target.netloc.decode("ascii")
    return httpx.Request(request.method, target, headers=headers, content=request.content)


def _shown(lease: Lease) -> str:
    """The lease's endpoint as shown everywhere else (no user or password in it)."""
    return endpoint_name(lease.state.endpoint or "")


def _where(request: httpx.Request) -> str:
    """The request's method and URL without the query (which might hold a key)."""
    return f"{request.method} {request.url.copy_with(query=None)}"


def _per_min(rate: float | None) -> str:
    return "unpaced" if rate is None else f"{rate:,.1f}"

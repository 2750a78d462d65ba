"""Pacing calls: which key a request uses, when it may start, and how the pace adapts.

Every key has its own state (``KeyState``): request and token paces from the recipe's limits,
an adaptive pace learnt from 429s and ``x-ratelimit-*`` headers, a pause the server asked for
(``Retry-After``), and whether it has answered once yet (until then one request at a time uses
it, so a wrong key, model or URL costs one call). ``KeyPool.acquire`` picks the live key that can
start soonest, reserves its slot, and waits for it.

Paces space starts evenly rather than letting a full bucket burst at start-up: a limit of R per
minute gives one start every 60/R s (for tokens, a request of T tokens holds the next one back
T * 60/R s), so no minute holds more than the limit, counted over any window, from the first
request on. A token estimate is corrected by the usage the reply reports.

The adaptive pace (how an answer moves it, and telling a limit from noise) is in
``adaptive.py``.

A local endpoint (``local_host``: loopback, a private network, an in-process transport) gets
no slow start unless ``run.adaptive: true`` is written out: such a server (vLLM, llama.cpp,
a proxy, the mock) queues rather than refuses, and the slow start would only cost its first
seconds; a 429 from it still slows the key down. The simulation in
``benchmarks/adaptive_sim.py`` measures these trade-offs in virtual time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Mapping

import anyio

from ..errors import RunAborted
from ..recipe.model import Endpoint, Recipe
from ..redaction import endpoint_name
from ..wire.retry import TIMER_TICK_S
from .adaptive import START_RATE, read_headers, refused, succeeded
from .keystate import KeyState, Lease, key_state

# A pool of endpoints (provider.base_urls): failures in a row that set one aside, and for how
# long before one request tries it again.
ENDPOINT_FAILURES = 3
REPROBE_S = 10.0
# A start is reserved at most this far ahead: a request waiting longer looks again later, so
# token estimates given back and pace changes apply to the requests already waiting.
HORIZON_S = 0.05
# Waits shorter than this are not worth a timer (and a float-sized one might never pass).
MIN_SLEEP_S = 1e-6


class KeyPool:
    """API keys, each with its own limits; the run stops when every key is retired."""

    def __init__(
        self,
        keys: tuple[str, ...],
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        adaptive: bool = False,
        slow_start_local: bool = False,
        endpoints: tuple[Endpoint, ...] = (),
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        # Each endpoint (a replica, a region) has its own capacity and quota: every limit and
        # pace is per key and endpoint; one of provider.endpoints may bring its own keys and
        # limits.
        self.states = [
            key_state(key, endpoint, requests_per_minute, tokens_per_minute, adaptive)
            for endpoint in (endpoints or (None,))
            for key in (endpoint.api_keys if endpoint and endpoint.api_keys else keys) or (None,)
        ]
        self.pooled = len(endpoints) > 1
        self._failures: dict[str | None, int] = {}  # endpoint -> failures since its last answer
        self._aside: set[str | None] = set()  # endpoints set aside that have not answered since
        self._slow_start_local = slow_start_local  # run.adaptive: true, written out
        self._clock = clock  # a test's own clock, to feed answers at chosen times
        for state in self.states:
            if adaptive and not state.limit_given:
                # Nothing known about the limit: probe upward from a modest rate rather than
                # send `concurrency` requests at once (past a small limit, most would be
                # refused).
                state.learnt.set_rate(START_RATE * 60.0)
                state.slow_start = True

    # -- choosing and waiting ----------------------------------------------------------------

    async def acquire(self, tokens: int) -> Lease:
        """Reserve the next start on the key that can start soonest, and wait for it."""
        states = self.states
        if len(states) == 1 and states[0].trusted and states[0].retired is None:
            # One key that has answered, free to start now: what the loop below decides for
            # it, without building its lists (most runs; ~2% of a request's CPU).
            state = states[0]
            now = self._clock()
            start = state.ready_at(now)  # paused_until included
            if start <= now and state.down_until <= now:
                return _reserve(state, tokens, start, now)
        while True:
            # No lock: nothing below awaits, so on one event loop this choice is atomic (a
            # lock would cost every request two passes of the loop).
            live = [s for s in self.states if s.retired is None]
            if not live:
                raise RunAborted(self.exhausted_message())
            now = self._clock()
            up = [s for s in live if s.down_until <= now]
            if not up:  # every endpoint set aside: wait for the first to be tried again
                await anyio.sleep(min(s.down_until for s in live) - now)
                continue
            live = up
            trusted = [s for s in live if s.trusted]
            free = [s for s in live if not s.trusted and s.probe is None]
            waiting = [s for s in live if not s.trusted and s.probe is not None]
            lease = None
            wait = 0.0
            if trusted or free:
                # Of keys free to start as soon, one that owes its probe first: an endpoint
                # back from being set aside is tried again even while another is free (with
                # no limit, every key is ready at once and it would never be chosen).
                state = min(trusted + free, key=lambda s: (s.ready_at(now), s.trusted, s.in_flight))
                start = state.ready_at(now)
                wait = start - now - HORIZON_S
            if wait > MIN_SLEEP_S:
                pass  # too far ahead to reserve yet
            elif trusted or free:
                lease = _reserve(state, tokens, start, now)
            else:
                probe_event = waiting[0].probe
            if wait > MIN_SLEEP_S:
                await anyio.sleep(wait)
                continue
            if lease is None:
                assert probe_event is not None
                await probe_event.wait()  # the key may be retired by then: choose again
                continue
            try:
                if start > now:
                    await anyio.sleep(start - now)
                # A pause may have begun meanwhile (a 429 with Retry-After on this key).
                for _ in range(100):  # each pause is a server's request: honour each one
                    pause = state.paused_until - self._clock()
                    if pause <= 0:
                        break
                    # A timer may end a little early (TIMER_TICK_S): the rest is one tick.
                    await anyio.sleep(max(pause, TIMER_TICK_S))
            except BaseException:
                self.release(lease, trusted=False)
                raise
            return lease

    @classmethod
    def for_recipe(cls, recipe: Recipe, clock: Callable[[], float] | None = None) -> KeyPool:
        """The recipe's keys with its limits and endpoints: what every mode paces with (the
        engine, and ``llmrun serve`` for all its clients together). ``clock``: the event
        loop's (``loop_clock``), else anyio's."""
        run = recipe.run
        return cls(
            recipe.api_keys,
            requests_per_minute=run.requests_per_minute,
            tokens_per_minute=run.tokens_per_minute,
            adaptive=run.adaptive,
            slow_start_local=run.slow_start_local,
            endpoints=recipe.endpoints,
            clock=clock or anyio.current_time,
        )

    def release(self, lease: Lease, *, trusted: bool) -> None:
        """The lease's request is over; ``trusted`` when the server answered it for this key."""
        state = lease.state
        state.in_flight -= 1
        if trusted:
            state.trusted = True
        if lease.probe and state.probe is not None:
            state.probe.set()
            state.probe = None

    # -- what the server said ----------------------------------------------------------------

    def settle_tokens(self, lease: Lease, used: int | None) -> None:
        """Correct the token reservation with what the reply reports."""
        if used is not None:
            lease.state.tokens.give_back(lease.tokens - used)

    def local_endpoint(self, lease: Lease) -> None:
        """The lease's request goes to this machine or its network (see ``local_host``)."""
        state = lease.state
        if state.slow_start and not self._slow_start_local:
            # A local server (vLLM, llama.cpp, a proxy) queues rather than refuses: no slow
            # start, full speed from the first request on (a 429 still slows the key down).
            state.slow_start = False
            state.learnt.set_rate(None)

    def endpoint_failed(self, lease: Lease) -> bool:
        """The lease's request got no answer (no connection, a reset, a timeout). In a pool of
        endpoints, ENDPOINT_FAILURES in a row with no answer between set the endpoint aside for
        REPROBE_S; then one request at a time tries it again. True when it was set aside."""
        endpoint = lease.state.endpoint
        if not self.pooled:
            return False
        failures = self._failures[endpoint] = self._failures.get(endpoint, 0) + 1
        if failures < ENDPOINT_FAILURES:
            return False
        self._failures[endpoint] = 0
        self._aside.add(endpoint)
        until = self._clock() + REPROBE_S
        for state in self.states:
            if state.endpoint == endpoint:
                state.down_until = until
                state.trusted = False  # probed again, one request, when it comes back
        return True

    def answers_again(self, lease: Lease) -> bool:
        """True once, for the first answer from an endpoint since it was set aside."""
        endpoint = lease.state.endpoint
        if endpoint not in self._aside:
            return False
        self._aside.discard(endpoint)
        return True

    def on_success(self, lease: Lease, headers: Mapping[str, str]) -> None:
        state = lease.state
        now = self._clock()
        if self.pooled:
            self._failures[state.endpoint] = 0
        succeeded(state, lease, now)
        read_headers(state, headers, now)

    def on_rate_limited(
        self, lease: Lease, retry_after: float | None, *, spent: bool = False
    ) -> None:
        """A 429 (not a quota); ``spent``: the answer's ``x-ratelimit-remaining-*`` says the
        key's budget is used up (``adaptive.refused``)."""
        refused(lease.state, lease, self._clock(), retry_after, spent=spent)

    # -- retiring ----------------------------------------------------------------------------

    def retire(self, lease: Lease, reason: str) -> bool:
        """Retire the lease's key; True when at least one key is left."""
        if lease.state.retired is None:
            lease.state.retired = reason
        return any(s.retired is None for s in self.states)

    def exhausted_message(self) -> str:
        retired = [s for s in self.states if s.retired is not None]
        if len(retired) == 1 and retired[0].key is None:
            return (
                f"the provider rejected the request without an API key "
                f"({retired[0].retired}); set provider.api_keys"
            )
        details = "; ".join(f"{s.name}: {s.retired}" for s in retired)
        return f"every API key was rejected ({details}); fix provider.api_keys"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The pool's endpoints as shown (no user or password), in the recipe's order; empty:
        the provider's one URL."""
        urls = (s.endpoint for s in self.states if s.endpoint is not None)
        return tuple(dict.fromkeys(endpoint_name(url) for url in urls))

    @property
    def retired(self) -> dict[str, str]:
        """Fingerprint -> reason, for display."""
        return {s.name: s.retired for s in self.states if s.retired is not None}


def _reserve(state: KeyState, tokens: int, start: float, now: float) -> Lease:
    """Reserve ``start`` (>= ``ready_at``) on ``state`` for a request of ``tokens``; a key that
    has not answered yet gets its probe (the one request it may have out)."""
    if state.first_start is None:
        state.first_start = start
    state.requests.take(start, 1)
    state.tokens.take(start, tokens)
    state.learnt.take(start, 1)
    probe = not state.trusted
    if probe:
        state.probe = anyio.Event()
    state.in_flight += 1
    return Lease(state, tokens, probe, start, now)


# Names that never leave this machine or its network: RFC 6761's localhost and invalid (an
# in-process transport such as the mock's), mDNS's local, ICANN's internal, home.arpa, lan.
_LOCAL_SUFFIXES = (".localhost", ".invalid", ".local", ".internal", ".home.arpa", ".lan")


def loop_clock() -> Callable[[], float]:
    """The pool's clock under the running loop. Under asyncio's loops, ``time.monotonic``, the
    base of their timers: anyio's ``current_time`` goes through its backend and the running loop
    each call (about 1 us and a system call, getpid, twice a request), and uvloop's own
    ``time`` is truncated to the millisecond and read once an iteration, so a pause a server
    asked for could end early by that much. Only differences of its readings reach a timer."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio): anyio knows its clock
        return anyio.current_time
    return time.monotonic


def local_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, not resolved) is this machine or a private
    network: loopback, private and link-local addresses, and the names above."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local

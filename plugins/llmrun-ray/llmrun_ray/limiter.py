"""One limiter for the cluster: a Ray actor holding the keys' paces and the key pool, and one
holding the job's budget.

Every worker process paces its requests through the same actor, so ``requests_per_minute``,
``tokens_per_minute``, the adaptive pace and a retired key hold for the job as a whole, however
many workers (or Ray Data tasks) it has; the actor is named by the keys (their fingerprints),
the endpoint and the limits, so concurrent jobs on the same keys share it too. ``run.budget_usd``
is the job's: its own actor, named by the job hash.

The actor runs llmrun's own ``KeyPool`` on its event loop: a worker's ``acquire`` waits *in the
actor* until its start is due, so starts are spaced by one clock for the whole cluster, exactly
as in one process. The actor never holds a key: it knows keys by their index in
``provider.api_keys`` (the secrets stay in the workers, which read them from the recipe).

A lease travels as a small tuple (key index, reserved tokens, probe, start, reserved-at), and
the worker sends it back with every report (answered, 429, settle tokens, release), so the actor
keeps no table of leases. Reports other than ``acquire`` are sent without waiting for them.

The budget is granted in allowances: a worker reserves a call's worst case from its own
allowance and asks the actor for more only when that runs out (one round trip per several
calls, not per call). The actor never grants past ``run.budget_usd`` minus what the output
already cost; an unused allowance is given back when a worker goes idle or is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import ray

from llmrun import Recipe, RunAborted
from llmrun.engine_api import Budget, KeyPool, Lease, Price, endpoint_name, fingerprint

# (key index, reserved tokens, probe, start, reserved-at), in the actor's clock.
Ticket = tuple[int, int, bool, float, float]
# A key's first request not reported this long after its timeout is taken as lost with its
# worker (see Limiter.acquire).
PROBE_GRACE_S = 10.0
# A worker asks for this many worst-case calls' worth of budget at a time.
ALLOWANCE_CALLS = 8
# Limiter and budget actors live in this namespace, shared by every job on the cluster.
NAMESPACE = "llmrun"
# An actor nobody has asked anything for this long ends itself (LLMRUN_RAY_IDLE_S sets it).
IDLE_EXIT_S = 300.0


def idle_exit_s() -> float:
    try:
        return max(1.0, float(os.environ.get("LLMRUN_RAY_IDLE_S", IDLE_EXIT_S)))
    except ValueError:
        return IDLE_EXIT_S


class Limiter:
    """The actor's body (``LimiterActor`` is it as a Ray actor)."""

    def __init__(self, keys: int, settings: Mapping[str, Any]) -> None:
        self.pool = KeyPool(
            tuple(str(i) for i in range(max(1, keys))),
            requests_per_minute=settings.get("requests_per_minute"),
            tokens_per_minute=settings.get("tokens_per_minute"),
            adaptive=bool(settings.get("adaptive")),
            slow_start_local=bool(settings.get("slow_start_local")),
            # The endpoints with placeholders for their own keys: the pool's states come in
            # the order of the workers' pools (endpoint by endpoint, key by key), so a state's
            # index names the same (endpoint, key) on both sides.
            endpoints=tuple(settings.get("endpoints") or ()),
        )
        self.probe_s = float(settings.get("timeout_s") or 600.0) + PROBE_GRACE_S
        self.limit_usd: float | None = None
        self.spent_before = 0.0  # what the output already cost when the job (re)started
        self.held = 0.0  # granted to workers and not given back
        self.reached = False
        self.acquired = 0  # load figures, for docs/scale.md and the benchmarks
        self.reports = 0
        self.last_used = 0.0  # time.monotonic() of the latest call (watch_idle)
        self._watching = False

    # -- keys ------------------------------------------------------------------------------

    async def watch_idle(self, idle_s: float) -> None:
        """End this actor once nothing has used it for ``idle_s`` (it outlives the job that
        started it, so that concurrent jobs share it; it must not outlive them all for long:
        a key retired today is tried again by tomorrow's job). Started once however often it
        is asked; every ask counts as a use (a driver or worker that has just got this actor
        by name must find it there when its first call comes)."""
        self.last_used = time.monotonic()
        if self._watching:
            return
        self._watching = True
        while True:
            await asyncio.sleep(min(30.0, idle_s / 2))
            busy = any(s.in_flight or s.probe is not None for s in self.pool.states)
            if busy:
                self.last_used = time.monotonic()
            elif time.monotonic() - self.last_used > idle_s:
                _exit_actor()

    async def acquire(self, tokens: int) -> Ticket | dict[int, str]:
        """A lease on the key that can start soonest, once its start is due; when every key is
        retired, why each one was (index -> reason)."""
        self.acquired += 1
        self.last_used = time.monotonic()
        try:
            lease = await self.pool.acquire(tokens)
        except RunAborted:
            return {i: s.retired or "" for i, s in enumerate(self.pool.states)}
        index = self.pool.states.index(lease.state)
        ticket = (index, lease.tokens, lease.probe, lease.start, lease.taken)
        if lease.probe:
            # A key's first request goes alone; should its worker die with it, the others
            # would wait for its answer forever: past the call's timeout, it counts as failed.
            probe = lease.state.probe
            asyncio.get_running_loop().call_later(self.probe_s, self._expire, lease, probe)
        return ticket

    def _expire(self, lease: Lease, probe: object) -> None:
        if probe is not None and lease.state.probe is probe:  # still that same probe out
            self.pool.release(lease, trusted=False)

    async def acquire_many(
        self, tokens: list[int]
    ) -> AsyncIterator[list[tuple[int, Ticket | dict[int, str]]]]:
        """``acquire`` for several requests of one worker in one call: each answer (with its
        position in ``tokens``) is streamed back as soon as it is granted, those granted at the
        same moment together, so starts stay as evenly spaced as one by one."""
        granted: asyncio.Queue[tuple[int, Ticket | dict[int, str]]] = asyncio.Queue()

        async def one(position: int, amount: int) -> None:
            granted.put_nowait((position, await self.acquire(amount)))

        tasks = [asyncio.ensure_future(one(i, t)) for i, t in enumerate(tokens)]
        try:
            left = len(tasks)
            while left:
                batch = [await granted.get()]
                while not granted.empty():
                    batch.append(granted.get_nowait())
                left -= len(batch)
                yield batch
        finally:
            for task in tasks:
                task.cancel()

    def report(self, events: list[tuple[str, Ticket, Any]]) -> list[int]:
        """A worker's reports since its last one, in order: (what, ticket, its argument).
        Returns the index of a state of each endpoint these reports set aside (a worker that
        reported a failed connection waits for this answer, to warn as one process does)."""
        self.last_used = time.monotonic()
        set_aside: list[int] = []
        for what, ticket, arg in events:
            lease = self._lease(ticket)
            if what == "release":
                self.pool.release(lease, trusted=bool(arg))
            elif what == "settle":
                self.pool.settle_tokens(lease, arg)
            elif what == "local":
                self.pool.local_endpoint(lease)
            elif what == "ok":
                self.pool.on_success(lease, arg)
            elif what == "429":
                # (Retry-After, the key's quota spent); a bare number from an older worker
                retry_after, spent = arg if isinstance(arg, list | tuple) else (arg, False)
                self.pool.on_rate_limited(lease, retry_after, spent=bool(spent))
            elif what == "retire":
                self.pool.retire(lease, arg)
            elif what == "down" and self.pool.endpoint_failed(lease):
                set_aside.append(ticket[0])
        return set_aside

    def _lease(self, ticket: Ticket) -> Lease:
        self.reports += 1
        index, tokens, probe, start, taken = ticket
        return Lease(self.pool.states[index], tokens, probe, start, taken)

    # -- budget ----------------------------------------------------------------------------

    def set_budget(self, limit_usd: float, spent_before: float) -> None:
        """The job's budget and what its output already cost (the driver, at each start)."""
        self.last_used = time.monotonic()
        self.limit_usd = limit_usd
        self.spent_before = spent_before
        self.held = 0.0  # a new driver: the workers of an earlier one are gone

    def default_budget(self, limit_usd: float) -> None:
        """The budget, unless a driver set it already (Ray Data's processors: no output)."""
        self.last_used = time.monotonic()
        if self.limit_usd is None:
            self.limit_usd = limit_usd

    def grant(self, wanted: float, needed: float) -> float:
        """Up to ``wanted`` USD of allowance; 0 when not even ``needed`` is left."""
        self.last_used = time.monotonic()
        if self.limit_usd is None:
            return wanted
        left = self.limit_usd - self.spent_before - self.held
        if left + 1e-12 < needed:
            self.reached = True
            return 0.0
        granted = max(needed, min(wanted, left))
        self.held += granted
        return granted

    def give_back(self, unused: float) -> None:
        self.last_used = time.monotonic()
        self.held = max(0.0, self.held - unused)

    def status(self) -> dict[str, Any]:
        return {
            "acquired": self.acquired,
            "reports": self.reports,
            "held_usd": self.held,
            "spent_before_usd": self.spent_before,
            "reached": self.reached,
            "retired": sorted(i for i, s in enumerate(self.pool.states) if s.retired),
        }


_exit_actor: Any = ray.actor.exit_actor  # untyped in Ray's stubs

# max_concurrency: every worker's every call may be waiting in acquire at once.
_remote: Any = ray.remote  # Ray's stubs do not type an actor class made this way
LimiterActor: Any = _remote(num_cpus=0, max_concurrency=100_000)(Limiter)


def limiter_settings(recipe: Recipe) -> dict[str, Any]:
    run = recipe.run
    return {
        "requests_per_minute": run.requests_per_minute,
        "tokens_per_minute": run.tokens_per_minute,
        "adaptive": run.adaptive,
        "slow_start_local": run.slow_start_local,
        "timeout_s": run.timeout_s,
        # provider.base_urls / provider.endpoints, with placeholders for each endpoint's URL
        # (it may hold a password) and own keys: the actor paces each (endpoint, key), sends
        # nothing, and never holds a secret (its arguments are visible in Ray's state API).
        "endpoints": [
            dataclasses.replace(
                e,
                url=f"endpoint-{j}",
                api_keys=tuple(f"{j}.{i}" for i in range(len(e.api_keys))),
            )
            for j, e in enumerate(recipe.endpoints)
        ],
    }


def limiter_name(recipe: Recipe) -> str:
    """One limiter per key set, endpoint and limits, whatever the job: every concurrent job
    on the cluster that sends with these keys to this endpoint paces through the same actor
    (two recipes, or two outputs of one recipe, on one key together keep its limit). Named by
    the keys' fingerprints, never the keys."""
    settings = limiter_settings(recipe)
    del settings["endpoints"]  # named below by what they are, not by their placeholders
    what = {
        "keys": sorted(fingerprint(k) for k in recipe.api_keys),
        "endpoint": str(recipe.provider.options.get("base_url") or recipe.provider.name),
        # Hashed into the name: a password in a URL does not show.
        "endpoints": [
            [e.url, e.requests_per_minute, e.tokens_per_minute] for e in recipe.endpoints
        ],
        "endpoint_keys": [sorted(fingerprint(k) for k in e.api_keys) for e in recipe.endpoints],
        "limits": settings,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"llmrun-limiter-{digest[:16]}"


def budget_name(recipe: Recipe) -> str:
    """One budget per job (its job hash): ``run.budget_usd`` is the job's, not the key's."""
    return f"llmrun-budget-{recipe.job_hash[:16]}"


def get_limiter(recipe: Recipe, namespace: str = NAMESPACE) -> Any:
    """The limiter actor of the recipe's keys, started when it is not running yet: in one
    namespace for every job on the cluster, detached from the job that started it (another
    job may still use it), ending itself once idle for IDLE_EXIT_S."""
    actor = LimiterActor.options(
        name=limiter_name(recipe),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(len(recipe.api_keys), limiter_settings(recipe))
    actor.watch_idle.remote(idle_exit_s())
    return actor


def get_budget(recipe: Recipe, namespace: str = NAMESPACE) -> Any:
    """The job's budget actor (a limiter whose keys are not used), started when needed; like
    the limiter it outlives a driver (a restarted driver sets the budget again)."""
    actor = LimiterActor.options(
        name=budget_name(recipe),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(0, {})
    actor.watch_idle.remote(idle_exit_s())
    return actor


class RemoteLease(Lease):
    """A lease granted by the limiter actor: the ticket goes back with every report."""

    __slots__ = ("ticket",)

    def __init__(self, lease: Lease, ticket: Ticket) -> None:
        super().__init__(lease.state, lease.tokens, lease.probe, lease.start, lease.taken)
        self.ticket = ticket


class RemoteKeyPool(KeyPool):
    """The worker's side of the limiter: the ``KeyPool`` the Caller uses, with every decision
    made by the actor. Local key states only carry the keys (and, for messages, why they were
    retired); they pace nothing."""

    def __init__(
        self,
        limiter: Any,
        keys: tuple[str, ...],
        endpoints: tuple[Any, ...] = (),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(keys, endpoints=endpoints)  # the actor's states, with the keys
        self.limiter = limiter
        self.warn = warn
        self._asking: list[tuple[int, asyncio.Future[Ticket | dict[int, str]]]] = []
        self._delivering: set[asyncio.Future[None]] = set()
        self._reports: list[tuple[str, Ticket, Any]] = []

    async def acquire(self, tokens: int) -> Lease:
        # The requests that ask in one pass of the loop ask together (one actor call).
        loop = asyncio.get_running_loop()
        wanted: asyncio.Future[Ticket | dict[int, str]] = loop.create_future()
        if not self._asking:
            loop.call_soon(self._ask)
        self._asking.append((tokens, wanted))
        answer = await wanted  # cancelled: _deliver gives the lease back if it comes
        if isinstance(answer, dict):
            for index, reason in answer.items():
                self.states[index].retired = self.states[index].retired or reason or "retired"
            raise RunAborted(self.exhausted_message())
        index, tokens, probe, start, taken = answer
        local = Lease(self.states[index], tokens, probe, start, taken)
        return RemoteLease(local, answer)

    def _ask(self) -> None:
        asking, self._asking = self._asking, []
        stream = self.limiter.acquire_many.remote([tokens for tokens, _ in asking])
        task = asyncio.ensure_future(self._deliver(stream, [w for _, w in asking]))  # noqa: RUF006 - kept in _delivering
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)

    async def _deliver(self, stream: Any, waiting: list[asyncio.Future[Any]]) -> None:
        try:
            async for ref in stream:
                for position, answer in await ref:
                    wanted = waiting[position]
                    if not wanted.done():
                        wanted.set_result(answer)
                    elif isinstance(answer, tuple):
                        # Its request was cancelled meanwhile (a drain deadline, a second
                        # Ctrl-C): the start is not used.
                        self._report("release", answer, False)
        except BaseException as exc:
            for wanted in waiting:
                if not wanted.done():
                    wanted.set_exception(
                        RunAborted(f"the cluster's rate limiter is gone: {exc}")
                        if isinstance(exc, Exception)
                        else exc
                    )
            if not isinstance(exc, Exception):
                raise

    def _report(self, what: str, ticket: Ticket, arg: Any) -> None:
        # Reports of one pass of the loop travel together, in order, in one actor call: the
        # Caller retires a rejected key right after releasing its lease, and the actor applies
        # both before a request waiting for that key's probe can take it again.
        if not self._reports:
            asyncio.get_running_loop().call_soon(self._send_reports)
        self._reports.append((what, ticket, arg))

    def _send_reports(self) -> None:
        reports, self._reports = self._reports, []
        answer = self.limiter.report.remote(reports)
        if self.warn is not None and any(what == "down" for what, _, _ in reports):
            # Rare (a request that got no answer): wait for the actor's verdict, beside the
            # requests, to warn when it set the endpoint aside, as one process does.
            task = asyncio.ensure_future(self._warn_set_aside(answer))
            self._delivering.add(task)
            task.add_done_callback(self._delivering.discard)

    async def _warn_set_aside(self, answer: Any) -> None:
        try:
            set_aside = await answer
        except Exception:  # the actor gone: the next acquire says so
            return
        for index in set_aside or ():
            assert self.warn is not None
            self.warn(
                f"endpoint {endpoint_name(self.states[index].endpoint or '')} set aside: its "
                "last requests got no answer; tried again in a while"
            )

    def release(self, lease: Lease, *, trusted: bool) -> None:
        self._report("release", _ticket(lease), trusted)

    def settle_tokens(self, lease: Lease, used: int | None) -> None:
        if used is not None:
            self._report("settle", _ticket(lease), used)

    def local_endpoint(self, lease: Lease) -> None:
        self._report("local", _ticket(lease), None)

    def on_success(self, lease: Lease, headers: Mapping[str, str]) -> None:
        # Only the x-ratelimit-* names: the actor's pace reads nothing else.
        wanted = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit")}
        self._report("ok", _ticket(lease), wanted)

    def on_rate_limited(
        self, lease: Lease, retry_after: float | None, *, spent: bool = False
    ) -> None:
        self._report("429", _ticket(lease), (retry_after, spent))

    def endpoint_failed(self, lease: Lease) -> bool:
        # The actor counts the failures in a row and sets the endpoint aside for every worker;
        # its answer comes later, so this worker's warning comes from _warn_set_aside (False).
        if self.pooled:
            self._report("down", _ticket(lease), None)
        return False

    def retire(self, lease: Lease, reason: str) -> bool:
        if lease.state.retired is None:
            lease.state.retired = reason
        # Everywhere at once: the actor's pool stops granting this key to any worker.
        self._report("retire", _ticket(lease), reason)
        return any(s.retired is None for s in self.states)


def _ticket(lease: Lease) -> Ticket:
    assert isinstance(lease, RemoteLease), "a lease of the remote key pool"
    return lease.ticket


class ClusterBudget(Budget):
    """``run.budget_usd`` for the cluster: calls reserve from this worker's allowance, granted
    by the limiter actor a few calls' worth at a time."""

    def __init__(self, limiter: Any, limit_usd: float, price: Price) -> None:
        super().__init__(limit_usd, price, 0.0)
        self.limiter = limiter
        self.allowance = 0.0

    def reserve(self, amount: float) -> bool:
        if self.allowance + 1e-12 < amount:
            need = amount - self.allowance
            # One blocking round trip per ALLOWANCE_CALLS calls: the actor answers at once.
            granted = ray.get(self.limiter.grant.remote(need * ALLOWANCE_CALLS, need))
            if granted <= 0:
                self.reached = True
                self.give_back()
                return False
            self.allowance += granted
        self.allowance -= amount
        self.reserved += amount
        return True

    def settle(self, reserved: float, cost: float | None) -> None:
        super().settle(reserved, cost)
        # What the reservation held beyond the cost is this worker's to use again.
        self.allowance += reserved - (cost or 0.0)

    def give_back(self) -> None:
        """Return the unused allowance (a worker gone idle, or refused)."""
        if self.allowance > 0:
            self.limiter.give_back.remote(self.allowance)
            self.allowance = 0.0

    def reason(self, this_run_usd: float) -> str:
        status = ray.get(self.limiter.status.remote())
        spent = status["spent_before_usd"] + this_run_usd
        return (
            f"run.budget_usd {self.limit:g} reached for the cluster: spent ${spent:.4f} "
            f"(this run ${this_run_usd:.4f}); the next call could have exceeded it"
        )

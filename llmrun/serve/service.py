"""One served recipe: the provider, key pool, pace, retries and budget that every client shares.

Every call the server makes (a record, a gateway request, a session message, a job's record)
goes through the one transport below, wrapped so that at most ``run.concurrency`` requests are
out at once whoever sent them, and through one ``KeyPool`` and ``Budget``: ten programs calling
one served recipe keep its limits together.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx

from ..components import Postprocessor, Provider, Transport
from ..errors import RunAborted
from ..job.records import Work
from ..job.rows import RowMaker
from ..plugins import Registry, build_component
from ..recipe.model import Recipe
from ..recipe.pricing import Price
from ..recipe.templates import PromptTemplate
from ..redaction import Redactor
from ..run.budget import Budget
from ..run.calls import Caller, NotSent, Outcome, SharedCalls
from ..run.limits import KeyPool
from ..run.stages import Stages
from ..values import ComponentContext, Prompt, Reply, Row
from ..wire.bounds import AnswerLimits
from ..wire.transport import default_transport
from .metrics import Metrics

log = logging.getLogger("llmrun.serve")

RETRY_AFTER_S = 1  # what a client is told to wait when the queue is full


class Busy(Exception):
    """More requests wait than the queue holds: the client should come back later."""


class BudgetReached(Exception):
    """``run.budget_usd`` would be exceeded by this call: nothing was sent."""


class Unavailable(Exception):
    """A run-level failure (every key rejected, unknown model): nothing can succeed."""


class LimitedTransport:
    """A transport that lets at most ``limit`` requests be out at once, across every caller."""

    def __init__(self, inner: Transport, limiter: anyio.CapacityLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        async with self.limiter:
            return await self.inner.send(request, timeout_s)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Service:
    """The recipe's components and the shared call machinery (open it with ``opened()``)."""

    def __init__(self, recipe: Recipe, registry: Registry, *, queue: int) -> None:
        self.recipe = recipe
        self.registry = registry
        self.queue = queue
        self.redact = Redactor({*recipe.secrets, *recipe.api_keys})
        self.metrics = Metrics()
        context = ComponentContext(recipe.base_dir, recipe.name, self.warn, recipe.access)
        self.provider: Provider = build_component(registry, "provider", recipe.provider, context)
        self.posts: list[Postprocessor] = [
            build_component(registry, "postprocessor", spec, context) for spec in recipe.postprocess
        ]
        self.template = PromptTemplate.for_recipe(recipe)
        self.rows = RowMaker(recipe, self.redact, self.provider.model, self.warn)
        self.embeds = hasattr(self.provider, "split_reply")  # a grouping provider: embeddings
        self.pending = 0  # calls admitted: running or waiting for a slot
        self.shared: SharedCalls | None = None
        self.caller: Caller | None = None
        self.stages: Stages | None = None
        self.price: Price | None = self.rows.budget_price()

    def warn(self, message: str) -> None:
        log.warning("%s", self.redact.message(message))

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Service]:
        run = self.recipe.run
        inner = self.provider.transport() or default_transport(
            max_connections=run.concurrency,
            connect_timeout_s=run.connect_timeout_s,
            limits=AnswerLimits(max_response_bytes=run.max_response_bytes),
        )
        keys = KeyPool.for_recipe(self.recipe)  # its base_urls too, as a run's
        budget = None
        if run.budget_usd is not None and self.price is not None:
            budget = Budget(run.budget_usd, self.price)
        transport = LimitedTransport(inner, anyio.CapacityLimiter(run.concurrency))
        self.shared = SharedCalls(transport, keys, budget)
        self._renew()
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    def _renew(self) -> None:
        """A new Caller (and the stages bound to it) on the shared transport, keys, budget."""
        self.caller = self._new_caller()
        self.stages = Stages(
            self.recipe, self.provider, self.posts, self.template, self.rows, self.caller
        )

    def _new_caller(self) -> Caller:
        assert self.shared is not None
        run = self.recipe.run
        return Caller(
            self.provider,
            self.shared.transport,
            self.shared.keys,
            run,
            warn=self.warn,
            on_retry=self.metrics.retry,
            budget=self.shared.budget,
            cost_of=self.cost,
            count_tokens=run.tokens_per_minute is not None,
        )

    def cost(self, reply: Reply) -> float | None:
        """The reply's cost; every reply the shared caller gets is counted here once."""
        cost = self.rows.cost(reply)
        self.metrics.reply(reply, cost)
        return cost

    # -- admission ---------------------------------------------------------------------------

    @asynccontextmanager
    async def admitted(self, calls: int) -> AsyncIterator[None]:
        """Room for ``calls`` more calls (running plus waiting), or Busy."""
        if self.pending + calls > self.recipe.run.concurrency + self.queue:
            self.metrics.rejected += 1
            raise Busy
        self.pending += calls
        try:
            yield
        finally:
            self.pending -= calls

    # -- calls -------------------------------------------------------------------------------

    async def call(self, prompt: Prompt) -> Outcome:
        """One call through the shared caller; CallFailed, BudgetReached or Unavailable."""
        assert self.caller is not None, "Service.opened() first"
        with self._run_level():
            return await self.caller.call(prompt)
        raise AssertionError("unreachable")  # mypy: _run_level() re-raises what it catches

    @contextmanager
    def _run_level(self) -> Iterator[None]:
        """A run's stop becomes a server's answer."""
        try:
            yield
        except NotSent:
            raise BudgetReached(self.budget_reason()) from None
        except RunAborted as exc:
            # A run stops for good here; a server answers 502 and tries again on the next
            # request (the provider may be back; retired keys stay retired in the shared pool).
            self._renew()
            raise Unavailable(self.redact.message(str(exc))) from None

    def budget_reason(self) -> str:
        budget = self.shared.budget if self.shared is not None else None
        if budget is None:
            return "the server is stopping"
        return f"run.budget_usd {budget.limit:g} reached: the next call could exceed it"

    def render(self, record_id: str, data: dict[str, Any]) -> Prompt:
        """The record's prompt; RecordError (naming the missing fields) when it cannot be."""
        return self.template.render(record_id, data)

    async def record_row(self, record_id: str, data: dict[str, Any], prompt: Prompt) -> Row:
        """A rendered record's output row: called, post-processed, through the engine's own
        stages (so exactly as a run writes it)."""
        assert self.stages is not None, "Service.opened() first"
        stages = self.stages
        work = Work(record_id, data, record_id, None)
        with self._run_level():
            outcome = await stages.call(work, prompt)
            if isinstance(outcome, dict):
                row = outcome
            else:
                row = await stages.postprocess(work, prompt, outcome)
        if row["error"] is not None:
            self.metrics.error(str(row["error"].get("type")))
        return row

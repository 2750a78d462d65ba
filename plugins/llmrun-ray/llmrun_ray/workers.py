"""A worker: the recipe's own stages (render -> call -> post-process) in a Ray actor.

Each worker loads the recipe itself from its path (the secrets it names are read where the
worker runs, as llmrun reads them anywhere: the environment or the ``.env`` beside the recipe),
so no key ever passes through Ray's object store or its control store. Its calls go through
llmrun's ``Caller`` with the cluster's key pool and budget (``limiter.py``), up to
``run.concurrency`` at once.

``process`` is a streaming generator: each row goes back to the driver as soon as it is made
(a few at a time), so a worker killed mid-batch loses only the calls it had in flight; the
driver sends the records it got no row for to the worker's replacement.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from llmrun import Access, CallError, Row, RunAborted, open_recipe
from llmrun.engine_api import (
    Caller,
    NotSent,
    Stages,
    StepJournal,
    StepStages,
    Work,
    default_transport,
    make_engine,
    make_progress,
)

from .limiter import ClusterBudget, RemoteKeyPool, get_budget, get_limiter

# (position in the driver's batch, id, data, where, error, the steps it has finished): a
# record as the driver sends it (the last is empty but for a steps: recipe).
Item = tuple[int, str, "dict[str, Any] | None", str, "str | None", "dict[str, Any]"]


NO_ROW = -1  # in a worker's queue of results: a step finished, no row yet


class RelayedJournal(StepJournal):
    """A worker's step journal: in memory, each finished step relayed to the driver with the
    next message, where the run's own journal (beside the output) keeps it. A worker that dies
    loses nothing the driver has heard of: its replacement gets those steps with the record."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))
        self.relayed: list[tuple[str, str, str, dict[str, Any]]] = []
        self.notify: Callable[[], None] = lambda: None  # a message goes out at once

    def add(self, rid: str, name: str, digest: str, result: dict[str, Any]) -> None:
        super().add(rid, name, digest, result)
        self.relayed.append((rid, name, digest, result))
        self.notify()


class RecipeStages:
    """A recipe's stages bound to the cluster limiter, built once per process."""

    def __init__(
        self,
        recipe_path: str,
        overrides: Sequence[str],
        limiter: Any = None,
        access: Access | None = None,
    ) -> None:
        # The user's opt-ins (--trust, --allow-read, --allow-host) travel with the path: the
        # worker's recipe is the driver's, with nothing more allowed.
        recipe, registry = open_recipe(recipe_path, overrides=overrides, access=access)
        self.recipe = recipe
        if limiter is None:  # every worker and processor finds the keys' limiter by name
            limiter = get_limiter(recipe)
        self.budget_actor = get_budget(recipe) if recipe.run.budget_usd is not None else None
        if self.budget_actor is not None:
            self.budget_actor.default_budget.remote(recipe.run.budget_usd)
        # The engine is only the holder of the recipe's components (provider, postprocessors,
        # template, row maker, redaction): it never runs here.
        self.engine = make_engine(recipe, registry, make_progress("none"), handle_signals=False)
        self.limiter = limiter
        self.retries: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.budget_reached = False
        self.budget: ClusterBudget | None = None
        self.journal = RelayedJournal()
        self._stages: Stages | None = None
        self._caller: Caller | None = None
        # provider.base_urls / endpoints: [ok, failed] per endpoint already in a report
        self._reported: dict[str, tuple[int, int]] = {}

    def stages(self) -> Stages:
        """Built on the event loop that uses them (the transport belongs to one loop)."""
        if self._stages is None:
            recipe, engine = self.recipe, self.engine
            run = recipe.run
            transport = engine.provider.transport() or default_transport(
                max_connections=run.concurrency, connect_timeout_s=run.connect_timeout_s
            )
            if run.budget_usd is not None:
                price = engine.rows.price(engine.provider.model)
                assert price is not None  # the engine refused a budget without a price
                self.budget = ClusterBudget(self.budget_actor, run.budget_usd, price)
            caller = Caller(
                engine.provider,
                transport,
                RemoteKeyPool(self.limiter, recipe.api_keys, recipe.endpoints, self.warn),
                run,
                warn=self.warn,
                on_retry=self._count_retry,
                budget=self.budget,
                cost_of=engine.rows.cost,
                on_budget=self._on_budget,
                count_tokens=run.tokens_per_minute is not None,
                # The recipe's call cache, opened by each worker (SQLite in WAL mode: several
                # processes share one file; the nodes of a cluster need it on shared storage).
                cache=engine.cache,
            )
            self._caller = caller
            if engine.step_parts:  # a steps: recipe: each record through its steps here
                self._stages = StepStages(engine.step_parts, engine.rows, caller, self.journal)
            else:
                self._stages = Stages(
                    recipe, engine.provider, engine.posts, engine.template, engine.rows, caller
                )
        return self._stages

    def _endpoint_news(self) -> dict[str, tuple[int, int]]:
        """Answered and failed attempts per endpoint since the last report: the driver adds
        them up for its progress, summary and manifest."""
        news: dict[str, tuple[int, int]] = {}
        counts = self._caller.endpoint_counts if self._caller is not None else {}
        for url, (ok, failed) in counts.items():
            before = self._reported.get(url, (0, 0))
            if (ok, failed) != before:
                news[url] = (ok - before[0], failed - before[1])
                self._reported[url] = (ok, failed)
        return news

    def warn(self, message: str) -> None:
        self.warnings.append(self.engine.redact(message))

    def _count_retry(self, error: CallError) -> None:
        self.retries[error.code] += 1

    def _on_budget(self) -> None:
        self.budget_reached = True

    def news(self) -> dict[str, Any]:
        """Retries and warnings since the last report (they travel with the rows)."""
        news: dict[str, Any] = {
            "retries": dict(self.retries),
            "warnings": self.warnings,
            "steps": self.journal.relayed,
            "endpoints": self._endpoint_news(),
        }
        self.retries = Counter()
        self.warnings = []
        self.journal.relayed = []
        return news


class ShardWorker:
    """The actor (``WorkerActor``): processes the records of its shard the driver sends."""

    def __init__(
        self, recipe_path: str, overrides: Sequence[str], access: Access | None = None
    ) -> None:
        self.own = RecipeStages(recipe_path, overrides, access=access)
        self.slots: asyncio.Semaphore | None = None
        self.active = 0
        self.processed = 0  # rows made by this process (since it last started)

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def counts(self) -> dict[str, int]:
        return {"pid": os.getpid(), "processed": self.processed}

    async def process(self, items: Sequence[Item]) -> AsyncIterator[dict[str, Any]]:
        """Rows as they finish: ``{"rows": [(position, row)], "retries", "warnings"}``; at the
        end, the positions not sent (the run is stopping) and why, or a run-level failure."""
        stages = self.own.stages()
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.own.recipe.run.concurrency)
        done: asyncio.Queue[tuple[int, Row | BaseException | None]] = asyncio.Queue()
        self.active += 1
        # A finished step goes to the driver with the next message, sent at once (NO_ROW).
        self.own.journal.notify = lambda: done.put_nowait((NO_ROW, None))
        tasks = [asyncio.ensure_future(self._one(stages, item, done)) for item in items]
        not_sent: list[int] = []
        aborted: str | None = None
        try:
            left = len(tasks)
            while left:
                first = await done.get()
                got = [first]
                while not done.empty():
                    got.append(done.get_nowait())
                left -= sum(1 for position, _ in got if position != NO_ROW)
                rows = []
                for position, result in got:
                    if position == NO_ROW:
                        continue
                    if isinstance(result, dict):
                        rows.append((position, result))
                        self.processed += 1
                    elif isinstance(result, RunAborted):
                        aborted = aborted or str(result)
                    else:
                        not_sent.append(position)
                if rows or self.own.journal.relayed:
                    yield {"rows": rows, **self.own.news()}
        finally:
            for task in tasks:
                task.cancel()
            self.active -= 1
            if self.active == 0 and self.own.budget is not None:
                self.own.budget.give_back()
        yield {
            "rows": [],
            "not_sent": not_sent,
            "budget": self.own.budget_reached,
            "aborted": aborted,
            **self.own.news(),
        }

    async def _one(
        self,
        stages: Stages,
        item: Item,
        done: asyncio.Queue[tuple[int, Row | BaseException | None]],
    ) -> None:
        position, rid, data, where, error, finished = item
        assert self.slots is not None
        result: Row | BaseException
        if finished:  # what an earlier worker (or run) finished of this record's steps
            self.own.journal.pending[rid] = dict(finished)
        async with self.slots:
            try:
                result = await stages.process(Work(rid, data, where, error))
            except (RunAborted, NotSent) as exc:
                result = exc
        done.put_nowait((position, result))

"""The run: one anyio task group streaming read -> render -> call -> post -> write.

    reader --(records)--> N workers (N = run.concurrency) --(rows)--> writer
                              |                                          |
                    render, call with retries,                 append + hand to the OS,
                    postprocess: always a row                  count, observers, progress

Streams between the stages are bounded, so memory stays flat whatever the input size. The writer
is the only task that touches the output; a row reaches the OS as soon as the writer sees it, so
a kill at any instant loses at most the calls in flight, which the next run sends again.

Stopping: the first SIGINT/SIGTERM stops reading and lets calls in flight finish for up to
``run.drain_s`` seconds (calls not sent yet, e.g. waiting for a key's first answer, are not sent
at all); a second one (or the deadline) cancels them. A run-level failure (``RunAborted``)
cancels calls in flight at once. Either way every finished row is written.
"""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..components import Loader, Postprocessor, Provider, Writer
from ..errors import CallError, RecipeError, RecordError, RunAborted
from ..job.ids import record_id
from ..job.manifest import finish_manifest, start_manifest, update_manifest
from ..job.rerun import drop_error_rows
from ..job.rows import RowMaker
from ..job.rows import Work as _Work  # the batch runner builds them too
from ..job.stats import RunStats
from ..job.store import IdSet, RunState, index_output, now_iso
from ..job.summary import RunSummary as RunSummary
from ..job.summary import Status
from ..plugins import Observers, Registry, build_component
from ..recipe.load import Recipe
from ..recipe.pricing import Price
from ..recipe.selection import selection_of
from ..recipe.templates import PromptTemplate
from ..redaction import Redactor
from ..values import ComponentContext, Prompt, SourceRecord
from ..wire.transport import default_transport
from .budget import Budget
from .calls import Caller, CallFailed, NotSent, Outcome
from .chain import postprocess
from .limits import KeyPool
from .progress import Progress

READ_CHUNK = 256
FIELD_CHECK = 20  # records the run-start check of the template looks at
WRITE_BATCH = 512
TICK_S = 0.25
SYNC_EVERY_S = 5.0
_T = TypeVar("_T")


class _Flags:
    def __init__(self) -> None:
        self.stopping = False  # no new records
        self.abort: RunAborted | None = None
        self.budget = False  # the next call could have exceeded run.budget_usd
        self.signals = 0


class Engine:
    """Runs one recipe to completion (or to a clean stop)."""

    def __init__(
        self,
        recipe: Recipe,
        registry: Registry,
        progress: Progress,
        *,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: bool = False,
        handle_signals: bool = True,
    ) -> None:
        self.recipe = recipe
        self.registry = registry
        self.progress = progress
        self.limit = limit if limit is not None else recipe.limit
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.handle_signals = handle_signals and sys.platform != "win32"
        # Keys written literally in a recipe are as secret as those read from ${VAR}.
        self.redact = Redactor({*recipe.secrets, *recipe.api_keys})
        self.stats = RunStats()
        self.flags = _Flags()
        self.warnings: list[str] = []
        self.observers = Observers(registry.manager, self.warn)
        context = ComponentContext(recipe.base_dir, recipe.name, self.warn)
        self.loader: Loader = build_component(registry, "loader", recipe.data, context)
        self.provider: Provider = build_component(registry, "provider", recipe.provider, context)
        self.writer: Writer = build_component(registry, "writer", recipe.writer, context)
        self.posts: list[Postprocessor] = [
            build_component(registry, "postprocessor", spec, context) for spec in recipe.postprocess
        ]
        self.template = PromptTemplate.for_recipe(recipe)
        self.selection = selection_of(recipe, self.limit)
        self.state = RunState(recipe.output_path)
        self.rows = RowMaker(recipe, self.redact, self.provider.model, self.warn)
        self._row, self._error, self._cost = self.rows.row, self.rows.error, self.rows.cost
        self.batch_drain_only = False  # `llmrun cancel`: collect running batches, submit nothing
        self._workers_scope: CancelScope | None = None
        self._reader_scope: CancelScope | None = None
        self._caller: Caller | None = None
        self._gathering = anyio.Lock()  # a grouping provider's workers fill groups in turn
        self._budget: Budget | None = None
        self._budget_price: Price | None = None
        if recipe.run.budget_usd is not None:
            self._budget_price = self.rows.price(self.provider.model)
            if self._budget_price is None:
                # A budget that cannot be counted is not a budget.
                raise RecipeError(
                    f"run.budget_usd: no price known for model {self.provider.model!r}, so "
                    "spend cannot be counted; add it under prices: in the recipe"
                )

    def warn(self, message: str) -> None:
        message = self.redact(message)
        self.warnings.append(message)
        self.progress.log(f"warning: {message}")

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        with self.state.locked():
            if self.fresh:
                for moved in self.state.move_aside():
                    self.progress.log(f"--fresh: moved the previous output aside to {moved}")
            elif self.retry_errors:
                kept, moved_to = await anyio.to_thread.run_sync(
                    drop_error_rows, self.recipe.output_path, self.state.dir
                )
                if moved_to is not None:
                    self.progress.log(
                        f"--retry-errors: {kept} error row(s) will be called again "
                        f"(the previous output is kept as {moved_to})"
                    )
            done = await anyio.to_thread.run_sync(self._open_output)
            model = getattr(self.provider, "model", None)
            manifest = start_manifest(
                self.recipe, self.registry, self.state, self.stats, model, self.warn
            )
            self.observers.call(
                "run_started",
                {
                    "recipe": self.recipe.name,
                    "recipe_hash": self.recipe.job_hash,
                    "output": str(self.recipe.output_path),
                    "provider": self.recipe.provider.name,
                    "model": model,
                    "resumed": self.stats.resumed_ok + self.stats.resumed_error,
                    "started_at": manifest["runs"][-1]["started_at"],
                },
            )
            status: Status = "completed"
            reason: str | None = None
            transport = self.provider.transport() or default_transport(
                max_connections=self.recipe.run.concurrency,
                connect_timeout_s=self.recipe.run.connect_timeout_s,
            )
            caller = self._make_caller(transport)
            self._caller = caller
            self.stats.endpoints = caller.endpoint_counts  # provider.base_urls: live counts
            self.progress.start(self.recipe.name, self.stats)
            try:
                await self._pipeline(done, caller, manifest)
            finally:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()
                    self.writer.sync()
                    self.writer.close()
                    if self.flags.abort is not None:
                        status, reason = "aborted", self.redact(str(self.flags.abort))
                    elif self.flags.budget:
                        status, reason = "budget", self._budget_reason()
                    elif self.flags.stopping:
                        status, reason = "interrupted", "stopped by a signal"
                    self.progress.stop(self.stats)
                    finish_manifest(self.state, self.stats, manifest, status, reason)
                    summary = RunSummary(
                        status, self.stats, str(self.recipe.output_path), reason, self.warnings
                    )
                    self.observers.call("run_finished", summary.to_json())
            return summary

    def _make_caller(self, transport: Any) -> Caller:
        """The Caller: keys with their limits, and the budget when the recipe sets one."""
        run = self.recipe.run
        keys = KeyPool(
            self.recipe.api_keys,
            requests_per_minute=run.requests_per_minute,
            tokens_per_minute=run.tokens_per_minute,
            adaptive=run.adaptive,
            slow_start_local=run.slow_start_local,
            endpoints=self.recipe.endpoints,
        )
        if run.budget_usd is not None and self._budget_price is not None:
            spent = self.stats.resumed_cost_usd
            self._budget = Budget(run.budget_usd, self._budget_price, spent)
        return Caller(
            self.provider,
            transport,
            keys,
            run,
            warn=self.warn,
            on_retry=self._count_retry,
            budget=self._budget,
            cost_of=self._cost,
            on_budget=self._budget_reached,
            count_tokens=run.tokens_per_minute is not None,
        )

    def _budget_reached(self) -> None:
        if not self.flags.budget:
            self.flags.budget = True
            self.progress.log(f"budget: {self._budget_reason()}; finishing the calls in flight")
            self._stop_reading()

    def _budget_reason(self) -> str:
        assert self._budget is not None
        return self._budget.reason(self.stats.cost_usd)

    def _open_output(self) -> IdSet:
        """Open the writer, count what is already there, and index the finished ids."""
        return index_output(self.writer.open(), self.stats)

    async def _pipeline(self, done: IdSet, caller: Caller, manifest: dict[str, Any]) -> None:
        from ..batch.journal import has_running

        # Direct mode too collects batches an earlier batch run left running: never paid twice.
        if (
            self.recipe.run.mode != "direct"
            or self.batch_drain_only
            or has_running(self.state.dir / "batch")
        ):
            from ..batch.runner import run_batches

            rest = await run_batches(self, done, caller, manifest)
            if rest is None:
                return
            done = rest  # auto mode: what is left goes as direct calls
        size = self.recipe.run.concurrency * 2
        work_send, work_recv = anyio.create_memory_object_stream[_Work](size)
        row_send, row_recv = anyio.create_memory_object_stream[dict[str, Any]](size)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._count_total)
            outer.start_soon(self._tick, manifest)
            if self.handle_signals:
                outer.start_soon(self._watch_signals)
            async with anyio.create_task_group() as pipeline:
                pipeline.start_soon(self._read, work_send, done)
                pipeline.start_soon(self._write, row_recv)
                async with anyio.create_task_group() as workers:
                    self._workers_scope = workers.cancel_scope
                    async with work_recv, row_send:
                        for _ in range(caller.workers):
                            workers.start_soon(
                                self._work, work_recv.clone(), row_send.clone(), caller
                            )
            outer.cancel_scope.cancel()

    async def _read(self, send: MemoryObjectSendStream[_Work], done: IdSet) -> None:
        with anyio.CancelScope() as scope:
            self._reader_scope = scope
            records = self.loader.records()
            id_field = self.recipe.id_field
            items = self.selection.select(
                (self._work_item(rec, id_field) for rec in records),
                key=lambda w: (w.id, None if w.error is not None else w.data),
                on_error=lambda w, message: _Work(w.id, w.data, w.where, message),
            )
            try:
                await self._read_records(items, send, done)
            finally:
                items.close()
                close = getattr(records, "close", None)
                if close is not None:  # a generator's files close now, not at garbage collection
                    close()

    async def _read_records(
        self, items: Iterator[_Work], send: MemoryObjectSendStream[_Work], done: IdSet
    ) -> None:
        """Send the selected records that are not done yet to the workers; after the first
        chunk, warn when those records lack fields the prompt uses."""
        async with send:
            checked = False
            selected = 0
            while not self.flags.stopping:
                try:
                    chunk = await anyio.to_thread.run_sync(_take, items, READ_CHUNK)
                except Exception as exc:  # a missing file, a loader plugin's bug
                    loader = self.recipe.data.name
                    message = f"cannot read the records ({loader} loader): {_describe(exc)}"
                    self._abort(RunAborted(message))
                    return
                if not chunk:
                    # Every selected record has been seen: the total is known now, even when
                    # counting could not tell it in advance (a filter, a shard, a sample).
                    self.stats.total = selected
                    break
                selected += len(chunk)
                if not checked:
                    checked = True
                    self._check_fields(chunk)
                for work in chunk:
                    if work.id in done:
                        continue
                    try:
                        # send() always yields to the loop first; skipping that when the buffer
                        # has room lets rows batch up (measured: -100 us/request, benchmarks/).
                        send.send_nowait(work)
                    except anyio.WouldBlock:
                        await send.send(work)

    def _check_fields(self, chunk: list[_Work]) -> None:
        """The run-start check of the template against the first records (as ``validate``)."""
        sample = [w.data for w in chunk[:FIELD_CHECK] if w.data is not None and w.error is None]
        report = self.template.field_report(sample)
        if report:
            self.warn(report)

    def _work_item(self, rec: SourceRecord, id_field: str | None) -> _Work:
        if rec.data is None:
            return _Work(rec.where, None, rec.where, rec.error or "unreadable record")
        rid = record_id(rec.data, id_field)
        if rid is None:
            return _Work(
                rec.where,
                rec.data,
                rec.where,
                f"record has no {id_field!r} field (data.id); fields: "
                f"{', '.join(sorted(map(str, rec.data)))}",
            )
        return _Work(rid, rec.data, rec.where, rec.error)

    async def _work(
        self,
        recv: MemoryObjectReceiveStream[_Work],
        send: MemoryObjectSendStream[dict[str, Any]],
        caller: Caller,
    ) -> None:
        group_size = int(getattr(self.provider, "group_size", 1) or 1)
        async with recv, send:
            while True:
                batch = await self._take(recv, group_size)
                if not batch:
                    return
                if self.flags.stopping:
                    continue  # not started: the next run does it
                first = batch[0]
                self.stats.in_flight += len(batch)
                started = now_iso()
                for work in batch:
                    work.started_at = started
                try:
                    if group_size > 1:
                        rows = await self._process_group(batch, caller)
                    else:
                        rows = [await self._process(first, caller)]
                except NotSent:
                    continue  # not started: the next run does it
                except RunAborted as exc:
                    self._abort(exc)
                    return
                finally:
                    self.stats.in_flight -= len(batch)
                # Shielded: a call that finished is paid for, so its row is written even when
                # a second Ctrl-C or an abort cancels the workers (the writer is not cancelled).
                with CancelScope(shield=True):
                    for row in rows:
                        try:
                            send.send_nowait(row)
                        except anyio.WouldBlock:
                            await send.send(row)

    async def _take(self, recv: MemoryObjectReceiveStream[_Work], size: int) -> list[_Work]:
        """The next record, or for a grouping provider the next ``size`` records (fewer only
        at the end); empty when there are no more. Workers fill groups one at a time, waiting
        for the reader, so N records make ceil(N / size) requests, not one per idle worker."""
        if size == 1:
            try:
                return [await recv.receive()]
            except anyio.EndOfStream:
                return []
        batch: list[_Work] = []
        async with self._gathering:
            while len(batch) < size:
                try:
                    batch.append(await recv.receive())
                except anyio.EndOfStream:
                    break
        return batch

    def _render(self, work: _Work) -> Prompt | dict[str, Any]:
        """The record's prompt, or its error row when it cannot be sent."""
        if work.error is not None:
            return self._row(work, 0, error=self._error(work, "bad_input", work.error))
        assert work.data is not None
        try:
            return self.template.render(work.id, work.data)
        except RecordError as exc:
            return self._row(work, 0, error=self._error(work, exc.code, str(exc)))

    async def _call(self, work: _Work, prompt: Prompt, caller: Caller) -> Outcome | dict[str, Any]:
        """The call's outcome, or the record's error row (RunAborted and NotSent propagate)."""
        try:
            return await caller.call(prompt)
        except CallFailed as failed:
            err = failed.error
            error = self._error(work, err.code, err.message, err.retryable, err.status)
            return self._row(work, failed.attempts, error=error)
        except RecordError as exc:  # the provider cannot build this record's request (an image)
            return self._row(work, 0, error=self._error(work, exc.code, str(exc)))
        except (RunAborted, NotSent, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:  # a provider plugin's bug must not take the run down
            return self._row(work, 1, error=self._error(work, "internal", _describe(exc)))

    async def _process(self, work: _Work, caller: Caller) -> dict[str, Any]:
        """Always a row: ok, or error with a reason (RunAborted is the one exception)."""
        prompt = self._render(work)
        if isinstance(prompt, dict):
            return prompt
        outcome = await self._call(work, prompt, caller)
        if isinstance(outcome, dict):
            return outcome
        return await self._postprocess(work, prompt, outcome, caller)

    async def _process_group(self, batch: list[_Work], caller: Caller) -> list[dict[str, Any]]:
        """One request for several records (a grouping provider); a row for each."""
        rows: list[dict[str, Any]] = []
        members: list[tuple[_Work, Prompt]] = []
        for work in batch:
            prompt = self._render(work)
            if isinstance(prompt, dict):
                rows.append(prompt)
            else:
                members.append((work, prompt))
        if not members:
            return rows
        prompts = [p for _, p in members]
        group = Prompt(prompts[0].record_id, [], prompts[0].generation, group=tuple(prompts))
        outcome = await self._call(members[0][0], group, caller)
        if isinstance(outcome, dict):  # the group failed: each member gets the same error
            failed = outcome["error"]
            for work, _ in members:
                error = self._error(
                    work,
                    failed["type"],
                    failed["message"],
                    failed["retryable"],
                    failed.get("status"),
                )  # each row says where its own record is, not the first member's
                rows.append(self._row(work, outcome["attempts"], error=error))
            return rows
        try:
            replies = self.provider.split_reply(outcome.reply, prompts)  # type: ignore[attr-defined]
            if len(replies) != len(prompts):
                raise ValueError(f"{len(replies)} replies for {len(prompts)} inputs")
        except Exception as exc:
            why = f"cannot split the grouped reply: {_describe(exc)}"
            for work, _ in members:
                rows.append(
                    self._row(work, outcome.attempts, error=self._error(work, "internal", why))
                )
            return rows
        for (work, prompt), reply in zip(members, replies, strict=True):
            single = Outcome(reply, outcome.attempts, outcome.latency_s)
            rows.append(await self._postprocess(work, prompt, single, caller))
        return rows

    async def _postprocess(
        self, work: _Work, prompt: Prompt, outcome: Outcome, caller: Caller
    ) -> dict[str, Any]:
        """Run the chain (with reasks, see chain.py): the record's row."""
        return await postprocess(
            work,
            prompt,
            outcome,
            posts=self.posts,
            rows=self.rows,
            call=lambda w, p: self._call(w, p, caller),
            keep_raw=self.recipe.keep_raw,
        )

    @property
    def batch_pricing(self) -> bool:
        """Batch mode sets it: the provider's batch discount applies to costs."""
        return self.rows.batch_pricing

    @batch_pricing.setter
    def batch_pricing(self, value: bool) -> None:
        self.rows.batch_pricing = value

    async def _write(self, recv: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        wants_rows = self.observers.wants_records
        async with recv:
            async for row in recv:
                # One pass of the loop first: rows finishing in it join this batch, so the
                # output is flushed once per batch rather than once per row. Shielded: a row in
                # hand is always written.
                await anyio.lowlevel.cancel_shielded_checkpoint()
                batch = [row]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                self.writer.write(batch)
                for item in batch:
                    self.stats.count_row(item)
                    if wants_rows:
                        self.observers.call("record_done", item)

    # -- around the pipeline ---------------------------------------------------------------

    async def _count_total(self) -> None:
        """The number of records the run takes, when the loader can count cheaply and the
        selection allows knowing it (a filter, shard or fractional sample makes it unknown)."""
        count = getattr(self.loader, "count", None)
        if count is None or not self.selection.needs_count():
            return
        total = await anyio.to_thread.run_sync(count, abandon_on_cancel=True)
        self.stats.total = self.selection.total(total)

    async def _tick(self, manifest: dict[str, Any]) -> None:
        last_sync = anyio.current_time()
        while True:
            await anyio.sleep(TICK_S)
            self.progress.update(self.stats)
            if anyio.current_time() - last_sync >= SYNC_EVERY_S:
                last_sync = anyio.current_time()
                self.writer.sync()
                update_manifest(self.state, self.stats, manifest)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.flags.signals += 1
                if self.flags.signals == 1:
                    name = signal.Signals(signum).name
                    self.progress.log(
                        f"{name}: finishing {self.stats.in_flight} call(s) in flight "
                        f"(up to {self.recipe.run.drain_s:g} s); press Ctrl-C again to stop now"
                    )
                    self._stop_reading()
                    anyio_deadline = anyio.current_time() + self.recipe.run.drain_s
                    if self._workers_scope is not None:
                        self._workers_scope.deadline = anyio_deadline
                else:
                    self.progress.log("stopping now; calls in flight will be sent again next run")
                    if self._workers_scope is not None:
                        self._workers_scope.cancel()

    def _stop_reading(self) -> None:
        self.flags.stopping = True
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        if self._caller is not None:
            self._caller.close()

    def _abort(self, exc: RunAborted) -> None:
        if self.flags.abort is None:
            self.flags.abort = exc
        self._stop_reading()
        if self._workers_scope is not None:
            self._workers_scope.cancel()

    def _count_retry(self, error: CallError) -> None:
        self.stats.retries += 1
        self.stats.retries_by_code[error.code] += 1


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _take(items: Iterator[_T], n: int) -> list[_T]:
    return list(itertools.islice(items, n))

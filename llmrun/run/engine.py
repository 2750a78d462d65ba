"""The run: its components, what it resumes from, the batch phase, the direct calls (streamed
record by record in ``flow.RecordFlow``: one reader, the workers, one writer), the tasks beside
them (progress, checkpoints, signals) and the summary.

A row reaches the OS as soon as the writer sees it, so a kill at any instant loses at most the
calls in flight, which the next run sends again.

Stopping: the first SIGINT/SIGTERM stops reading and lets calls in flight finish for up to
``run.drain_s`` seconds (calls not sent yet, e.g. waiting for a key's first answer, are not sent
at all); a second one (or the deadline) cancels them. A run-level failure (``RunAborted``)
cancels calls in flight at once. Either way every finished row is written.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..components import Loader, Postprocessor, Provider, Writer
from ..errors import CallError, RunAborted
from ..job.dupes import SeenIds
from ..job.manifest import Manifest, finish_manifest, start_manifest
from ..job.output import RowSink, rewrite_output, rewriter
from ..job.records import Work, selected, selection
from ..job.rerun import ErrorRows
from ..job.rows import RowMaker
from ..job.stats import RunStats
from ..job.stepjournal import StepJournal
from ..job.store import IdSet, RunState
from ..job.summary import RunSummary as RunSummary
from ..job.summary import Status
from ..plugins import Observers, Registry, build_component
from ..recipe.model import Recipe
from ..recipe.pricing import Price
from ..recipe.templates import PromptTemplate
from ..redaction import Redactor
from ..values import ComponentContext, RunStart
from ..wire.bounds import AnswerLimits
from ..wire.transport import default_transport
from .backends import Backends
from .budget import Budget
from .cache import CallCache
from .calls import Caller, SharedCalls
from .flow import RecordFlow
from .limits import KeyPool, loop_clock
from .progress import Progress
from .resume import Resume
from .runlog import RunLog
from .stages import Stages
from .steps import StepStages, step_parts
from .watch import RunFlags, count_total, tick, watch_signals

# Batch mode plugs in here (llmrun/batch/runner.py: run_batches), so this module never imports
# it: given the engine, the finished ids and the manifest, the ids finished before the direct
# calls start, or None when the run ends with the batches.
BatchPhase = Callable[["Engine", IdSet, Manifest], Awaitable[IdSet | None]]


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
        batch_phase: BatchPhase | None = None,
        shared: SharedCalls | None = None,
        backends: Backends | None = None,
    ) -> None:
        self.recipe = recipe
        self.backends = backends or Backends()
        self.registry = registry
        # Everything shown also goes to <output>.llmrun/run.log (run/runlog.py).
        self.runlog = RunLog(progress, RunState(recipe.output_path).dir / "run.log")
        self.progress: Progress = self.runlog
        self.limit = limit if limit is not None else recipe.limit
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.handle_signals = handle_signals and sys.platform != "win32"
        self.batch_phase = batch_phase
        self.shared = shared  # transport, keys and budget of a served recipe (llmrun serve)
        # Keys written literally in a recipe are as secret as those read from ${VAR}.
        self.redact = Redactor({*recipe.secrets, *recipe.api_keys})
        self.stats = RunStats()
        self.flags = RunFlags()
        self.warnings: list[str] = []
        self.observers = Observers(registry.manager, self.warn)
        context = ComponentContext(
            recipe.base_dir, recipe.name, self.warn, recipe.access, recipe.output_path
        )
        self.loader: Loader = build_component(registry, "loader", recipe.data, context)
        self.provider: Provider = build_component(registry, "provider", recipe.provider, context)
        self.writer: Writer = build_component(registry, "writer", recipe.writer, context)
        if retry_errors:
            rewriter(self.writer, recipe.writer.name)  # before anything changes
        self.posts: list[Postprocessor] = [
            build_component(registry, "postprocessor", spec, context) for spec in recipe.postprocess
        ]
        self.template = PromptTemplate.for_recipe(recipe)
        self.selection = selection(recipe, self.limit)
        self.state = RunState(recipe.output_path)
        self.rows = RowMaker(recipe, self.redact, self.provider.model, self.warn)
        # steps: (run/steps.py): each step's components, built now so a fault shows at once.
        self.step_parts = (
            step_parts(recipe, registry, context, self.provider, self.rows) if recipe.steps else []
        )
        self.journal = StepJournal(self.state.dir / "steps.jsonl")
        self.sink = RowSink(self.writer, self.stats, self.observers, also=self.runlog.row)
        self.batch_drain_only = False  # `llmrun cancel`: collect running batches, submit nothing
        self._stages: Stages | None = None
        self.seen = SeenIds(self.warn)  # duplicate ids in this run (job/dupes.py)
        # Direct calls: the records' reader, workers and writer (run/flow.py).
        self.flow = RecordFlow(self)
        self.budget: Budget | None = None
        self._budget_price: Price | None = self.rows.budget_price()
        # What the run resumes from and the checkpoints it leaves (run/resume.py), and how
        # many records the reader took once it read every line.
        self.resume = Resume(
            recipe,
            self.loader,
            self.writer,
            self.selection,
            self.limit,
            self.state.dir,
            self.stats,
            self.warn,
        )
        # Last: nothing after it can fail and leave the file open.
        self.cache = (
            None
            if recipe.cache is None
            else CallCache.open(
                recipe.cache, secrets={*recipe.secrets, *recipe.api_keys}, warn=self.warn
            )
        )

    def warn(self, message: str) -> None:
        message = self.redact.message(message)
        self.warnings.append(message)
        self.progress.log(f"warning: {message}")

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        try:
            return await self._run()
        finally:
            if self.backends.close is not None:  # however the run ended, or failed to start
                self.backends.close()

    async def _run(self) -> RunSummary:
        with self.state.locked():
            finished_steps: dict[str, dict[str, Any]] = {}
            if self.fresh:
                for moved in self.state.move_aside():
                    self.progress.log(f"--fresh: moved the previous output aside to {moved}")
            elif self.retry_errors:
                errors = ErrorRows()
                writer = rewriter(self.writer, self.recipe.writer.name)
                moved_to = await anyio.to_thread.run_sync(
                    rewrite_output, writer, self.state, errors, "retried"
                )
                finished_steps = errors.finished_steps
                if moved_to is not None:
                    self.progress.log(
                        f"--retry-errors: {errors.dropped} error row(s) will be called again "
                        f"(the previous output is kept as {moved_to})"
                    )
            done = await anyio.to_thread.run_sync(self.resume.open)
            if self.step_parts:
                hashes = {step.name: step.hash for step in self.recipe.steps}
                taken = await anyio.to_thread.run_sync(
                    self.journal.open, hashes, done, finished_steps
                )
                if taken:
                    self.progress.log(f"steps: {taken} finished step(s) taken up again")
            model = getattr(self.provider, "model", None)
            manifest = start_manifest(
                self.recipe, self.registry, self.state, self.stats, model, self.warn
            )
            self.observers.call(
                "run_started",
                run=RunStart(
                    recipe=self.recipe.name,
                    recipe_hash=self.recipe.job_hash,
                    output=str(self.recipe.output_path),
                    provider=self.recipe.provider.name,
                    model=model,
                    resumed=self.stats.resumed_ok + self.stats.resumed_error,
                    started_at=manifest["runs"][-1]["started_at"],
                ),
            )
            status: Status = "completed"
            reason: str | None = None
            transport = (
                self.shared.transport
                if self.shared is not None
                else self.provider.transport()
                or default_transport(
                    max_connections=self.recipe.run.concurrency,
                    connect_timeout_s=self.recipe.run.connect_timeout_s,
                    limits=AnswerLimits(max_response_bytes=self.recipe.run.max_response_bytes),
                )
            )
            caller = self._make_caller(transport)
            self._stages = Stages(
                self.recipe, self.provider, self.posts, self.template, self.rows, caller
            )
            if self.step_parts:
                self._stages = StepStages(self.step_parts, self.rows, caller, self.journal)
            self.stats.endpoints = caller.endpoint_counts  # provider.base_urls: live counts
            if self.backends.stages is not None:
                self._stages = self.backends.stages(self, self._stages)
            self.progress.start(self.recipe.name, self.stats)
            try:
                await self._pipeline(done, manifest)
            finally:
                with anyio.CancelScope(shield=True):
                    if self.shared is None:  # a shared transport outlives this run
                        await transport.aclose()
                    if self.cache is not None:
                        await self.cache.aclose()
                    self.writer.sync()
                    self.writer.close()
                    self.journal.close()
                    if self.flags.abort is not None:
                        status, reason = "aborted", self.redact.message(str(self.flags.abort))
                    elif self.flags.budget:
                        status, reason = "budget", self.budget_reason()
                    elif self.flags.stopping:
                        status, reason = "interrupted", "stopped by a signal"
                    else:
                        self.resume.save(self.flow.read_all)
                    self.runlog.ended(status, reason)
                    self.progress.stop(self.stats)
                    finish_manifest(self.state, self.stats, manifest, status, reason)
                    summary = RunSummary(
                        status, self.stats, str(self.recipe.output_path), reason, self.warnings
                    )
                    self.observers.call("run_finished", summary=summary.to_hook())
            return summary

    def _make_caller(self, transport: Any) -> Caller:
        """The Caller: keys with their limits, and the budget when the recipe sets one."""
        run = self.recipe.run
        if self.shared is not None:
            keys = self.shared.keys
            self.budget = self.shared.budget
        elif self.backends.key_pool is not None:
            keys = self.backends.key_pool(self.recipe)
        else:
            keys = KeyPool.for_recipe(self.recipe, clock=loop_clock())
        if self.shared is None and run.budget_usd is not None and self._budget_price is not None:
            spent = self.stats.resumed_cost_usd
            make_budget = self.backends.budget or Budget
            self.budget = make_budget(run.budget_usd, self._budget_price, spent)
        return Caller(
            self.provider,
            transport,
            keys,
            run,
            warn=self.warn,
            note=self.runlog.note,
            on_retry=self._count_retry,
            budget=self.budget,
            cost_of=self.rows.cost,
            on_budget=self._budget_reached,
            count_tokens=run.tokens_per_minute is not None,
            cache=self.cache,
            on_waiting=self.flow.gate.resize,
        )

    @property
    def stages(self) -> Stages:
        """The record stages (render, call, post-process), once the run has started."""
        assert self._stages is not None, "the stages exist while the run runs"
        return self._stages

    def records(
        self,
        *,
        dupes: bool = True,
        skip: IdSet | None = None,
        start: tuple[int, int] | None = None,
    ) -> Generator[Work, None, None]:
        """The records the recipe covers (``job.records.selected``), for every mode; an id
        seen twice in the run is warned about (job/dupes.py), unless ``dupes`` is False
        (the caller checks the records it does not skip itself). Records whose id is in
        ``skip`` may come unparsed, with ``done`` set."""
        items = selected(self.recipe, self.loader, limit=self.limit, skip=skip, start=start)
        try:
            for work in items:
                if dupes and work.error is None:
                    self.seen.add(work.id, work.where)
                yield work
        finally:
            items.close()

    def _budget_reached(self) -> None:
        if not self.flags.budget:
            self.flags.budget = True
            self.progress.log(f"budget: {self.budget_reason()}; finishing the calls in flight")
            self.stop_reading()

    def budget_reason(self) -> str:
        assert self.budget is not None
        return self.budget.reason(self.stats.cost_usd)

    async def _pipeline(self, done: IdSet, manifest: Manifest) -> None:
        if self.batch_phase is not None:
            # Batch and auto modes; direct mode too collects batches an earlier batch run left
            # running (never paid twice). None: the run ends there.
            rest = await self.batch_phase(self, done, manifest)
            if rest is None:
                return
            done = rest  # what is left goes as direct calls
        async with anyio.create_task_group() as outer:
            self.watch(outer, manifest)
            outer.start_soon(self.resume.save_as_it_goes)
            await self.flow.run(done)
            outer.cancel_scope.cancel()

    @property
    def batch_pricing(self) -> bool:
        """Batch mode sets it: the provider's batch discount applies to costs."""
        return self.rows.batch_pricing

    @batch_pricing.setter
    def batch_pricing(self, value: bool) -> None:
        self.rows.batch_pricing = value
        for part in self.step_parts:  # a step with its own model prices with its own rows
            part.rows.batch_pricing = value

    # -- around the pipeline: every mode starts these --------------------------------------

    def watch(self, group: TaskGroup, manifest: Manifest) -> None:
        """Start the tasks that run beside any mode's work in ``group`` (run/watch.py): counting
        the records, the progress and manifest tick, and (when asked) the signal handler.
        Cancel the group's scope when the work is done."""
        group.start_soon(count_total, self.loader, self.selection, self.stats)
        group.start_soon(tick, self.progress, self.stats, self.writer, self.state, manifest)
        if self.handle_signals:
            drain_s = self.recipe.run.drain_s
            group.start_soon(
                watch_signals,
                self.flags,
                self.progress,
                self.stats,
                drain_s,
                self.stop,
                self._cancel_calls,
            )

    def stop(self) -> None:
        """Stop as on a first Ctrl-C: read no more records, finish the calls in flight for up to
        ``run.drain_s`` seconds; the run then ends "interrupted" (a later run continues it)."""
        self.stop_reading()
        if self.flow.workers_scope is not None:
            self.flow.workers_scope.deadline = anyio.current_time() + self.recipe.run.drain_s

    def stop_reading(self) -> None:
        """No new records: what is in flight finishes (the run ends interrupted)."""
        self.flags.stopping = True
        if self.flow.reader_scope is not None:
            self.flow.reader_scope.cancel()
        if self._stages is not None:
            self._stages.caller.close()

    def abort(self, exc: RunAborted) -> None:
        """A run-level failure: stop reading and cancel the calls in flight."""
        if self.flags.abort is None:
            self.flags.abort = exc
        self.stop_reading()
        self._cancel_calls()

    def _cancel_calls(self) -> None:
        if self.flow.workers_scope is not None:
            self.flow.workers_scope.cancel()

    def _count_retry(self, error: CallError) -> None:
        self.stats.retries += 1
        self.stats.retries_by_code[error.code] += 1

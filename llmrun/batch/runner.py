"""Batch mode: records go to the provider's batch API in files, results come back as rows.

One round: read the records not finished and not in a running batch, render them, split them
into parts within the provider's limits, then drive every part through its steps (see
``journal``). Parts whose requests failed in a retryable way (expired, server errors) are
followed by another round for those records only, up to ``run.batch_resubmits`` times.

Planning records into part files is ``planner.py``; merging an ended part's results into rows
is ``merge.py``, through the engine's public stages (render, post-process, error row) and its
row sink, so a batch run's output is the same as a direct run's. This module drives the rounds
and each part's steps, with the batch API's calls retried here.
"""

from __future__ import annotations

import functools
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from ..errors import CallError, RunAborted
from ..job.manifest import Manifest
from ..job.store import IdSet
from ..recipe.pricing import PriceTable
from ..run.steps import StepStages
from ..values import Row
from ..wire.retry import backoff_s, classify_transport, sleep_at_least
from .client import BatchClient
from .contract import BatchAPI, BatchInfo, batch_api_of
from .journal import Journal, Part, checkpoint, has_running, make_durable
from .merge import Merger
from .planner import PartPlanner
from .status import progress_of

if TYPE_CHECKING:
    from ..run.engine import Engine

T = TypeVar("T")


class Finished(IdSet):
    """The ids finished before this run plus those written by it."""

    def __init__(self, before: IdSet, now: set[str]) -> None:
        super().__init__()
        self._before, self._now = before, now

    def __len__(self) -> int:
        return len(self._before) + len(self._now)

    def __contains__(self, rid: object) -> bool:
        return rid in self._now or rid in self._before


def batch_state_dir(engine: Engine) -> Any:
    return engine.state.dir / "batch"


class BatchRunner:
    """Runs the engine's recipe through the provider's batch API."""

    def __init__(self, engine: Engine, done: IdSet, *, drain_only: bool = False) -> None:
        self.engine = engine
        self.recipe = engine.recipe
        self.settings = engine.recipe.run
        api = batch_api_of(engine.provider)
        if api is None:
            raise RunAborted(
                f"provider {self.recipe.provider.name!r} has no batch API: "
                "use run.mode: direct (or auto)"
            )
        self.api: BatchAPI = api
        self.written: set[str] = set()
        self.finished = Finished(done, self.written)
        folder = batch_state_dir(engine)
        if engine.fresh and folder.exists():  # --fresh: start over, keep the old state
            stamp = time.strftime("%Y%m%dT%H%M%S")
            folder.rename(folder.with_name(f"batch.old-{stamp}-{secrets.token_hex(2)}"))
            engine.progress.log(f"--fresh: moved the previous batch state aside ({folder.name})")
        self.journal = Journal.load(folder)
        self.drain_only = drain_only or engine.batch_drain_only
        self.api_key = self.recipe.first_key  # batch mode sends to one endpoint: the first
        self._over_budget: str | None = None
        self._stragglers = False  # auto mode: a batch was cancelled at the deadline
        self._cancelled = False  # a batch was cancelled by `llmrun cancel`
        engine.batch_pricing = True
        # A steps: recipe runs each step as its own batches (docs/steps.md).
        stages = engine.stages
        self.steps: StepStages | None = stages if isinstance(stages, StepStages) else None
        line_apis: dict[str | None, BatchAPI] = {None: self.api}
        for step in self.steps.steps if self.steps is not None else []:
            line_apis[step.spec.name] = batch_api_of(step.stages.provider) or self.api
        price = PriceTable(self.recipe.prices).lookup(getattr(engine.provider, "model", None))
        self.planner = PartPlanner(
            engine, self.journal, self.api, self.finished, self.steps, line_apis, price
        )
        self._parked: set[str] = set()  # continuation parts not to submit in this run
        self.merger = Merger(
            engine,
            self.journal,
            self.api,
            self.finished,
            self.steps,
            self.planner,
            self._write_rows,
        )

    # -- the rounds ------------------------------------------------------------------------

    async def run(self) -> IdSet | None:
        """Run batches until nothing is left; return the finished ids when the rest should
        go as direct calls (auto mode), else None."""
        self.journal.dir.mkdir(parents=True, exist_ok=True)
        timeout = httpx.Timeout(self.settings.timeout_s, connect=self.settings.connect_timeout_s)
        # trust_env: the proxy variables (and NO_PROXY) and SSL_CERT_FILE, as in direct mode;
        # every answer read within the bounds of a call's (batch/client.py).
        async with BatchClient(self.settings, timeout=timeout, trust_env=True) as client:
            self.client = client
            while not self._stopping():
                plan = not self.drain_only and self._over_budget is None
                if plan and await self._plan() == "direct":
                    self.engine.batch_pricing = False  # direct calls pay the full price
                    return self.finished
                if not self._live():
                    break
                await self._drive()
        if self._over_budget is not None:
            # Ends like a direct run at its budget: status "budget", exit 5.
            self.engine.flags.budget = True
            self.engine.flags.stopping = True
            return None
        if self._cancelled:
            self.engine.flags.stopping = True  # records are left: the run ends interrupted
        return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep between polls, waking up soon after Ctrl-C (polls can be minutes apart)."""
        slices = max(1, math.ceil(seconds / 0.25))
        for _ in range(slices):
            if self._stopping():
                return
            await anyio.sleep(seconds / slices)

    def _live(self) -> list[Part]:
        """The parts that can move on (over budget, those not submitted yet are parked)."""
        parked = ("written", "uploaded") if self._over_budget else ()
        return [
            p for p in self.journal.active() if p.step not in parked and p.name not in self._parked
        ]

    def _stopping(self) -> bool:
        return self.engine.flags.stopping

    def _mode(self) -> str:
        return str(getattr(self.settings, "mode", "batch"))

    # -- planning: records -> part files (planner.py) ---------------------------------------

    async def _plan(self) -> str:
        """Write parts for the records still to do; "direct" when auto mode says to call them
        directly instead (few records), "budget" when their estimate is over run.budget_usd."""
        error_rows: list[Row] = []
        try:
            chosen = await anyio.to_thread.run_sync(
                functools.partial(
                    self.planner.plan, error_rows, stragglers=self._stragglers, spent=self._spent
                )
            )
            if chosen == "budget":
                self._over_budget = self.planner.over_budget
                if self._over_budget is not None:
                    self.engine.warn(self._over_budget)
            return chosen
        finally:
            if error_rows:  # rendering failed: final, written now (here, not in the thread)
                self._write_rows(error_rows)

    # -- driving parts through their steps ---------------------------------------------------

    async def _drive(self) -> None:
        """Advance every active part until all are merged (or the run stops)."""
        interval = self.settings.batch_poll_s
        while self._live() and not self._stopping():
            progressed = False
            for part in self._live():
                if self._stopping():
                    return
                progressed |= await self._advance(part)
            if self._live() and not progressed:
                self._show(interval)
                await self._sleep(interval)
                interval = min(interval * 1.5, self.settings.batch_poll_max_s)
            elif progressed:
                interval = self.settings.batch_poll_s

    async def _advance(self, part: Part) -> bool:
        """One step (or one poll) for the part; True when it moved on."""
        api, client, key, journal = self.api, self.client, self.api_key, self.journal
        if part.step == "written":
            if self._over_budget is not None:
                return False
            part.input_id = await self._retry(
                api.upload, client, key, journal.file(part.name, ""), part.tag
            )
            self._set(part, "uploaded")
            return True
        if part.step == "uploaded":
            if self._over_budget is not None:
                return False
            part.intent_at = time.time()
            self._set(part, "creating")
            info = await self._retry(
                api.create, client, key, journal.file(part.name, ""), part.input_id, part.tag
            )
            checkpoint("create-sent")
            self._created(part, info)
            return True
        if part.step == "creating":  # the create may have happened: adopt it, else redo it
            known = [p.batch_id for p in journal.parts if p.batch_id]
            found = await self._retry(
                api.find, client, key, part.tag, part.intent_at or 0.0, part.requests, known
            )
            if found is None:
                self._set(part, "uploaded")
            else:
                self.engine.progress.log(f"adopted batch {found.id} created by an earlier run")
                self._created(part, found)
            return True
        if part.step == "created":
            assert part.batch_id is not None
            info = await self._retry(api.get, client, key, part.batch_id)
            await self._deadline(part, info)
            if info.state != "ended":
                if info.to_json() != part.info:
                    part.info = info.to_json()
                    journal.save()
                    self._show()
                checkpoint("polled")
                return False
            part.info = info.to_json()
            if info.outcome == "failed":
                self.engine.warn(
                    f"batch {info.id} ({part.name}) failed: {info.reason or 'no reason given'}"
                )
            self._set(part, "ended")
            return True
        if part.step == "ended":
            assert part.info is not None
            dest = journal.file(part.name, "results")
            tmp = dest.with_name(f".{dest.name}.tmp")
            await self._retry(api.download, client, key, BatchInfo.from_json(part.info), tmp)
            await anyio.to_thread.run_sync(make_durable, tmp, dest)
            self._set(part, "downloaded")
            return True
        if part.step == "downloaded":
            await self._merge(part)
            return True
        return False

    async def _retry(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call the batch API, retrying what is retryable; anything else stops the run (a
        batch API call is about all records at once: there is no record to blame)."""
        for attempt in itertools.count(1):
            try:
                return await fn(*args)
            except httpx.TransportError as exc:
                error = classify_transport(exc)
            except CallError as exc:
                error = exc
            if not error.retryable or attempt > self.settings.max_retries:
                raise RunAborted(f"batch API ({self.recipe.provider.name}): {error.message}")
            self.engine.stats.retries += 1
            await sleep_at_least(backoff_s(attempt, error.retry_after))
        raise AssertionError("unreachable")

    def _set(self, part: Part, step: str) -> None:
        part.step = step
        self.journal.save()
        self._show()
        checkpoint(step)

    def _show(self, next_poll_s: float | None = None) -> None:
        """Feed the progress display (and the manifest) with where the batches stand."""
        self.engine.stats.batch = progress_of(self.journal, next_poll_s)

    def _created(self, part: Part, info: BatchInfo) -> None:
        part.batch_id = info.id
        part.info = info.to_json()
        part.created_local = time.time()
        self._set(part, "created")

    async def _deadline(self, part: Part, info: BatchInfo) -> None:
        """Auto mode: a batch still running past the deadline is cancelled; what it did not
        finish goes as direct calls."""
        if self._mode() != "auto" or info.state in ("ended", "cancelling") or part.cancel_reason:
            return
        if time.time() - (part.created_local or time.time()) < self.settings.auto_deadline_s:
            return
        part.cancel_reason = "deadline"
        self.journal.save()
        self.engine.progress.log(
            f"batch {info.id} is past run.auto_deadline_s: cancelling it, the rest goes direct"
        )
        await self._retry(self.api.cancel, self.client, self.api_key, info.id)

    def _spent(self) -> float:
        """The job's spend so far: the output's rows (``cost_usd``) before this run, plus what
        this run wrote; the engine's budget counts both when the recipe sets one."""
        budget = self.engine.budget
        if budget is not None:
            return budget.spent
        return self.engine.stats.resumed_cost_usd + self.engine.stats.cost_usd

    # -- merging results into the output -----------------------------------------------------

    async def _merge(self, part: Part) -> None:
        merged = await self.merger.merge(part)
        if self.drain_only:  # collecting only: the next steps wait for a run that submits
            self._parked.update(p.name for p in merged.continued)
        self._set(part, "merged")
        info, steps = merged.info, part.recipe_step is not None
        if info.outcome == "cancelled" and part.cancel_reason == "deadline" and not steps:
            self._stragglers = True  # auto mode: what is left goes direct
        elif info.outcome == "cancelled" and not (steps and self.drain_only):
            self.drain_only = True  # cancelled by the user: submit nothing more in this run
            self._parked.update(p.name for p in merged.continued)
            if not self.engine.batch_drain_only:
                self.engine.progress.log(
                    f"batch {info.id} was cancelled: collecting the running batches, then "
                    "stopping (run again to send what it did not finish)"
                )
                self._cancelled = True
        await self._check_budget()

    def hand_to_direct(self) -> int:
        """Direct mode after collecting a steps: recipe's batches: the parts never submitted
        give their records' finished steps to the step journal, so the direct calls take each
        record up at its next step. Returns how many records were handed over."""
        if self.steps is None:
            return 0
        handed = 0
        for part in self.journal.active():
            if part.recipe_step is None or part.step not in ("written", "uploaded"):
                continue
            for _, rid, _, _, finished in self.journal.carried(part):
                handed += 1
                for name, result in finished.items():
                    if isinstance(result, dict) and result.get("status") == "ok":
                        self.steps.journal.add(rid, name, str(result.get("hash")), result)
            part.merged = {"direct": part.requests}
            part.step = "merged"
        self.journal.save()
        return handed

    def _write_rows(self, rows: list[Row]) -> None:
        # Durable before the journal says the part is merged.
        self.engine.sink.write(rows, durable=True)
        self.written.update(str(row["id"]) for row in rows)

    async def _check_budget(self) -> None:
        """Over the budget: create nothing more, cancel what runs, collect what finished."""
        budget = self.settings.budget_usd
        spent = self._spent()
        if budget is None or self._over_budget or spent <= float(budget):
            return
        self._over_budget = (
            f"spent ${spent:.4f} with the batch results, over run.budget_usd "
            f"${budget}: running batches were cancelled and what they finished was kept"
        )
        self.engine.warn(self._over_budget)
        for part in self.journal.active():
            if part.step == "created" and part.batch_id and not part.cancel_reason:
                part.cancel_reason = "budget"
                self.journal.save()
                await self._retry(self.api.cancel, self.client, self.api_key, part.batch_id)


async def run_batches(engine: Engine, done: IdSet, manifest: Manifest) -> IdSet | None:
    """The engine's pipeline in batch (or auto) mode; the finished ids when the rest should go
    as direct calls."""
    if (
        engine.recipe.run.mode == "direct"
        and not engine.batch_drain_only
        and not has_running(batch_state_dir(engine))
    ):
        return done  # nothing to collect: straight to the direct calls
    rest: IdSet | None = None
    async with anyio.create_task_group() as tg:
        engine.watch(tg, manifest)
        try:
            if engine.recipe.run.mode == "auto" and batch_api_of(engine.provider) is None:
                engine.progress.log("the provider has no batch API: auto mode calls directly")
                rest = done
            elif engine.recipe.run.mode == "direct" and not engine.batch_drain_only:
                engine.progress.log("collecting the batches an earlier run left running")
                runner = BatchRunner(engine, done, drain_only=True)
                await runner.run()
                handed = runner.hand_to_direct()
                if handed:
                    engine.progress.log(f"steps: {handed} record(s) go on as direct calls")
                rest = runner.finished
            else:
                rest = await BatchRunner(engine, done).run()
        except RunAborted as exc:
            engine.abort(exc)
        tg.cancel_scope.cancel()
    if engine.flags.stopping or engine.flags.abort is not None:
        return None  # stopped or aborted: no direct calls after it
    return rest


async def cancel_all(engine: Engine, *, record: bool) -> list[dict[str, Any]]:
    """Ask the provider to cancel every running batch of this output; with ``record`` (the
    caller holds the output's lock), note it in the journal."""
    api = batch_api_of(engine.provider)
    journal = Journal.load(batch_state_dir(engine))
    if api is None or not journal.exists():
        return []
    key = engine.recipe.first_key
    out: list[dict[str, Any]] = []
    run = engine.recipe.run
    async with BatchClient(run, timeout=run.timeout_s, trust_env=True) as client:
        for part in journal.active():
            if part.step not in ("created", "creating") or not part.batch_id:
                continue
            try:
                info = await api.cancel(client, key, part.batch_id)
            except CallError as exc:
                out.append({"batch_id": part.batch_id, "error": str(exc)})
                continue
            part.cancel_reason = "user"
            part.info = info.to_json()
            out.append({"batch_id": part.batch_id, "state": info.state, "outcome": info.outcome})
        if record:
            journal.save()
    return out

"""Batch mode: records go to the provider's batch API in files, results come back as rows.

One round: read the records not finished and not in a running batch, render them, split them
into parts within the provider's limits, then drive every part through its steps (see
``journal``). Parts whose requests failed in a retryable way (expired, server errors) are
followed by another round for those records only, up to ``run.batch_resubmits`` times.

Rows are made by the engine (``_render``, ``_postprocess``, ``_row``, ``_error``) and written by
its writer, so a batch run's output is the same as a direct run's.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from ..errors import CallError, RecordError, RunAborted
from ..job.manifest import Manifest
from ..job.records import Work
from ..job.store import IdSet, now_iso
from ..recipe.pricing import PriceTable
from ..run.calls import Outcome
from ..run.steps import StepStages
from ..values import Prompt, Row
from ..wire.retry import backoff_s, classify_transport
from .client import BatchClient
from .contract import BatchAPI, BatchInfo, LineResult, batch_api_of
from .journal import Journal, Part, checkpoint, has_running, make_durable, part_lines
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
            await anyio.sleep(backoff_s(attempt, error.retry_after))
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
        results, unread = await anyio.to_thread.run_sync(self._read_results, part)
        if unread:
            self.engine.warn(
                f"{unread} result line(s) of {part.name} could not be read; their records are "
                "treated as having no result"
            )
        info = BatchInfo.from_json(part.info or {"id": "?", "state": "ended"})
        if part.recipe_step is not None:
            await self._merge_step(part, results, info)
            return
        rows: list[Row] = []
        counts = {"ok": 0, "error": 0, "again": 0}
        tries = dict(self.journal.tries)
        spent = 0.0

        for cid, rid, where, data in self.journal.records(part):
            if rid in self.finished:
                continue
            work = Work(rid, data, where, None)
            result = results.get(cid)
            if result is not None and result.reply is not None:
                try:  # the prompt only matters for a reask (a follow-up turn)
                    prompt = self.engine.template.render(rid, data)
                except RecordError:  # the recipe changed since: no follow-up possible
                    prompt = Prompt(rid, [], {})
                outcome = Outcome(result.reply, 1, 0.0)
                row = await self.engine.stages.postprocess(work, prompt, outcome)
                spent += float(row.get("cost_usd") or 0.0)
                rows.append(row)
                continue
            if result is None:
                if info.outcome == "cancelled":
                    counts["again"] += 1  # never run: sent again by a later round or run
                    continue
                result = _missing(cid, info)
            if result.retryable and tries.get(rid, 0) < self.settings.batch_resubmits:
                tries[rid] = tries.get(rid, 0) + 1
                counts["again"] += 1
                continue
            before = tries.pop(rid, 0)
            rows.append(
                self.engine.stages.error_row(
                    work,
                    result.code or "batch_error",
                    result.message or "",
                    attempts=before + 1,
                    retryable=result.retryable,
                    status=result.status,
                )
            )
        for row in rows:
            counts["ok" if row["status"] == "ok" else "error"] += 1
        if rows:
            self._write_rows(rows)
            checkpoint("merge-written")
        self.journal.tries = tries
        self.journal.spent_usd += spent
        budget = self.engine.budget
        if budget is not None:  # direct calls after these (auto mode) count them too
            budget.settle(0.0, spent)
        part.merged = counts
        self._set(part, "merged")
        if info.outcome == "cancelled" and part.cancel_reason == "deadline":
            self._stragglers = True  # auto mode: what is left goes direct
        elif info.outcome == "cancelled":
            self.drain_only = True  # cancelled by the user: submit nothing more in this run
            if not self.engine.batch_drain_only:
                self.engine.progress.log(
                    f"batch {info.id} was cancelled: collecting the running batches, then "
                    "stopping (run again to send what it did not finish)"
                )
                self._cancelled = True
        await self._check_budget()

    async def _merge_step(
        self, part: Part, results: dict[str, LineResult], info: BatchInfo
    ) -> None:
        """A steps: part's results: each record's step result, then at once its next step's
        request into a new part (carrying what it has finished), or its row when it is done.
        The new parts are in the journal in the same save that marks this part merged."""
        steps = self.steps
        assert steps is not None and part.recipe_step is not None
        step = next((s for s in steps.steps if s.spec.name == part.recipe_step), None)
        if step is None:
            raise RunAborted(
                f"the batch part {part.name} holds requests of step {part.recipe_step!r}, which "
                "the recipe no longer has: run with --fresh to start over"
            )
        name = step.spec.name
        writer = self.planner.writer()
        rows: list[Row] = []
        counts = {"ok": 0, "error": 0, "again": 0, "next": 0}
        tries = dict(self.journal.tries)
        spent = 0.0
        ended = now_iso()
        for cid, rid, where, data, finished in self.journal.carried(part):
            if rid in self.finished:
                continue
            work = Work(rid, data, where, None)
            result = results.get(cid)
            if result is not None and result.reply is not None:
                planned = steps.plan(work, finished)
                context = planned[1] if isinstance(planned, tuple) else {"steps": {}}
                prompt = step.stages.render(work, context)  # for a reask (a follow-up turn)
                if isinstance(prompt, dict):
                    prompt = Prompt(rid, [], {})
                row = await step.stages.postprocess(work, prompt, Outcome(result.reply, 1, 0.0))
                spent += float(row.get("cost_usd") or 0.0)
                finished[name] = steps.result(step, row)
                finished[name]["finished_at"] = ended
            else:
                if result is None and info.outcome != "cancelled":
                    result = _missing(cid, info)
                # (None: cancelled, never run: sent again, parked while collecting only)
                if result is None or (
                    result.retryable and tries.get(rid, 0) < self.settings.batch_resubmits
                ):
                    if result is not None:
                        tries[rid] = tries.get(rid, 0) + 1
                    counts["again"] += 1
                    again = self.planner.step_request(work, finished)
                    assert not isinstance(again, dict)
                    self.planner.queue(writer, work, again[0], again[1], finished)
                    continue
                before = tries.pop(rid, 0)
                failed = step.stages.error_row(
                    work,
                    result.code or "batch_error",
                    result.message or "",
                    attempts=before + 1,
                    retryable=result.retryable,
                    status=result.status,
                )
                finished[name] = steps.result(step, failed)
            found = self.planner.step_request(work, finished)
            if isinstance(found, dict):
                rows.append(found)
            else:
                counts["next"] += 1
                self.planner.queue(writer, work, found[0], found[1], finished)
        for row in rows:
            counts["ok" if row["status"] == "ok" else "error"] += 1
        if rows:
            self._write_rows(rows)
            checkpoint("merge-written")
        continued = writer.close()
        self.planner.add_parts(continued)
        if self.drain_only:  # collecting only: the next steps wait for a run that submits
            self._parked.update(p.name for p in continued)
        self.journal.tries = tries
        self.journal.spent_usd += spent
        budget = self.engine.budget
        if budget is not None:
            budget.settle(0.0, spent)
        part.merged = counts
        self._set(part, "merged")
        if info.outcome == "cancelled" and not self.drain_only:
            self.drain_only = True  # cancelled by the user: submit nothing more in this run
            self._parked.update(p.name for p in continued)
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

    def _read_results(self, part: Part) -> tuple[dict[str, LineResult], int]:
        """The part's results by custom id, and how many lines could not be read. The lines
        are the provider's bytes: one that is not a JSON object, or that its batch API cannot
        read, is no result (its record goes again, as for a missing line)."""
        results: dict[str, LineResult] = {}
        unread = 0
        for raw in part_lines(self.journal.file(part.name, "results")):
            try:
                line = json.loads(raw)
                if not isinstance(line, dict):
                    raise TypeError("not an object")
                found = self.api.parse_result(line)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                unread += 1
                continue
            # A success wins over an error line for the same id (never both, in theory).
            if found.custom_id not in results or found.reply is not None:
                results[found.custom_id] = found
        return results, unread

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


def _missing(cid: str, info: BatchInfo) -> LineResult:
    """The result of a request an ended batch has no line for: retryable (sent again)."""
    code = "batch_failed" if info.outcome == "failed" else "batch_missing"
    reason = info.reason if info.outcome == "failed" else None
    return LineResult(
        cid,
        code=code,
        message=f"batch {info.id} {info.outcome or 'ended'} without a result for this request"
        + (f": {reason}" if reason else ""),
        retryable=True,
    )


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

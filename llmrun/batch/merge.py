"""Merging an ended batch's results into the output: a row for each record with a reply (through
the recipe's postprocessors, as a direct reply), the failures sent again or written as error
rows, and, for a ``steps:`` recipe, each record's next step queued as a new part.

The result lines are the provider's bytes, read as untrusted (``read_results``); the records'
side comes from the part's own file beside the journal (``Journal.records``/``carried``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from ..errors import RecordError, RunAborted
from ..job.records import Work
from ..job.store import IdSet, now_iso
from ..run.calls import Outcome
from ..run.stages import Stages
from ..run.steps import StepStages
from ..values import Prompt, Row
from .contract import BatchAPI, BatchInfo, LineResult
from .journal import Journal, Part, checkpoint, part_lines
from .parts import Planned
from .planner import PartPlanner

if TYPE_CHECKING:
    from ..run.engine import Engine


@dataclass
class Merged:
    """What merging a part did, for the runner to act on once the journal says "merged"."""

    info: BatchInfo
    continued: list[Planned] = field(default_factory=list)  # steps: the next steps' parts


class Merger:
    """Merges ended parts; ``write_rows`` writes rows durably (before the journal's save)."""

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        api: BatchAPI,
        finished: IdSet,
        steps: StepStages | None,
        planner: PartPlanner,
        write_rows: Callable[[list[Row]], None],
    ) -> None:
        self.engine = engine
        self.resubmits = engine.recipe.run.batch_resubmits
        self.journal = journal
        self.api = api
        self.finished = finished
        self.steps = steps
        self.planner = planner
        self.write_rows = write_rows

    async def merge(self, part: Part) -> Merged:
        """The part's rows written, ``journal.tries``, ``spent_usd`` and ``part.merged`` set;
        the caller then saves the journal with the part's step "merged"."""
        results, unread = await anyio.to_thread.run_sync(self.read_results, part)
        if unread:
            self.engine.warn(
                f"{unread} result line(s) of {part.name} could not be read; their records are "
                "treated as having no result"
            )
        info = BatchInfo.from_json(part.info or {"id": "?", "state": "ended"})
        if part.recipe_step is not None:
            return Merged(info, await self._merge_step(part, results, info))
        await self._merge_records(part, results, info)
        return Merged(info)

    async def _merge_records(
        self, part: Part, results: dict[str, LineResult], info: BatchInfo
    ) -> None:
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
                result = missing(cid, info)
            if result.retryable and tries.get(rid, 0) < self.resubmits:
                tries[rid] = tries.get(rid, 0) + 1
                counts["again"] += 1
                continue
            rows.append(failed_row(self.engine.stages, work, result, tries.pop(rid, 0) + 1))
        self._write(rows, counts)
        self._keep(part, counts, tries, spent)

    async def _merge_step(
        self, part: Part, results: dict[str, LineResult], info: BatchInfo
    ) -> list[Planned]:
        """A steps: part's results: each record's step result, then at once its next step's
        request into a new part (carrying what it has finished), or its row when it is done.
        The new parts are in the journal before the save that marks this part merged."""
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
                    result = missing(cid, info)
                # (None: cancelled, never run: sent again, parked while collecting only)
                if result is None or (result.retryable and tries.get(rid, 0) < self.resubmits):
                    if result is not None:
                        tries[rid] = tries.get(rid, 0) + 1
                    counts["again"] += 1
                    again = self.planner.step_request(work, finished)
                    assert not isinstance(again, dict)
                    self.planner.queue(writer, work, again[0], again[1], finished)
                    continue
                failed = failed_row(step.stages, work, result, tries.pop(rid, 0) + 1)
                finished[name] = steps.result(step, failed)
            found = self.planner.step_request(work, finished)
            if isinstance(found, dict):
                rows.append(found)
            else:
                counts["next"] += 1
                self.planner.queue(writer, work, found[0], found[1], finished)
        self._write(rows, counts)
        continued = writer.close()
        self.planner.add_parts(continued)
        self._keep(part, counts, tries, spent)
        return continued

    def _write(self, rows: list[Row], counts: dict[str, int]) -> None:
        """The part's rows, counted and written (durable before the journal says merged)."""
        for row in rows:
            counts["ok" if row["status"] == "ok" else "error"] += 1
        if rows:
            self.write_rows(rows)
            checkpoint("merge-written")

    def _keep(
        self, part: Part, counts: dict[str, int], tries: dict[str, int], spent: float
    ) -> None:
        """What the journal (saved next, by the runner) and the budget keep of the part."""
        self.journal.tries = tries
        self.journal.spent_usd += spent
        budget = self.engine.budget
        if budget is not None:  # direct calls after these (auto mode) count them too
            budget.settle(0.0, spent)
        part.merged = counts

    def read_results(self, part: Part) -> tuple[dict[str, LineResult], int]:
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


def failed_row(stages: Stages, work: Work, result: LineResult, attempts: int) -> Row:
    """The error row of a request the batch failed, after ``attempts`` submissions."""
    return stages.error_row(
        work,
        result.code or "batch_error",
        result.message or "",
        attempts=attempts,
        retryable=result.retryable,
        status=result.status,
    )


def missing(cid: str, info: BatchInfo) -> LineResult:
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

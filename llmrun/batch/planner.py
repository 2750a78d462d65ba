"""Batch planning: the records still to do -> requests in part files, within the provider's
limits (``parts``), each part added to the journal; a ``steps:`` record's next step's request
(also when a part of its previous step is merged), and what a batch of them is estimated to cost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..job.records import Work
from ..job.store import IdSet
from ..recipe.pricing import Price
from ..recipe.tokens import estimate
from ..run.steps import StepStages
from ..values import Prompt, Row, Usage
from .contract import BatchAPI
from .journal import Journal, Part, checkpoint
from .parts import PartWriter, Planned

if TYPE_CHECKING:
    from ..run.engine import Engine

HASH_PREFIX = "k"


class PartPlanner:
    """Writes the requests of a batch run's records into part files."""

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        api: BatchAPI,
        finished: IdSet,
        steps: StepStages | None,
        line_apis: dict[str | None, BatchAPI],
        price: Price | None,
    ) -> None:
        self.engine = engine
        self.settings = engine.recipe.run
        self.journal = journal
        self.api = api
        self.finished = finished
        self.steps = steps
        self._line_apis = line_apis
        self._id_ok = re.compile(api.custom_id_pattern)
        self._price = price
        self.over_budget: str | None = None  # why the last plan was over run.budget_usd
        # Each round of batches plans again over the whole input: only the first reading
        # looks for repeated ids (a later one met every id again and warned about each).
        self._read_once = False

    def plan(
        self,
        error_rows: list[Row],
        *,
        stragglers: bool,
        spent: Callable[[], float],
    ) -> str:
        """Write parts (into the journal) for the records neither finished nor in a running
        batch; rows needing no call go to ``error_rows``. "direct" when auto mode calls them
        directly instead (few records, or ``stragglers``), "budget" when their estimate is over
        run.budget_usd (``over_budget`` says why), else "batch"."""
        engine = self.engine
        busy: set[str] = set()
        for part in self.journal.active():
            busy.update(rid for _, rid, _, _ in self.journal.records(part))
        writer = self.writer()
        pending = 0
        estimate_usd = 0.0
        for work in engine.records(dupes=not self._read_once):
            if work.id in self.finished or work.id in busy:
                continue
            step: str | None = None
            finished: dict[str, Any] = {}
            if self.steps is not None:
                finished = dict(self.steps.journal.pending.get(work.id, {}))
                found = self.step_request(work, finished)
                if isinstance(found, dict):
                    error_rows.append(found)  # its row, without a call (an error, or skipped)
                    continue
                step, prompt = found
            else:
                rendered = engine.stages.render(work)
                if isinstance(rendered, dict):
                    error_rows.append(rendered)
                    continue
                prompt = rendered
            busy.add(work.id)
            pending += 1
            self.queue(writer, work, step, prompt, finished)
            estimate_usd += self._estimate(prompt)
        planned = writer.close()
        self._read_once = True
        auto_direct = (
            self.settings.mode == "auto"
            and (pending < self.settings.auto_threshold or stragglers)
            and not self.journal.active()
        )
        budget = self.settings.budget_usd
        spent_usd = spent()
        over = bool(
            budget is not None
            and pending
            and spent_usd + estimate_usd > float(budget)
            and not auto_direct
        )
        if auto_direct or over:
            for p in planned:  # not in the journal: files never used
                self.journal.file(p.name, "").unlink(missing_ok=True)
                self.journal.file(p.name, "records").unlink(missing_ok=True)
            self.journal.next_part -= len(planned)
            if over:
                self.over_budget = (
                    f"the estimate for {pending} record(s) in batch is ${estimate_usd:.4f} "
                    f"(${spent_usd:.4f} spent), over run.budget_usd ${budget}: "
                    "nothing was submitted"
                )
                return "budget"
            return "direct"
        self.add_parts(planned)
        if planned:
            self.journal.save()
            checkpoint("written")
        return "batch"

    def writer(self) -> PartWriter:
        max_requests = min(
            self.api.max_requests, self.settings.batch_max_requests or self.api.max_requests
        )
        max_bytes = min(self.api.max_bytes, self.settings.batch_max_bytes or self.api.max_bytes)
        return PartWriter(self.journal, max_requests, max_bytes)

    def queue(
        self,
        writer: PartWriter,
        work: Work,
        step: str | None,
        prompt: Prompt,
        finished: dict[str, Any],
    ) -> None:
        """The record's request into a part file of its step."""
        cid = self._custom_id(work.id)
        body = self._line_apis.get(step, self.api).line(cid, prompt)
        line = (json.dumps(body, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
        record: list[Any] = [cid, work.id, work.where, work.data]
        writer.add(step, line, record if step is None else [*record, finished])

    def add_parts(self, planned: list[Planned]) -> None:
        for p in planned:
            tag = self.journal.tag(p.name)
            self.journal.parts.append(
                Part(p.name, p.requests, p.size, tag, recipe_step=p.recipe_step)
            )

    def step_request(self, work: Work, finished: dict[str, Any]) -> tuple[str, Prompt] | Row:
        """A steps: record's next request (its step's name and prompt), or its row when it
        needs no more calls; a step whose prompt cannot be rendered is that step's error."""
        assert self.steps is not None
        while True:
            planned = self.steps.plan(work, finished)
            if isinstance(planned, dict):
                return planned
            step, context = planned
            prompt = step.stages.render(work, context)
            if not isinstance(prompt, dict):
                return step.spec.name, prompt
            finished[step.spec.name] = self.steps.result(step, prompt)

    def _custom_id(self, rid: str) -> str:
        """The record id when the provider accepts it as a custom_id, else a stable hash."""
        if self._id_ok.match(rid) and not rid.startswith(HASH_PREFIX + "_"):
            return rid
        return HASH_PREFIX + "_" + hashlib.blake2b(rid.encode(), digest_size=16).hexdigest()

    def _estimate(self, prompt: Prompt) -> float:
        if self._price is None:
            return 0.0
        tokens_in, tokens_out = estimate(prompt)
        return self._price.cost(Usage(tokens_in, tokens_out), batch=True) or 0.0

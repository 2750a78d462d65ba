"""Running a multi-step recipe: each record goes through its steps in order (docs/steps.md).

A record moves to its next step as soon as its previous one is done, inside the worker that
holds it, so every step shares the run's concurrency, keys, pace, budget and cache, and the
second step's first call goes out long before the first step's last. Each step is a
``Stages`` of its own (its template, provider options, postprocessors); this module adds what
is between them: ``when``, ``n`` samples with ``select``, the journal of finished steps
(``job/stepjournal.py``) and the record's one row with every step under ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from ..components import Postprocessor, Provider
from ..errors import RecipeError, RunAborted
from ..job.records import Work
from ..job.rows import RowMaker
from ..job.stepjournal import StepJournal
from ..job.store import now_iso
from ..plugins import Registry, build_component
from ..recipe.model import ComponentSpec, Recipe, StepSpec, freeze
from ..recipe.templates import PromptTemplate
from ..values import ComponentContext, Row
from .calls import Caller, NotSent
from .stages import Stages, describe

# What a step's result keeps of its row (the row's own keys, per step).
STEP_KEYS = (
    "status",
    "text",
    "fields",
    "error",
    "response",
    "attempts",
    "latency_s",
    "cost_usd",
    "key",
)


class Step:
    """One step bound to the run: its stages and its condition."""

    def __init__(
        self, spec: StepSpec, stages: Stages, when: Callable[[Mapping[str, Any]], Any] | None
    ) -> None:
        self.spec = spec
        self.stages = stages
        self.when = when


class StepParts:
    """A step's components, built when the run is (a fault shows before any call): bound to
    the run's Caller once it exists."""

    def __init__(
        self,
        spec: StepSpec,
        provider: Provider,
        posts: list[Postprocessor],
        template: PromptTemplate,
        rows: RowMaker,
    ) -> None:
        self.spec = spec
        self.provider = provider
        self.posts = posts
        self.template = template
        self.rows = rows
        self.when = None if spec.when is None else template.condition(spec.when)


def step_parts(
    recipe: Recipe,
    registry: Registry,
    context: ComponentContext,
    provider: Provider,
    rows: RowMaker,
) -> list[StepParts]:
    """Every step's components: the recipe's provider, or one with the step's options."""
    parts: list[StepParts] = []
    for spec in recipe.steps:
        own, own_rows = provider, rows
        if spec.provider_options:
            options = freeze({**recipe.provider.options, **spec.provider_options})
            where = f"steps.{spec.name}.provider"
            own = build_component(
                registry, "provider", ComponentSpec(recipe.provider.name, options, where), context
            )
            own_rows = RowMaker(recipe, rows.redact, own.model, rows.warn)
        if int(getattr(own, "group_size", 1) or 1) > 1:
            raise RecipeError(
                f"steps: provider {recipe.provider.name!r} answers several records in one "
                "request; a steps: recipe needs one request per record and step"
            )
        posts = [build_component(registry, "postprocessor", p, context) for p in spec.postprocess]
        template = PromptTemplate.for_step(recipe, spec)
        parts.append(StepParts(spec, own, posts, template, own_rows))
    return parts


class StepStages(Stages):
    """The record stages of a ``steps:`` recipe: what the engine's workers call instead of one
    ``Stages`` (the same ``process``, ``caller`` and ``group_size``)."""

    def __init__(
        self, parts: Sequence[StepParts], rows: RowMaker, caller: Caller, journal: StepJournal
    ) -> None:
        first = parts[0]
        super().__init__(rows.recipe, first.provider, first.posts, first.template, rows, caller)
        self.group_size = 1
        self.steps = [
            Step(
                p.spec, Stages(rows.recipe, p.provider, p.posts, p.template, p.rows, caller), p.when
            )
            for p in parts
        ]
        self.journal = journal

    async def process_group(self, batch: list[Work]) -> list[Row]:
        return [await self.process(work) for work in batch]

    async def process(
        self, work: Work, extra: Mapping[str, Any] | None = None, sample: int = 0
    ) -> Row:
        """The record's row, every step in it (RunAborted and NotSent propagate: what the
        record has finished stays in the journal for the next run)."""
        finished = dict(self.journal.pending.get(work.id, {}))
        while True:
            planned = self.plan(work, finished)
            if isinstance(planned, dict):
                self.journal.forget(work.id)
                return planned
            step, context = planned
            started = now_iso()
            result = await self._run(step, work, context)
            result["started_at"], result["finished_at"] = started, now_iso()
            finished[step.spec.name] = result
            # The last step's result goes out in the row at once: no journal line.
            if result["status"] == "ok" and step is not self.steps[-1]:
                self.journal.add(work.id, step.spec.name, step.spec.hash, result)

    def plan(
        self, work: Work, finished: Mapping[str, dict[str, Any]]
    ) -> tuple[Step, dict[str, Any]] | Row:
        """Where the record stands, given the results of the steps it has ``finished``: its
        next step to call with the templates' ``steps``, or its row when none is left (its
        last step done, a step failed, or every step left is skipped by its ``when``)."""
        if work.error is not None:
            error = self.rows.error(work, "bad_input", work.error)
            return self.rows.row(work, 0, error=error, steps={})
        assert work.data is not None
        results: dict[str, dict[str, Any]] = {}
        seen: dict[str, dict[str, Any]] = {}  # what later templates see as `steps`
        last: dict[str, Any] | None = None
        for step in self.steps:
            name = step.spec.name
            result = finished.get(name)
            if result is None:
                go = self._when(step, work, seen)
                if go is False:
                    results[name] = {"status": "skipped", "hash": step.spec.hash}
                    seen[name] = {"status": "skipped", "text": None, "fields": {}}
                    continue
                if go is True:
                    return step, {"steps": seen}
                result = go  # the condition itself failed on this record
            results[name] = result
            seen[name] = {k: result.get(k) for k in ("status", "text", "fields")}
            last = result
            if result["status"] != "ok":
                break  # a failed step ends the record: --retry-errors takes it up here
        return self._row(work, results, last)

    def result(self, step: Step, row: Row) -> dict[str, Any]:
        """A step's result, from the row its stages made (batch mode's merge)."""
        return _result(row, step.spec.hash)

    def _when(self, step: Step, work: Work, seen: dict[str, Any]) -> bool | dict[str, Any]:
        """Whether the step runs; its error result when the condition cannot be evaluated."""
        if step.when is None:
            return True
        assert work.data is not None
        try:
            return bool(step.when({**work.data, "record": work.data, "steps": seen}))
        except Exception as exc:  # an undefined field, a type error in the expression
            error = self.rows.error(
                work, "template", f"step {step.spec.name}: when: {describe(exc)}"
            )
            return _result(self.rows.row(work, 0, error=error), step.spec.hash)

    async def _run(self, step: Step, work: Work, extra: Mapping[str, Any]) -> dict[str, Any]:
        spec = step.spec
        if spec.n == 1:
            return _result(await step.stages.process(work, extra), spec.hash)
        rule, field = spec.select
        if rule == "first":
            # Samples one after another, until one succeeds: the rest are never paid for.
            samples: list[Row] = []
            for i in range(spec.n):
                samples.append(await step.stages.process(work, extra, sample=i))
                if samples[-1]["status"] == "ok":
                    break
        else:
            samples = await _all(step.stages, work, extra, spec.n)
        return self._select(work, spec, samples, rule, field)

    def _select(
        self, work: Work, spec: StepSpec, samples: list[Row], rule: str, field: str | None
    ) -> dict[str, Any]:
        ok = [i for i, row in enumerate(samples) if row["status"] == "ok"]
        chosen: int | None = ok[0] if ok else None
        if rule in ("max", "min") and ok:
            assert field is not None  # recipe/steps.py: max and min name their field
            scored = [(i, _number(samples[i]["fields"].get(field))) for i in ok]
            valid = [(i, v) for i, v in scored if v is not None]
            if not valid:
                message = f"select: {rule} {field}: no sample has a numeric {field!r} field"
                error = self.rows.error(work, "select", message)
                row = self.rows.row(work, 0, error=error, response=samples[ok[0]]["response"])
                chosen, samples = None, [*samples, row]
            else:
                pick = max if rule == "max" else min
                best = pick(v for _, v in valid)
                chosen = next(i for i, v in valid if v == best)  # the first of equals
        base = samples[chosen] if chosen is not None else samples[-1]
        result = _result(base, spec.hash)
        result["attempts"] = sum(int(row.get("attempts") or 0) for row in samples)
        result["cost_usd"] = _total(row.get("cost_usd") for row in samples)
        result["chosen"] = chosen
        result["samples"] = [
            {k: row.get(k) for k in ("status", "text", "fields", "error")}
            for row in samples[: spec.n]
        ]
        return result

    def _row(
        self, work: Work, results: dict[str, dict[str, Any]], last: dict[str, Any] | None
    ) -> Row:
        ran = [r for r in results.values() if r["status"] != "skipped"]
        last = last or {}
        row = self.rows.row(
            work,
            sum(int(r.get("attempts") or 0) for r in ran),
            _total(r.get("latency_s") for r in ran),
            text=last.get("text"),
            fields=last.get("fields"),
            error=last.get("error"),
            response=last.get("response"),
            cost=_total(r.get("cost_usd") for r in ran),
            cached=bool(ran) and all(r.get("cached") for r in ran),
            steps=results,
            redacted=True,  # every part comes from a step's row, redacted when it was made
            key=last.get("key"),
        )
        return row


def _result(row: Row, digest: str) -> dict[str, Any]:
    result = {k: row.get(k) for k in STEP_KEYS}
    result["cached"] = bool(row.get("cached"))
    result["hash"] = digest
    return result


async def _all(stages: Stages, work: Work, extra: Mapping[str, Any], n: int) -> list[Row]:
    """All ``n`` samples at once (each waits for its own slot and pace like any call)."""
    rows: list[Row | None] = [None] * n
    stopped: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            rows[i] = await stages.process(work, extra, sample=i)
        except (NotSent, RunAborted) as exc:
            stopped.append(exc)

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)
    if stopped:
        raise stopped[0]
    return [row for row in rows if row is not None]


def _number(value: Any) -> float | None:
    """A field's value as a number for ``select``: a number or a string that reads as one;
    never a bool, NaN or infinity (a reply must not win a max by saying "inf")."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _total(values: Any) -> float | None:
    """A sum, None when any part is unknown (a cost with no price)."""
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += float(value)
    return total
